"""Task registry: each ``configs/task/<name>.yaml`` is a task; its ``family`` names the module.

A new task is one config file (a variant of an existing family) or one module plus one config
file (a new family, added to ``FAMILIES``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from embodied.env import BatchedEnv
from embodied.errors import ConfigError
from sim.backend import SimConfigError, make_backend

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
_EXTRA_CONFIG_DIRS: list[Path] = []


def add_config_dir(path: str | Path) -> None:
    """Search ``path`` too for config groups (``algo/<name>.yaml``, ``task/<name>.yaml``, ...).

    Plugins call this for the configs of what they register; ``EMBODIED_CONFIG_PATH`` (a
    ``os.pathsep``-separated list) does the same from the environment.
    """
    p = Path(path).resolve()
    if not p.is_dir():
        raise ConfigError(f"config directory {p} does not exist")
    if p not in _EXTRA_CONFIG_DIRS:
        _EXTRA_CONFIG_DIRS.append(p)


def config_dirs() -> list[Path]:
    """The built-in config directory, then every added one (later ones are searched after)."""
    env = [Path(p).resolve() for p in os.environ.get("EMBODIED_CONFIG_PATH", "").split(os.pathsep) if p]
    return [CONFIG_DIR, *_EXTRA_CONFIG_DIRS, *(p for p in env if p not in _EXTRA_CONFIG_DIRS)]


def load_plugins(modules: str | None = None) -> None:
    """Import the comma-separated plugin modules (default: ``$EMBODIED_PLUGINS``); they register
    their algorithms, policies, filters or terms and may ``add_config_dir`` their configs."""
    for name in (modules if modules is not None else os.environ.get("EMBODIED_PLUGINS", "")).split(","):
        if name.strip():
            try:
                importlib.import_module(name.strip())
            except ImportError as e:
                raise ConfigError(f"plugin {name.strip()!r} cannot be imported ({e})") from None


def _locomotion(cfg: Mapping[str, Any], backend: Any, seed: int) -> BatchedEnv:
    from embodied.tasks.locomotion import LocomotionEnv

    return LocomotionEnv(cfg, backend, seed)


def _manipulation(cfg: Mapping[str, Any], backend: Any, seed: int) -> BatchedEnv:
    variant = cfg.get("variant")
    if variant == "multi_object":  # several cubes and pads, an instruction per episode
        from embodied.tasks.arm_multi import ArmMultiEnv

        return ArmMultiEnv(cfg, backend, seed)
    if variant is not None:
        backend.close()
        raise ConfigError(f"unknown manipulation variant {variant!r}; known: multi_object")
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


def _task_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in reversed(config_dirs()):  # the built-in directory wins a name clash
        files.update({p.stem: p for p in (d / "task").glob("*.yaml")})
    return files


def task_names() -> list[str]:
    """Every registered task, sorted."""
    return sorted(_task_files())


def task_config(name: str) -> DictConfig:
    """The default config of a registered task."""
    files = _task_files()
    if name not in files:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(files))}")
    own = OmegaConf.load(files[name])
    defaults = own.pop("defaults", None)
    if not defaults:
        return own
    # A variant names the tasks it extends, as Hydra's defaults list does: ``[ant, _self_]``. An
    # ``override /<group>@_global_.<group>: <choice>`` entry selects another group's config (a task's
    # own world model): Hydra applies it when composing; it adds nothing to the task's config here.
    parts = []
    for d in defaults:
        if isinstance(d, DictConfig) and len(d) == 1 and str(next(iter(d))).startswith("override /"):
            continue
        if d == "_self_":
            parts.append(own)
        elif not isinstance(d, str) or d == name:
            raise ConfigError(f"task {name!r}: defaults may name other tasks and _self_, got {d!r}")
        else:
            parts.append(task_config(d))
    if "_self_" not in defaults:
        parts.append(own)
    return OmegaConf.merge(*parts)


def describe_tasks() -> list[tuple[str, str, str]]:
    """(name, family, one-line description) of each registered task."""
    rows = []
    for name, path in sorted(_task_files().items()):
        first = path.read_text().splitlines()[0]
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
        _set_actuator(backend, engine, plain.get("actuator"))
    except SimConfigError as e:
        raise ConfigError(str(e)) from None
    return FAMILIES[family](plain, backend, seed)


def _set_actuator(backend: Any, engine: str, cfg: Any) -> None:
    """The task's ``actuator`` model (sim/actuators.py); without one the model's own servos run."""
    from sim.actuators import parse_actuator

    spec = parse_actuator(cfg)
    if hasattr(backend, "set_actuator"):
        backend.set_actuator(spec)
    elif spec != {"model": "ideal_pd"}:
        backend.close()
        raise SimConfigError(f"the {engine} engine runs only the ideal_pd actuator, got {spec['model']}")
