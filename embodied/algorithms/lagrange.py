"""Lagrange multipliers for constrained RL: plain gradient ascent, or PID (Stooke et al. 2020).

Both push the multiplier up while the expected episode cost J_c is above ``cost_limit`` and never
below 0; the policy then optimizes (A_r - lambda A_c) / (1 + lambda).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class LagrangeConfig:
    """The multiplier's update; invalid values raise ValueError naming the field."""

    cost_limit: float = 25.0  # expected cost per episode
    multiplier: str = "pid"  # "gradient" | "pid"
    lambda_init: float = 0.0
    lambda_lr: float = 0.035  # gradient ascent step on (J_c - limit)
    kp: float = 0.1  # PID gains on (J_c - limit), its integral and the increase of J_c
    ki: float = 0.01
    kd: float = 0.01
    lambda_max: float = 100.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "multiplier":
                if v not in ("gradient", "pid"):
                    raise ValueError(f"LagrangeConfig.multiplier must be 'gradient' or 'pid', got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"LagrangeConfig.{f.name} must be a finite number >= 0, got {v!r}")


class LagrangeMultiplier:
    """lambda >= 0, updated once per iteration from the mean cost of recently finished episodes."""

    def __init__(self, cfg: LagrangeConfig) -> None:
        self.cfg = cfg
        self.value = float(cfg.lambda_init)
        self.integral = float(cfg.lambda_init)  # PID: the integral term starts where lambda starts
        self.last_cost: float | None = None

    def update(self, episode_cost: float) -> float:
        """One update from J_c = ``episode_cost``; returns the new lambda."""
        c = self.cfg
        error = episode_cost - c.cost_limit
        if c.multiplier == "gradient":
            value = self.value + c.lambda_lr * error
        else:
            self.integral = max(0.0, self.integral + c.ki * error)
            rise = 0.0 if self.last_cost is None else max(0.0, episode_cost - self.last_cost)
            value = c.kp * error + self.integral + c.kd * rise
        self.last_cost = episode_cost
        self.value = min(max(value, 0.0), c.lambda_max)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "integral": self.integral, "last_cost": self.last_cost}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.integral = float(state["value"]), float(state["integral"])
        self.last_cost = None if state["last_cost"] is None else float(state["last_cost"])
