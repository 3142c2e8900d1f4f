"""Task registry: each ``configs/task/<name>.yaml`` is a task; its ``family`` names the module.

A new task is one config file (a variant of an existing family) or one module plus one config
file (a new family, added to ``FAMILIES``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from embodied.env import BatchedEnv
from embodied.errors import ConfigError
from sim.backend import SimConfigError, make_backend

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _locomotion(cfg: Mapping[str, Any], backend: Any, seed: int) -> BatchedEnv:
    from embodied.tasks.locomotion import LocomotionEnv

    return LocomotionEnv(cfg, backend, seed)


def _manipulation(cfg: Mapping[str, Any], backend: Any, seed: int) -> BatchedEnv:
    from embodied.tasks.manipulation import ArmEnv

    return ArmEnv(cfg, backend, seed)


def _driving(cfg: Mapping[str, Any], backend: Any, seed: int) -> BatchedEnv:
    from embodied.tasks.driving import DrivingEnv

    return DrivingEnv(cfg, backend, seed)


FAMILIES: dict[str, Callable[[Mapping[str, Any], Any, int], BatchedEnv]] = {
    "locomotion": _locomotion,
    "manipulation": _manipulation,
    "driving": _driving,
}


def task_names() -> list[str]:
    """Every registered task, sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


def task_config(name: str) -> DictConfig:
    """The default config of a registered task."""
    if name not in task_names():
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(task_names())}")
    return OmegaConf.load(CONFIG_DIR / "task" / f"{name}.yaml")


def describe_tasks() -> list[tuple[str, str, str]]:
    """(name, family, one-line description) of each registered task."""
    rows = []
    for name in task_names():
        first = (CONFIG_DIR / "task" / f"{name}.yaml").read_text().splitlines()[0]
        rows.append((name, str(task_config(name).family), first.lstrip("# ").strip()))
    return rows


def make_env(
    task: str | Mapping[str, Any],
    *,
    num_envs: int | None = None,
    engine: str = "mujoco",
    device: str | torch.device = "cpu",
    nthread: int = 1,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    sim_options: Mapping[str, Any] | None = None,
) -> BatchedEnv:
    """Build a task's batched env: a registered name or a full task config mapping.

    ``sim_options`` are the engine's own keys from its sim config (see configs/sim/<engine>.yaml).
    """
    cfg = task_config(task) if isinstance(task, str) else OmegaConf.create(dict(task))
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    family = plain.get("family")
    if family not in FAMILIES:
        raise ConfigError(
            f"task {plain.get('name')!r} has unknown family {family!r}; known: {', '.join(FAMILIES)}"
        )
    n = int(num_envs if num_envs is not None else plain["num_envs"])
    try:
        backend = make_backend(
            engine,
            plain["model"],
            n,
            device,
            decimation=int(plain.get("decimation", 1)),
            nthread=nthread,
            physics_dt=plain.get("physics_dt"),
            options=sim_options,
        )
    except SimConfigError as e:
        raise ConfigError(str(e)) from None
    return FAMILIES[family](plain, backend, seed)
