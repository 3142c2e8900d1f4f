"""The SimBackend contract that every physics engine meets, and the factory that picks one."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from sim.model_info import ModelInfo
from sim.state import SimState


class SimConfigError(ValueError):
    """A backend cannot be built as configured (unknown engine, bad model, missing device)."""


@runtime_checkable
class SimBackend(Protocol):
    """N copies of one model stepped in lockstep; all tensors are (N, ...) on ``device``.

    ``step(ctrl)`` holds the actuator controls (PD targets for position servos) for
    ``decimation`` physics steps, so one call is one control step.
    """

    num_envs: int
    device: torch.device
    physics_dt: float
    decimation: int
    joint_names: list[str]
    actuator_names: list[str]
    sensor_names: list[str]
    info: ModelInfo

    def step(self, ctrl: torch.Tensor) -> torch.Tensor:
        """Advance every env one control step. ctrl: (N, nu). Returns (N,) bool: physics blew up."""
        ...

    def reset(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Set the state of envs where mask (N,) is true to qpos (N, nq), qvel (N, nv)."""
        ...

    def state(self) -> SimState:
        """The current state as (N, ...) tensors."""
        ...

    def sensor(self, name: str) -> slice:
        """Columns of ``SimState.sensordata`` that hold the named sensor."""
        ...

    def render(self, env_ids: list[int], width: int, height: int, camera: str | int = -1) -> torch.Tensor:
        """Offscreen frames of the chosen envs as (n, 3, H, W) uint8."""
        ...

    def close(self) -> None:
        """Release native resources (threads, renderer)."""
        ...


# Each engine's backend class; its module's OPTIONS names the keys its sim config may add.
_CLASSES = {
    "mujoco": ("sim.mujoco_backend", "MujocoBackend"),
    "mjwarp": ("sim.mjwarp_backend", "MjwarpBackend"),
    "genesis": ("sim.genesis_backend", "GenesisBackend"),
}
BACKENDS = tuple(_CLASSES)
# Engines that need an optional package: (module it imports, distribution to install).
_OPTIONAL = {"mjwarp": ("mujoco_warp", "mujoco-warp"), "genesis": ("genesis", "genesis-world")}


def available_backends() -> tuple[str, ...]:
    """The engines of ``BACKENDS`` whose packages are installed here."""
    return tuple(e for e in BACKENDS if e not in _OPTIONAL or importlib.util.find_spec(_OPTIONAL[e][0]))


def make_backend(
    engine: str,
    model_path: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    *,
    decimation: int = 1,
    nthread: int = 1,
    physics_dt: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> SimBackend:
    """Build the named engine's backend for a model file (MJCF or URDF).

    ``options`` are the engine's own keys from its sim config (e.g. mjwarp's ``warp_device``).
    """
    if engine in _OPTIONAL and engine not in available_backends():
        raise SimConfigError(f"{engine} needs `pip install -e .[{engine}]` ({_OPTIONAL[engine][1]})")
    if engine not in _CLASSES:
        raise SimConfigError(f"unknown sim engine {engine!r}; choose one of {', '.join(BACKENDS)}")
    module_name, class_name = _CLASSES[engine]
    module = importlib.import_module(module_name)
    known = tuple(getattr(module, "OPTIONS", ()))
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SimConfigError(
            f"unknown {engine} option(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}"
        )
    return getattr(module, class_name)(
        model_path,
        num_envs,
        device,
        decimation=decimation,
        nthread=nthread,
        physics_dt=physics_dt,
        **options,
    )
