"""``policy=planner``: a policy module that acts by planning over the ensemble it holds.

The model state is the concatenation of the observation groups ``groups`` (default: the privileged
``critic`` group), so the policy reads the env's observation dict like any other policy, and its
weights (the ensemble and whether it was fitted) are what the run's checkpoints keep: ``embodied
eval`` and ``play`` of a model-based run plan with the model it had learned. It keeps the last plan
of each env as the warm start of the next call (``reset`` clears it for envs that started anew).
Before the model has been fitted it acts uniformly at random. It has no ``actor_module()``: a
planner does not export into one ONNX graph.

Importing this module registers it in ``policies.registry`` under ``planner``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from policies.registry import register_policy
from policies.spec import TensorSpec
from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError
from world_models.planner import Plan, Planner, PlannerConfig
from world_models.reward_head import RewardHead


class PlannerPolicy(nn.Module):
    """MPPI / CEM over ``self.model`` (an Ensemble of the state built from ``groups``)."""

    def __init__(
        self,
        obs_spec: Mapping[str, TensorSpec],
        action_dim: int,
        *,
        groups: Sequence[str] = ("critic",),
        model: Mapping[str, Any] | None = None,
        planner: Mapping[str, Any] | None = None,
        reward_head: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        groups = [str(g) for g in groups]
        missing = [g for g in groups if g not in obs_spec]
        if not groups or missing:
            raise WorldModelError(
                f"planner policy: observation group(s) {missing or groups} "
                f"not in the env's {sorted(obs_spec)}"
            )
        if any(len(obs_spec[g].shape) != 1 for g in groups):
            raise WorldModelError(f"planner policy: groups {groups} must be flat vectors")
        self.obs_groups = tuple(groups)
        self.state_dim = sum(obs_spec[g].dim for g in groups)
        self.num_actions = int(action_dim)
        self.model = Ensemble(self.state_dim, self.num_actions, **dict(model or {}))
        # Optional MSE reward/cost regressor of transitions, scoring plans in place of the ensemble's heads.
        self.reward_head = (
            None if reward_head is None else RewardHead(self.state_dim, self.num_actions, **dict(reward_head))
        )
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.planner = Planner(PlannerConfig.from_mapping(planner), self.num_actions)
        self.last_plan: Plan | None = None
        self._warm: torch.Tensor | None = None

    def state(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, S) model state: the groups' observations concatenated in order."""
        return torch.cat([obs[g].float() for g in self.obs_groups], -1)

    def reset(self, done: torch.Tensor | None = None) -> None:
        """Forget the warm start of the envs ``done`` (N,) bool, or of every env."""
        if done is None or self._warm is None:
            self._warm = None
        else:
            self._warm = torch.where(done.to(self._warm.device)[:, None, None], 0.0, self._warm)

    def _plan(self, obs: Mapping[str, torch.Tensor], explore: bool) -> torch.Tensor:
        state = self.state(obs)
        if not bool(self.fitted):
            return torch.rand(state.shape[0], self.num_actions, device=state.device) * 2.0 - 1.0
        warm = self._warm
        if warm is not None and warm.shape[0] != state.shape[0]:
            warm = None  # another batch of envs (evaluation after training)
        plan = self.planner.plan(self.model, state, warm, explore=explore, reward_fn=self.reward_head)
        self._warm, self.last_plan = plan.mean, plan
        return plan.action

    @torch.no_grad()
    def act(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Exploring actions (N, A): the plan's first action with the planner's final std as noise."""
        return self._plan(obs, explore=True)

    @torch.no_grad()
    def act_inference(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The plan's first mean action (N, A)."""
        return self._plan(obs, explore=False)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.act_inference(obs)


register_policy("planner", PlannerPolicy)
