"""One ensemble step for the planner's fast path: one member per particle, particles in member blocks.

``imagine(..., spread=False)`` keeps the particles in one row block per member in use for a whole
rollout, so a step through the ensemble is one batched matrix product per layer. ``BlockStep`` cuts
those members' weights once per rollout and allocates every intermediate once, so a step costs
the products and a few in-place elementwise passes, with no per-step allocation, concatenation or
strided slice:

- the first layer is split into its state and action rows, so (state, action) is never
  concatenated;
- the output layer is split into contiguous heads: the state-change mean (with the target scale
  folded into its weights, so it comes out in raw units), the state log-variance (the reward and
  cost variances are not needed here), and reward, cost and termination logit together;
- the soft log-variance bounds and the target scale fold into one exp.

It computes what ``Ensemble.forward`` and ``imagine``'s all-member path compute, to float32
rounding (``tests/test_imagine_fast_path.py``). Shapes: U members in use, W rows per block,
R = U * W rows, S state dim, A action dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError

Actor = Callable[[torch.Tensor], torch.Tensor]  # model state (B, S) -> action (B, A)


class BlockStep:
    """Members ``used`` (U,) of ``ens``, each reading a block of ``width`` rows, in ``dtype`` layers.

    Calling it with states (R, S) and actions (R, A) float32 (block-major rows) fills
    ``delta`` (R, S) the mean state change, ``std`` (R, S) its predicted std, and ``extra`` (R, 3)
    the reward mean, cost mean and termination logit, all float32 and raw (unnormalized) units.
    The buffers are reused by the next call.
    """

    def __init__(
        self, ens: Ensemble, used: torch.Tensor, width: int, dtype: torch.dtype | None = None
    ) -> None:
        s, a = ens.state_dim, ens.action_dim
        self.u, self.width, self.dtype = int(used.numel()), int(width), dtype or torch.float32
        dev, lp = ens.in_mean.device, self.dtype
        with torch.no_grad():
            ws = [w[used].float() for w in ens.weights]
            bs = [b[used].float() for b in ens.biases]
            o, out_std, out_mean = ens.out_dim, ens.out_std, ens.out_mean
            w_last, b_last = ws[-1], bs[-1]
            # mean head in raw units: (h @ W + b) * out_std + out_mean
            w_mean = w_last[..., :o] * out_std
            b_mean = b_last[..., :o] * out_std + out_mean
            heads = {
                "delta": (w_mean[..., :s], b_mean[..., :s]),
                "logvar": (w_last[..., o : o + s], b_last[..., o : o + s]),
                "extra": (
                    torch.cat([w_mean[..., s:], w_last[..., 2 * o :]], -1),
                    torch.cat([b_mean[..., s:], b_last[..., 2 * o :]], -1),
                ),
            }
            self.first = (ws[0][:, :s].to(lp), ws[0][:, s:].to(lp), bs[0].to(lp))
            self.hidden = [(w.to(lp), b.to(lp)) for w, b in zip(ws[1:-1], bs[1:-1], strict=True)]
            self.heads = {k: (w.contiguous().to(lp), b.contiguous().to(lp)) for k, (w, b) in heads.items()}
            self.skip = None
            if ens.skip is not None:  # linear path from the normalized input, scaled like the mean
                k = ens.skip[used].float() * out_std
                # (U, S + A, O) -> state rows / action rows, state columns / reward-cost (+ zero logit)
                pad = torch.zeros(*k.shape[:-1], 1, device=dev)
                extra = torch.cat([k[..., s:], pad], -1)
                self.skip = {
                    "delta": (k[:, :s, :s].contiguous().to(lp), k[:, s:, :s].contiguous().to(lp)),
                    "extra": (extra[:, :s].contiguous().to(lp), extra[:, s:].contiguous().to(lp)),
                }
            self.in_mean_s, self.in_mean_a = ens.in_mean[:s], ens.in_mean[s:]
            self.in_std_s, self.in_std_a = ens.in_std[:s], ens.in_std[s:]
            lo, hi = ens.min_logvar[:s].detach(), ens.max_logvar[:s].detach()
            # std = exp(0.5 * logvar) * out_std, logvar = lo + softplus((hi - softplus(hi - raw)) - lo)
            self.hi, self.span = hi.clone(), (hi - lo).clone()
            self.log_scale = 0.5 * lo + torch.log(out_std[:s])
        rows, f32 = self.u * self.width, dict(device=dev, dtype=torch.float32)
        shape = (self.u, self.width)
        self.xn, self.an = torch.empty(*shape, s, **f32), torch.empty(*shape, a, **f32)
        low = self.dtype != torch.float32
        self.xn_lp = torch.empty(*shape, s, device=dev, dtype=lp) if low else self.xn
        self.an_lp = torch.empty(*shape, a, device=dev, dtype=lp) if low else self.an
        self.h = [torch.empty(*shape, b.shape[-1], device=dev, dtype=lp) for b in [bs[0], *bs[1:-1]]]
        self.out = {
            k: torch.empty(*shape, w.shape[-1], device=dev, dtype=lp) for k, (w, _) in self.heads.items()
        }
        self.out32 = {k: v if not low else torch.empty(v.shape, **f32) for k, v in self.out.items()}
        self.delta = self.out32["delta"].view(rows, s)
        self.extra = self.out32["extra"].view(rows, 3)
        self.std = torch.empty(rows, s, **f32)
        self._t = torch.empty(rows, s, **f32)

    def __call__(self, x: torch.Tensor, a: torch.Tensor) -> None:
        shape = (self.u, self.width, -1)
        xn = torch.sub(x.view(shape), self.in_mean_s, out=self.xn).div_(self.in_std_s)
        an = torch.sub(a.view(shape), self.in_mean_a, out=self.an).div_(self.in_std_a)
        if self.xn_lp is not xn:
            xn, an = self.xn_lp.copy_(xn), self.an_lp.copy_(an)
        w_s, w_a, b = self.first
        h = torch.baddbmm(b, xn, w_s, out=self.h[0]).baddbmm_(an, w_a)
        F.silu(h, inplace=True)
        for (w, b), out in zip(self.hidden, self.h[1:], strict=True):
            h = F.silu(torch.baddbmm(b, h, w, out=out), inplace=True)
        for name, (w, b) in self.heads.items():
            y = torch.baddbmm(b, h, w, out=self.out[name])
            if self.skip is not None and name in self.skip:
                y.baddbmm_(xn, self.skip[name][0]).baddbmm_(an, self.skip[name][1])
            if self.out32[name] is not y:
                self.out32[name].copy_(y)
        raw = self.out32["logvar"].view(-1, self.std.shape[-1])
        t = torch.sub(self.hi, raw, out=self._t)  # hi - raw
        t = torch.sub(self.span, F.softplus(t), out=self._t)  # (hi - softplus(hi - raw)) - lo
        torch.add(self.log_scale, F.softplus(t), alpha=0.5, out=self.std).exp_()


def draw_noise(out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fill ``out`` with standard normal noise from ``generator`` (which may live on another device)."""
    if generator is None or generator.device == out.device:
        return out.normal_(generator=generator)
    return out.copy_(torch.randn(out.shape, generator=generator, device=generator.device))


def act_checked(actor: Actor, x: torch.Tensor, rows: int, action_dim: int) -> torch.Tensor:
    """``actor(x)``, refused with a one-line error unless it is (rows, action_dim)."""
    a = actor(x)
    if a.shape != (rows, action_dim):
        raise WorldModelError(
            f"the actor returned actions of shape {tuple(a.shape)}, expected {(rows, action_dim)}"
        )
    return a


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


def rollout_blocks(
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
    """``imagine``'s fast path: each particle follows its member (``members`` (N, K)), particles in
    member blocks for the whole rollout, gathered back to particle order into the (H, N*K, ...)
    outputs as each step is made. ``acts`` (H, N*K, A) replaces ``actor`` when given. An actor with a
    true ``rowwise`` attribute is called on the block rows (padding rows included); any other sees
    the particles in their order. No epistemic spread is measured (a zero view)."""
    n, s, a_dim, dev = start.shape[0], ens.state_dim, ens.action_dim, start.device
    b, f32 = n * k, dict(device=dev, dtype=torch.float32)
    g = _grouping(members.reshape(-1))
    rows = len(g.used) * g.width
    row_of = torch.empty_like(g.order)
    row_of[g.order] = g.slot * g.width + g.rank  # block row of each particle
    x = _to_rows(start.float().repeat_interleave(k, 0), row_of, rows)  # padding rows: a real state
    acts_rows = None if acts is None else _to_rows(acts.transpose(0, 1), row_of, rows).transpose(0, 1)
    step = BlockStep(ens, g.used, g.width, dtype)
    states = torch.empty(horizon, b, s, **f32)
    actions = torch.empty(horizon, b, a_dim, **f32)
    rewards, costs, terms = (torch.empty(horizon, b, **f32) for _ in range(3))
    aleatoric = torch.empty(horizon, b, s, **f32)
    epistemic = torch.zeros((), **f32).expand(horizon, b, s)
    a_rows, extra = torch.zeros(rows, a_dim, **f32), torch.empty(b, 3, **f32)
    eps = torch.empty(rows, s, **f32) if noise else None
    rowwise = bool(getattr(actor, "rowwise", False))
    bounded = bool(torch.isfinite(ens.state_lo).any() or torch.isfinite(ens.state_hi).any())
    for h in range(horizon):
        if acts_rows is not None:
            torch.clamp(acts_rows[h], -1.0, 1.0, out=a_rows)
        elif rowwise:  # rows as they are laid out inside
            torch.clamp(act_checked(actor, x, rows, a_dim).float(), -1.0, 1.0, out=a_rows)
        else:  # an actor that may depend on the order sees the particles in theirs, (N*K, S)
            a = act_checked(actor, x.index_select(0, row_of), b, a_dim)
            a_rows.index_copy_(0, row_of, a.float()).clamp_(-1.0, 1.0)
        torch.index_select(a_rows, 0, row_of, out=actions[h])
        step(x, a_rows)
        if eps is not None:
            step.delta.addcmul_(step.std, draw_noise(eps, generator))
        x.add_(step.delta)
        if bounded:
            torch.clamp(x, ens.state_lo, ens.state_hi, out=x)
        torch.index_select(x, 0, row_of, out=states[h])
        torch.index_select(step.std, 0, row_of, out=aleatoric[h])
        torch.index_select(step.extra, 0, row_of, out=extra)
        rewards[h].copy_(extra[:, 0])
        costs[h].copy_(extra[:, 1])
        torch.sigmoid(extra[:, 2], out=terms[h])
    return states, actions, rewards, costs, terms, epistemic, aleatoric
