"""P5: imagined env-steps/s of the world model against the real batched MuJoCo env, in one run.

    python benchmarks/wm_imagination_speed.py [--task go2_velocity] [--starts 1024] [--futures 8]
        [--horizon 50] [--threads 1] [--real-steps 20] [--precision float32] [--out speed.json]

Imagined: ``imagine`` of N start states x K futures over H steps under the task's policy (its
observation read out of the predicted state by ``state_actor``), counted as N*K*H imagined
env-steps, once on the planner fast path (``spread=False``: one member per particle) and once with
the epistemic spread measured (``spread=True``: every member every step). Real: the task's env
stepped with the same batch of N*K envs and the same policy in the loop (and, for reference, at the
task's default batch). The ensemble is configs/world_model/ensemble.yaml's architecture and the
policy configs/policy's, both with fresh weights: speed does not depend on the weights' values.
Torch and the sim pool get the same ``--threads``. The fast path is timed with the ensemble's layers
in float32 and in bfloat16 (states accumulate in float32 either way), and the bfloat16 rollout's
deviation from the float32 one (same noise, same members) is printed beside it, as a share of the
states' change over the horizon.

Exits 1 when imagined (spread=False, at ``--precision``) / real env-steps/s at the same batch is
below 20.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

MIN_RATIO = 20.0


def real_rate(cfg, num_envs: int, steps: int) -> float:
    """Env-steps/s of the task's env with ``num_envs`` envs and the policy in the loop."""
    from embodied.workflow import build_env, build_policy

    env = build_env(cfg, num_envs=num_envs, seed=0)
    policy = build_policy(cfg, env).eval()
    obs = env.reset(seed=0)
    with torch.no_grad():
        for _ in range(3):  # warm-up: first-step allocations
            obs = env.step(policy(obs)).obs
        t0 = time.perf_counter()
        for _ in range(steps):
            obs = env.step(policy(obs)).obs
        dt = time.perf_counter() - t0
    env.close()
    return num_envs * steps / dt


def imagined_rate(
    model, start, actor, horizon: int, futures: int, spread: bool, precision: str = "float32"
) -> float:
    from world_models import imagine

    imagine(model, start, actor, 3, futures, spread=spread, precision=precision)  # warm-up
    t0 = time.perf_counter()
    imagine(model, start, actor, horizon, futures, spread=spread, precision=precision)
    dt = time.perf_counter() - t0
    return start.shape[0] * futures * horizon / dt


def bf16_deviation(model, start, actor, horizon: int, futures: int) -> float:
    """Mean |bfloat16 state - float32 state| over the rollout, / the mean |state change| (same draws)."""
    from world_models import imagine

    runs = [
        imagine(
            model,
            start,
            actor,
            horizon,
            futures,
            spread=False,
            generator=torch.Generator().manual_seed(0),
            precision=p,
        ).state
        for p in ("float32", "bfloat16")
    ]
    change = (runs[0] - start[None, :, None]).abs().mean()
    return float((runs[1] - runs[0]).abs().mean() / change)


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from embodied.cli import compose
    from embodied.workflow import build_env, build_policy, set_threads
    from embodied.world_model import NET_KEYS, state_layout
    from world_models import Ensemble, WorldModel
    from world_models.imagine import state_actor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="go2_velocity")
    ap.add_argument("--starts", type=int, default=1024, help="N start states")
    ap.add_argument("--futures", type=int, default=8, help="K futures per start (>= 8)")
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--real-steps", type=int, default=20)
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="the one checked")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.futures < 8:
        raise SystemExit("--futures must be >= 8")
    t = args.threads
    cfg = compose(
        [f"task={args.task}", f"threads.torch={t}", f"threads.torch_collect={t}", f"sim.nthread={t}"]
    )
    set_threads(cfg)
    wm = OmegaConf.to_container(cfg.world_model, resolve=True)
    n, k, h = args.starts, args.futures, args.horizon
    env = build_env(cfg, num_envs=n, seed=0)
    layout = state_layout(env, [str(g) for g in wm["groups"]])
    ens = Ensemble(layout.dim, env.action_dim, **{key: wm[key] for key in NET_KEYS if key in wm}).eval()
    model = WorldModel(ens, layout, args.task, env.dt)
    policy = build_policy(cfg, env).eval()
    obs = env.reset(seed=0)
    start = torch.cat([obs[g].float() for g in layout.groups], -1)
    actor = state_actor(policy, layout.index_for(env.obs_layout("policy")))
    env.close()
    fast = imagined_rate(model, start, actor, h, k, spread=False)
    fast_bf16 = imagined_rate(model, start, actor, h, k, spread=False, precision="bfloat16")
    full = imagined_rate(model, start, actor, h, k, spread=True)
    deviation = bf16_deviation(model, start, actor, h, k)
    real_same = real_rate(cfg, n * k, args.real_steps)
    default_n = int(cfg.task.num_envs)
    real_default = real_rate(cfg, default_n, args.real_steps)
    ratio = fast / real_same
    ratio_bf16 = fast_bf16 / real_same
    checked = ratio_bf16 if args.precision == "bfloat16" else ratio
    print(f"task {args.task}, N={n} starts x K={k} futures x H={h} steps, {t} thread(s)")
    print("| measurement | batch | env-steps/s | vs real (same batch) |")
    print("|---|---|---|---|")
    print(
        f"| imagined, spread=False (planner fast path) | {n * k} particles | {fast:,.0f} | **{ratio:.1f}x** |"
    )
    print(
        f"| imagined, spread=False, bfloat16 layers | {n * k} particles | {fast_bf16:,.0f} "
        f"| **{ratio_bf16:.1f}x** |"
    )
    print(
        f"| imagined, spread=True (epistemic spread) | {n * k} particles | {full:,.0f} "
        f"| {full / real_same:.1f}x |"
    )
    print(f"| real MuJoCo env | {n * k} envs | {real_same:,.0f} | 1.0x |")
    print(f"| real MuJoCo env (task default batch) | {default_n} envs | {real_default:,.0f} | |")
    print(f"bfloat16 states deviate from float32 by {100 * deviation:.2f} % of their change over H={h}")
    ok = checked >= MIN_RATIO
    print(
        f"\n{'PASS' if ok else 'MISS'}  imagined (spread=False, {args.precision}) / real: {checked:.1f} "
        f"(need >= {MIN_RATIO:g})"
    )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "imagined_fast": fast,
                    "imagined_fast_bfloat16": fast_bf16,
                    "bfloat16_deviation": deviation,
                    "imagined_spread": full,
                    "real_same_batch": real_same,
                    "real_default_batch": real_default,
                    "ratio": ratio,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.exit(main())
