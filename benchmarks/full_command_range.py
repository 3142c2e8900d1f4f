"""A go2_velocity run on the whole training command range, beside the forward-only walking figure.

    python benchmarks/full_command_range.py RUN [RUN ...] [--episodes 64]

For each run directory: ``embodied.evaluate.evaluate`` with commands drawn from the full training
ranges (vx in [-1, 1] m/s, vy in [-0.5, 0.5] m/s, yaw rate in [-1, 1] rad/s; evaluation seed 12345,
randomization, noise and pushes on, error after the first second), and the mean air time at
touchdown (``gait_learning.air_time_at_touchdown`` on the same commands). One markdown row each,
with the run's forward-only ``eval.json`` beside it, and a diagnostic line: the yaw-rate and
linear errors averaged over 0.5 s windows (what is left once the gait's rocking averages out).

Exits 1 unless every run meets the thresholds: linear-velocity error <= 0.10 m/s, yaw-rate error
<= 0.15 rad/s, falls < 2 %, air time at touchdown >= 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gait_learning

from embodied.evaluate import evaluate
from embodied.workflow import build_env, load_policy, load_run, set_threads

FULL = {"lin_vel_x": [-1.0, 1.0], "lin_vel_y": [-0.5, 0.5], "ang_vel_yaw": [-1.0, 1.0]}
LIMITS = {"lin_vel_error": 0.10, "ang_vel_error": 0.15, "fall_rate": 0.02, "air_time": 0.25}


def full_range(run: Path, episodes: int) -> dict[str, float]:
    run_dir, cfg = load_run(str(run))
    set_threads(cfg)
    env = build_env(cfg, num_envs=episodes, seed=12345)
    env.set_command_ranges(FULL)
    policy, _ = load_policy(run_dir, cfg, env, None)
    result = evaluate(env, policy, seed=12345, warmup_s=float(cfg.task.eval.get("warmup_s", 1.0)))
    env.close()
    original = gait_learning.load_run

    def on_full_range(path: str):
        d, c = original(path)
        c.task.eval.commands = FULL
        return d, c

    gait_learning.load_run = on_full_range
    try:
        air, landings = gait_learning.air_time_at_touchdown(run_dir, episodes)
    finally:
        gait_learning.load_run = original
    return {**result, "air_time": air, "landings": landings}


def oscillation(run: Path, episodes: int, window_s: float = 0.5) -> dict[str, float]:
    """Yaw-rate and linear-velocity errors, instantaneous and averaged over ``window_s``, full range.

    The gait rocks the base every step, so the instantaneous error (what the thresholds read)
    holds the oscillation as well as the tracking; the windowed one is what remains of the
    tracking. Steps before warm-up and after an episode ends are left out.
    """
    run_dir, cfg = load_run(str(run))
    set_threads(cfg)
    env = build_env(cfg, num_envs=episodes, seed=12345)
    env.set_command_ranges(FULL)
    policy, _ = load_policy(run_dir, cfg, env, None)
    obs = env.reset(seed=12345)
    warmup = round(float(cfg.task.eval.get("warmup_s", 1.0)) / env.dt)
    alive = torch.ones(episodes, dtype=torch.bool)
    yaw, lin, live = [], [], []
    for t in range(env.max_episode_length):
        out = env.step(policy(obs))
        obs = out.obs
        alive &= ~out.terminated
        if t >= warmup:
            s = env.state
            yaw.append(s.base_ang_vel[:, 2] - env.command[:, 2])
            lin.append(s.base_lin_vel[:, :2] - env.command[:, :2])
            live.append(alive & ~out.truncated)
        alive &= ~out.truncated
    env.close()
    yaw_e, lin_e, ok = torch.stack(yaw), torch.stack(lin), torch.stack(live).float()
    k = max(1, round(window_s / env.dt))
    full = ok.unfold(0, k, 1).amin(-1)  # windows wholly inside a live episode
    yaw_w = yaw_e.unfold(0, k, 1).mean(-1)
    lin_w = lin_e.unfold(0, k, 1).mean(-1).norm(dim=-1)

    def mean(x: torch.Tensor, m: torch.Tensor) -> float:
        return float((x * m).sum() / m.sum().clamp(min=1))

    n = ok.sum(0).clamp(min=1)  # per env: the yaw rate's spread about its own episode mean
    centre = (yaw_e * ok).sum(0) / n
    spread = (((yaw_e - centre).square() * ok).sum(0) / n).sqrt().mean()
    return {
        "yaw_std": float(spread),
        "yaw_instant": mean(yaw_e.abs(), ok),
        "yaw_window": mean(yaw_w.abs(), full),
        "lin_instant": mean(lin_e.norm(dim=-1), ok),
        "lin_window": mean(lin_w, full),
        "window_s": k * env.dt,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--episodes", type=int, default=64)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    ok = True
    print(
        "| run | commands | lin-vel error (m/s) | yaw-rate error (rad/s) | falls "
        "| air time at touchdown (s) |"
    )
    print("|---|---|---|---|---|---|")
    for run in a.runs:
        fwd = json.loads((run / "eval.json").read_text())
        print(
            f"| {run} | forward 0-1 m/s (eval.json) | {fwd['lin_vel_error']:.3f} "
            f"| {fwd['ang_vel_error']:.3f} | {100 * fwd['fall_rate']:.1f} % | - |"
        )
        r = full_range(run, a.episodes)
        print(
            f"| {run} | full range | {r['lin_vel_error']:.3f} | {r['ang_vel_error']:.3f} "
            f"| {100 * r['fall_rate']:.1f} % ({round(r['fall_rate'] * r['episodes'])}/{r['episodes']}) "
            f"| {r['air_time']:.3f} ({r['landings']} landings) |"
        )
        checks = {
            "lin_vel_error": r["lin_vel_error"] <= LIMITS["lin_vel_error"],
            "ang_vel_error": r["ang_vel_error"] <= LIMITS["ang_vel_error"],
            "fall_rate": r["fall_rate"] < LIMITS["fall_rate"],
            "air_time": r["air_time"] >= LIMITS["air_time"],
        }
        osc = oscillation(run, a.episodes)
        print(
            f"# {run}: yaw-rate error {osc['yaw_instant']:.3f} instantaneous, {osc['yaw_window']:.3f} "
            f"over {osc['window_s']:g} s windows (within-episode std {osc['yaw_std']:.3f}); "
            f"lin-vel {osc['lin_instant']:.3f}, {osc['lin_window']:.3f} (thresholds: instantaneous)"
        )
        for k, passed in checks.items():
            value = r[k]
            print(f"{'PASS' if passed else 'MISS'}  {k} {value:.3f} (limit {LIMITS[k]:g})")
        ok &= all(checks.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
