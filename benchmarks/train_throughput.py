"""PPO end-to-end samples/s (collection plus update), all in one run: our PPO on ant and
go2_velocity, SB3 PPO on gymnasium's Ant-v5 (made to do our ant task's work, see
env_throughput.GYM_ANT_KWARGS) and (through our SB3 adapter) on go2_velocity, and go2_velocity's own
random-action env rate at the same N and thread settings. Exits 1 when a ratio misses its threshold.

    python benchmarks/train_throughput.py [--num-envs 1024] [--iterations 10] [--out train.json] [--quick]

Our PPO is timed by the real training loop, ``embodied.runner.Runner``, built from the config as
``embodied train`` builds it: its per-iteration ``perf/samples_per_s``,
``perf/collection_samples_per_s`` and ``perf/update_s`` are the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from functools import partial
from typing import Any

import torch
from env_throughput import (
    GYM_ANT_KWARGS,
    batched_rate,
    command_line,
    exit_code,
    machine_info,
    markdown_table,
    report,
    thread_info,
    verdict,
    write_json,
)

from embodied.cli import compose
from embodied.runner import Runner
from embodied.workflow import build_algo, build_env, build_policy, checkpoint_meta, set_threads

MIN_VS_SB3 = 5.0  # ours(ant) / SB3(Ant-v5)
MIN_VS_RAW = 0.60  # our PPO on go2_velocity / that env's random-action rate


class _StatsLogger:
    """Stands in for RunLogger: keeps each iteration's scalars in memory, writes nothing."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.rows.append({"step": step, **scalars})

    def close(self) -> None:
        pass


def ours_ppo(task: str, num_envs: int, iterations: int, overrides: list[str]) -> dict[str, Any]:
    """``embodied.runner.Runner`` for 1 warm-up plus ``iterations`` timed iterations, built as
    ``embodied train`` builds it; the figures are the Runner's own per-iteration ``perf/*`` stats.

    samples/s = samples of the timed iterations / their summed wall time (collection + update)."""
    cfg = compose([f"task={task}", f"num_envs={num_envs}", *overrides])
    set_threads(cfg)
    torch.manual_seed(int(cfg.seed))
    env = build_env(cfg)
    alg = build_algo(cfg, env, build_policy(cfg, env))
    logger = _StatsLogger()
    seen: list[tuple[int, dict[str, float]]] = []
    collect_threads = int(cfg.threads.get("torch_collect", cfg.threads.torch))
    with tempfile.TemporaryDirectory() as run_dir:  # the Runner checkpoints its last iteration here
        runner = Runner(
            env,
            alg,
            logger,
            run_dir,
            checkpoint_meta=checkpoint_meta(cfg, env),
            save_interval=iterations + 1,
            collect_threads=collect_threads,
            on_iteration=lambda it, stats: seen.append((it, dict(stats))),
        )
        runner.learn(iterations + 1)
    env.close()
    timed = [stats for it, stats in seen if it > 1]  # iteration 1 is the warm-up
    if len(timed) != iterations:
        raise RuntimeError(f"the Runner reported {len(seen)} iterations, expected {iterations + 1}")
    per_iter = alg.num_steps_per_env * num_envs
    wall = sum(per_iter / st["perf/samples_per_s"] for st in timed)
    collect = sum(per_iter / st["perf/collection_samples_per_s"] for st in timed)
    return {
        "samples_per_s": iterations * per_iter / wall,
        "collection_samples_per_s": iterations * per_iter / collect,
        "update_s_per_iteration": sum(st["perf/update_s"] for st in timed) / iterations,
        "num_envs": num_envs,
        "num_steps_per_env": alg.num_steps_per_env,
        "iterations": iterations,
        "torch_threads": int(cfg.threads.torch),
        "torch_collect_threads": collect_threads,
        "sim_nthread": int(cfg.sim.nthread),
        "timed_by": "embodied.runner.Runner perf/* stats",
    }


def raw_rate(task: str, num_envs: int, seconds: float, warmup_s: float, overrides: list[str]) -> float:
    """The task's random-action env-steps/s under the same config threads as ``ours_ppo``."""
    cfg = compose([f"task={task}", f"num_envs={num_envs}", *overrides])
    set_threads(cfg)
    return batched_rate(task, num_envs, int(cfg.sim.nthread), seconds, warmup_s, seed=int(cfg.seed))


def sb3_ppo(make_venv: Any, n_steps: int, updates: int, torch_threads: int) -> dict[str, Any]:
    """SB3 PPO (MlpPolicy, defaults except n_steps): 1 warm-up rollout+update, then ``updates`` timed.

    fps = timesteps of the timed ``learn`` / its wall time; model construction is not timed."""
    from stable_baselines3 import PPO as SB3PPO

    torch.set_num_threads(torch_threads)
    venv = make_venv()
    model = SB3PPO("MlpPolicy", venv, n_steps=n_steps, device="cpu", seed=0, verbose=0)
    model.learn(n_steps * venv.num_envs)
    start = model.num_timesteps
    t0 = time.perf_counter()
    model.learn(updates * n_steps * venv.num_envs, reset_num_timesteps=False)
    wall = time.perf_counter() - t0
    venv.close()
    done = model.num_timesteps - start
    return {"samples_per_s": done / wall, "timesteps": done, "num_envs": venv.num_envs, "n_steps": n_steps}


def gym_ant_venv(num_envs: int) -> Any:
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([partial(gym.make, "Ant-v5", **GYM_ANT_KWARGS) for _ in range(num_envs)])


def adapter_available() -> bool:
    try:
        return importlib.util.find_spec("embodied.adapters.sb3") is not None
    except ModuleNotFoundError:  # embodied.adapters itself is missing
        return False


def adapter_venv(task: str, num_envs: int) -> Any:
    from embodied.adapters.sb3 import make_sb3_vec_env

    return make_sb3_vec_env(task, num_envs, seed=0, nthread=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=None, help="N of our go2_velocity runs (default 1024)")
    p.add_argument(
        "--ant-num-envs",
        type=int,
        default=None,
        help="N of our ant run (default 4096, env_throughput's best)",
    )
    p.add_argument(
        "--iterations", type=int, default=None, help="timed PPO iterations after 1 warm-up (default 10)"
    )
    p.add_argument("--sb3-envs", type=int, default=8, help="envs in SB3's vec envs")
    p.add_argument(
        "--sb3-n-steps",
        type=int,
        default=None,
        help="SB3 n_steps per env per rollout (default 2048, SB3's own)",
    )
    p.add_argument(
        "--sb3-updates", type=int, default=None, help="timed SB3 rollout+update cycles (default 2)"
    )
    p.add_argument(
        "--sb3-torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads during SB3 runs (1 measured faster than 2 for its batch of 64)",
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="timed seconds of the raw-rate run (default 10)"
    )
    p.add_argument(
        "--override", action="append", default=[], help="extra config override for our runs (repeat)"
    )
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes and durations: a smoke test")
    a = p.parse_args(argv)
    n = a.num_envs or (64 if a.quick else 1024)
    n_ant = a.ant_num_envs or (64 if a.quick else 4096)
    iters = a.iterations or (1 if a.quick else 10)
    n_steps = a.sb3_n_steps or (16 if a.quick else 2048)
    sb3_updates = a.sb3_updates or (1 if a.quick else 2)
    secs = a.seconds or (0.5 if a.quick else 10.0)
    warm = 0.2 if a.quick else 2.0

    cfg = compose(["task=ant", *a.override])
    set_threads(cfg)  # fixes the inter-op pool at 1 before any parallel torch work
    sb3_threads = {"torch_threads": a.sb3_torch_threads, "device": "cpu", "adapter_sim_nthread": 1}
    threads = thread_info(ours_torch_threads=int(cfg.threads.torch), ours_sim_nthread=int(cfg.sim.nthread))
    threads.pop("torch_threads")
    threads.update({f"sb3_{k}": v for k, v in sb3_threads.items()}, sb3_vec_env="one thread")
    settings = {
        "num_envs": n,
        "ant_num_envs": n_ant,
        "iterations": iters,
        "sb3_envs": a.sb3_envs,
        "sb3_n_steps": n_steps,
    }
    settings.update(sb3_updates=sb3_updates, raw_seconds=secs, raw_warmup_s=warm)
    header = {"command": command_line(__file__, argv), "machine": machine_info(), "threads": threads}
    header.update(settings=settings, quick=a.quick)
    import stable_baselines3

    header["machine"]["stable_baselines3"] = stable_baselines3.__version__

    ant = ours_ppo("ant", n_ant, iters, a.override)
    go2 = ours_ppo("go2_velocity", n, iters, a.override)
    go2_raw = raw_rate("go2_velocity", n, secs, warm, a.override)
    sb3_ant = sb3_ppo(partial(gym_ant_venv, a.sb3_envs), n_steps, sb3_updates, a.sb3_torch_threads)
    sb3_go2: dict[str, Any] | None = None
    sb3_go2_note = "" if adapter_available() else "skipped: embodied/adapters/sb3.py does not exist yet"
    if sb3_go2_note:
        print(f"SB3 PPO on go2_velocity {sb3_go2_note}", file=sys.stderr)
    else:
        venv = partial(adapter_venv, "go2_velocity", a.sb3_envs)
        sb3_go2 = sb3_ppo(venv, n_steps, sb3_updates, a.sb3_torch_threads)

    def ours_row(task: str, r: dict[str, Any]) -> list[Any]:
        setting = f"N={r['num_envs']}, T={r['num_steps_per_env']}, K={iters}"
        return ["our PPO", task, setting, r["samples_per_s"], r["collection_samples_per_s"]]

    sb3_setting = f"{a.sb3_envs} envs, n_steps={n_steps}"
    rows = [
        ours_row("ant", ant),
        ["SB3 PPO, DummyVecEnv", "Ant-v5, same work", sb3_setting, sb3_ant["samples_per_s"], ""],
        ours_row("go2_velocity", go2),
        ["env only, random actions", "go2_velocity", f"N={n}", go2_raw, ""],
        ["SB3 PPO, our SB3 adapter", "go2_velocity", sb3_setting, (sb3_go2 or {}).get("samples_per_s", "-")],
    ]
    rows[-1].append(sb3_go2_note)
    table = markdown_table(["run", "task", "setting", "samples/s", "collection samples/s"], rows)
    criteria = [
        verdict(
            "ours PPO(ant) / SB3 PPO(Ant-v5)", ant["samples_per_s"] / sb3_ant["samples_per_s"], MIN_VS_SB3
        ),
        verdict("ours PPO(go2_velocity) / go2_velocity env rate", go2["samples_per_s"] / go2_raw, MIN_VS_RAW),
    ]
    report("PPO training throughput (collection + update)", header, table, criteria)
    results = {
        "ours_ant": ant,
        "ours_go2_velocity": go2,
        "go2_velocity_env_steps_per_s": go2_raw,
        "sb3_ant_v5": sb3_ant,
        "sb3_go2_velocity": sb3_go2 or sb3_go2_note,
    }
    write_json(a.out, {**header, "args": vars(a), "results": results, "criteria": criteria})
    return exit_code(criteria, a.quick)


if __name__ == "__main__":
    sys.exit(main())
