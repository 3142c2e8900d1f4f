"""Lagrange multipliers for constrained RL: plain gradient ascent, or PID (Stooke et al. 2020).

Both push the multiplier up while the expected episode cost J_c is above ``cost_limit`` and never
below 0; the policy then optimizes (A_r - lambda A_c) / (1 + lambda).

The PID form is OmniSafe's CPPOPID: the proportional term acts on an exponential moving average of
the violation (``p_ema``), and the derivative on how much an average of J_c (``d_ema``) rose over
the last ``d_delay`` updates, so one noisy window of episodes does not throw lambda to 0 and back.
``p_ema=0, d_ema=0, d_delay=1`` is the plain textbook PID on the raw J_c.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class LagrangeConfig:
    """The multiplier's update; invalid values raise ValueError naming the field."""

    cost_limit: float = 25.0  # expected cost per episode
    cost_margin: float = 0.0  # aim at (1 - cost_margin) x cost_limit: a multiplier that aims at the
    # limit itself keeps J_c around it, above it half of the time
    multiplier: str = "pid"  # "gradient" | "pid"
    lambda_init: float = 0.0
    lambda_lr: float = 0.035  # gradient ascent step on (J_c - limit)
    kp: float = 0.1  # PID gains on (J_c - limit), its integral and the increase of J_c
    ki: float = 0.01
    kd: float = 0.01
    p_ema: float = 0.95  # PID: EMA weight of the old violation in the proportional term (0: none)
    d_ema: float = 0.95  # PID: EMA weight of the old J_c in the derivative term (0: none)
    d_delay: int = 10  # PID: the derivative is the rise of the J_c average over this many updates
    lambda_max: float = 100.0
    # J_c the multiplier sees: "episodes", the mean cost of the last finished episodes (they span
    # many updates when episodes are long and iterations short); "rate", this rollout's mean cost
    # per step times the episode length in steps (the current policy's, one update old at most).
    cost_estimate: str = "episodes"

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "multiplier":
                if v not in ("gradient", "pid"):
                    raise ValueError(f"LagrangeConfig.multiplier must be 'gradient' or 'pid', got {v!r}")
            elif f.name == "cost_estimate":
                if v not in ("episodes", "rate"):
                    raise ValueError(f"LagrangeConfig.cost_estimate must be 'episodes' or 'rate', got {v!r}")
            elif f.name == "d_delay":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"LagrangeConfig.d_delay must be an integer >= 1, got {v!r}")
            elif f.name in ("p_ema", "d_ema", "cost_margin"):
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
                    raise ValueError(f"LagrangeConfig.{f.name} must be a number in [0, 1), got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"LagrangeConfig.{f.name} must be a finite number >= 0, got {v!r}")


class LagrangeMultiplier:
    """lambda >= 0, updated once per iteration from the mean cost of recently finished episodes."""

    def __init__(self, cfg: LagrangeConfig) -> None:
        self.cfg = cfg
        self.value = float(cfg.lambda_init)
        self.integral = float(cfg.lambda_init)  # PID: the integral term starts where lambda starts
        self.p_error: float | None = None  # EMA of J_c - limit
        self.d_cost: float | None = None  # EMA of J_c
        self.d_history: deque[float] = deque(maxlen=cfg.d_delay)  # past d_cost, oldest first

    def update(self, episode_cost: float) -> float:
        """One update from J_c = ``episode_cost``; returns the new lambda."""
        c = self.cfg
        error = episode_cost - (1.0 - c.cost_margin) * c.cost_limit
        if c.multiplier == "gradient":
            value = self.value + c.lambda_lr * error
        else:
            self.integral = max(0.0, self.integral + c.ki * error)
            self.p_error = error if self.p_error is None else c.p_ema * self.p_error + (1 - c.p_ema) * error
            self.d_cost = (
                episode_cost if self.d_cost is None else c.d_ema * self.d_cost + (1 - c.d_ema) * episode_cost
            )
            rise = max(0.0, self.d_cost - self.d_history[0]) if self.d_history else 0.0
            self.d_history.append(self.d_cost)
            value = c.kp * self.p_error + self.integral + c.kd * rise
        self.value = min(max(value, 0.0), c.lambda_max)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "integral": self.integral,
            "p_error": self.p_error,
            "d_cost": self.d_cost,
            "d_history": list(self.d_history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.integral = float(state["value"]), float(state["integral"])
        if "last_cost" in state:  # the layout before the averaged terms: a raw J_c, no history
            last = state["last_cost"]
            self.p_error = None if last is None else float(last) - self.cfg.cost_limit
            self.d_cost = None if last is None else float(last)
            self.d_history = deque([] if last is None else [float(last)], maxlen=self.cfg.d_delay)
            return
        self.p_error = None if state["p_error"] is None else float(state["p_error"])
        self.d_cost = None if state["d_cost"] is None else float(state["d_cost"])
        self.d_history = deque((float(x) for x in state["d_history"]), maxlen=self.cfg.d_delay)
