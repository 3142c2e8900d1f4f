"""The SimBackend contract that every physics engine meets, and the factory that picks one."""

from __future__ import annotations

import importlib.util
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from sim.model_info import ModelInfo
from sim.state import SimState

if TYPE_CHECKING:
    from sim.render import Marker


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

    def render(
        self,
        env_ids: list[int],
        width: int,
        height: int,
        camera: str | int = -1,
        markers: Sequence[Marker] = (),
    ) -> torch.Tensor:
        """Offscreen frames of the chosen envs as (n, 3, H, W) uint8, with visual-only markers
        (one (n, 3) position row per chosen env each)."""
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


def unavailable_reason(engine: str) -> str | None:
    """Why ``engine`` cannot be built here (one line), or None when it can."""
    if engine not in _CLASSES:
        return f"unknown sim engine {engine!r}; choose one of {', '.join(BACKENDS)}"
    if engine in _OPTIONAL:
        module, dist = _OPTIONAL[engine]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-removed install
            found = False
        if not found:
            return f"{engine} needs `pip install -e .[{engine}]` ({dist}): no module {module!r} here"
    return None


def available_backends() -> tuple[str, ...]:
    """The engines of ``BACKENDS`` whose packages are installed here."""
    return tuple(e for e in BACKENDS if unavailable_reason(e) is None)


def check_backend_args(
    engine: str,
    num_envs: int,
    device: str | torch.device,
    *,
    decimation: int,
    nthread: int,
    physics_dt: float | None,
) -> torch.device:
    """The constructor checks every engine shares; returns the torch device (N, ...) tensors live on.

    Raises a one-line SimConfigError for a size below 1, a non-positive timestep, a device that is
    neither cpu nor cuda, or cuda on a machine without it.
    """
    for name, value in (("num_envs", num_envs), ("decimation", decimation), ("nthread", nthread)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise SimConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if value < 1:
            raise SimConfigError(f"{name} must be >= 1, got {value}")
    if physics_dt is not None and not (isinstance(physics_dt, numbers.Real) and 0 < physics_dt < math.inf):
        raise SimConfigError(f"physics_dt must be a positive number of seconds, got {physics_dt!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SimConfigError(f"{engine}: {device!r} is not a torch device") from None
    if dev.type not in ("cpu", "cuda"):
        raise SimConfigError(f"{engine} runs on cpu or cuda devices, got {dev}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SimConfigError(f"device {dev} was asked for but CUDA is not available on this machine")
    return dev


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
    reason = unavailable_reason(engine)
    if reason is not None:
        raise SimConfigError(reason)
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
