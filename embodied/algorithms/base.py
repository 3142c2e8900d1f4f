"""The algorithm protocol the Runner trains through (rsl_rl's surface), and nothing PPO-specific.

    actions = alg.act(obs)            # sample; the algorithm keeps what it needs of this step
    out = env.step(actions)
    alg.process_env_step(out)         # reward, dones, final_obs of that step
    ... x num_steps_per_env
    alg.compute_returns(obs)          # on-policy algorithms only (those that define it)
    stats = alg.update()

An algorithm that trains on whole episodes also defines ``begin_rollout(env, obs) -> obs``, called
before each rollout's first ``act`` (GRPO resets every env there, groups from shared initial states).

With several data-parallel processes every algorithm agrees with its peers through its ``sync``
attribute: ``sync.grads(params)`` after each backward (before clipping), ``sync.mean`` of scalars
a schedule reads, ``sync.mean_std`` / ``sync.pooled_mean`` of rollout statistics. ``LocalSync`` (one
process) does nothing; embodied/distributed.py installs the collective twin.

Checkpoints keep the policy's state (``alg.policy.state_dict()``) apart from the algorithm's own
(``alg.state_dict()``: optimizer, schedules, counters), so evaluation and export need only the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from embodied.env import Obs, StepOut


class LocalSync:
    """One process: nothing to agree on. Each method is exactly what a single process computes."""

    world_size = 1

    def grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over processes (after backward, before clipping); here a no-op."""

    def mean(self, value: float) -> float:
        """A scalar averaged over processes (the minibatch KL of the adaptive schedule)."""
        return value

    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased std of x's elements over every process."""
        return x.mean(), x.std()

    def pooled_mean(self, x: torch.Tensor) -> float | None:
        """Mean of x's elements over every process; None when there are none."""
        return None if x.numel() == 0 else float(x.mean())


@runtime_checkable
class Algorithm(Protocol):
    policy: nn.Module
    num_steps_per_env: int  # env steps per env between two updates

    def train_mode(self) -> None: ...

    def eval_mode(self) -> None: ...

    def act(self, obs: Obs) -> torch.Tensor:
        """Actions (N, A) for the observation; the env may filter them, the algorithm keeps these."""
        ...

    def process_env_step(self, out: StepOut) -> None: ...

    def update(self) -> dict[str, float]:
        """Learn from what was collected; returns scalars to log."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The algorithm's own state, without the policy's weights."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class OnPolicy(Algorithm, Protocol):
    def compute_returns(self, obs: Obs) -> None:
        """Bootstrap the finished rollout from the observation after its last step."""
        ...
