"""Does data-parallel training learn to walk as well as one process? go2_velocity, 1 and 2 ranks.

    python benchmarks/distributed_walking.py [--root runs/bench_distributed_walking] [--seed 1]

Two full default runs (`make train`'s config: go2_velocity, 400 iterations, the task's 1,024 envs),
one process and ``dist.nproc=2 dist.envs=split`` (gloo; 512 envs per rank, so the same total envs,
iterations and samples). Threads: one process keeps the defaults (``threads.torch=2``, collection
with 1 torch thread and a 2-thread simulator pool); with 2 ranks on C cores each rank gets
``max(1, C // 2)`` of each, so the machine is never oversubscribed. Both runs end with the task's
own evaluation (``eval.json``); the table is ``gait_learning.py``'s, plus each run's wall time.
Exits 1 when either run misses the task's walking thresholds (tracking error and falls) or never
reaches the training tracking threshold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gait_learning


def train(nproc: int, root: Path, seed: int, iterations: int | None) -> tuple[Path, float]:
    run = root / f"nproc{nproc}"
    args = [sys.executable, "-m", "embodied", "train", "task=go2_velocity", f"seed={seed}", f"run_dir={run}"]
    if iterations is not None:
        args.append(f"train.max_iterations={iterations}")
    if nproc > 1:
        t = max(1, (os.cpu_count() or 1) // nproc)
        args += [f"dist.nproc={nproc}", "dist.envs=split"]
        args += [f"threads.torch={t}", f"threads.torch_collect={t}", f"sim.nthread={t}"]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return run, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("runs/bench_distributed_walking"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--iterations", type=int, default=None, help="default: the config's (400)")
    a = p.parse_args()
    runs = {k: train(k, a.root, a.seed, a.iterations) for k in (1, 2)}
    for k, (run, wall) in runs.items():
        print(f"{k} process(es): {run}, {wall / 60:.1f} min wall (training, evaluation, video and export)")
    return gait_learning.main([str(run) for run, _ in runs.values()])


if __name__ == "__main__":
    sys.exit(main())
