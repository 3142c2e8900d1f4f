"""A probabilistic ensemble of MLPs (PETS, MBPO): E members trained and evaluated as one computation.

Each member maps (state, action) to a Gaussian over the target ``[delta state, reward, cost]`` and a
termination logit. Weights are stacked (E, in, out) and applied with ``torch.baddbmm``, so E members
cost one batched matrix product per layer, never a Python loop over members. Inputs and targets are
normalized with statistics kept as buffers, so they are saved with the weights. The log-variance is
soft-bounded by learned limits (PETS), which keeps the NLL from chasing zero variance on data it has
memorized. With ``linear_skip`` each member also has a linear path from its input to the predicted
mean, so the part of the dynamics that is linear in (state, action) (a last action that is the action
just applied, a velocity integrated into a position) needs no fitting through three nonlinear layers.

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

STATE_MARGIN = 0.05  # share of each state dimension's training range allowed beyond it in imagination
OPTIONAL_BUFFERS = ("state_lo", "state_hi")  # absent from files written before they existed


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


@dataclass
class Layers:
    """The weights of some members in one dtype, as ``Ensemble.layers`` cuts them."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # (M, in, out) weight, (M, 1, out) bias per layer
    skip: torch.Tensor | None  # (M, S + A, O) linear path, when the ensemble has one
    dtype: torch.dtype | None


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
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        if state_dim < 1 or action_dim < 1:
            raise WorldModelError(f"state and action sizes must be >= 1, got {state_dim} and {action_dim}")
        if not isinstance(linear_skip, bool):
            raise WorldModelError(f"linear_skip must be true or false, got {linear_skip!r}")
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
        self.linear_skip = bool(linear_skip)
        # (E, in, O) input -> mean, zero at the start: the MLP's initial prediction is unchanged
        self.skip = nn.Parameter(torch.zeros(members, in_dim, out_dim)) if self.linear_skip else None
        self.max_logvar = nn.Parameter(torch.full((out_dim,), float(max_logvar)))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), float(min_logvar)))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(out_dim))
        self.register_buffer("out_std", torch.ones(out_dim))
        self.register_buffer("elite_idx", torch.arange(elites))
        # The range of the training states, widened by 5 % each side: imagination keeps its states
        # inside it (``imagine``), where the model has seen data. Unbounded until fitted.
        self.register_buffer("state_lo", torch.full((self.state_dim,), -math.inf))
        self.register_buffer("state_hi", torch.full((self.state_dim,), math.inf))

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
            "linear_skip": self.linear_skip,
        }

    @torch.no_grad()
    def set_normalization(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Input (B, S + A) and target (B, O) statistics of the training data.

        An input that never varied in the training data (a contact flag never set) keeps std 1
        (MBPO), so a value first seen later enters at its own scale instead of amplified a
        million times. The state bounds are the training states' range, widened by
        ``STATE_MARGIN`` of it each side.
        """
        self.in_mean.copy_(inputs.mean(0))
        std = inputs.std(0)
        self.in_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        self.out_mean.copy_(targets.mean(0))
        self.out_std.copy_(targets.std(0).clamp_min(1e-6))
        states = inputs[:, : self.state_dim]
        lo, hi = states.min(0).values, states.max(0).values
        margin = STATE_MARGIN * (hi - lo)
        self.state_lo.copy_(lo - margin)
        self.state_hi.copy_(hi + margin)

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
        return self.apply_layers(x, self.layers(members, dtype))

    def layers(self, members: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> Layers:
        """The weights of ``members`` (all when None) in ``dtype``: cut once, applied many times
        (a rollout reuses one selection for all its steps instead of copying weights every step)."""

        def cut(p: torch.Tensor) -> torch.Tensor:
            p = p if members is None else p[members]
            return p if dtype is None else p.to(dtype)

        pairs = [(cut(w), cut(b)) for w, b in zip(self.weights, self.biases, strict=True)]
        return Layers(pairs, None if self.skip is None else cut(self.skip), dtype)

    def apply_layers(
        self, x: torch.Tensor, layers: Layers
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` with weights cut by ``layers``: x is (M, B, S + A) for its M members."""
        h = x if layers.dtype is None else x.to(layers.dtype)
        inp, last = h, len(layers.pairs) - 1
        inplace = not torch.is_grad_enabled()  # no autograd graph needs the pre-activation
        for i, (w, b) in enumerate(layers.pairs):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.silu(h, inplace=inplace)
        o = self.out_dim
        h = h.float()
        mean = h[..., :o]
        if layers.skip is not None:
            mean = torch.bmm(inp, layers.skip).float() + mean
        raw = h[..., o : 2 * o]
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
        parts = self.terms(*self(x), y, done)
        return (parts["nll"] + parts["bce"]).sum() + self.bound_penalty(), {
            k: v.detach() for k, v in parts.items()
        }

    def rollout_loss(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        next_state: torch.Tensor,
        reward: torch.Tensor,
        cost: torch.Tensor,
        done: torch.Tensor,
        start_noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The multi-step loss on raw (T, E, B, ...) windows: each member rolls its own mean
        prediction T steps from the window's first state, and gradients run through the rollout, so
        the mean learns what compounds over T steps, not only the one-step error.

        Step 0 is the one-step loss (``loss``: Gaussian NLL, termination BCE). Steps 1 .. T-1 score
        the predicted mean state against the true one by squared error alone, so the variance heads
        keep meaning one step's noise (their calibration is not inflated by compounded error). The
        parts are averaged over the T steps; ``mse`` is the state's mean squared error over the
        window, in normalized units. T = 1 is exactly ``loss``.

        ``start_noise`` (E, B, S), raw units, moves the start of the rollout (not of the one-step
        NLL, which stays on the clean state so the variance heads keep meaning one step's noise):
        the mean is then also scored at step 0, so every step teaches the model to come back from
        where the perturbation put it.
        """
        s_dim, steps = self.state_dim, state.shape[0]
        std, shift = self.out_std[:s_dim], self.out_mean[:s_dim]
        mean, logvar, logit = self(self.normalize_input(state[0], action[0]))
        target = torch.cat([next_state[0] - state[0], reward[0][..., None], cost[0][..., None]], -1)
        first = self.terms(mean, logvar, logit, self.normalize_target(target), done[0])
        if start_noise is not None:
            start = state[0] + start_noise
            mean = self(self.normalize_input(start, action[0]))[0]
        else:
            start = state[0]
        pred = start + mean[..., :s_dim] * std + shift  # the member's predicted state after step 0
        err = (((pred - next_state[0]) / std) ** 2).mean((1, 2))
        later = err if start_noise is not None else torch.zeros_like(err)
        for t in range(1, steps):
            mean = self(self.normalize_input(pred, action[t]))[0]
            pred = pred + mean[..., :s_dim] * std + shift
            step = (((pred - next_state[t]) / std) ** 2).mean((1, 2))
            later, err = later + step, err + step
        total = first["nll"] + first["bce"] + later
        parts = {
            "nll": first["nll"],
            "bce": first["bce"],
            "mse": err / steps,
            "rollout_mse": later / max(1, steps - 1),
        }
        return total.sum() / steps + self.bound_penalty(), {k: v.detach() for k, v in parts.items()}

    @staticmethod
    def terms(
        mean: torch.Tensor, logvar: torch.Tensor, logit: torch.Tensor, y: torch.Tensor, done: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-member (E,) Gaussian NLL, termination BCE and squared error of one normalized step."""
        nll = (((mean - y) ** 2) * torch.exp(-logvar) + logvar).mean((1, 2))
        bce = F.binary_cross_entropy_with_logits(logit, done.float(), reduction="none").mean(1)
        return {"nll": nll, "bce": bce, "mse": ((mean - y) ** 2).mean((1, 2))}

    def bound_penalty(self) -> torch.Tensor:
        """PETS's small pull of the learned log-variance bounds towards each other."""
        return 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
