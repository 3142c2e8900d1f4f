"""Domain randomization of physics, as batched per-env scale factors sampled at reset.

``sample_physics`` draws one set of factors per env from config ranges; a backend's
``set_physics(mask, params)`` applies them to the masked envs. What the policy sees (action
latency, observation noise, pushes) is randomized by the task env, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import mujoco
import torch

from sim.backend import SimConfigError

RANGES = ("friction", "mass_scale", "motor_strength", "kp_scale", "kd_scale")
# Actuator-model parameters (sim/actuators.py): drawn only when configured, so a config without
# them samples exactly the same numbers as before they existed.
ACTUATOR_RANGES = ("tau_stall_scale", "w_free_scale")
ACTUATOR_DELAY = "actuator_delay"  # [lo, hi] extra physics steps of actuator delay, integers


@dataclass
class PhysicsParams:
    """Per-env factors, (N, ...) tensors. 1 (or 0 for offsets) is the model as written."""

    friction: torch.Tensor  # (N,) multiplies every geom's sliding friction
    mass_scale: torch.Tensor  # (N, nbody) multiplies each body's mass and inertia (one factor per env)
    com_offset: torch.Tensor  # (N, 3) metres added to the base body's centre of mass
    motor_strength: torch.Tensor  # (N,) multiplies actuator torque limits
    kp_scale: torch.Tensor  # (N,) multiplies position-servo stiffness
    kd_scale: torch.Tensor  # (N,) multiplies position-servo damping
    tau_stall_scale: torch.Tensor | None = None  # (N,) multiplies a DC motor's stall torque
    w_free_scale: torch.Tensor | None = None  # (N,) multiplies a DC motor's free-running speed
    actuator_delay: torch.Tensor | None = None  # (N,) extra physics steps of actuator delay

    def __post_init__(self) -> None:
        n, dev = self.friction.shape[0], self.friction.device
        for name, value in (("tau_stall_scale", 1.0), ("w_free_scale", 1.0), ("actuator_delay", 0.0)):
            if getattr(self, name) is None:
                setattr(self, name, torch.full((n,), value, device=dev))

    @classmethod
    def nominal(cls, n: int, nbody: int, device: torch.device | str = "cpu") -> PhysicsParams:
        def one() -> torch.Tensor:  # a tensor per field: filling one in place must not change another
            return torch.ones(n, device=device)

        return cls(
            one(), torch.ones(n, nbody, device=device), torch.zeros(n, 3, device=device), one(), one(), one()
        )

    def means(self) -> dict[str, float]:
        """Batch means, for logging what the run trained on."""
        return {f.name: getattr(self, f.name).float().mean() for f in fields(self) if f.name != "com_offset"}

    def configured_means(self, cfg: Mapping[str, Any] | None) -> dict[str, float]:
        """``means()`` without the actuator factors a config does not randomize (the log stays as it was)."""
        cfg = cfg or {}
        skip = {k for k in (*ACTUATOR_RANGES, ACTUATOR_DELAY) if k not in cfg}
        return {k: v for k, v in self.means().items() if k not in skip}


def _range(cfg: Mapping[str, Any], key: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in cfg.get(key, (1.0, 1.0)))
    if not 0.0 < lo <= hi:
        raise SimConfigError(f"randomization.{key} must be [lo, hi] with 0 < lo <= hi, got [{lo}, {hi}]")
    return lo, hi


def check_config(cfg: Mapping[str, Any] | None, known: tuple[str, ...] = ()) -> None:
    """Unknown keys and empty ranges are errors, not silently ignored."""
    allowed = (*RANGES, *ACTUATOR_RANGES, ACTUATOR_DELAY, "com_offset", *known)
    for k in cfg or {}:
        if k not in allowed:
            raise SimConfigError(f"unknown randomization key {k!r}; known: {', '.join(allowed)}")
        if k in RANGES or k in ACTUATOR_RANGES:
            _range(cfg, k)
    if ACTUATOR_DELAY in (cfg or {}):
        _delay_range(cfg)


def _delay_range(cfg: Mapping[str, Any]) -> tuple[int, int]:
    value = cfg[ACTUATOR_DELAY]
    try:
        lo, hi = (int(v) for v in value)
        ok = [lo, hi] == [float(v) for v in value] and 0 <= lo <= hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SimConfigError(
            f"randomization.{ACTUATOR_DELAY} must be [lo, hi] integers with 0 <= lo <= hi, got {value!r}"
        )
    return lo, hi


def sample_physics(
    cfg: Mapping[str, Any] | None, n: int, nbody: int, generator: torch.Generator, device: torch.device
) -> PhysicsParams:
    """Uniform samples in each configured range; missing keys stay nominal."""
    cfg = cfg or {}

    def uniform(key: str, *shape: int) -> torch.Tensor:
        lo, hi = _range(cfg, key)
        return lo + (hi - lo) * torch.rand(*shape, generator=generator, device=device)

    com = float(cfg.get("com_offset", 0.0))
    params = PhysicsParams(
        friction=uniform("friction", n),
        # one factor per env for every link: the robot's total mass moves by up to the range
        mass_scale=uniform("mass_scale", n)[:, None].expand(n, nbody).contiguous(),
        com_offset=(torch.rand(n, 3, generator=generator, device=device) * 2 - 1) * com,
        motor_strength=uniform("motor_strength", n),
        kp_scale=uniform("kp_scale", n),
        kd_scale=uniform("kd_scale", n),
    )
    # Drawn after the others, and only when configured: the older factors keep their stream.
    for k in ACTUATOR_RANGES:
        if k in cfg:
            setattr(params, k, uniform(k, n))
    if ACTUATOR_DELAY in cfg:
        lo, hi = _delay_range(cfg)
        params.actuator_delay = torch.randint(lo, hi + 1, (n,), generator=generator, device=device).float()
    return params


def refresh_subtree_mass(model: mujoco.MjModel) -> None:
    """Recompute ``body_subtreemass`` from ``body_mass`` in place, after randomization changed it.

    MuJoCo fills it at compile time only, and ``mj_comPos`` divides by it: stale, every subtree
    centre of mass (and the ``trackcom`` chase camera that follows one) sits at the wrong place,
    off by the mass ratio times the distance from the origin. Bodies come after their parents, so
    one pass from the last body back sums each subtree.
    """
    sub = model.body_mass.copy()
    parent = model.body_parentid
    for b in range(model.nbody - 1, 0, -1):
        sub[parent[b]] += sub[b]
    model.body_subtreemass[:] = sub
