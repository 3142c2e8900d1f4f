"""Env throughput on gymnasium's ant.xml at frame skip 5: raw MuJoCo ceiling, gymnasium's
SyncVectorEnv(8) of Ant-v5, and our batched env, all in one run; plus go2_velocity's raw rate.

    python benchmarks/env_throughput.py [--num-envs 256 1024 4096] [--out env.json] [--quick]

Env-steps/s counts every env's control step (a batch of N envs stepped once is N env-steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from embodied.registry import make_env

FRAME_SKIP = 5
MIN_VS_GYM = 2.5  # ours / SyncVectorEnv(8)
MIN_VS_CEILING = 0.85  # ours / (nthread * single-thread mj_step rate / frame skip)


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run; paths relative to the cwd when inside it."""
    rel = [os.path.relpath(x) if x.startswith(os.getcwd()) else x for x in (sys.executable, script)]
    return shlex.join([*rel, *(sys.argv[1:] if argv is None else argv)])


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load and library versions, so a figure can be judged by where it ran."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_avg_1min_at_start"] = round(os.getloadavg()[0], 2)
    import gymnasium

    info.update(torch=torch.__version__, mujoco=mujoco.__version__, gymnasium=gymnasium.__version__)
    info["numpy"] = np.__version__
    return info


def thread_info(**extra: Any) -> dict[str, Any]:
    """Torch and BLAS thread settings in effect, plus whatever the caller adds."""
    env = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")
        if k in os.environ
    }
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        **env,
        **extra,
    }


def timed_rate(step: Callable[[], None], items_per_call: int, seconds: float, warmup_s: float) -> float:
    """Calls ``step`` for ``warmup_s``, then for at least ``seconds``; returns items per second."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        step()
    calls, t0 = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return calls * items_per_call / elapsed


def raw_mj_step_rate(seconds: float, warmup_s: float, seed: int = 0) -> float:
    """Single-thread physics steps/s of ant.xml under random controls held for FRAME_SKIP steps.

    Each 1000 control steps (an Ant-v5 episode) the state goes back to qpos0 plus noise, so
    contact-rich standing states dominate as they do in the batched env."""
    import gymnasium.envs.mujoco as gym_mujoco

    m = mujoco.MjModel.from_xml_path(str(Path(gym_mujoco.__file__).parent / "assets" / "ant.xml"))
    d = mujoco.MjData(m)
    rng = np.random.default_rng(seed)
    lo, hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
    ctrls = rng.uniform(lo, hi, size=(1000, m.nu))
    k = [0]

    def step() -> None:
        i = k[0] % 1000
        if i == 0:
            mujoco.mj_resetData(m, d)
            d.qpos[:] = m.qpos0 + rng.uniform(-0.1, 0.1, m.nq)
        d.ctrl[:] = ctrls[i]
        mujoco.mj_step(m, d, nstep=FRAME_SKIP)
        k[0] += 1

    return timed_rate(step, FRAME_SKIP, seconds, warmup_s)


def gym_sync_rate(num_envs: int, seconds: float, warmup_s: float, seed: int = 0) -> float:
    """Env-steps/s of gymnasium's Ant-v5 (defaults: ant.xml, frame skip 5) in a SyncVectorEnv."""
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([partial(gym.make, "Ant-v5") for _ in range(num_envs)])
    envs.reset(seed=seed)
    space = envs.action_space
    rng = np.random.default_rng(seed)
    rate = timed_rate(lambda: envs.step(rng.uniform(space.low, space.high)), num_envs, seconds, warmup_s)
    envs.close()
    return rate


def batched_rate(
    task: str, num_envs: int, nthread: int, seconds: float, warmup_s: float, seed: int = 0
) -> float:
    """Env-steps/s of our batched env under uniform random actions in [-1, 1]."""
    env = make_env(task, num_envs=num_envs, nthread=nthread, seed=seed)
    env.reset()
    gen = torch.Generator().manual_seed(seed)
    shape = (num_envs, env.action_dim)
    rate = timed_rate(lambda: env.step(torch.rand(shape, generator=gen) * 2 - 1), num_envs, seconds, warmup_s)
    env.close()
    return rate


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    fmt = [[f"{c:,.0f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in fmt])


def verdict(name: str, value: float, threshold: float) -> dict[str, Any]:
    return {"criterion": name, "value": round(value, 3), "threshold": threshold, "pass": value >= threshold}


def report(title: str, header: dict[str, Any], table: str, criteria: list[dict[str, Any]]) -> None:
    """Prints the command, machine, threads, results table and PASS/FAIL lines."""
    print(f"# {title}\n\ncommand: `{header['command']}`")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in header["machine"].items()))
    print("threads: " + ", ".join(f"{k}={v}" for k, v in header["threads"].items()))
    print("settings: " + ", ".join(f"{k}={v}" for k, v in header["settings"].items()))
    if header.get("quick"):
        print("quick mode: smoke test only, the figures are not meaningful")
    print("\n" + table + "\n")
    for c in criteria:
        mark = "PASS" if c["pass"] else "FAIL"
        print(f"{mark}  {c['criterion']}: {c['value']:.3g} (need >= {c['threshold']})")


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--num-envs", type=int, nargs="+", default=None, help="our env's N (default 256 1024 4096)"
    )
    p.add_argument("--go2-num-envs", type=int, default=None, help="N for go2_velocity's row (default 1024)")
    p.add_argument("--gym-envs", type=int, default=8, help="envs in gymnasium's SyncVectorEnv")
    p.add_argument("--nthread", type=int, default=2, help="sim threads of our env and of the ceiling")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 10)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per measurement (default 2)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes and durations: a smoke test")
    a = p.parse_args(argv)
    sizes = a.num_envs or ([32, 128] if a.quick else [256, 1024, 4096])
    go2_n = a.go2_num_envs or (128 if a.quick else 1024)
    secs = a.seconds or (0.5 if a.quick else 10.0)
    warm = a.warmup if a.warmup is not None else (0.2 if a.quick else 2.0)

    # The sim steps in its own native threads; torch only does O(1)-per-step tensor glue here.
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    header = {
        "command": command_line(__file__, argv),
        "machine": machine_info(),
        "quick": a.quick,
        "settings": {"num_envs": sizes, "go2_num_envs": go2_n, "seconds": secs, "warmup_s": warm},
        "threads": thread_info(sim_nthread=a.nthread, mj_step_ceiling_threads=1, gym_sync_threads=1),
    }

    physics = raw_mj_step_rate(secs, warm)
    ceiling = a.nthread * physics / FRAME_SKIP
    gym_rate = gym_sync_rate(a.gym_envs, secs, warm)
    ours = {n: batched_rate("ant", n, a.nthread, secs, warm) for n in sizes}
    go2 = batched_rate("go2_velocity", go2_n, a.nthread, secs, warm)
    best_n = max(ours, key=ours.get)

    rows = [
        ["raw mj_step, 1 thread", "ant.xml", f"{physics:,.0f} physics steps/s", "", ""],
        [f"ceiling = {a.nthread} x rate / {FRAME_SKIP}", "ant.xml", ceiling, "", "1.00"],
        [f"gymnasium SyncVectorEnv({a.gym_envs})", "Ant-v5", gym_rate, "1.00", f"{gym_rate / ceiling:.2f}"],
        *[
            [
                f"ours make_env N={n}, nthread={a.nthread}",
                "ant",
                r,
                f"{r / gym_rate:.2f}",
                f"{r / ceiling:.2f}",
            ]
            for n, r in ours.items()
        ],
        [f"ours make_env N={go2_n}, nthread={a.nthread}", "go2_velocity", go2, "", ""],
    ]
    table = markdown_table(["measurement", "model", "env-steps/s", "vs gym sync", "vs ceiling"], rows)
    criteria = [
        verdict(f"ours(N={best_n}) / SyncVectorEnv({a.gym_envs})", ours[best_n] / gym_rate, MIN_VS_GYM),
        verdict(f"ours(N={best_n}) / raw ceiling", ours[best_n] / ceiling, MIN_VS_CEILING),
    ]
    report("Env throughput (random actions)", header, table, criteria)
    results = {
        "mj_step_physics_steps_per_s": physics,
        "ceiling_env_steps_per_s": ceiling,
        "gym_sync_env_steps_per_s": gym_rate,
        "ours_ant_env_steps_per_s": {str(n): r for n, r in ours.items()},
        "go2_velocity_env_steps_per_s": {str(go2_n): go2},
        "best_num_envs": best_n,
    }
    write_json(a.out, {**header, "args": vars(a), "results": results, "criteria": criteria})
    return 0


if __name__ == "__main__":
    sys.exit(main())
