"""Episodes desynchronized at the start: the learning curve before and after ``train.random_episode_start``.

    embodied train task=go2_velocity seed=1 run_dir=runs/go2_default
    embodied train task=go2_velocity seed=1 train.random_episode_start=true run_dir=runs/go2_randstart
    python benchmarks/episode_start.py --before runs/go2_default --after runs/go2_randstart
        [--out episode_start.png]

With every env starting at step 0, all of them time out together every ``episode_length`` steps
(every ``episode_length / num_steps_per_env`` iterations), and the per-step reward of the iteration
that holds the timeout dips: every env restarts from standing. The figure here is the **dip** at
each such boundary: the median per-step reward of the 3 iterations on each side (the boundary's
neighbours excluded) minus the lowest of the boundary iteration and the next one, relative to that
median. Both runs are read at the same boundaries. The plot draws both curves, with the boundaries
marked.

Exits 1 unless the after run's mean dip is at most half the before run's.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import yaml


def step_rewards(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [sum(float(v) for k, v in r.items() if k.startswith("env/reward/") and v) for r in rows]


def boundaries(run: Path, iterations: int) -> list[int]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    task = cfg["task"]
    steps = round(float(task["episode_length_s"]) / (float(task["physics_dt"]) * int(task["decimation"])))
    per_iter = int(cfg["algo"]["num_steps_per_env"])
    out, k = [], 1
    while (k * steps) // per_iter < iterations - 4:
        out.append((k * steps) // per_iter)
        k += 1
    return out


def dips(curve: list[float], at: list[int]) -> list[float]:
    out = []
    for i in at:
        around = curve[i - 4 : i - 1] + curve[i + 3 : i + 6]
        ref = statistics.median(around)
        out.append((ref - min(curve[i], curve[i + 1])) / abs(ref))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--out", default="")
    a = p.parse_args()
    before, after = Path(a.before), Path(a.after)
    cb, ca = step_rewards(before), step_rewards(after)
    n = min(len(cb), len(ca))
    at = [i for i in boundaries(before, n) if i >= 4]
    db, da = dips(cb, at), dips(ca, at)
    mb, ma = statistics.mean(db), statistics.mean(da)
    print(f"{len(at)} timeout boundaries (iterations {at[0]}, {at[1]}, ...)")
    print(f"before ({before}): mean dip {100 * mb:.1f} % of the per-step reward (max {100 * max(db):.1f} %)")
    print(f"after  ({after}): mean dip {100 * ma:.1f} % (max {100 * max(da):.1f} %)")
    ok = ma <= 0.5 * mb
    print("PASS" if ok else "MISS", "(after <= half of before)")
    if a.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.plot(cb[:n], label=f"all envs start at step 0 ({before.name})", lw=1)
        ax.plot(ca[:n], label=f"random episode start ({after.name})", lw=1)
        for i in at:
            ax.axvline(i, color="0.85", lw=0.6, zorder=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel("reward per step (sum of terms)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.out, dpi=120)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
