"""Multi-future imagined rollouts: ``imagine(model, start, actor_or_actions, horizon=H, futures=K)``.

Each of the K futures of a start state keeps one ensemble member for the whole horizon (PETS's
trajectory sampling) and samples its own Gaussian noise, so the futures spread out by both model
disagreement and predicted randomness. Inside, futures are a batch dimension: (N*K, ...) per step.
Out, every field is (H, N, K, ...).

With ``sample_members=False`` every future follows the elites' mean prediction, and with
``noise=False`` no noise is drawn: both off, the K futures are identical (a deterministic rollout).

Imagined states stay inside the fitted model's state bounds (the training states' range, widened by
5 % each side; ``Ensemble.state_lo``/``state_hi``): a future that drifts out of the data is held at
its edge instead of feeding the model inputs it has never seen, which is where open-loop errors
compound fastest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError
from world_models.fast_path import Actor, act_checked, draw_noise, rollout_blocks
from world_models.model import WorldModel

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # of the ensemble's layers


@dataclass
class Futures:
    """K imagined futures of N start states over H steps; every tensor is (H, N, K, ...) float32."""

    state: torch.Tensor  # (H, N, K, S) predicted state after each step
    action: torch.Tensor  # (H, N, K, A) the action taken at each step (clamped to [-1, 1])
    reward: torch.Tensor  # (H, N, K) predicted reward of each step
    cost: torch.Tensor  # (H, N, K) predicted cost of each step
    terminated: torch.Tensor  # (H, N, K) probability the episode ends at this step
    alive: torch.Tensor  # (H, N, K) probability it had not ended before this step
    epistemic: (
        torch.Tensor
    )  # (H, N, K, S) std of the elite members' mean state change (a read-only zero view when not measured)
    aleatoric: torch.Tensor  # (H, N, K, S) the future's own predicted std of the state change
    members: torch.Tensor  # (N, K) long: the member each future follows (-1: the elites' mean)

    @property
    def horizon(self) -> int:
        return self.state.shape[0]

    def std(self) -> torch.Tensor:
        """(H, N, K, S) total one-step predictive std: epistemic and aleatoric combined."""
        return torch.sqrt(self.epistemic**2 + self.aleatoric**2)


def _check(model: Ensemble, start: torch.Tensor, horizon: int, futures: int) -> None:
    if not isinstance(horizon, int) or horizon < 1:
        raise WorldModelError(f"horizon H must be an integer >= 1, got {horizon!r}")
    if not isinstance(futures, int) or futures < 1:
        raise WorldModelError(f"futures K must be an integer >= 1, got {futures!r}")
    if start.dim() != 2:
        raise WorldModelError(f"start states must be (N, S), got shape {tuple(start.shape)}")
    if start.shape[-1] != model.state_dim:
        raise WorldModelError(
            f"the world model takes states of size {model.state_dim}, got {start.shape[-1]} "
            "(a model of another task or observation layout?)"
        )


def _assign(model: Ensemble, n: int, k: int, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """(N, K) member per future: elites in turn from a random offset per start state (balanced)."""
    elites = model.elite_idx
    if not sample:
        return torch.full((n, k), -1, dtype=torch.long, device=elites.device)
    offset = torch.randint(len(elites), (n, 1), generator=generator, device="cpu").to(elites.device)
    turn = (torch.arange(k, device=elites.device)[None] + offset) % len(elites)
    return elites[turn]


def _rollout_all(
    ens: Ensemble,
    start: torch.Tensor,
    actor: Actor | torch.Tensor,
    acts: torch.Tensor | None,
    members: torch.Tensor,
    horizon: int,
    k: int,
    noise: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, ...]:
    """Every member predicts every particle each step: the epistemic spread is measured, and with
    ``members`` -1 (no sampling) each particle follows the elites' mean. Fields are (H, N*K, ...)."""
    n, s, dev = start.shape[0], ens.state_dim, start.device
    b, f32 = n * k, dict(device=dev, dtype=torch.float32)
    x = start.float().repeat_interleave(k, 0)
    flat_members, elites = members.reshape(-1), ens.elite_idx
    sample_members = bool((flat_members >= 0).all())
    # Every step writes into preallocated (H, N*K, ...) outputs: no per-field stack at the end.
    states = torch.empty(horizon, b, s, **f32)
    actions = torch.empty(horizon, b, ens.action_dim, **f32)
    rewards, costs, terms = (torch.empty(horizon, b, **f32) for _ in range(3))
    aleatoric = torch.empty(horizon, b, s, **f32)
    measured = len(elites) > 1
    epistemic = (
        torch.empty(horizon, b, s, **f32) if measured else torch.zeros((), **f32).expand(horizon, b, s)
    )
    bounded = bool(torch.isfinite(ens.state_lo).any() or torch.isfinite(ens.state_hi).any())
    slot = torch.searchsorted(elites, flat_members) if sample_members else None  # place among the elites
    idx = torch.arange(b, device=dev)
    for h in range(horizon):
        a = acts[h] if acts is not None else act_checked(actor, x, b, ens.action_dim)
        a = torch.clamp(a.float(), -1.0, 1.0, out=actions[h])
        inp = ens.normalize_input(x, a)
        mean_e, logvar_e, logit_e = ens(inp.expand(ens.members, *inp.shape), dtype=dtype)
        mean_e, logvar_e, logit_e = mean_e[elites], logvar_e[elites], logit_e[elites]  # (El, B, ...)
        if slot is not None:
            mean, logvar, logit = mean_e[slot, idx], logvar_e[slot, idx], logit_e[slot, idx]
        else:
            mean = mean_e.mean(0)
            logvar = torch.log(torch.exp(logvar_e).mean(0))
            logit = torch.logit(torch.sigmoid(logit_e).mean(0), eps=1e-6)
        if measured:
            torch.std(mean_e[..., :s] * ens.out_std[:s], 0, correction=0, out=epistemic[h])
        std = torch.mul(torch.exp(0.5 * logvar[:, :s]), ens.out_std[:s], out=aleatoric[h])
        delta = torch.addcmul(ens.out_mean[:s], mean[:, :s], ens.out_std[:s])
        if noise:
            delta.addcmul_(std, draw_noise(torch.empty_like(delta), generator))
        x = torch.add(x, delta, out=states[h])
        if bounded:
            torch.clamp(x, ens.state_lo, ens.state_hi, out=x)
        torch.addcmul(ens.out_mean[s], mean[:, s], ens.out_std[s], out=rewards[h])
        torch.addcmul(ens.out_mean[s + 1], mean[:, s + 1], ens.out_std[s + 1], out=costs[h])
        torch.sigmoid(logit, out=terms[h])
    return states, actions, rewards, costs, terms, epistemic, aleatoric


@torch.no_grad()
def imagine(
    model: WorldModel | Ensemble,
    start: torch.Tensor,
    actor_or_actions: Actor | torch.Tensor,
    horizon: int,
    futures: int = 1,
    *,
    noise: bool = True,
    sample_members: bool = True,
    spread: bool = True,
    generator: torch.Generator | None = None,
    precision: str = "float32",
) -> Futures:
    """Roll K futures of each start state (N, S) H steps through the model.

    ``actor_or_actions``: a function of the predicted state (N*K, S) -> (N*K, A) (a policy reading
    its observation out of the state, see ``state_actor``), or actions (H, N, A) shared by the K
    futures, or (H, N, K, A) per future. An actor with a true ``rowwise`` attribute promises that
    each row's action depends on that row alone (``state_actor``'s do); the fast path then calls it
    on its internal row layout (member blocks, with padding rows) instead of reordering every step.
    ``spread=False`` skips the all-member pass that measures epistemic spread, so each particle
    costs one member (what planners use). ``precision`` ("float32" or "bfloat16") is the one of the
    ensemble's layers; states accumulate in float32.
    """
    ens = model.ensemble if isinstance(model, WorldModel) else model
    _check(ens, start, horizon, futures)
    if precision not in PRECISIONS:
        raise WorldModelError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    n, k = start.shape[0], futures
    dev = start.device
    if torch.is_tensor(actor_or_actions):
        acts = actor_or_actions.to(dev, torch.float32)
        if acts.dim() == 3:
            acts = acts[:, :, None].expand(-1, -1, k, -1)
        if acts.dim() != 4 or acts.shape[:3] != (horizon, n, k) or acts.shape[-1] != ens.action_dim:
            raise WorldModelError(
                f"actions must be (H, N, A) or (H, N, K, A) = ({horizon}, {n}, [{k},] {ens.action_dim}), "
                f"got {tuple(actor_or_actions.shape)}"
            )
        acts = acts.reshape(horizon, n * k, -1)
    elif not callable(actor_or_actions):
        raise WorldModelError("actor_or_actions must be a tensor of actions or a function state -> action")
    else:
        acts = None
    members = _assign(ens, n, k, sample_members, generator)
    run = rollout_blocks if sample_members and not spread else _rollout_all
    states, actions, rewards, costs, terms, epistemic, aleatoric = run(
        ens, start, actor_or_actions, acts, members, horizon, k, noise, generator, dtype
    )

    def per_start(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(horizon, n, k, *t.shape[2:])

    term = per_start(terms)
    alive = torch.cumprod(torch.cat([torch.ones_like(term[:1]), 1.0 - term[:-1]]), 0)
    return Futures(
        per_start(states),
        per_start(actions),
        per_start(rewards),
        per_start(costs),
        term,
        alive,
        per_start(epistemic),
        per_start(aleatoric),
        members,
    )


def state_actor(
    policy: torch.nn.Module,
    index: torch.Tensor,
    *,
    group: str = "policy",
    extra: Mapping[str, torch.Tensor] | None = None,
    deterministic: bool = True,
) -> Actor:
    """An actor for ``imagine``: ``policy`` acting on the observation cut from the state by ``index``
    (``StateLayout.index_for(env.obs_layout(group))``)."""

    index = index.long()
    first = int(index[0]) if index.numel() else 0
    contiguous = bool(index.numel()) and torch.equal(index.cpu(), torch.arange(first, first + index.numel()))

    def act(state: torch.Tensor) -> torch.Tensor:
        if contiguous:  # the policy's columns are one run of the state: a view, no copy
            view = state.narrow(-1, first, index.numel())
        else:
            view = state.index_select(-1, index.to(state.device))
        obs: dict[str, Any] = {group: view}
        if extra:
            obs.update(extra)
        return policy.act_inference(obs) if deterministic else policy.act(obs)

    act.rowwise = extra is None and deterministic  # type: ignore[attr-defined]
    return act
