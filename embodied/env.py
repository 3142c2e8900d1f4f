"""The batched env contract every task and backend meets. All tensors are (N, ...) on env.device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from policies.spec import ObsSpec, TensorSpec

Obs = dict[str, torch.Tensor]
__all__ = ["BatchedEnv", "Obs", "ObsSpec", "StepOut", "TensorSpec"]


@dataclass
class StepOut:
    """One control step of N envs.

    Attributes:
        obs: groups of observations: "policy" (N, D), "critic" (N, Dc), "rgb" (N, 3, H, W) uint8
            when cameras are on. For envs that finished this step, obs is already the first
            observation of the next episode; the last one is in ``info["final_obs"]``.
        reward: (N,) float32.
        cost: (N,) float32 safety cost, zeros where a task defines none.
        terminated: (N,) bool, a true terminal (fall, collision, physics blow-up): no bootstrap.
        truncated: (N,) bool, time limit: PPO bootstraps the value through it.
        info: "final_obs" (groups as obs: the observation after this step, before any reset, for
            every env), "log/<name>" scalars (per-term means, counters) for the logger,
            "metric/<name>" (N,) per-env task metrics, and "safety/intervened" (N,) bool with
            "safety/<filter>/intervened" and "safety/<filter>/magnitude" per filter.
    """

    obs: Obs
    reward: torch.Tensor
    cost: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    info: dict = field(default_factory=dict)


@runtime_checkable
class BatchedEnv(Protocol):
    """N envs stepped together; done envs reset themselves inside ``step``."""

    num_envs: int
    obs_spec: ObsSpec  # {group: TensorSpec}: "policy", "critic", and "rgb" / "instruction" when on
    action_dim: int
    device: torch.device
    dt: float
    max_episode_length: int

    def reset(self, mask: torch.Tensor | None = None, *, seed: int | None = None) -> Obs:
        """Reset envs where mask (N,) is true (all when None); returns obs for all N envs."""
        ...

    def step(self, action: torch.Tensor) -> StepOut:
        """action: (N, action_dim) in [-1, 1]."""
        ...

    def render(
        self, env_ids: list[int], width: int = 320, height: int = 240, camera: str | int | None = None
    ) -> torch.Tensor:
        """(n, 3, H, W) uint8 offscreen frames of the chosen envs."""
        ...

    def close(self) -> None: ...
