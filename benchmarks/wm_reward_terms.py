"""Reward from the world model's head against the task's own terms evaluated on the predicted state.

    python benchmarks/wm_reward_terms.py [--run runs/<dir>] [--task arm_reach]

Without ``--run`` it trains a short PPO run with replay (256 envs, 30 iterations) and fits the world
model on it (``embodied wm-train``). On held-out episodes it rolls the model open loop with the
recorded actions (elites' mean, no noise) and compares three per-step rewards with the env's:
the reward head, the task's reward terms evaluated on the predicted observation
(embodied/wm_terms.py), and the same terms on the *real* observation (which must reproduce the
env's reward: the check that the terms are computable at all). Exits 1 when that check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from embodied.cli import main as cli
from embodied.wm_terms import rewards_on_prediction
from embodied.workflow import build_env, load_run
from embodied.world_model import load_run_model, run_transitions
from world_models import TransitionBuffer, imagine

HORIZONS = (1, 10, 50)


def prepare(task: str, root: Path) -> Path:
    run = root / f"{task}_replay"
    if not (run / "world_model" / "model.pt").is_file():
        args = [
            "train",
            f"task={task}",
            "num_envs=256",
            "train.max_iterations=30",
            "replay.enabled=true",
            "train.evaluate=false",
            "train.export=false",
            "threads.torch=1",
            "threads.torch_collect=1",
            f"run_dir={run}",
        ]
        if not (run / "replay").is_dir() and cli(args) != 0:
            sys.exit(f"training {task} failed")
        if cli(["wm-train", f"run={run}"]) != 0:
            sys.exit("wm-train failed")
    return run


def rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).pow(2).mean().sqrt())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None)
    p.add_argument("--task", default="arm_reach")
    p.add_argument("--root", type=Path, default=Path("runs/bench_wm_reward_terms"))
    p.add_argument("--windows", type=int, default=2000)
    a = p.parse_args()
    torch.set_num_threads(1)
    run = a.run or prepare(a.task, a.root)
    run_dir, cfg = load_run(str(run))
    env = build_env(cfg, num_envs=1)
    model = load_run_model(run_dir, cfg, env)
    layout = model.layout
    data = run_transitions(run_dir, layout.groups, layout)
    buf = TransitionBuffer(data, float(cfg.world_model.val_fraction), seed=int(cfg.seed))
    critic = layout.group_slice("critic")
    rows, ok = [], True
    for h in HORIZONS:
        w = buf.windows(h, "val", max_windows=a.windows)
        f = imagine(model, w.state[0], w.action, horizon=h, futures=1, noise=False, sample_members=False)
        pred = f.state[:, :, 0]
        before = torch.cat([w.state[:1], pred[:-1]])  # the model's own state before each step
        true_r, head = w.reward[-1], f.reward[-1, :, 0]
        terms, used, skipped = rewards_on_prediction(
            env, "critic", before[-1, :, critic], pred[-1, :, critic], w.action[-1]
        )
        real, _, _ = rewards_on_prediction(
            env, "critic", w.state[-1, :, critic], w.next_state[-1, :, critic], w.action[-1]
        )
        check = float((real - true_r).abs().max())
        ok &= check < 1e-4 and not skipped

        rows.append(
            (h, w.reward.shape[1], rmse(head, true_r), rmse(terms, true_r), check, float(true_r.std()))
        )
    print(
        f"task {cfg.task.name}; reward terms used: {', '.join(used)}; "
        f"not computable: {', '.join(skipped) or 'none'}"
    )
    print(
        "| H | windows | reward head RMSE | terms on predicted state RMSE "
        "| terms on real state max error | reward std |"
    )
    print("|---|---|---|---|---|---|")
    for h, m, rh, rt, c, s in rows:
        print(f"| {h} | {m} | {rh:.5f} | {rt:.5f} | {c:.1e} | {s:.5f} |")
    if not ok:
        print("FAIL: the task's reward terms are not all computable from the observation", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
