"""The graph that goes to a robot: raw observation -> normalizer -> actor -> clamp -> joint target."""

from __future__ import annotations

import copy

import torch
from torch import nn

from policies.actor_critic import ActorCritic


class ExportError(RuntimeError):
    """An export was refused (its files disagree with the torch policy, or the layout is inconsistent)."""


class ExportedPolicy(nn.Module):
    """Frozen deployment graph: obs (B, D) float32 -> (joint_targets (B, A), actions (B, A)).

    ``actions = clamp(actor(normalizer(obs)), -1, 1)`` is what the env would apply (and what the
    robot feeds back as ``last_action``); ``joint_targets = offset + scale * actions``.
    The modules are deep copies on the CPU, in eval mode, with gradients off: later training of
    the source policy does not change an exported one.
    """

    def __init__(self, normalizer: nn.Module, actor: nn.Module, offset: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.normalizer = copy.deepcopy(normalizer).cpu()
        self.actor = copy.deepcopy(actor).cpu()
        offset = torch.as_tensor(offset, dtype=torch.float32).detach().cpu().clone()
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().cpu().clone()
        if offset.shape != scale.shape or offset.dim() != 1:
            raise ExportError(
                f"offset and scale must both be (A,), got {tuple(offset.shape)}, {tuple(scale.shape)}"
            )
        self.register_buffer("offset", offset)
        self.register_buffer("scale", scale)
        self.obs_dim = int(getattr(actor, "in_dim", 0))
        self.action_dim = int(offset.shape[0])
        out_dim = getattr(actor, "out_dim", self.action_dim)
        if out_dim != self.action_dim:
            raise ExportError(f"actor gives {out_dim} actions but offset/scale have {self.action_dim}")
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_actor_critic(
        cls, policy: ActorCritic, offset: torch.Tensor, scale: torch.Tensor
    ) -> ExportedPolicy:
        """The deterministic actor path of a trained ActorCritic, with the env's action affine (A,)."""
        return cls(policy.actor_normalizer, policy.actor, offset, scale)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, D) -> joint_targets (B, A), actions (B, A) in [-1, 1]."""
        actions = self.actor(self.normalizer(obs)).clamp(-1.0, 1.0)
        return self.offset + self.scale * actions, actions
