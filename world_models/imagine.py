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


def _to_rows(x: torch.Tensor, row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, ...) particles into ``rows`` block rows; padding rows copy particle 0."""
    out = x[:1].expand(rows, *x.shape[1:]).clone()
    out[row_of] = x
    return out


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
    b, f32 = n * k, dict(device=dev, dtype=torch.float32)
    x = start.float().repeat_interleave(k, 0)
    fast = sample_members and not spread
    if fast:
        # The planner's fast path: particles live in one row block per member for the whole
        # rollout, so each step is one baddbmm over the members in use with weights cut once, and
        # rows go back to particle order once, at the end. Padding rows carry a real start state.
        g = _grouping(flat_members)
        layers = ens.layers(g.used, dtype)
        rows = len(g.used) * g.width
        row_of = torch.empty_like(g.order)
        row_of[g.order] = g.slot * g.width + g.rank  # block row of each particle
        x = _to_rows(x, row_of, rows)
        if torch.is_tensor(actor_or_actions):
            acts = _to_rows(acts.transpose(0, 1), row_of, rows).transpose(0, 1)
    else:
        rows, row_of = b, None
    elites = ens.elite_idx
    # Every step writes into preallocated (H, rows, ...) outputs: no per-field stack at the end, and
    # each step's next state is computed where it is kept.
    states = torch.empty(horizon, rows, s, **f32)
    actions = torch.empty(horizon, rows, ens.action_dim, **f32)
    rewards, costs, terms = (torch.empty(horizon, rows, **f32) for _ in range(3))
    aleatoric = torch.empty(horizon, rows, s, **f32)
    measured = (spread or not sample_members) and len(elites) > 1
    epistemic = (
        torch.empty(horizon, b, s, **f32) if measured else torch.zeros((), **f32).expand(horizon, b, s)
    )
    rowwise = bool(getattr(actor_or_actions, "rowwise", False))
    bounded = bool(torch.isfinite(ens.state_lo).any() or torch.isfinite(ens.state_hi).any())
    for h in range(horizon):
        if torch.is_tensor(actor_or_actions):
            a = acts[h]
        elif rowwise or row_of is None:  # rows as they are laid out inside
            a = actor_or_actions(x)
            if a.shape != (rows, ens.action_dim):
                raise WorldModelError(
                    f"the actor returned actions of shape {tuple(a.shape)}, expected {(rows, ens.action_dim)}"
                )
        else:  # an actor that may depend on the order sees the particles in theirs, (N*K, S)
            a = actor_or_actions(x.index_select(0, row_of))
            if a.shape != (b, ens.action_dim):
                raise WorldModelError(
                    f"the actor returned actions of shape {tuple(a.shape)}, expected {(b, ens.action_dim)}"
                )
            a = _to_rows(a, row_of, rows)
        a = torch.clamp(a.float(), -1.0, 1.0, out=actions[h])
        inp = ens.normalize_input(x, a)
        if fast:
            mean, logvar, logit = ens.apply_layers(inp.view(len(g.used), g.width, -1), layers)
            mean, logvar, logit = mean.reshape(rows, -1), logvar.reshape(rows, -1), logit.reshape(rows)
        else:
            mean_e, logvar_e, logit_e = ens(inp.expand(ens.members, *inp.shape), dtype=dtype)
            mean_e, logvar_e, logit_e = mean_e[elites], logvar_e[elites], logit_e[elites]  # (El, B, ...)
            if sample_members:
                slot = torch.searchsorted(elites, flat_members)  # position of each member among the elites
                idx = torch.arange(n * k, device=dev)
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
            eps = torch.randn(
                delta.shape, generator=generator, device="cpu" if generator is not None else dev
            ).to(dev)
            delta.addcmul_(std, eps)
        x = torch.add(x, delta, out=states[h])
        if bounded:
            torch.clamp(x, ens.state_lo, ens.state_hi, out=x)
        torch.addcmul(ens.out_mean[s], mean[:, s], ens.out_std[s], out=rewards[h])
        torch.addcmul(ens.out_mean[s + 1], mean[:, s + 1], ens.out_std[s + 1], out=costs[h])
        torch.sigmoid(logit, out=terms[h])
    if row_of is not None:  # back to particle order
        states, actions, rewards, costs, terms, aleatoric = (
            t.index_select(1, row_of) for t in (states, actions, rewards, costs, terms, aleatoric)
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
