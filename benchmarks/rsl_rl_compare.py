"""Our PPO against rsl_rl's PPO on the same env, config, seed and sample budget, in one script.

    python benchmarks/rsl_rl_compare.py [--task go2_velocity] [--iterations 150] [--seed 1]

Both train ``task`` through the same BatchedEnv (rsl_rl through embodied.adapters.rsl_rl), with the
same hyperparameters (configs/algo/ppo.yaml, mirrored by ``default_train_cfg``), the same network
sizes (configs/policy/mlp.yaml), the same number of envs and iterations. Both policies are then
evaluated by the same ``embodied.evaluate.evaluate`` on the task's eval settings (eval seed 12345).
Reported: samples/s of training, the task's tracking errors and the fall rate. Exits 1 when our
samples/s is below ``--min-speed-ratio`` of rsl_rl's or our linear-velocity tracking error is more
than ``--max-error-ratio`` of rsl_rl's.

Thread use: our Runner uses ``threads.torch_collect`` (1) while collecting and ``threads.torch`` (2)
while updating; rsl_rl's runner has no such switch, so it runs with ``threads.torch`` throughout.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from embodied.cli import compose, run_eval
from embodied.cli import main as cli
from embodied.evaluate import evaluate
from embodied.workflow import build_env


def train_ours(task: str, iterations: int, seed: int, root: Path) -> tuple[Path, float, float]:
    run = root / "ours"
    args = [
        "train",
        f"task={task}",
        f"seed={seed}",
        f"train.max_iterations={iterations}",
        "train.video=false",
        "train.export=false",
        "train.evaluate=false",
        f"run_dir={run}",
    ]
    t0 = time.perf_counter()
    if cli(args) != 0:
        sys.exit("our PPO run failed")
    wall = time.perf_counter() - t0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # Every iteration collects the same samples: total samples over total time is the harmonic mean.
    seconds_per_sample = sum(1.0 / float(r["perf/samples_per_s"]) for r in rows)
    return run, len(rows) / seconds_per_sample, wall


def train_rsl(task: str, iterations: int, seed: int, root: Path) -> tuple[object, float, float]:
    from rsl_rl.runners import OnPolicyRunner

    from embodied.adapters.rsl_rl import RslRlVecEnv, default_train_cfg

    cfg = compose([f"task={task}", f"seed={seed}"])
    torch.set_num_threads(int(cfg.threads.torch))
    torch.manual_seed(seed)
    env = RslRlVecEnv(build_env(cfg), OmegaConf.to_container(cfg.task, resolve=True))
    hidden = tuple(int(h) for h in cfg.policy.actor_hidden_dims)
    train_cfg = default_train_cfg(int(cfg.algo.num_steps_per_env), hidden, save_interval=iterations)
    train_cfg["seed"] = seed
    runner = OnPolicyRunner(env, train_cfg, log_dir=str(root / "rsl_rl"), device=str(cfg.device))
    t0 = time.perf_counter()
    runner.learn(num_learning_iterations=iterations)
    wall = time.perf_counter() - t0
    samples = iterations * int(cfg.algo.num_steps_per_env) * env.num_envs
    policy = runner.get_inference_policy(device=str(cfg.device))
    env.close()
    return policy, samples / wall, wall


def evaluate_rsl(task: str, seed: int, policy) -> dict:
    from tensordict import TensorDict

    cfg = compose([f"task={task}", f"seed={seed}"])
    ev = OmegaConf.to_container(cfg.task.get("eval") or {}, resolve=True)
    env = build_env(cfg, num_envs=int(ev.get("num_envs", 32)), seed=12345)
    if "commands" in ev and hasattr(env, "set_command_ranges"):
        env.set_command_ranges(ev["commands"])

    def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        td = TensorDict({g: obs[g] for g in ("policy", "critic")}, batch_size=[env.num_envs])
        return policy(td)

    result = evaluate(env, act, seed=12345, warmup_s=float(ev.get("warmup_s", 0.0)))
    env.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="go2_velocity")
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--root", type=Path, default=Path("runs/bench_rsl_rl_compare"))
    p.add_argument("--min-speed-ratio", type=float, default=0.8)
    p.add_argument("--max-error-ratio", type=float, default=1.5)
    a = p.parse_args()
    run, ours_sps, ours_wall = train_ours(a.task, a.iterations, a.seed, a.root)
    cfg = compose([f"task={a.task}"])
    ours = run_eval(run, OmegaConf.load(run / "config.yaml"))
    policy, rsl_sps, rsl_wall = train_rsl(a.task, a.iterations, a.seed, a.root)
    rsl = evaluate_rsl(a.task, a.seed, policy)
    keys = [k for k in ours if k.endswith("_error") or k in ("fall_rate", "mean_return")]
    print(f"{a.task}, {a.iterations} iterations, seed {a.seed}, {cfg.task.num_envs} envs")
    print("| | samples/s | training wall s | " + " | ".join(keys) + " |")
    print("|---" * (3 + len(keys)) + "|")
    for name, sps, wall, res in (("ours", ours_sps, ours_wall, ours), ("rsl_rl", rsl_sps, rsl_wall, rsl)):
        print(f"| {name} | {sps:,.0f} | {wall:.0f} | " + " | ".join(f"{res[k]:.4f}" for k in keys) + " |")
    speed = ours_sps / rsl_sps
    err_key = next((k for k in keys if "lin_vel" in k), keys[0])
    err = ours[err_key] / max(rsl[err_key], 1e-9)
    print(f"speed ratio (ours / rsl_rl) {speed:.2f}; {err_key} ratio {err:.2f}")
    ok = speed >= a.min_speed_ratio and err <= a.max_error_ratio
    if not ok:
        print("FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
