"""Multi-future imagined rollouts: ``imagine(model, start, actor_or_actions, horizon=H, futures=K)``.

Each of the K futures of a start state keeps one ensemble member for the whole horizon (PETS's
trajectory sampling) and samples its own Gaussian noise, so the futures spread out by both model
disagreement and predicted randomness. Inside, futures are a batch dimension: (N*K, ...) per step.
Out, every field is (H, N, K, ...).

With ``sample_members=False`` every future follows the elites' mean prediction, and with
``noise=False`` no noise is drawn: both off, the K futures are identical (a deterministic rollout).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError
from world_models.model import WorldModel

Actor = Callable[[torch.Tensor], torch.Tensor]  # model state (B, S) -> action (B, A)
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


@dataclass
class _Grouping:
    """Particles sorted into one row block per member that has any: fixed for a whole rollout."""

    used: torch.Tensor  # (U,) the members with particles
    order: torch.Tensor  # (B,) particle indices sorted by member
    slot: torch.Tensor  # (B,) block of each sorted particle
    rank: torch.Tensor  # (B,) its row inside that block
    width: int  # rows per block


def _grouping(members: torch.Tensor) -> _Grouping:
    used, slot = torch.unique(members, return_inverse=True)
    order = torch.argsort(slot, stable=True)
    slot_sorted = slot[order]
    counts = torch.bincount(slot, minlength=len(used))
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(members.shape[0], device=members.device) - first[slot_sorted]
    return _Grouping(used, order, slot_sorted, rank, int(counts.max()))


def _grouped(model: Ensemble, x: torch.Tensor, g: _Grouping, dtype: torch.dtype | None = None):
    """Each particle through its own member only: rows sorted into (U, C, in) blocks, one baddbmm
    over the U members that have particles."""
    block = x.new_zeros(len(g.used), g.width, x.shape[-1])
    block[g.slot, g.rank] = x[g.order]
    mean, logvar, logit = model(block, members=g.used, dtype=dtype)
    out_mean = torch.empty(x.shape[0], mean.shape[-1], device=x.device, dtype=mean.dtype)
    out_logvar = torch.empty_like(out_mean)
    out_logit = torch.empty(x.shape[0], device=x.device, dtype=mean.dtype)
    out_mean[g.order], out_logvar[g.order], out_logit[g.order] = (
        mean[g.slot, g.rank],
        logvar[g.slot, g.rank],
        logit[g.slot, g.rank],
    )
    return out_mean, out_logvar, out_logit


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
    futures, or (H, N, K, A) per future. ``spread=False`` skips the all-member pass that measures
    epistemic spread, so each particle costs one member (what planners use). ``precision``
    ("float32" or "bfloat16") is the one of the ensemble's layers; states accumulate in float32.
    """
    ens = model.ensemble if isinstance(model, WorldModel) else model
    _check(ens, start, horizon, futures)
    if precision not in PRECISIONS:
        raise WorldModelError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    n, k, s = start.shape[0], futures, ens.state_dim
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
    members = _assign(ens, n, k, sample_members, generator)
    flat_members = members.reshape(-1)
    grouping = _grouping(flat_members) if sample_members and not spread else None
    x = start.float().repeat_interleave(k, 0)
    elites = ens.elite_idx
    # Every step writes into preallocated (H, N*K, ...) outputs: no per-field stack at the end, and
    # each step's next state is computed where it is kept.
    b, f32 = n * k, dict(device=dev, dtype=torch.float32)
    states = torch.empty(horizon, b, s, **f32)
    actions = torch.empty(horizon, b, ens.action_dim, **f32)
    rewards, costs, terms = (torch.empty(horizon, b, **f32) for _ in range(3))
    aleatoric = torch.empty(horizon, b, s, **f32)
    measured = (spread or not sample_members) and len(elites) > 1
    epistemic = (
        torch.empty(horizon, b, s, **f32) if measured else torch.zeros((), **f32).expand(horizon, b, s)
    )
    for h in range(horizon):
        a = acts[h] if torch.is_tensor(actor_or_actions) else actor_or_actions(x)
        if a.shape != (n * k, ens.action_dim):
            raise WorldModelError(
                f"the actor returned actions of shape {tuple(a.shape)}, expected {(n * k, ens.action_dim)}"
            )
        a = torch.clamp(a.float(), -1.0, 1.0, out=actions[h])
        inp = ens.normalize_input(x, a)
        if spread or not sample_members:
            mean_e, logvar_e, logit_e = ens(inp.expand(ens.members, *inp.shape), dtype=dtype)
            mean_e, logvar_e, logit_e = mean_e[elites], logvar_e[elites], logit_e[elites]  # (El, B, ...)
            if sample_members:
                slot = torch.searchsorted(elites, flat_members)  # position of each member among the elites
                rows = torch.arange(n * k, device=dev)
                mean, logvar, logit = mean_e[slot, rows], logvar_e[slot, rows], logit_e[slot, rows]
            else:
                mean = mean_e.mean(0)
                logvar = torch.log(torch.exp(logvar_e).mean(0))
                logit = torch.logit(torch.sigmoid(logit_e).mean(0), eps=1e-6)
            if measured:
                torch.std(mean_e[..., :s] * ens.out_std[:s], 0, correction=0, out=epistemic[h])
        else:
            mean, logvar, logit = _grouped(ens, inp, grouping, dtype)
        mean = mean * ens.out_std + ens.out_mean
        std = torch.mul(torch.exp(0.5 * logvar[:, :s]), ens.out_std[:s], out=aleatoric[h])
        delta = mean[:, :s]
        if noise:
            eps = torch.randn(
                delta.shape, generator=generator, device="cpu" if generator is not None else dev
            ).to(dev)
            delta = delta + std * eps
        x = torch.add(x, delta, out=states[h])
        rewards[h], costs[h] = mean[:, s], mean[:, s + 1]
        torch.sigmoid(logit, out=terms[h])

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

    def act(state: torch.Tensor) -> torch.Tensor:
        obs: dict[str, Any] = {group: state.index_select(-1, index.to(state.device))}
        if extra:
            obs.update(extra)
        return policy.act_inference(obs) if deterministic else policy.act(obs)

    return act
