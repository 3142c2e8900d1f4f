"""Sampling-based planning over a learned model: MPPI (TD-MPC2's variant) and CEM.

Every env plans at once: the S candidate action sequences of each of N start states are one
(H, N*S, ...) batch through the ensemble's fast path (``imagine(..., spread=False)``: each
candidate follows one elite member, PETS's trajectory sampling). A candidate's score is its
predicted discounted return, each step weighted by the probability the episode is still running,
minus ``cost_weight`` times its predicted discounted cost. After each iteration the sampling
distribution (a diagonal Gaussian per step, (N, H, A)) moves to the elites: their plain mean and
std (CEM) or their exponentially score-weighted ones (MPPI). The plan of the last call, shifted by
one step, warm-starts the next; a policy (state -> action) may propose a share of the candidates.

Shapes: N start states, S state dim, A action dim, H horizon, K candidates per start state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError
from world_models.imagine import imagine
from world_models.model import WorldModel

Actor = Callable[[torch.Tensor], torch.Tensor]  # model state (B, S) -> action (B, A)
RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

METHODS = ("mppi", "cem")


@dataclass
class PlannerConfig:
    """Planner settings; invalid values raise WorldModelError naming the field."""

    method: str = "mppi"  # mppi | cem
    horizon: int = 8  # steps planned ahead
    samples: int = 256  # candidate action sequences per env and iteration (policy ones included)
    elites: int = 32  # best candidates the distribution moves to
    iterations: int = 4
    temperature: float = 0.5  # MPPI: weights exp((score - best) / (temperature * elite score std))
    min_std: float = 0.05
    max_std: float = 1.0  # also the initial std of every step
    momentum: float = 0.0  # share of the previous iteration's mean kept (0: none)
    discount: float = 0.99
    cost_weight: float = 0.0  # objective = return - cost_weight * cost
    policy_fraction: float = 0.0  # share of the candidates proposed by the policy, when one is given
    model_noise: bool = False  # sample the model's aleatoric noise in the rollouts
    action_noise: bool = True  # exploring (explore=True): first action + its final std * N(0, 1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            allowed = (int, float) if kind is float else (kind,)
            if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
                raise WorldModelError(f"planner.{f.name} must be {kind.__name__}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise WorldModelError(f"planner.{f.name} must be finite, got {value}")
        checks = {
            "method": self.method in METHODS,
            "horizon": self.horizon >= 1,
            "samples": self.samples >= 2,
            "elites": 1 <= self.elites <= self.samples,
            "iterations": self.iterations >= 1,
            "temperature": self.temperature > 0,
            "min_std": 0 <= self.min_std <= self.max_std,
            "max_std": self.max_std > 0,
            "momentum": 0 <= self.momentum < 1,
            "discount": 0 < self.discount <= 1,
            "cost_weight": self.cost_weight >= 0,
            "policy_fraction": 0 <= self.policy_fraction < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise WorldModelError(
                f"planner.{bad[0]} is out of range ({getattr(self, bad[0])!r}); "
                f"method in {METHODS}, elites <= samples, 0 <= min_std <= max_std, 0 <= momentum < 1"
            )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> PlannerConfig:
        """From a config block; unknown keys are a WorldModelError naming them."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise WorldModelError(f"unknown planner key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**cfg)


@dataclass
class Plan:
    """The result of one planning call for N start states."""

    action: torch.Tensor  # (N, A) the action to apply now
    mean: torch.Tensor  # (N, H, A) the final sampling mean (the plan)
    std: torch.Tensor  # (N, H, A) the final sampling std
    score: torch.Tensor  # (N,) the predicted objective of the best candidate of the last iteration

    def stats(self) -> dict[str, float]:
        return {
            "planner/score": float(self.score.mean()),
            "planner/std": float(self.std.mean()),
            "planner/action_abs": float(self.action.abs().mean()),
        }


def shift(mean: torch.Tensor) -> torch.Tensor:
    """(N, H, A) plan one step later: steps 1..H-1 move forward, the last one is repeated."""
    return torch.cat([mean[:, 1:], mean[:, -1:]], 1)


def objective(
    reward: torch.Tensor,
    cost: torch.Tensor,
    alive: torch.Tensor,
    discount: float,
    cost_weight: float = 0.0,
) -> torch.Tensor:
    """(H, ...) predicted rewards, costs and survival probabilities -> (...) discounted objective."""
    h = reward.shape[0]
    w = discount ** torch.arange(h, device=reward.device, dtype=reward.dtype)
    w = w.reshape(h, *([1] * (reward.dim() - 1))) * alive
    return (w * (reward - cost_weight * cost)).sum(0)


def _elite_forward(
    ens: Ensemble, weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Ensemble.forward`` restricted to the elites' stacked weights: (El, B, S + A) normalized inputs."""
    h = x
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.baddbmm(b, h, w)
        if i < last:
            h = torch.nn.functional.silu(h)
    o = ens.out_dim
    mean, raw = h[..., :o], h[..., o : 2 * o]
    logvar = ens.max_logvar - torch.nn.functional.softplus(ens.max_logvar - raw)
    logvar = ens.min_logvar + torch.nn.functional.softplus(logvar - ens.min_logvar)
    return mean, logvar, h[..., 2 * o]


@torch.no_grad()
def elite_rollout(
    ens: Ensemble,
    state: torch.Tensor,
    actions: torch.Tensor,
    *,
    noise: bool = False,
    generator: torch.Generator | None = None,
    reward_fn: RewardFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted reward, cost and survival probability, each (H, N, K), of actions (H, N, K, A).

    ``reward_fn(state, action, next_state) -> (reward, cost)`` (a ``RewardHead``) scores each
    predicted transition in place of the ensemble's own reward and cost heads.

    The planner's fast path: candidate k follows elite ``k mod El`` for the whole horizon (PETS's
    trajectory sampling), and the candidates are laid out as (El, N * K / El) blocks of one batched
    matrix product per layer, so each costs exactly one member and nothing is sorted or scattered.
    """
    h, n, k, a = actions.shape
    s, idx = ens.state_dim, ens.elite_idx
    el = len(idx)
    kp = -(-k // el) * el  # candidates padded to a multiple of El (the padding repeats candidate 0)
    acts = actions.float().clamp(-1.0, 1.0)
    if kp != k:
        acts = torch.cat([acts, acts[:, :, :1].expand(h, n, kp - k, a)], 2)
    # (H, N, K', A) -> (H, El, N * K' / El, A): candidate j * El + e goes to member e.
    acts = acts.reshape(h, n, kp // el, el, a).permute(0, 3, 1, 2, 4).reshape(h, el, -1, a)
    weights = [w[idx] for w in ens.weights]
    biases = [b[idx] for b in ens.biases]
    x = state.float()[None, :, None].expand(el, n, kp // el, s).reshape(el, -1, s)
    rewards, costs, terms = [], [], []
    for t in range(h):
        mean, logvar, logit = _elite_forward(ens, weights, biases, ens.normalize_input(x, acts[t]))
        mean = mean * ens.out_std + ens.out_mean
        delta = mean[..., :s]
        if noise:
            eps = torch.randn(
                delta.shape, generator=generator, device="cpu" if generator is not None else x.device
            ).to(x.device)
            delta = delta + torch.exp(0.5 * logvar[..., :s]) * ens.out_std[:s] * eps
        if reward_fn is None:
            rewards.append(mean[..., s])
            costs.append(mean[..., s + 1])
        else:
            r, c = reward_fn(x, acts[t], x + delta)
            rewards.append(r)
            costs.append(c)
        x = x + delta
        terms.append(torch.sigmoid(logit))

    def unlay(parts: list[torch.Tensor]) -> torch.Tensor:  # (H, El, N*K'/El) -> (H, N, K)
        t = torch.stack(parts).reshape(h, el, n, kp // el).permute(0, 2, 3, 1).reshape(h, n, kp)
        return t[:, :, :k]

    term = unlay(terms)
    alive = torch.cumprod(torch.cat([torch.ones_like(term[:1]), 1.0 - term[:-1]]), 0)
    return unlay(rewards), unlay(costs), alive


class Planner:
    """MPPI or CEM over an ensemble; ``plan`` keeps nothing, the caller keeps the warm start."""

    def __init__(self, cfg: PlannerConfig, action_dim: int) -> None:
        self.cfg, self.action_dim = cfg, int(action_dim)

    def initial(self, n: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean zeros and std ``max_std``, each (N, H, A): the distribution with no warm start."""
        shape = (n, self.cfg.horizon, self.action_dim)
        return torch.zeros(shape, device=device), torch.full(shape, self.cfg.max_std, device=device)

    def _policy_actions(
        self, ens: Ensemble, state: torch.Tensor, policy: Actor, k: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """(H, N, k, A) actions of ``policy`` rolled through the model from each start state."""
        fut = imagine(
            ens,
            state,
            policy,
            self.cfg.horizon,
            k,
            noise=self.cfg.model_noise,
            spread=False,
            generator=generator,
        )
        return fut.action

    def score(
        self,
        ens: Ensemble,
        state: torch.Tensor,
        actions: torch.Tensor,
        generator: torch.Generator | None,
        reward_fn: RewardFn | None = None,
    ) -> torch.Tensor:
        """(N, K) objective of candidate actions (H, N, K, A) from start states (N, S)."""
        c = self.cfg
        reward, cost, alive = elite_rollout(
            ens, state, actions, noise=c.model_noise, generator=generator, reward_fn=reward_fn
        )
        return objective(reward, cost, alive, c.discount, c.cost_weight)

    @torch.no_grad()
    def plan(
        self,
        model: WorldModel | Ensemble,
        state: torch.Tensor,
        warm: torch.Tensor | None = None,
        *,
        policy: Actor | None = None,
        explore: bool = False,
        generator: torch.Generator | None = None,
        reward_fn: RewardFn | None = None,
    ) -> Plan:
        """Plan from start states (N, S). ``warm``: the previous call's ``Plan.mean`` (N, H, A), shifted
        here by one step; ``policy``: proposes ``policy_fraction`` of the candidates; ``explore``: the
        action gets the final std's noise (``action_noise``), else it is the plan's first mean action;
        ``reward_fn``: scores predicted transitions instead of the ensemble's reward and cost heads."""
        c = self.cfg
        ens = model.ensemble if isinstance(model, WorldModel) else model
        if state.dim() != 2 or state.shape[-1] != ens.state_dim:
            raise WorldModelError(
                f"start states must be (N, {ens.state_dim}), got shape {tuple(state.shape)}"
            )
        if ens.action_dim != self.action_dim:
            raise WorldModelError(
                f"the planner plans {self.action_dim}-D actions, the model takes {ens.action_dim}"
            )
        n, dev, a_dim, h = state.shape[0], state.device, self.action_dim, c.horizon
        mean, std = self.initial(n, dev)
        if warm is not None:
            if warm.shape != mean.shape:
                raise WorldModelError(f"warm start must be {tuple(mean.shape)}, got {tuple(warm.shape)}")
            mean = shift(warm.to(dev))
        k_pi = round(c.policy_fraction * c.samples) if policy is not None else 0
        k_pi = min(k_pi, c.samples - 2)
        fixed = self._policy_actions(ens, state, policy, k_pi, generator) if k_pi > 0 else None
        k_rand = c.samples - k_pi - 1  # the current mean itself is always a candidate
        score_best = torch.zeros(n, device=dev)
        for _ in range(c.iterations):
            eps = torch.randn(
                (h, n, k_rand, a_dim), generator=generator, device="cpu" if generator is not None else dev
            ).to(dev)
            mu, sd = mean.transpose(0, 1)[:, :, None], std.transpose(0, 1)[:, :, None]  # (H, N, 1, A)
            cand = [mu, (mu + sd * eps).clamp(-1.0, 1.0)]
            if fixed is not None:
                cand.append(fixed)
            actions = torch.cat(cand, 2)  # (H, N, K, A)
            value = torch.nan_to_num(
                self.score(ens, state, actions, generator, reward_fn), nan=-1e9
            )  # (N, K)
            top_value, top = value.topk(c.elites, dim=1)  # (N, El)
            rows = torch.arange(n, device=dev)[:, None]
            elite = actions.permute(1, 2, 0, 3)[rows, top]  # (N, El, H, A)
            if c.method == "mppi":
                spread = top_value.std(1, keepdim=True).clamp_min(1e-8) if c.elites > 1 else 1.0
                w = torch.softmax((top_value - top_value[:, :1]) / (c.temperature * spread), 1)
            else:
                w = torch.full_like(top_value, 1.0 / c.elites)
            w = w[:, :, None, None]
            new_mean = (w * elite).sum(1)
            new_std = (w * (elite - new_mean[:, None]) ** 2).sum(1).sqrt()
            mean = c.momentum * mean + (1.0 - c.momentum) * new_mean
            std = new_std.clamp(c.min_std, c.max_std)
            score_best = top_value[:, 0]
        action = mean[:, 0]
        if explore and c.action_noise:
            noise = torch.randn(
                (n, a_dim), generator=generator, device="cpu" if generator is not None else dev
            ).to(dev)
            action = action + std[:, 0] * noise
        return Plan(action.clamp(-1.0, 1.0), mean, std, score_best)
