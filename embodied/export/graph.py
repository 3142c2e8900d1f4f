"""The graph that goes to a robot, composed from the training modules:

    raw observation -> normalizer -> actor -> clamp -> safety filters -> clamp -> action affine

The normalizer and actor are the policy's own ``actor_module()``; the filters are the very chain
the env applied in training and evaluation. The first clamp is the env's sanitize stage, so the
filters see the same action in both places.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from policies.safety import FilterChain


class ExportError(RuntimeError):
    """An export was refused (its files disagree with the torch policy, or the layout is inconsistent)."""


class ExportedPolicy(nn.Module):
    """Frozen deployment graph: obs (B, D) float32 -> (joint_targets (B, A), actions (B, A)).

    ``actions`` is what the env would apply after its filter stage (and what the robot feeds back
    as ``last_action``); ``joint_targets = offset + scale * actions``. The modules are deep copies on
    the CPU, in eval mode, with gradients off: later training of the source does not change them.
    """

    def __init__(
        self,
        actor: nn.Module,
        offset: torch.Tensor,
        scale: torch.Tensor,
        *,
        obs_dim: int,
        filters: FilterChain | None = None,
    ):
        super().__init__()
        self.actor = copy.deepcopy(actor).cpu()
        chain = FilterChain() if filters is None else filters
        if not chain.exportable:
            names = [f.name for f in chain.filters if not f.exportable]
            raise ExportError(f"safety filters {names} cannot be exported into the policy graph")
        self.filters = copy.deepcopy(chain).cpu()
        offset = torch.as_tensor(offset, dtype=torch.float32).detach().cpu().clone()
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().cpu().clone()
        if offset.shape != scale.shape or offset.dim() != 1:
            raise ExportError(
                f"offset and scale must both be (A,), got {tuple(offset.shape)}, {tuple(scale.shape)}"
            )
        self.register_buffer("offset", offset)
        self.register_buffer("scale", scale)
        self.obs_dim = int(obs_dim)
        self.action_dim = int(offset.shape[0])
        with torch.no_grad():
            out_dim = int(self.actor.eval()(torch.zeros(1, self.obs_dim)).shape[-1])
        if out_dim != self.action_dim:
            raise ExportError(f"actor gives {out_dim} actions but offset/scale have {self.action_dim}")
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_policy(
        cls, policy: nn.Module, offset: torch.Tensor, scale: torch.Tensor, filters: FilterChain | None = None
    ) -> ExportedPolicy:
        """The deterministic actor path of a trained policy (``actor_module()``), the env's action
        affine (A,) and its safety-filter chain."""
        if not hasattr(policy, "actor_module"):
            raise ExportError(f"policy {type(policy).__name__} has no actor_module(): it cannot be exported")
        return cls(policy.actor_module(), offset, scale, obs_dim=int(policy.num_actor_obs), filters=filters)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, D) -> joint_targets (B, A), actions (B, A) in [-1, 1]."""
        actions = self.actor(obs).clamp(-1.0, 1.0)
        actions, _, _ = self.filters(obs, actions)
        actions = actions.clamp(-1.0, 1.0)
        return self.offset + self.scale * actions, actions


def check_pipeline(
    exported: ExportedPolicy,
    obs: torch.Tensor,
    applied: torch.Tensor | None,
    filters: list[str],
    tol: float = 1e-5,
) -> float:
    """Max |graph action - env action| on a rollout's observations; ExportError above ``tol``.

    ``applied`` is what the env's own action pipeline (sanitize, safety filters) sent to the
    actuators for each observation, so a filter the env ran but the graph lacks (or the reverse) is
    caught here, whatever the filters' names say.
    """
    if applied is None:
        raise ExportError("the rollout recorded no applied actions to check the graph against")
    with torch.no_grad():
        _, actions = exported(obs.cpu())
    gap = (actions - applied.cpu()).abs().amax(-1)
    diff = float(gap.max())
    if not diff <= tol:
        changed = float((gap > tol).float().mean())
        raise ExportError(
            f"the exported graph's actions differ from the env's by {diff:.3g} on {changed:.0%} of the "
            f"rollout (the env runs safety filters {filters or 'none'}; the graph runs "
            f"{exported.filters.names or 'none'}): a filter is missing from the export or added to it"
        )
    return diff
