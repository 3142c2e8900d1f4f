"""Gaussian actor and value critic, each an MLP behind its own observation normalizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from policies.distributions import DiagGaussian, gaussian_entropy, gaussian_log_prob, gaussian_sample
from policies.mlp import MLP
from policies.normalizer import EmpiricalNormalizer
from policies.spec import TensorSpec


class ActorCritic(nn.Module):
    """Separate actor (policy obs -> action mean) and critic (critic obs -> value) networks.

    Built from an observation spec: the actor reads group ``actor_obs`` (default "policy"), the
    critic group ``critic_obs`` (default "critic"); both must be vector groups. Every method takes
    the env's observation dict. Normalization runs inside every forward path, so a saved or exported
    model is self-contained. ``act`` and ``update_distribution`` keep the last (mu, sigma) for
    log-probs and entropy; until then the distribution properties raise AttributeError.
    """

    __jit_unused_properties__ = ["action_mean", "action_std", "entropy"]  # noqa: RUF012

    def __init__(
        self,
        obs_spec: Mapping[str, TensorSpec],
        num_actions: int,
        actor_hidden_dims: Sequence[int] = (256, 128, 64),
        critic_hidden_dims: Sequence[int] = (256, 128, 64),
        activation: str = "elu",
        init_noise_std: float = 1.0,
        noise_std_type: str = "scalar",
        normalize_obs: bool = True,
        actor_obs: str = "policy",
        critic_obs: str = "critic",
    ):
        super().__init__()
        for role, group in (("actor_obs", actor_obs), ("critic_obs", critic_obs)):
            if group not in obs_spec:
                raise ValueError(
                    f"{role}={group!r} is not an observation group; the env has {sorted(obs_spec)}"
                )
            spec = obs_spec[group]
            if spec.kind != "vector" or len(spec.shape) != 1:
                raise ValueError(
                    f"the MLP actor-critic reads vector groups; {role}={group!r} is {spec.kind} "
                    f"{tuple(spec.shape)}"
                )
        self.actor_obs, self.critic_obs = actor_obs, critic_obs
        self.obs_groups = tuple(dict.fromkeys((actor_obs, critic_obs)))
        self.num_actor_obs = obs_spec[actor_obs].dim
        self.num_critic_obs = obs_spec[critic_obs].dim
        self.num_actions = num_actions
        self.normalize_obs = normalize_obs
        self.actor_normalizer: nn.Module = (
            EmpiricalNormalizer(self.num_actor_obs) if normalize_obs else nn.Identity()
        )
        self.critic_normalizer: nn.Module = (
            EmpiricalNormalizer(self.num_critic_obs) if normalize_obs else nn.Identity()
        )
        self.actor = MLP(self.num_actor_obs, actor_hidden_dims, num_actions, activation)
        self.critic = MLP(self.num_critic_obs, critic_hidden_dims, 1, activation)
        self.noise = DiagGaussian(num_actions, init_noise_std, noise_std_type)
        self._mu: torch.Tensor | None = None
        self._sigma: torch.Tensor | None = None

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic action (N, A) for deployment and evaluation."""
        return self.actor(self.actor_normalizer(obs[self.actor_obs]))

    def actor_module(self) -> nn.Module:
        """The deterministic actor path as one module: (N, D) group ``actor_obs`` -> action mean (N, A).

        Export composes its graph from this very module (normalizer -> actor).
        """
        return nn.Sequential(self.actor_normalizer, self.actor)

    def update_distribution(self, obs: dict[str, torch.Tensor]) -> None:
        """Compute and keep the action distribution for the observation."""
        mu = self.forward(obs)
        self._mu, self._sigma = mu, self.noise(mu)

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample actions (N, A); the distribution is kept for log-probs."""
        self.update_distribution(obs)
        return gaussian_sample(self.action_mean, self.action_std)

    def act_inference(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Action mean (N, A), no sampling."""
        return self.forward(obs)

    def get_actions_log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-prob (N,) of actions (N, A) under the last computed distribution."""
        return gaussian_log_prob(actions, self.action_mean, self.action_std)

    def evaluate(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values (N,) of the observation."""
        return self.critic(self.critic_normalizer(obs[self.critic_obs])).squeeze(-1)

    def update_normalization(self, obs: dict[str, torch.Tensor]) -> None:
        """Feed the observation to the normalizers (no-op when normalization is off)."""
        if self.normalize_obs:
            self.actor_normalizer.update(obs[self.actor_obs])
            self.critic_normalizer.update(obs[self.critic_obs])

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
