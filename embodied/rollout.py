"""On-policy rollout storage and generalized advantage estimation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from policies.spec import TensorSpec


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a rollout.

    Args:
        rewards, values: (T, N). dones: (T, N) bool; dones[t] means the episode ended at step t, so
            neither the value nor the advantage of step t + 1 flows back into step t.
        last_values: (N,) value of the observation after the last step.
    Returns:
        (returns, advantages), both (T, N), with returns = advantages + values.
    """
    num_steps = rewards.shape[0]
    not_done = (~dones.bool()).to(values.dtype)
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(last_values)
    next_values = last_values
    for t in reversed(range(num_steps)):
        delta = rewards[t] + gamma * not_done[t] * next_values - values[t]
        next_advantage = delta + gamma * lam * not_done[t] * next_advantage
        advantages[t] = next_advantage
        next_values = values[t]
    return advantages + values, advantages


@dataclass
class MiniBatch:
    """One flattened minibatch of B transitions."""

    obs: dict[str, torch.Tensor]  # each stored group (B, *shape), its own dtype
    actions: torch.Tensor  # (B, A)
    values: torch.Tensor  # (B,) critic values at collection time
    returns: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,) normalized
    actions_log_prob: torch.Tensor  # (B,) at collection time
    mu: torch.Tensor  # (B, A) at collection time
    sigma: torch.Tensor  # (B, A) at collection time


class RolloutStorage:
    """Fixed-size [T, N, ...] buffers for one on-policy rollout, allocated once.

    Observations are stored per group as the spec gives them (shape and dtype: uint8 frames stay
    uint8), only for the groups the policy reads.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_spec: Mapping[str, TensorSpec],
        action_dim: int,
        device: str | torch.device = "cpu",
    ):
        self.num_steps = num_steps
        self.num_envs = num_envs
        self.device = torch.device(device)

        def buf(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(num_steps, num_envs, *shape, dtype=dtype, device=self.device)

        self.obs = {g: buf(*spec.shape, dtype=spec.dtype) for g, spec in obs_spec.items()}
        self.actions = buf(action_dim)
        self.rewards = buf()
        self.dones = buf(dtype=torch.bool)
        self.values = buf()
        self.actions_log_prob = buf()
        self.mu = buf(action_dim)
        self.sigma = buf(action_dim)
        self.returns = buf()
        self.advantages = buf()
        self.step = 0

    def add(
        self,
        obs: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        values: torch.Tensor,
        actions_log_prob: torch.Tensor,
        mu: torch.Tensor,
        sigma: torch.Tensor,
    ) -> None:
        """Copy one transition of N envs into the next slot: obs groups (N, ...), actions/mu/sigma
        (N, A), rewards/dones/values/actions_log_prob (N,)."""
        if self.step >= self.num_steps:
            raise RuntimeError(f"rollout storage is full ({self.num_steps} steps); call clear() first")
        t = self.step
        for g, b in self.obs.items():
            b[t].copy_(obs[g])
        self.actions[t].copy_(actions)
        self.rewards[t].copy_(rewards)
        self.dones[t].copy_(dones)
        self.values[t].copy_(values)
        self.actions_log_prob[t].copy_(actions_log_prob)
        self.mu[t].copy_(mu)
        self.sigma[t].copy_(sigma)
        self.step += 1

    def clear(self) -> None:
        """Start a new rollout; buffers are overwritten, not reallocated."""
        self.step = 0

    def compute_returns(self, last_values: torch.Tensor, gamma: float, lam: float) -> None:
        """Fill returns and batch-normalized advantages (T, N) given last_values (N,)."""
        if self.step != self.num_steps:
            raise RuntimeError(f"rollout has {self.step} of {self.num_steps} steps")
        returns, advantages = compute_gae(self.rewards, self.values, self.dones, last_values, gamma, lam)
        self.returns.copy_(returns)
        self.advantages.copy_((advantages - advantages.mean()) / (advantages.std() + 1e-8))

    def mini_batch_generator(self, num_mini_batches: int, num_epochs: int) -> Iterator[MiniBatch]:
        """Yield num_epochs x num_mini_batches random minibatches of (T * N) // num_mini_batches rows;
        each epoch is a fresh permutation, and the remainder rows of a permutation are skipped."""
        batch_size = self.num_steps * self.num_envs
        mini_batch_size = batch_size // num_mini_batches
        if mini_batch_size == 0:
            raise ValueError(f"{num_mini_batches} minibatches but only {batch_size} transitions")
        obs = {g: b.flatten(0, 1) for g, b in self.obs.items()}
        flat = {
            name: getattr(self, name).flatten(0, 1)
            for name in ("actions", "values", "returns", "advantages", "actions_log_prob", "mu", "sigma")
        }
        for _ in range(num_epochs):
            perm = torch.randperm(batch_size, device=self.device)
            for i in range(num_mini_batches):
                idx = perm[i * mini_batch_size : (i + 1) * mini_batch_size]
                yield MiniBatch(
                    obs={g: x[idx] for g, x in obs.items()}, **{name: x[idx] for name, x in flat.items()}
                )
