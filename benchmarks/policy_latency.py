"""Per-step latency of the exported locomotion policy at batch 1: onnxruntime (one thread,
sequential) against torch eager (one thread, inference mode) and the TorchScript twin, one run.

    python benchmarks/policy_latency.py [--run <run dir>] [--calls 20000] [--out latency.json] [--quick]

Without --run, an untrained policy with go2_velocity's default sizes (48 -> 256-128-64 -> 12) is
exported to a temporary folder. With --run, the run's latest checkpoint is exported to a temporary
folder (the run itself is not touched). Each call is timed alone (perf_counter_ns), after warm-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from env_throughput import command_line, machine_info, markdown_table, thread_info, write_json
from omegaconf import OmegaConf

from embodied.cli import compose
from embodied.export import ExportedPolicy, deploy_manifest, export_policy, record_observations
from embodied.workflow import build_env, build_policy, load_policy

MAX_US = 50.0  # p50 and p99 of onnxruntime at batch 1


def build(run: str | None, out_dir: Path) -> tuple[ExportedPolicy, np.ndarray, dict[str, Any]]:
    """Export a run's policy (or a fresh default one) into out_dir; returns it and 200 real obs (200, D)."""
    if run:
        cfg = OmegaConf.load(Path(run) / "config.yaml")
        env = build_env(cfg, num_envs=4)
        ac, _ = load_policy(Path(run), cfg, env, None)
    else:
        cfg = compose([])
        env = build_env(cfg, num_envs=4)
        torch.manual_seed(0)
        ac = build_policy(cfg, env).eval()
    policy = ExportedPolicy.from_actor_critic(ac, *env.action_affine())
    manifest = deploy_manifest(OmegaConf.to_container(cfg.task, resolve=True), env, policy)
    obs = record_observations(env, ac, steps=50)
    env.close()
    diffs = export_policy(policy, out_dir, manifest, {"recorded": obs})
    sizes = [m.out_features for m in policy.actor if isinstance(m, torch.nn.Linear)]
    info = {"source": run or "untrained go2_velocity default", "layers": [policy.obs_dim, *sizes]}
    return policy, obs.numpy(), {**info, "parity_max_abs_diff": max(diffs.values())}


def latencies_us(call: Callable[[np.ndarray], Any], obs: np.ndarray, calls: int, warmup: int) -> np.ndarray:
    """Wall time of each of ``calls`` single calls (µs), cycling through the rows of obs (n, 1, D)."""
    for i in range(warmup):
        call(obs[i % len(obs)])
    out = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        x = obs[i % len(obs)]
        t0 = clock()
        call(x)
        out[i] = clock() - t0
    return out / 1e3


def runtimes(policy: ExportedPolicy, out_dir: Path) -> dict[str, Callable[[np.ndarray], Any]]:
    """name -> one inference call on a (1, D) float32 array."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(out_dir / "policy.onnx"), opts, providers=["CPUExecutionProvider"])
    names = ["joint_targets", "actions"]
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning
        )
        scripted = torch.jit.load(str(out_dir / "policy.ts"))

    def onnx_call(x: np.ndarray) -> Any:
        return sess.run(names, {"obs": x})

    def eager_call(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return policy(torch.from_numpy(x))

    def script_call(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return scripted(torch.from_numpy(x))

    return {"onnxruntime": onnx_call, "torch eager": eager_call, "torchscript": script_call}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="a trained run directory (default: untrained policy)")
    p.add_argument("--calls", type=int, default=None, help="timed calls per runtime (default 20000)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2000)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="few calls: a smoke test")
    a = p.parse_args(argv)
    calls = a.calls or (2000 if a.quick else 20000)
    warmup = a.warmup if a.warmup is not None else (200 if a.quick else 2000)

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        policy, obs, info = build(a.run, Path(tmp) / "exported")
        obs = np.ascontiguousarray(obs[:, None, :], dtype=np.float32)  # (n, 1, D): batch 1 per call
        stats = {}
        for name, call in runtimes(policy, Path(tmp) / "exported").items():
            us = latencies_us(call, obs, calls, warmup)
            stats[name] = {q: float(np.percentile(us, int(q[1:]))) for q in ("p50", "p99")}
            stats[name].update(mean=float(us.mean()), max=float(us.max()))

    machine = {**machine_info(), "onnxruntime": ort.__version__}
    threads = thread_info(ort_intra_op=1, ort_inter_op=1, ort_execution_mode="sequential")
    print(f"# Policy latency, batch 1\n\ncommand: `{command_line(__file__, argv)}`")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("threads: " + ", ".join(f"{k}={v}" for k, v in threads.items()))
    print("policy: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"settings: calls={calls} per runtime after {warmup} warm-up calls, each call timed alone")
    if a.quick:
        print("quick mode: smoke test only, the figures are not meaningful")
    rows = [[name, *(f"{s[k]:.1f}" for k in ("p50", "p99", "mean", "max"))] for name, s in stats.items()]
    print("\n" + markdown_table(["runtime", "p50 µs", "p99 µs", "mean µs", "max µs"], rows) + "\n")
    criteria = [
        {"criterion": f"onnxruntime {q}", "value": stats["onnxruntime"][q], "max": MAX_US}
        for q in ("p50", "p99")
    ]
    for c in criteria:
        c["pass"] = c["value"] <= MAX_US
        print(
            f"{'PASS' if c['pass'] else 'FAIL'}  {c['criterion']}: {c['value']:.1f} µs (need <= {MAX_US:g})"
        )
    ratio = stats["torch eager"]["p50"] / stats["onnxruntime"]["p50"]
    print(f"torch eager p50 / onnxruntime p50: {ratio:.2f}")
    header = {"command": command_line(__file__, argv), "machine": machine, "threads": threads}
    write_json(a.out, {**header, "args": vars(a), "policy": info, "latency_us": stats, "criteria": criteria})
    return 0 if all(c["pass"] for c in criteria) else 1


if __name__ == "__main__":
    sys.exit(main())
