"""A probabilistic ensemble of MLPs (PETS, MBPO): E members trained and evaluated as one computation.

Each member maps (state, action) to a Gaussian over the target ``[delta state, reward, cost]`` and a
termination logit. Weights are stacked (E, in, out) and applied with ``torch.baddbmm``, so E members
cost one batched matrix product per layer, never a Python loop over members. Inputs and targets are
normalized with statistics kept as buffers, so they are saved with the weights. The log-variance is
soft-bounded by learned limits (PETS), which keeps the NLL from chasing zero variance on data it has
memorized.

Shapes: S state dim, A action dim, O = S + 2 target dim, E members, B batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from world_models.errors import WorldModelError


@dataclass
class Prediction:
    """One step predicted by every member, in raw (unnormalized) units. Each field is (E, B, ...)."""

    delta_mean: torch.Tensor  # (E, B, S)
    delta_std: torch.Tensor  # (E, B, S) aleatoric std of each member
    reward_mean: torch.Tensor  # (E, B)
    reward_std: torch.Tensor  # (E, B)
    cost_mean: torch.Tensor  # (E, B)
    cost_std: torch.Tensor  # (E, B)
    terminated_prob: torch.Tensor  # (E, B)


class Ensemble(nn.Module):
    """E Gaussian MLP members; ``elites`` (the best by validation error) are the ones used to predict."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        members: int = 7,
        elites: int = 5,
        hidden: Sequence[int] = (200, 200, 200),
        min_logvar: float = -10.0,
        max_logvar: float = 0.5,
    ) -> None:
        super().__init__()
        if state_dim < 1 or action_dim < 1:
            raise WorldModelError(f"state and action sizes must be >= 1, got {state_dim} and {action_dim}")
        if members < 1 or not 1 <= elites <= members:
            raise WorldModelError(f"need members >= 1 and 1 <= elites <= members, got {members} and {elites}")
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.members, self.num_elites = int(members), int(elites)
        self.hidden = [int(h) for h in hidden]
        in_dim, out_dim = self.state_dim + self.action_dim, self.state_dim + 2
        self.out_dim = out_dim
        sizes = [in_dim, *self.hidden, 2 * out_dim + 1]  # mean, log-variance, termination logit
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            w = torch.empty(members, fan_in, fan_out)
            for e in range(members):  # initialisation only; training and prediction are batched
                nn.init.trunc_normal_(w[e], std=1.0 / (2.0 * math.sqrt(fan_in)))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, fan_out)))
        self.max_logvar = nn.Parameter(torch.full((out_dim,), float(max_logvar)))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), float(min_logvar)))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(out_dim))
        self.register_buffer("out_std", torch.ones(out_dim))
        self.register_buffer("elite_idx", torch.arange(elites))

    # -- configuration ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What ``Ensemble(**config)`` needs to rebuild this architecture."""
        return {
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "members": self.members,
            "elites": self.num_elites,
            "hidden": list(self.hidden),
            "min_logvar": float(self.min_logvar.detach().min()),
            "max_logvar": float(self.max_logvar.detach().max()),
        }

    @torch.no_grad()
    def set_normalization(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Input (B, S + A) and target (B, O) statistics of the training data.

        An input that never varied in the training data (a contact flag never set) keeps std 1
        (MBPO), so a value first seen later enters at its own scale instead of amplified a
        million times.
        """
        self.in_mean.copy_(inputs.mean(0))
        std = inputs.std(0)
        self.in_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        self.out_mean.copy_(targets.mean(0))
        self.out_std.copy_(targets.std(0).clamp_min(1e-6))

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, members: torch.Tensor | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalized inputs (E, B, S + A) -> normalized mean (E, B, O), log-variance (E, B, O) and
        termination logit (E, B). Member e reads row block x[e].

        With ``members`` (M,) long, only those members run and x is (M, B, S + A), block m read by
        member ``members[m]`` (a caller using a subset pays for that subset alone). ``dtype``
        (e.g. torch.bfloat16) runs the layers in that precision; the outputs are float32 either way.
        """
        h = x if dtype is None else x.to(dtype)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if members is not None:
                w, b = w[members], b[members]
            if dtype is not None:
                w, b = w.to(dtype), b.to(dtype)
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.silu(h)
        h = h.float()
        o = self.out_dim
        mean, raw = h[..., :o], h[..., o : 2 * o]
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, h[..., 2 * o]

    def normalize_input(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (torch.cat([state, action], -1) - self.in_mean) / self.in_std

    def normalize_target(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.out_mean) / self.out_std

    def predict(self, state: torch.Tensor, action: torch.Tensor) -> Prediction:
        """Every member's prediction for (B, S) states and (B, A) actions, or (E, B, ...) per member."""
        self.check_dims(state, action)
        x = self.normalize_input(state, action)
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        mean, logvar, logit = self(x)
        mean = mean * self.out_std + self.out_mean
        std = torch.exp(0.5 * logvar) * self.out_std
        s = self.state_dim
        return Prediction(
            delta_mean=mean[..., :s],
            delta_std=std[..., :s],
            reward_mean=mean[..., s],
            reward_std=std[..., s],
            cost_mean=mean[..., s + 1],
            cost_std=std[..., s + 1],
            terminated_prob=torch.sigmoid(logit),
        )

    def check_dims(self, state: torch.Tensor, action: torch.Tensor) -> None:
        """A one-line WorldModelError when the inputs do not have this model's sizes."""
        if state.shape[-1] != self.state_dim:
            raise WorldModelError(
                f"the world model takes states of size {self.state_dim}, got {state.shape[-1]} "
                "(a model of another task or observation layout?)"
            )
        if action.shape[-1] != self.action_dim:
            raise WorldModelError(
                f"the world model takes actions of size {self.action_dim}, got {action.shape[-1]}"
            )

    # -- training --------------------------------------------------------------------------------
    def loss(
        self, x: torch.Tensor, y: torch.Tensor, done: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gaussian NLL + termination BCE per member on normalized (E, B, ...) batches.

        Returns the scalar to minimize (members summed, so each gets its own full gradient) and the
        per-member parts (E,) for logging.
        """
        mean, logvar, logit = self(x)
        inv_var = torch.exp(-logvar)
        nll = (((mean - y) ** 2) * inv_var + logvar).mean((1, 2))
        bce = F.binary_cross_entropy_with_logits(logit, done.float(), reduction="none").mean(1)
        bounds = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        total = (nll + bce).sum() + bounds
        return total, {
            "nll": nll.detach(),
            "bce": bce.detach(),
            "mse": ((mean - y) ** 2).mean((1, 2)).detach(),
        }
