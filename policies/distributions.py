"""Diagonal Gaussian action noise with a state-independent std, and its closed-form helpers."""

from __future__ import annotations

import math

import torch
from torch import nn

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class DiagGaussian(nn.Module):
    """Learned per-action std, independent of the observation.

    noise_std_type "scalar" learns the std directly; "log" learns log(std), which keeps it positive.
    """

    def __init__(self, num_actions: int, init_noise_std: float = 1.0, noise_std_type: str = "scalar"):
        super().__init__()
        if init_noise_std <= 0:
            raise ValueError(f"init_noise_std must be > 0, got {init_noise_std}")
        self.noise_std_type = noise_std_type
        if noise_std_type == "scalar":
            self.std_param = nn.Parameter(torch.full((num_actions,), float(init_noise_std)))
        elif noise_std_type == "log":
            self.std_param = nn.Parameter(torch.full((num_actions,), math.log(init_noise_std)))
        else:
            raise ValueError(f"unknown noise_std_type {noise_std_type!r}; valid: 'scalar', 'log'")

    def std(self) -> torch.Tensor:
        """(num_actions,) current std."""
        if self.noise_std_type == "log":
            return self.std_param.exp()
        # A directly learned std can be pushed through zero by a large step; keep it a valid scale.
        return self.std_param.clamp(min=1e-6)

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        """mean: (N, A) -> sigma: (N, A), the std broadcast to the batch."""
        return self.std().expand_as(mean)


def gaussian_sample(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(N, A) draw from N(mu, sigma^2)."""
    return mu + sigma * torch.randn_like(mu)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Log density of x under N(mu, sigma^2), summed over the last (action) dim: (N, A) -> (N,)."""
    z = (x - mu) / sigma
    return (-0.5 * z.square() - sigma.log() - _LOG_SQRT_2PI).sum(dim=-1)


def gaussian_entropy(sigma: torch.Tensor) -> torch.Tensor:
    """Entropy of N(., sigma^2) summed over the last dim: (N, A) -> (N,)."""
    return (0.5 + _LOG_SQRT_2PI + sigma.log()).sum(dim=-1)


def gaussian_kl(
    mu_p: torch.Tensor, sigma_p: torch.Tensor, mu_q: torch.Tensor, sigma_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) of two diagonal Gaussians, summed over the last dim: (N, A) x 4 -> (N,)."""
    ratio = (sigma_p / sigma_q).square()
    return 0.5 * (ratio + ((mu_p - mu_q) / sigma_q).square() - 1.0 - ratio.log()).sum(dim=-1)
