"""Action-chunk heads of the VLA policy: per-dimension bins (tokens) or a Gaussian, both exact.

A head maps features (B, F) to a chunk of C actions of A dims. The token head gives logits
(B, C, A, K) over K bins whose centres split [-1, 1] evenly (``bin_centers``); the distribution of a
chunk factorizes over its C * A tokens, so the log-probability of any set of tokens is the sum of
their ``log_softmax`` entries, exactly. Sampling at temperature T draws from softmax(logits / T) and
every log-probability, entropy and moment here is of that same tempered distribution, so what the
algorithm stores is the probability of what was drawn. Greedy (argmax) does not depend on T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bin_centers(bins: int) -> torch.Tensor:
    """(K,) centres of K equal bins over [-1, 1]: the values a token decodes to."""
    return torch.linspace(-1.0, 1.0, bins)


def tokenize(actions: torch.Tensor, bins: int) -> torch.Tensor:
    """Actions (..., A) in [-1, 1] -> int64 tokens (...) of the nearest bin centre."""
    return ((actions.clamp(-1.0, 1.0) + 1.0) * (0.5 * (bins - 1))).round().long()


def token_log_prob(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token log-probs (...) of int64 tokens (...) under softmax(logits (..., K) / T)."""
    logp = F.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token entropy (...) of softmax(logits (..., K) / T)."""
    logp = F.log_softmax(logits / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sample_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Tokens (...) drawn from softmax(logits (..., K) / T)."""
    probs = F.softmax(logits / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


class TokenHead(nn.Module):
    """features (B, F) -> logits (B, C, A, K) over K bins per action dimension of a C-step chunk."""

    def __init__(self, features: int, chunk: int, action_dim: int, bins: int = 32):
        super().__init__()
        if bins < 2:
            raise ValueError(f"policy.bins must be >= 2, got {bins}")
        self.chunk, self.action_dim, self.bins = chunk, action_dim, bins
        self.linear = nn.Linear(features, chunk * action_dim * bins)
        nn.init.orthogonal_(self.linear.weight, 0.01)  # near-uniform bins at the start
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("centers", bin_centers(bins))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).view(-1, self.chunk, self.action_dim, self.bins)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 tokens (...) -> bin centres (...)."""
        return self.centers[tokens]

    def greedy(self, logits: torch.Tensor) -> torch.Tensor:
        """The most likely chunk (B, C, A) (argmax per token, decoded)."""
        return self.decode(logits.argmax(-1))

    def moments(self, logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (..., ) of the decoded value of each token's tempered distribution."""
        p = F.softmax(logits / temperature, dim=-1)
        mean = (p * self.centers).sum(-1)
        var = (p * (self.centers - mean.unsqueeze(-1)).square()).sum(-1)
        return mean, var.clamp_min(1e-12).sqrt()


class GaussianChunkHead(nn.Module):
    """features (B, F) -> chunk means (B, C, A); one learned log-std per action dim (state-free)."""

    def __init__(self, features: int, chunk: int, action_dim: int, init_std: float = 1.0):
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        self.linear = nn.Linear(features, chunk * action_dim)
        nn.init.orthogonal_(self.linear.weight, 0.01)
        nn.init.zeros_(self.linear.bias)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(torch.tensor(init_std).log())))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).view(-1, self.chunk, self.action_dim)

    def std(self, like: torch.Tensor) -> torch.Tensor:
        """(B, A) std broadcast to ``like`` (B, A)."""
        return self.log_std.exp().expand_as(like)
