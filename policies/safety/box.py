"""Box and rate filters: action bounds, and a limit on how far an action may move in one step.

Both act in the policy's normalized action space ([-1, 1] per dimension). The rate filter reads the
previous applied action from the policy observation's ``last_action`` term (by name, through the
observation layout), so it needs no state of its own and runs the same in the env, in the exported
graph and on the robot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from policies.safety.base import FilterError, Layout, SafetyFilter, term_slice


def _per_dim(value: float | Sequence[float], action_dim: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(action_dim)
    if t.numel() != action_dim:
        raise FilterError(f"{what} needs 1 or {action_dim} values, got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise FilterError(f"{what} must be finite, got {t.tolist()}")
    return t.clone()


class BoxFilter(SafetyFilter):
    """Clamp each action dimension to [low, high]; intervened where any dimension was outside."""

    def __init__(
        self,
        layout: Layout,
        action_dim: int,
        low: float | Sequence[float] = -1.0,
        high: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__("box")
        lo, hi = _per_dim(low, action_dim, "box.low"), _per_dim(high, action_dim, "box.high")
        if bool((lo > hi).any()):
            raise FilterError(f"box.low must be <= box.high, got {lo.tolist()} and {hi.tolist()}")
        self.register_buffer("low", lo)
        self.register_buffer("high", hi)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        safe = torch.maximum(torch.minimum(action, self.high), self.low)
        return safe, (safe != action).any(-1), {}


class RateFilter(SafetyFilter):
    """Keep each action dimension within ``max_delta`` of the previous applied action.

    The previous action is the observation's ``last_action`` term divided by its scale.
    """

    def __init__(self, layout: Layout, action_dim: int, max_delta: float | Sequence[float] = 0.5) -> None:
        super().__init__("rate")
        start, stop, scale = term_slice(layout, "last_action")
        if stop - start != action_dim:
            raise FilterError(f"the last_action term has {stop - start} values, the action has {action_dim}")
        if scale == 0.0:
            raise FilterError("the last_action term has scale 0: the previous action cannot be read")
        delta = _per_dim(max_delta, action_dim, "rate.max_delta")
        if bool((delta <= 0).any()):
            raise FilterError(f"rate.max_delta must be > 0, got {delta.tolist()}")
        self.start, self.stop, self.inv_scale = start, stop, 1.0 / scale
        self.register_buffer("max_delta", delta)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        last = obs[:, self.start : self.stop] * self.inv_scale
        safe = torch.maximum(torch.minimum(action, last + self.max_delta), last - self.max_delta)
        return safe, (safe != action).any(-1), {}
