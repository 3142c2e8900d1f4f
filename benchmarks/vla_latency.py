"""Per-step latency of the exported VLA pair at batch 1 on this CPU (onnxruntime, one thread).

    python benchmarks/vla_latency.py [--encoders cnn efficientnet] [--calls 2000] [--out vla_latency.json]

For each vision encoder a VLA policy of the default config (configs/policy/vla.yaml: 84x84 frames,
chunk 4, 32 bins, FiLM) on the multi-instruction arm's observation contract (proprio 22, action 4)
is exported with the files ``embodied/export/vla.py`` writes (policy.onnx, text_encoder.onnx,
tokenizer.json, deploy.yaml); weights are as initialized (latency does not depend on them). Then
``embodied.deploy.VLARunner`` times, each call alone (perf_counter_ns, after warm-up):

- ``step``: ``runner.act(frame, instruction, proprio)`` with the instruction's embedding cached (what
  every control step costs: policy.onnx plus input checks);
- ``policy.onnx``: the session call alone;
- ``instruction``: tokenize + text_encoder.onnx for a new instruction (once per episode);
- ``torch eager``: the same greedy chunk in torch (one thread, inference mode), for reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from env_throughput import command_line, machine_info, markdown_table, thread_info, write_json
from omegaconf import OmegaConf

from embodied.deploy.vla_runner import VLARunner
from embodied.export.onnx import dump_yaml, sha256
from embodied.export.vla import VLA_FILES, VLAExportGraph, write_policy_onnx, write_text_encoder_onnx
from policies.registry import build_policy
from policies.spec import TensorSpec
from policies.text_encoder import TextEncoder

ROOT = Path(__file__).resolve().parent.parent
PROPRIO, ACTIONS, SIZE = 22, 4, 84  # joint_pos_rel 7, joint_vel 7, gripper_pos 1, ee_pos 3, last_action 4
INSTRUCTIONS = ["push the red cube onto the blue pad", "push the green cube onto the red pad"]


def spec() -> dict[str, TensorSpec]:
    return {
        "rgb": TensorSpec((3, SIZE, SIZE), torch.uint8, "rgb"),
        "proprio": TensorSpec((PROPRIO,)),
        "instruction": TensorSpec((1,), torch.int64, "instruction"),
        "critic": TensorSpec((PROPRIO + 8,)),
    }


def export_pair(encoder: str, text: TextEncoder, out: Path) -> tuple[torch.nn.Module, VLAExportGraph]:
    """The default VLA config with ``encoder``, exported to ``out`` (the files export_vla writes)."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/policy/vla.yaml"))
    cfg.pop("name")
    channels = cfg["channels"] if encoder == "cnn" else 128
    cfg.update(encoder=encoder, channels=channels, instructions=INSTRUCTIONS)
    policy = build_policy("vla", spec(), ACTIONS, cfg).eval()
    policy.set_instruction_embeddings(text.embed(INSTRUCTIONS))
    graph = VLAExportGraph(policy, torch.zeros(ACTIONS), torch.ones(ACTIONS))
    out.mkdir(parents=True, exist_ok=True)
    write_policy_onnx(graph, out / VLA_FILES["policy"], "ee_delta")
    write_text_encoder_onnx(text, out / VLA_FILES["text_encoder"])
    (out / VLA_FILES["tokenizer"]).write_bytes((text.path / "tokenizer.json").read_bytes())
    manifest = {
        "kind": "vla",
        "policy": {
            "onnx": VLA_FILES["policy"],
            "onnx_sha256": sha256(out / VLA_FILES["policy"]),
            "inputs": {
                "rgb": {"dtype": "uint8", "shape": [3, SIZE, SIZE]},
                "instruction_embedding": {"dtype": "float32", "dim": 384},
                "proprio": {"dtype": "float32", "dim": PROPRIO},
            },
            "outputs": {"ee_delta": {"dim": ACTIONS}, "actions": {"dim": ACTIONS}, "chunk": {}},
            "chunk": {"length": policy.chunk, "execute": "first", "filtered": "first"},
        },
        "text_encoder": {
            "onnx": VLA_FILES["text_encoder"],
            "onnx_sha256": sha256(out / VLA_FILES["text_encoder"]),
            "tokenizer": VLA_FILES["tokenizer"],
            "max_length": text.max_length,
        },
        "instructions": INSTRUCTIONS,
        "action": {"offset": [0.0] * ACTIONS, "scale": [1.0] * ACTIONS},
    }
    (out / VLA_FILES["deploy"]).write_text(dump_yaml(manifest), encoding="utf-8")
    yaml.safe_load((out / VLA_FILES["deploy"]).read_text())
    return policy, graph


def latencies_us(call: Callable[[int], Any], calls: int, warmup: int) -> np.ndarray:
    for i in range(warmup):
        call(i)
    out = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        call(i)
        out[i] = (clock() - t0) / 1e3
    return out


def bench(encoder: str, text: TextEncoder, calls: int, tmp: Path) -> dict[str, dict[str, float]]:
    policy, graph = export_pair(encoder, text, tmp / encoder)
    runner = VLARunner(tmp / encoder)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (16, 3, SIZE, SIZE), dtype=np.uint8)
    proprio = rng.normal(size=(16, PROPRIO)).astype(np.float32)
    emb = runner.embed(INSTRUCTIONS[0])
    feeds = [
        {"rgb": frames[i : i + 1], "instruction_embedding": emb[None], "proprio": proprio[i : i + 1]}
        for i in range(16)
    ]
    t_frames, t_prop = torch.from_numpy(frames), torch.from_numpy(proprio)
    t_emb = torch.from_numpy(emb)[None]

    def eager(i: int) -> Any:
        with torch.inference_mode():
            return graph(t_frames[i % 16 : i % 16 + 1], t_emb, t_prop[i % 16 : i % 16 + 1])

    def new_instruction(i: int) -> Any:
        runner.cache.clear()
        return runner.embed(INSTRUCTIONS[i % 2])

    timed = {
        "step": lambda i: runner.act(frames[i % 16], INSTRUCTIONS[0], proprio[i % 16]),
        "policy.onnx": lambda i: runner.policy.run(runner.outputs, feeds[i % 16]),
        "instruction": new_instruction,
        "torch eager": eager,
    }
    stats = {}
    for name, call in timed.items():
        n = calls if name != "instruction" else max(50, calls // 4)
        us = latencies_us(call, n, warmup=min(50, n))
        stats[name] = {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)), "calls": n}
    gap = 0.0  # onnxruntime against torch on the 16 frames, all three outputs
    for i in range(16):
        got = runner.policy.run(runner.outputs, feeds[i])
        gap = max(gap, *(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, eager(i), strict=True)))
    stats["sizes"] = {
        "parity_max_abs": gap,
        "policy_onnx_mb": (tmp / encoder / "policy.onnx").stat().st_size / 2**20,
        "text_encoder_onnx_mb": (tmp / encoder / "text_encoder.onnx").stat().st_size / 2**20,
        "trainable_params": sum(p.numel() for p in policy.parameters() if p.requires_grad),
    }
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["cnn", "efficientnet"])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    text = TextEncoder()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders:
            results[encoder] = bench(encoder, text, args.calls, Path(tmp))
    rows = [
        [enc, name, f"{s['p50']:.0f}", f"{s['p99']:.0f}", s["calls"]]
        for enc, r in results.items()
        for name, s in r.items()
        if name != "sizes"
    ]
    print(markdown_table(["encoder", "what", "p50 (us)", "p99 (us)", "calls"], rows))
    for enc, r in results.items():
        print(f"{enc}: {r['sizes']}")
    took = time.perf_counter() - t0
    print(f"\n{command_line(__file__, argv)}  ({took:.0f} s)")
    write_json(
        args.out,
        {
            "results": results,
            "machine": machine_info(),
            "threads": thread_info(onnxruntime_threads=1),
            "wall_s": took,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
