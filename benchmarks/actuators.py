"""Throughput cost of each actuator model (sim/actuators.py) against the ideal PD servo on go2_velocity.

    python benchmarks/actuators.py [--num-envs 256] [--seconds 10] [--out actuators.json] [--quick]

Env-steps/s of the batched go2_velocity env (MuJoCo, ``--nthread`` native threads, one torch
thread) under uniform random actions, for: ``ideal_pd`` (the MJCF servos in the native step),
``delay`` (2 physics steps; native step, per-substep control sequence), ``dc_motor`` (torch between
the 4 physics substeps) and ``mlp`` (history 4, hidden (64, 32); torch between substeps; its weights
are a fresh initialisation, which costs the same as fitted ones). Each model is timed in turn,
``--repeats`` times interleaved, and the best rate of each is kept (the least disturbed by the
other jobs on the machine).

Exits 1 when a model's slowdown (ideal rate / its rate) exceeds its threshold in ``MAX_SLOWDOWN``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from embodied.registry import make_env
from sim.actuators import MlpActuatorNet, save_mlp_actuator

# ideal rate / model rate. delay stays native (one extra gather per control step); the torque
# models pay decimation one-step rollouts instead of one decimation-step rollout.
MAX_SLOWDOWN = {"ideal_pd": 1.0, "delay": 1.15, "dc_motor": 2.0, "mlp": 2.5}


def models(mlp_path: str) -> dict[str, dict[str, Any]]:
    return {
        "ideal_pd": {"model": "ideal_pd"},
        "delay": {"model": "delay", "delay_steps": 2},
        "dc_motor": {"model": "dc_motor", "tau_stall": 40.0, "w_free": 30.0},
        "mlp": {"model": "mlp", "path": mlp_path},
    }


def env_rate(actuator: dict[str, Any], num_envs: int, nthread: int, seconds: float, warmup_s: float) -> float:
    """Env-steps/s of go2_velocity with ``actuator`` under uniform random actions."""
    env = make_env(
        "go2_velocity", num_envs=num_envs, nthread=nthread, seed=0, overrides={"actuator": actuator}
    )
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    shape = (num_envs, env.action_dim)
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        env.step(torch.rand(shape, generator=gen) * 2 - 1)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.step(torch.rand(shape, generator=gen) * 2 - 1)
        calls += 1
    rate = calls * num_envs / (time.perf_counter() - t0)
    env.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-envs", type=int, default=256)
    p.add_argument("--nthread", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="1 s per model, 16 envs; exit 0 whatever the figures")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.num_envs, a.seconds, a.warmup, a.repeats = 16, 1.0, 0.2, 1
    with tempfile.TemporaryDirectory() as tmp:
        net = MlpActuatorNet(history=4, hidden=(64, 32), num_joints=12)
        mlp_path = str(Path(tmp) / "mlp.pt")
        save_mlp_actuator(mlp_path, net, {"note": "untrained, for timing"})
        best: dict[str, float] = {}
        for _ in range(a.repeats):
            for name, cfg in models(mlp_path).items():
                r = env_rate(cfg, a.num_envs, a.nthread, a.seconds, a.warmup)
                best[name] = max(best.get(name, 0.0), r)
    ideal = best["ideal_pd"]
    rows = []
    for name, rate in best.items():
        slow = ideal / rate
        rows.append(
            {
                "model": name,
                "env_steps_per_s": round(rate),
                "slowdown_vs_ideal": round(slow, 3),
                "max_slowdown": MAX_SLOWDOWN[name],
                "pass": slow <= MAX_SLOWDOWN[name],
            }
        )
    print(f"go2_velocity, {a.num_envs} envs, nthread {a.nthread}, torch threads 1, best of {a.repeats}")
    print("| model | env-steps/s | slowdown vs ideal_pd | max | pass |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['env_steps_per_s']:,} | {r['slowdown_vs_ideal']:.2f}x | "
            f"{r['max_slowdown']}x | {'yes' if r['pass'] else 'NO'} |"
        )
    if a.out:
        a.out.write_text(json.dumps({"args": vars(a) | {"out": str(a.out)}, "rows": rows}, indent=2))
    return 0 if a.quick or all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
