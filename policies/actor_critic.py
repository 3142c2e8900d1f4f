"""Gaussian actor and value critic, each an MLP behind its own observation normalizer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from policies.distributions import DiagGaussian, gaussian_entropy, gaussian_log_prob, gaussian_sample
from policies.mlp import MLP
from policies.normalizer import EmpiricalNormalizer


class ActorCritic(nn.Module):
    """Separate actor (policy obs -> action mean) and critic (critic obs -> value) networks.

    Normalization runs inside every forward path, so a saved or exported model is self-contained.
    ``act`` and ``update_distribution`` keep the last (mu, sigma) for log-probs and entropy; until then
    the distribution properties raise AttributeError, so ``hasattr`` (used by jit) stays False.
    """

    __jit_unused_properties__ = ["action_mean", "action_std", "entropy"]  # noqa: RUF012

    def __init__(
        self,
        num_actor_obs: int,
        num_critic_obs: int,
        num_actions: int,
        actor_hidden_dims: Sequence[int] = (256, 128, 64),
        critic_hidden_dims: Sequence[int] = (256, 128, 64),
        activation: str = "elu",
        init_noise_std: float = 1.0,
        noise_std_type: str = "scalar",
        normalize_obs: bool = True,
    ):
        super().__init__()
        self.num_actor_obs = num_actor_obs
        self.num_critic_obs = num_critic_obs
        self.num_actions = num_actions
        self.normalize_obs = normalize_obs
        self.actor_normalizer: nn.Module = (
            EmpiricalNormalizer(num_actor_obs) if normalize_obs else nn.Identity()
        )
        self.critic_normalizer: nn.Module = (
            EmpiricalNormalizer(num_critic_obs) if normalize_obs else nn.Identity()
        )
        self.actor = MLP(num_actor_obs, actor_hidden_dims, num_actions, activation)
        self.critic = MLP(num_critic_obs, critic_hidden_dims, 1, activation)
        self.noise = DiagGaussian(num_actions, init_noise_std, noise_std_type)
        self._mu: torch.Tensor | None = None
        self._sigma: torch.Tensor | None = None

    def forward(self, actor_obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action for deployment: actor_obs (N, D) -> action mean (N, A)."""
        return self.actor(self.actor_normalizer(actor_obs))

    def update_distribution(self, actor_obs: torch.Tensor) -> None:
        """Compute and keep the action distribution for actor_obs: (N, D)."""
        mu = self.forward(actor_obs)
        self._mu, self._sigma = mu, self.noise(mu)

    def act(self, actor_obs: torch.Tensor) -> torch.Tensor:
        """Sample actions (N, A) for actor_obs (N, D); the distribution is kept for log-probs."""
        self.update_distribution(actor_obs)
        return gaussian_sample(self.action_mean, self.action_std)

    def act_inference(self, actor_obs: torch.Tensor) -> torch.Tensor:
        """Action mean (N, A) for actor_obs (N, D), no sampling."""
        return self.forward(actor_obs)

    def get_actions_log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-prob (N,) of actions (N, A) under the last computed distribution."""
        return gaussian_log_prob(actions, self.action_mean, self.action_std)

    def evaluate(self, critic_obs: torch.Tensor) -> torch.Tensor:
        """Values (N,) for critic_obs (N, Dc)."""
        return self.critic(self.critic_normalizer(critic_obs)).squeeze(-1)

    def update_normalization(self, actor_obs: torch.Tensor, critic_obs: torch.Tensor) -> None:
        """Feed (N, D) / (N, Dc) observations to the normalizers (no-op when normalization is off)."""
        if self.normalize_obs:
            self.actor_normalizer.update(actor_obs)
            self.critic_normalizer.update(critic_obs)

    @property
    def action_mean(self) -> torch.Tensor:
        """(N, A) mean of the last distribution."""
        if self._mu is None:
            raise AttributeError("no action distribution yet: call act() or update_distribution() first")
        return self._mu

    @property
    def action_std(self) -> torch.Tensor:
        """(N, A) std of the last distribution."""
        if self._sigma is None:
            raise AttributeError("no action distribution yet: call act() or update_distribution() first")
        return self._sigma

    @property
    def entropy(self) -> torch.Tensor:
        """(N,) entropy of the last distribution, summed over actions."""
        return gaussian_entropy(self.action_std)
