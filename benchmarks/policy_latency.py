"""Per-step latency of a trained, exported locomotion policy at batch 1: onnxruntime (one thread,
sequential) against torch eager (one thread, inference mode) and the TorchScript twin, one run.
Exits 1 when onnxruntime's p50 or p99 is above the threshold.

    python benchmarks/policy_latency.py [--run <run dir>] [--fresh] [--calls 20000] [--out latency.json]

The policy comes from, in this order: ``--run``; else the newest go2_velocity run under runs/ with a
checkpoint (what ``make train`` leaves); else (or with ``--fresh``) a tiny policy trained here by
``embodied train`` (TINY_TRAIN: go2_velocity's default policy sizes, a few iterations) into a
temporary folder. The output says which. Its latest checkpoint is exported to a temporary folder
(the run itself is not touched). Each call is timed alone (perf_counter_ns), after warm-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
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

from embodied.export import ExportedPolicy, deploy_manifest, export_policy, record_observations
from embodied.workflow import build_env, load_policy

ROOT = Path(__file__).resolve().parent.parent
TASK = "go2_velocity"
# A quick real training run: the default policy of the task (the sizes make train exports).
TINY_TRAIN = [
    f"task={TASK}",
    "num_envs=64",
    "train.max_iterations=3",
    "train.video=false",
    "train.evaluate=false",
    "train.export=false",
]
MAX_US = 50.0  # p50 and p99 of onnxruntime at batch 1


def newest_run(runs: Path, task: str = TASK) -> Path | None:
    """The run under ``runs/<task>/`` whose newest checkpoint is the most recent, or None."""
    ckpts = list(runs.glob(f"{task}/*/checkpoints/model_*.pt"))
    return max(ckpts, key=lambda p: p.stat().st_mtime).parent.parent if ckpts else None


def train_tiny(out: Path) -> Path:
    """Trains TINY_TRAIN into ``out/run`` with ``embodied train``; returns the run directory."""
    run = out / "run"
    cmd = [sys.executable, "-m", "embodied.cli", "train", *TINY_TRAIN, f"run_dir={run}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: training the tiny policy failed: {tail}")
    return run


def choose_run(run: str | None, fresh: bool, tmp: Path) -> tuple[Path, str]:
    """The run to export and a line that says where it came from."""
    if run:
        return Path(run), f"{run} (--run)"
    found = None if fresh else newest_run(ROOT / "runs")
    if found is not None:
        return found, f"{os.path.relpath(found)} (newest {TASK} run under runs/)"
    t0 = time.perf_counter()
    trained = train_tiny(tmp)
    why = "--fresh" if fresh else f"no {TASK} run under runs/"
    took = time.perf_counter() - t0
    return trained, f"trained here ({why}): embodied train {' '.join(TINY_TRAIN)} ({took:.0f} s)"


def build(run: Path, source: str, out_dir: Path) -> tuple[ExportedPolicy, np.ndarray, dict[str, Any]]:
    """Export a run's latest policy into out_dir; returns it and 200 real observations (200, D)."""
    if not (run / "config.yaml").is_file():
        raise SystemExit(f"error: {run} is not a run directory (no config.yaml)")
    cfg = OmegaConf.load(run / "config.yaml")
    env = build_env(cfg, num_envs=4)
    ac, ckpt = load_policy(run, cfg, env, None)
    offset, scale = env.action_affine()
    policy = ExportedPolicy.from_policy(ac, offset, scale, env.filters)
    manifest = deploy_manifest(OmegaConf.to_container(cfg.task, resolve=True), env, policy)
    obs = record_observations(env, ac, steps=50)
    env.close()
    diffs = export_policy(policy, out_dir, manifest, {"recorded": obs})
    sizes = [m.out_features for m in policy.actor.modules() if isinstance(m, torch.nn.Linear)]
    info = {"source": source, "iteration": ckpt["iteration"], "layers": [policy.obs_dim, *sizes]}
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
    p.add_argument("--run", default=None, help="a trained run directory (default: see above)")
    p.add_argument("--fresh", action="store_true", help="train the tiny policy even if runs/ has one")
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
        run, source = choose_run(a.run, a.fresh, Path(tmp))
        policy, obs, info = build(run, source, Path(tmp) / "exported")
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
