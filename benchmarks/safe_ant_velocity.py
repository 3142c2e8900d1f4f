"""PPO-Lagrangian against unconstrained PPO on the velocity-constrained ant, on one budget.

    python benchmarks/safe_ant_velocity.py [--iterations 250] [--out runs/bench_safe_ant] [--reuse]
                                            [--parallel] [--lag algo.cost_margin=0.2]

Trains ``task=ant_velocity`` (Safety-Gymnasium's SafetyAntVelocity-v1 constraint: cost 1 on every
step where the torso's planar speed exceeds 2.6222 m/s, 1000-step episodes) twice with the same
seed and budget: ``algo=ppo`` and ``algo=ppo_lagrangian safety.cost_limit=25``. Over the last 10 %
of each run's logged iterations it reads the mean episode cost and return of training episodes
(``train/mean_episode_cost``, ``train/mean_episode_reward`` in metrics.csv) and prints one markdown
row per run, with OmniSafe's published figures as the reference row.

Our returns are gymnasium's Ant-v5 reward paid per second (weight x dt x term, dt = 0.05 s), so
they are 1/20 of Ant-v5's scale; costs are counted per step exactly as Safety-Gymnasium does.

Exits 1 when PPO-Lag's cost is above the limit or its return is below half of PPO's.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

COST_LIMIT = 25.0
OMNISAFE = {"ppo": (5980.0, 960.0), "ppo_lagrangian": (3260.0, 12.0)}  # return, cost at 1e7 steps


def train_args(algo: str, run_dir: Path, iterations: int, seed: int, extra: list[str]) -> list[str]:
    """The `embodied` command line of one run."""
    return [
        "train",
        "task=ant_velocity",
        f"algo={algo}",
        f"seed={seed}",
        f"safety.cost_limit={COST_LIMIT}",
        f"train.max_iterations={iterations}",
        "train.evaluate=false",
        "train.export=false",
        f"run_dir={run_dir}",
        *extra,
    ]


def train(algo: str, run_dir: Path, iterations: int, seed: int, extra: list[str]) -> float:
    """Train one run in this process; returns its wall time in seconds."""
    from embodied.cli import main

    t0 = time.perf_counter()
    code = main(train_args(algo, run_dir, iterations, seed, extra))
    if code:
        raise SystemExit(f"training {algo} failed with exit {code}")
    return time.perf_counter() - t0


def train_parallel(
    runs: dict[str, Path], iterations: int, seed: int, extra: dict[str, list[str]]
) -> dict[str, float]:
    """Both runs at once, one process each (give each 1 thread on 2 cores); wall seconds per run."""
    t0 = time.perf_counter()
    procs = {
        algo: subprocess.Popen(
            [sys.executable, "-m", "embodied", *train_args(algo, d, iterations, seed, extra[algo])],
            stdout=subprocess.DEVNULL,
        )
        for algo, d in runs.items()
    }
    walls = {}
    for algo, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"training {algo} failed with exit {proc.returncode}")
        walls[algo] = time.perf_counter() - t0
    return walls


def tail_means(run_dir: Path, share: float = 0.1) -> dict[str, float]:
    """Means over the last ``share`` of the logged iterations, and the run's total steps."""
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    tail = rows[-max(1, round(share * len(rows))) :]

    def mean(key: str) -> float:
        vals = [float(r[key]) for r in tail if r.get(key) not in (None, "")]
        return sum(vals) / len(vals) if vals else float("nan")

    return {
        "steps": float(rows[-1]["step"]),
        "return": mean("train/mean_episode_reward"),
        "cost": mean("train/mean_episode_cost"),
        "multiplier": mean("safety/lagrange_multiplier"),
        "samples_per_s": mean("perf/samples_per_s"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=250, help="PPO iterations per run (1024 envs x 24)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_safe_ant"))
    ap.add_argument("--reuse", action="store_true", help="read finished runs in --out, train nothing")
    ap.add_argument("--parallel", action="store_true", help="train both runs at once, one process each")
    ap.add_argument(
        "--lag", action="append", default=[], metavar="KEY=VALUE", help="for the PPO-Lag run only (algo.*)"
    )
    ap.add_argument("overrides", nargs="*", help="extra key=value for both runs (threads, num_envs)")
    a = ap.parse_args()
    runs = {algo: a.out / algo for algo in ("ppo", "ppo_lagrangian")}
    extra = {"ppo": a.overrides, "ppo_lagrangian": [*a.overrides, *a.lag]}
    walls: dict[str, float] = {}
    if a.parallel and not a.reuse:
        walls = train_parallel(runs, a.iterations, a.seed, extra)
    elif not a.reuse:
        walls = {algo: train(algo, d, a.iterations, a.seed, extra[algo]) for algo, d in runs.items()}
    figures = {algo: tail_means(d) for algo, d in runs.items()}
    ppo, lag = figures["ppo"], figures["ppo_lagrangian"]
    print("| algorithm | steps | return (last 10 %) | episode cost (last 10 %) | multiplier | wall |")
    print("|---|---|---|---|---|---|")
    for algo, f in figures.items():
        wall = f"{walls[algo] / 60:.1f} min" if algo in walls else "-"
        mult = "-" if f["multiplier"] != f["multiplier"] else f"{f['multiplier']:.2f}"
        print(
            f"| {algo} | {f['steps'] / 1e6:.2f} M | {f['return']:.1f} | {f['cost']:.1f} | {mult} | {wall} |"
        )
    for algo, (ret, cost) in OMNISAFE.items():
        print(f"| OmniSafe {algo} (reference, Ant-v5 reward scale) | 10 M | {ret:.0f} | {cost:.0f} | - | - |")
    ratio = lag["return"] / ppo["return"] if ppo["return"] > 0 else float("nan")
    ok_cost = lag["cost"] <= COST_LIMIT
    ok_ret = ratio >= 0.5
    print(f"{'PASS' if ok_cost else 'FAIL'}  PPO-Lag episode cost {lag['cost']:.1f} (need <= {COST_LIMIT:g})")
    print(f"{'PASS' if ok_ret else 'FAIL'}  PPO-Lag return / PPO return {ratio:.2f} (need >= 0.5)")
    print(f"      unconstrained PPO's episode cost on the same budget: {ppo['cost']:.1f}")
    return 0 if ok_cost and ok_ret else 1


if __name__ == "__main__":
    sys.exit(main())
