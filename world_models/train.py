"""Fitting the ensemble: bootstrapped minibatches per member, early stopping and elites (MBPO).

Every step draws an independent bootstrap minibatch for each member (E, B) and updates all members
in one batched forward and backward. After each epoch the validation error of every member is
measured on held-out episodes; a member's weights are kept from its best epoch, training stops when
no member has improved by 1 % for ``patience`` epochs, and the ``elites`` lowest-error members are
the ones used to predict.

With ``rollout_steps`` T > 1 each minibatch is T-step windows of one episode, and the loss is the
ensemble's multi-step loss (``Ensemble.rollout_loss``: each member rolls its own prediction; the
first step takes the one-step NLL, later steps the squared error of the mean state); validation and
the elites then use the T-step rollout error too.

With ``input_noise`` sigma > 0 the start of each window's rollout is perturbed by Gaussian noise of
sigma times each dimension's one-step change std, and the targets stay the true next states (so the
mean learns to pull a perturbed state back, not to carry the perturbation on). This is the training
noise of learned simulators (Sanchez-Gonzalez et al., 2020): a model fitted on clean states alone
meets its own errors for the first time in a rollout, and can amplify them there. The one-step NLL
stays on the clean state, so the predicted variance is not widened by the noise, and validation
stays clean. ``noise_share`` is the share of windows perturbed; the others roll out from their clean
start, which keeps the short-horizon accuracy that perturbing every window costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from world_models.buffer import TransitionBuffer
from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError


@dataclass
class FitResult:
    epochs: int
    updates: int
    seconds: float
    train_nll: float
    val_mse: list[float]  # per member, normalized targets, at its kept epoch
    elites: list[int]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def fit(
    model: Ensemble,
    buffer: TransitionBuffer,
    *,
    epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    lr_end: float | None = None,
    weight_decay: float = 1e-5,
    patience: int = 5,
    max_updates_per_epoch: int = 400,
    rollout_steps: int = 1,
    input_noise: float = 0.0,
    noise_share: float = 1.0,
    renormalize: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
    generator: torch.Generator | None = None,
) -> FitResult:
    """Train ``model`` in place on ``buffer``'s train split; returns what happened."""
    if epochs < 1 or batch_size < 1:
        raise WorldModelError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not isinstance(rollout_steps, int) or rollout_steps < 1:
        raise WorldModelError(f"rollout_steps must be an integer >= 1, got {rollout_steps!r}")
    if isinstance(input_noise, bool) or not isinstance(input_noise, int | float) or not input_noise >= 0:
        raise WorldModelError(f"input_noise must be a number >= 0, got {input_noise!r}")
    if isinstance(noise_share, bool) or not isinstance(noise_share, int | float) or not 0 <= noise_share <= 1:
        raise WorldModelError(f"noise_share must be a number in [0, 1], got {noise_share!r}")
    if lr_end is not None and (
        isinstance(lr_end, bool) or not isinstance(lr_end, int | float) or not lr_end >= 0
    ):
        raise WorldModelError(f"lr_end must be null or a number >= 0, got {lr_end!r}")
    state, action, target, done = buffer.flat("train")
    vs, va, vt, _ = buffer.flat("val")
    if vs.shape[0] == 0:  # no held-out episodes: validate on (a sample of) the training data
        vs, va, vt = state, action, target
    dev = model.in_mean.device
    state, action, target, done = (x.to(dev) for x in (state, action, target, done))
    vs, va, vt = (x.to(dev) for x in (vs, va, vt))
    if renormalize:
        model.set_normalization(torch.cat([state, action], -1), target)
    e, steps = model.members, int(rollout_steps)
    s_dim = model.state_dim
    sigma = float(input_noise) * model.out_std[:s_dim]  # (S,) raw units: each dimension's one-step change
    windowed = steps > 1 or input_noise > 0  # the rollout loss (of T = 1 steps, with noise alone)
    if not windowed:  # flat normalized copies; the rollout loss gathers its windows instead
        x_all, y_all = model.normalize_input(state, action), model.normalize_target(target)
        vx, vy = model.normalize_input(vs, va), model.normalize_target(vt)
        if vx.shape[0] > 20_000:
            keep = torch.randperm(vx.shape[0], generator=generator)[:20_000].to(dev)
            vx, vy = vx[keep], vy[keep]
        n = x_all.shape[0]
    else:
        del state, action, target, done, vs, va, vt
        starts = buffer.window_starts(steps, "train")
        has_val = bool(buffer.val_mask.any())
        val_starts = buffer.window_starts(steps, "val" if has_val else "train")
        keep = torch.randperm(val_starts.shape[0], generator=generator)[: max(1, 20_000 // steps)]
        val_win = buffer.gather(val_starts[keep.to(val_starts.device)], steps)
        val_win = [
            f.to(dev)[:, None].expand(-1, e, *f.shape[1:])
            for f in (val_win.state, val_win.action, val_win.next_state, val_win.reward, val_win.cost)
        ] + [val_win.terminated.to(dev)[:, None].expand(-1, e, -1)]
        n = starts.shape[0]
    params = [p for name, p in model.named_parameters() if not name.endswith("logvar")]
    bounds = [model.max_logvar, model.min_logvar]
    opt = torch.optim.AdamW(
        [{"params": params, "weight_decay": weight_decay}, {"params": bounds, "weight_decay": 0.0}], lr=lr
    )
    # lr_end: cosine decay from lr to lr_end over the `epochs` cap (early stopping may end it sooner)
    sched = None if lr_end is None else torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, float(lr_end))
    stacked = [
        p
        for p in model.parameters()
        if p.dim() >= 1 and p.shape[0] == e and p is not model.max_logvar and p is not model.min_logvar
    ]
    best = torch.full((e,), float("inf"), device=dev)
    snapshot = [p.detach().clone() for p in stacked]
    stale, updates, epoch, t0, nll = 0, 0, 0, time.perf_counter(), float("nan")
    per_epoch = max(1, min(max_updates_per_epoch, n // batch_size))
    model.train()
    for epoch in range(1, epochs + 1):
        for _ in range(per_epoch):
            idx = torch.randint(n, (e, batch_size), generator=generator)  # bootstrap per member
            if windowed:
                w = buffer.gather(starts[idx.to(starts.device)], steps)
                fields = [
                    f.to(dev) for f in (w.state, w.action, w.next_state, w.reward, w.cost, w.terminated)
                ]
                noise = None
                if input_noise > 0:  # the rollout's start: the one-step NLL stays on the clean state
                    noise = sigma * torch.randn((e, batch_size, s_dim), generator=generator).to(dev)
                    if noise_share < 1:  # the other windows roll out from their clean start
                        keep = torch.rand((e, batch_size, 1), generator=generator).to(dev) < noise_share
                        noise = noise * keep
                loss, parts = model.rollout_loss(*fields, start_noise=noise)
            else:
                idx = idx.to(dev)
                loss, parts = model.loss(x_all[idx], y_all[idx], done[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            updates += 1
        if sched is not None:
            sched.step()
        nll = float(parts["nll"].mean())
        with torch.no_grad():
            if windowed:
                val = model.rollout_loss(*val_win)[1]["mse"]
            else:
                mean, _, _ = model(vx.expand(e, *vx.shape))
                val = ((mean - vy) ** 2).mean((1, 2))
        improved = val < best * 0.99
        for p, s in zip(stacked, snapshot, strict=True):
            s[improved] = p.detach()[improved]
        best = torch.where(improved, val, best)
        stale = 0 if bool(improved.any()) else stale + 1
        if log is not None:
            log(
                epoch,
                {"wm/train_nll": nll, "wm/val_mse": float(val.mean()), "wm/best_val_mse": float(best.mean())},
            )
        if stale >= patience:
            break
    with torch.no_grad():
        for p, s in zip(stacked, snapshot, strict=True):
            p.copy_(s)
        elites = torch.argsort(best)[: model.num_elites]
        model.elite_idx.copy_(elites.sort().values)
    model.eval()
    return FitResult(epoch, updates, time.perf_counter() - t0, nll, best.tolist(), model.elite_idx.tolist())
