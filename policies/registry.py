"""Policy registry: ``policy=<name>`` selects a builder ``(obs_spec, action_dim, **cfg) -> nn.Module``.

A registered policy meets the interface the algorithms use (see ``policies.actor_critic``): it
takes the env's observation dict in ``act`` / ``act_inference`` / ``evaluate`` /
``update_normalization``, keeps its last action distribution (``action_mean``, ``action_std``,
``entropy``, ``get_actions_log_prob``), names the groups it reads in ``obs_groups``, and, to be
exported, gives its deterministic actor path as ``actor_module()`` on group ``actor_obs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from policies.actor_critic import ActorCritic
from policies.spec import TensorSpec
from policies.vla import build_vla

PolicyBuilder = Callable[..., nn.Module]
POLICIES: dict[str, PolicyBuilder] = {"mlp": ActorCritic, "vla": build_vla}


def register_policy(name: str, builder: PolicyBuilder) -> None:
    """Make ``builder(obs_spec, action_dim, **cfg)`` available as ``policy=<name>``."""
    if name in POLICIES and POLICIES[name] is not builder:
        raise ValueError(f"a policy named {name!r} is already registered")
    POLICIES[name] = builder


def build_policy(
    name: str, obs_spec: Mapping[str, TensorSpec], action_dim: int, cfg: Mapping[str, Any]
) -> nn.Module:
    """The registered policy ``name``; unknown names or keys raise ValueError with one line."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; registered: {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[name](obs_spec, action_dim, **dict(cfg))
    except TypeError as e:
        raise ValueError(f"policy {name!r}: {e}") from None
