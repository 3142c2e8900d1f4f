"""Learning figures of trained go2_velocity runs: tracking, falls, gait and time to learn.

    python benchmarks/gait_learning.py RUN [RUN ...] [--threshold 0.15] [--episodes 64]

For each run directory (as ``make train`` leaves it) this prints one markdown row:
- tracking error and fall rate from the run's ``eval.json`` (``embodied eval``; forward commands
  0-1 m/s, evaluation seed 12345), checked against the task's ``eval`` thresholds;
- the mean air time at touchdown: every foot landing during one evaluation episode per env (same
  commands and seed), the time that foot was airborne, read from the env's trackers;
- when training first reached a mean episode tracking error (``episode/lin_vel_error`` in
  metrics.csv, on the training command distribution) at or below ``--threshold``: the iteration,
  the samples and the wall time since the first logged iteration (TensorBoard event wall times).

Exits 1 when a run misses its eval thresholds or never reaches ``--threshold``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from embodied.workflow import build_env, load_policy, load_run, set_threads


@torch.no_grad()
def air_time_at_touchdown(run_dir: Path, episodes: int, seed: int = 12345) -> tuple[float, int]:
    """(mean airborne seconds of a foot before it lands, number of landings) over one episode per env."""
    run_dir, cfg = load_run(str(run_dir))
    set_threads(cfg)
    ev = OmegaConf.to_container(cfg.task.get("eval") or {}, resolve=True)
    env = build_env(cfg, num_envs=episodes, seed=seed)
    env.set_command_ranges(ev["commands"])
    policy, _ = load_policy(run_dir, cfg, env, None)
    obs = env.reset(seed=seed)
    active = torch.ones(episodes, dtype=torch.bool)
    total, landings = 0.0, 0
    for _ in range(env.max_episode_length):
        out = env.step(policy(obs))
        total += float((out.info["metric/touchdown_air_time"] * active).sum())
        landings += int((out.info["metric/touchdowns"] * active).sum())
        active &= ~(out.terminated | out.truncated)
        obs = out.obs
        if not bool(active.any()):
            break
    env.close()
    return total / max(landings, 1), landings


def first_reach(run_dir: Path, threshold: float) -> dict[str, float] | None:
    """The first logged iteration whose episode/lin_vel_error <= threshold, with samples and wall s."""
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    hit = next(
        (
            r
            for r in rows
            if r.get("episode/lin_vel_error") and float(r["episode/lin_vel_error"]) <= threshold
        ),
        None,
    )
    if hit is None:
        return None
    step = int(float(hit["step"]))
    wall = float("nan")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    if "perf/iteration" in events.Tags()["scalars"]:
        pts = events.Scalars("perf/iteration")
        start = pts[0].wall_time
        at = next((p.wall_time for p in pts if p.step >= step), float("nan"))
        wall = at - start
    return {"iteration": float(hit["perf/iteration"]), "samples": float(step), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--threshold", type=float, default=0.15)
    p.add_argument("--episodes", type=int, default=64)
    a = p.parse_args(argv)
    ok = True
    print("| run | tracking error (m/s) | falls | air time at touchdown (s) | reached 0.15 m/s |")
    print("|---|---|---|---|---|")
    for run in a.runs:
        result = json.loads((run / "eval.json").read_text())
        passed = all(result.get("pass", {}).values())
        air, landings = air_time_at_touchdown(run, a.episodes)
        reach = first_reach(run, a.threshold)
        when = (
            "never"
            if reach is None
            else f"iteration {reach['iteration']:.0f} ({reach['samples'] / 1e6:.2f} M samples, "
            f"{reach['wall_s'] / 60:.1f} min)"
        )
        print(
            f"| {run} | {result['lin_vel_error']:.3f} | {100 * result['fall_rate']:.1f} % "
            f"({round(result['fall_rate'] * result['episodes'])}/{result['episodes']}) "
            f"| {air:.3f} ({landings} landings) | {when} |"
        )
        ok &= passed and reach is not None
    if not ok:
        print(
            "FAIL: a run misses its eval thresholds or never reached the tracking threshold", file=sys.stderr
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
