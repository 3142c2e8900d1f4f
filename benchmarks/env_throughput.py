"""Env throughput on gymnasium's ant.xml at frame skip 5, all in one run: the measured ceiling
(the raw model stepped by ``mujoco.rollout`` in the same native threads, no observation work),
gymnasium's SyncVectorEnv(8) of Ant-v5 set up to do the same work as our ``ant`` task, and our
batched env; plus go2_velocity's rate. Exits 1 when a ratio misses its threshold.

    python benchmarks/env_throughput.py [--num-envs 256 1024 4096] [--out env.json] [--quick]

Env-steps/s counts every env's control step (a batch of N envs stepped once is N env-steps).
Same work: our ``ant`` observes qpos without x, y and qvel (27 values) and has no contact cost, so
Ant-v5 is made with ``include_cfrc_ext_in_observation=False`` (27 values) and
``contact_cost_weight=0``, and its other reward options are set to our weights (forward velocity 1,
healthy 1, control 0.5). What no option removes: gymnasium still calls ``mj_rnePostConstraint``
after every step, and it pays its episode bookkeeping in Python per env.
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
MIN_VS_CEILING = 0.85  # ours / the raw model's mujoco.rollout rate in the same threads
# Ant-v5 doing our ant task's work: its 27-value observation, its reward terms and weights.
GYM_ANT_KWARGS: dict[str, Any] = {
    "include_cfrc_ext_in_observation": False,
    "contact_cost_weight": 0.0,
    "forward_reward_weight": 1.0,
    "ctrl_cost_weight": 0.5,
    "healthy_reward": 1.0,
    "healthy_z_range": (0.2, 1.0),
    "reset_noise_scale": 0.1,
}


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


def ant_model() -> mujoco.MjModel:
    import gymnasium.envs.mujoco as gym_mujoco

    return mujoco.MjModel.from_xml_path(str(Path(gym_mujoco.__file__).parent / "assets" / "ant.xml"))


def rollout_ceiling(num_envs: int, nthread: int, seconds: float, warmup_s: float, seed: int = 0) -> float:
    """Env-steps/s of the raw ant model: N states stepped FRAME_SKIP physics steps per call by
    ``mujoco.rollout`` in ``nthread`` native threads, random controls held for the control step.

    Nothing else: no observation, reward or reset work per step. Each 1000 control steps (an
    Ant-v5 episode) the states go back to qpos0 plus noise, so contact-rich states dominate as
    they do in the batched env."""
    from mujoco import rollout

    m = ant_model()
    spec = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    d = mujoco.MjData(m)
    s0 = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, s0, spec)
    qpos = slice(1, 1 + m.nq)  # FULLPHYSICS: time, qpos, qvel, act, ...
    rng = np.random.default_rng(seed)
    lo, hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
    controls = np.repeat(rng.uniform(lo, hi, size=(16, num_envs, 1, m.nu)), FRAME_SKIP, axis=2)
    state = np.empty((num_envs, mujoco.mj_stateSize(m, spec)))
    out = np.empty((num_envs, FRAME_SKIP, state.shape[1]))
    pool = rollout.Rollout(nthread=nthread)
    models, datas = [m] * num_envs, [mujoco.MjData(m) for _ in range(nthread)]
    k = [0]

    def step() -> None:
        if k[0] % 1000 == 0:
            state[:] = s0
            state[:, qpos] += rng.uniform(-0.1, 0.1, size=(num_envs, m.nq))
        pool.rollout(models, datas, state, controls[k[0] % 16], skip_checks=True, nstep=FRAME_SKIP, state=out)
        state[:] = out[:, -1]
        k[0] += 1

    rate = timed_rate(step, num_envs, seconds, warmup_s)
    pool.close()
    return rate


def gym_sync_rate(num_envs: int, seconds: float, warmup_s: float, seed: int = 0) -> tuple[float, int]:
    """Env-steps/s of gymnasium's Ant-v5 (ant.xml, frame skip 5, GYM_ANT_KWARGS) in a
    SyncVectorEnv, and its observation size."""
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv([partial(gym.make, "Ant-v5", **GYM_ANT_KWARGS) for _ in range(num_envs)])
    envs.reset(seed=seed)
    space = envs.action_space
    obs_dim = int(envs.single_observation_space.shape[0])
    rng = np.random.default_rng(seed)
    rate = timed_rate(lambda: envs.step(rng.uniform(space.low, space.high)), num_envs, seconds, warmup_s)
    envs.close()
    return rate, obs_dim


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


def ant_obs_dim() -> int:
    """Values in our ant task's policy observation."""
    env = make_env("ant", num_envs=1)
    dim = env.obs_spec["policy"].dim
    env.close()
    return dim


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    fmt = [[f"{c:,.0f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in fmt])


def verdict(name: str, value: float, threshold: float) -> dict[str, Any]:
    """A ``value >= threshold`` criterion, as ``report`` prints it and ``exit_code`` reads it."""
    return {"criterion": name, "value": round(value, 3), "threshold": threshold, "pass": value >= threshold}


def exit_code(criteria: list[dict[str, Any]], quick: bool = False) -> int:
    """1 when a criterion failed (0 in quick mode, whose figures mean nothing), else 0."""
    return 0 if quick or all(c["pass"] for c in criteria) else 1


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
        "threads": thread_info(sim_nthread=a.nthread, ceiling_rollout_threads=a.nthread, gym_sync_threads=1),
    }

    ceiling_n = max(sizes)
    ceiling = rollout_ceiling(ceiling_n, a.nthread, secs, warm)
    gym_rate, gym_obs = gym_sync_rate(a.gym_envs, secs, warm)
    ours = {n: batched_rate("ant", n, a.nthread, secs, warm) for n in sizes}
    ours_obs = ant_obs_dim()
    go2 = batched_rate("go2_velocity", go2_n, a.nthread, secs, warm)
    best_n = max(ours, key=ours.get)

    gym_opts = ", ".join(f"{k}={v}" for k, v in GYM_ANT_KWARGS.items())
    print(f"baseline: gymnasium.make('Ant-v5', {gym_opts}): {gym_obs}-value observation, ours {ours_obs}")
    print(
        f"ceiling: ant.xml, mujoco.rollout N={ceiling_n} in {a.nthread} threads, nstep={FRAME_SKIP}, no obs"
    )

    def row(what: str, model: str, rate: float, vs_gym: str) -> list[Any]:
        return [what, model, rate, vs_gym, f"{rate / ceiling:.2f}"]

    rows = [
        row(f"ceiling: mujoco.rollout, {a.nthread} threads, N={ceiling_n}", "ant.xml", ceiling, ""),
        row(f"gymnasium SyncVectorEnv({a.gym_envs})", "Ant-v5, same work", gym_rate, "1.00"),
        *[
            row(f"ours make_env N={n}, nthread={a.nthread}", "ant", r, f"{r / gym_rate:.2f}")
            for n, r in ours.items()
        ],
        [f"ours make_env N={go2_n}, nthread={a.nthread}", "go2_velocity", go2, "", ""],
    ]
    table = markdown_table(["measurement", "model", "env-steps/s", "vs gym sync", "vs ceiling"], rows)
    criteria = [
        verdict("gymnasium obs size == ours (same work)", float(gym_obs == ours_obs), 1.0),
        verdict(f"ours(N={best_n}) / SyncVectorEnv({a.gym_envs})", ours[best_n] / gym_rate, MIN_VS_GYM),
        verdict(f"ours(N={best_n}) / rollout ceiling", ours[best_n] / ceiling, MIN_VS_CEILING),
    ]
    report("Env throughput (random actions)", header, table, criteria)
    results = {
        "ceiling_env_steps_per_s": ceiling,
        "ceiling_num_envs": ceiling_n,
        "gym_sync_env_steps_per_s": gym_rate,
        "gym_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in GYM_ANT_KWARGS.items()},
        "obs_dim": {"gymnasium": gym_obs, "ours": ours_obs},
        "ours_ant_env_steps_per_s": {str(n): r for n, r in ours.items()},
        "go2_velocity_env_steps_per_s": {str(go2_n): go2},
        "best_num_envs": best_n,
    }
    write_json(a.out, {**header, "args": vars(a), "results": results, "criteria": criteria})
    return exit_code(criteria, a.quick)


if __name__ == "__main__":
    sys.exit(main())
