"""Algorithm registry: ``algo=<name>`` selects a builder ``(cfg, policy, env) -> Algorithm``.

A new algorithm is one module, one ``register_algorithm`` call and one ``configs/algo/<name>.yaml``
(whose ``name`` key is the registry name). The Runner sees only the protocol in ``base.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from embodied.algorithms.base import Algorithm, OnPolicy
from embodied.errors import ConfigError

AlgorithmBuilder = Callable[[Mapping[str, Any], nn.Module, Any], Algorithm]
ALGORITHMS: dict[str, AlgorithmBuilder] = {}

__all__ = ["ALGORITHMS", "Algorithm", "OnPolicy", "build_algorithm", "register_algorithm"]


def register_algorithm(name: str, builder: AlgorithmBuilder) -> None:
    """Make ``builder(cfg, policy, env)`` available as ``algo=<name>``."""
    if name in ALGORITHMS and ALGORITHMS[name] is not builder:
        raise ConfigError(f"an algorithm named {name!r} is already registered")
    ALGORITHMS[name] = builder


def build_algorithm(name: str, cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> Algorithm:
    """The registered algorithm ``name`` for ``policy`` on ``env``; unknown names are ConfigErrors."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algo {name!r}; registered: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name](cfg, policy, env)


def _ppo(cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> Algorithm:
    from embodied.algorithms.ppo import PPO

    return PPO.from_config(cfg, policy, env)


def _ppo_lagrangian(cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> Algorithm:
    from embodied.algorithms.ppo_lagrangian import PPOLagrangian

    return PPOLagrangian.from_config(cfg, policy, env)


def _dyna_ppo(cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> Algorithm:
    from embodied.algorithms.dyna_ppo import DynaPPO

    return DynaPPO.from_config(cfg, policy, env)


def _mppi(cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> Algorithm:
    from embodied.algorithms.mppi import MPPI

    return MPPI.from_config(cfg, policy, env)


def _grpo(cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> Algorithm:
    from embodied.algorithms.grpo import GRPO

    return GRPO.from_config(cfg, policy, env)


register_algorithm("ppo", _ppo)
register_algorithm("ppo_lagrangian", _ppo_lagrangian)
register_algorithm("mppi", _mppi)
register_algorithm("dyna_ppo", _dyna_ppo)
register_algorithm("grpo", _grpo)
