"""Samples/s of data-parallel training with 1 and 2 processes (torch.distributed), same total envs.

    python benchmarks/distributed_scaling.py [--task go2_velocity] [--iterations 12] [--gpu]

Each setting is a real `embodied train ... dist.nproc=K dist.envs=split` run (gloo on CPU; with
``--gpu``, ``device=cuda`` and NCCL, one GPU per rank), timed through the Runner's
``perf/samples_per_s`` (every rank's envs counted), skipping the first two iterations (warm-up).
Threads: with K processes on C cores each rank gets ``threads.torch = threads.torch_collect =
sim.nthread = max(1, C // K)``, so the machine is never oversubscribed. Exits 1 when 2 processes are
slower than ``--min-ratio`` times 1 process.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path


def measure(task: str, nproc: int, iterations: int, num_envs: int, root: Path, gpu: bool) -> float:
    cores = os.cpu_count() or 1
    threads = max(1, cores // nproc)
    run = root / f"nproc{nproc}"
    args = [
        sys.executable,
        "-m",
        "embodied",
        "train",
        f"task={task}",
        f"dist.nproc={nproc}",
        "dist.envs=split",
        f"num_envs={num_envs}",
        f"train.max_iterations={iterations}",
        "train.evaluate=false",
        "train.export=false",
        f"threads.torch={threads}",
        f"threads.torch_collect={threads}",
        f"sim.nthread={threads}",
        f"train.save_interval={iterations}",
        f"run_dir={run}",
    ]
    if gpu:
        args.append("device=cuda")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))[2:]
    seconds_per_sample = sum(1.0 / float(r["perf/samples_per_s"]) for r in rows)
    return len(rows) / seconds_per_sample


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="go2_velocity")
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--num-envs", type=int, default=1024)
    p.add_argument("--root", type=Path, default=Path("runs/bench_distributed_scaling"))
    p.add_argument("--gpu", action="store_true", help="device=cuda, NCCL, one GPU per rank")
    p.add_argument("--min-ratio", type=float, default=0.8)
    a = p.parse_args()
    if a.gpu:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
            print("no GPU figure measured: --gpu needs 2 CUDA devices", file=sys.stderr)
            return 1
    sps = {k: measure(a.task, k, a.iterations, a.num_envs, a.root, a.gpu) for k in (1, 2)}
    cores = os.cpu_count() or 1
    print(f"{a.task}, {a.num_envs} envs in total, {a.iterations} iterations ({'cuda' if a.gpu else 'cpu'})")
    print("| processes | threads per rank (torch, collect, sim) | samples/s | vs 1 process |")
    print("|---|---|---|---|")
    for k, v in sps.items():
        t = max(1, cores // k)
        print(f"| {k} | {t}, {t}, {t} | {v:,.0f} | {v / sps[1]:.2f}x |")
    ok = sps[2] >= a.min_ratio * sps[1]
    if not ok:
        print(f"FAIL: 2 processes at {sps[2] / sps[1]:.2f}x of 1 (threshold {a.min_ratio})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
