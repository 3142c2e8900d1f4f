"""Policy networks: MLPs, observation normalizers, Gaussian action heads, actor-critics (torch only)."""

from policies.actor_critic import ActorCritic
from policies.distributions import (
    DiagGaussian,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    gaussian_sample,
)
from policies.mlp import MLP, make_activation
from policies.normalizer import EmpiricalNormalizer

__all__ = [
    "MLP",
    "ActorCritic",
    "DiagGaussian",
    "EmpiricalNormalizer",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_sample",
    "make_activation",
]
