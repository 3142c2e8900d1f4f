"""Control-barrier-function filter: the smallest change of the action that keeps every barrier.

The task declares its barriers h(x) >= 0 in config (``barriers:``, see policies/safety/barriers.py)
with the action's linearized one-step effect, which makes the discrete-time condition
h(x') >= (1 - gamma) h(x) a set of linear constraints ``G(x) a >= b(x)``. Per row of the batch the
filter solves

    min ||a' - a||^2   subject to   G a' >= b,   -1 <= a' <= 1

in torch: an action that already satisfies every constraint passes unchanged (bit for bit); where
exactly one constraint is violated and its projection stays feasible, the closed form
``a' = a + (b_i - G_i a) / |G_i|^2 G_i`` is the answer; otherwise a fixed number of sweeps of
Hildreth's dual coordinate ascent (exact for the QP in the limit; no data-dependent control flow,
so it exports to ONNX and TorchScript). Rows whose result still violates a constraint by more than
``tolerance`` are *infeasible* (no action in the box meets every barrier, or the sweeps did not
converge): they are flagged in ``info["infeasible"]`` and counted in the logs, never passed as safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from policies.safety.barriers import Barriers, layout_dim
from policies.safety.base import FilterError, Layout, SafetyFilter

MIN_GAIN2 = 1.0e-8  # |G_i|^2 below this: the action has no real effect on the row


class CBFFilter(SafetyFilter):
    """Minimal-correction CBF filter over the task's declared barriers; exportable.

    Params: ``barriers`` (the task's ``barriers:`` block, passed in by the config), ``use`` (names of
    the barriers to enforce; default all), ``iterations`` (solver sweeps), ``tolerance`` (constraint
    slack counted as met, in units of h).
    """

    def __init__(
        self,
        layout: Layout,
        action_dim: int,
        barriers: Mapping[str, Mapping[str, Any]] | None = None,
        use: Sequence[str] | None = None,
        iterations: int = 10,
        tolerance: float = 1.0e-4,
    ) -> None:
        super().__init__("cbf")
        specs = {k: v for k, v in (barriers or {}).items() if v is not None}  # null: switched off
        if not specs:
            raise FilterError("the cbf filter needs barriers: this task's config declares none (barriers:)")
        if use is not None:
            missing = sorted(set(use) - set(specs))
            if missing:
                raise FilterError(f"cbf.use names barrier(s) {missing}; the task has {sorted(specs)}")
            specs = {k: specs[k] for k in use}
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise FilterError(f"cbf.iterations must be an integer >= 1, got {iterations!r}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance > 0:
            raise FilterError(f"cbf.tolerance must be a number > 0, got {tolerance!r}")
        self.barriers = Barriers(specs, layout, action_dim, layout_dim(layout))
        self.iterations, self.tolerance = int(iterations), float(tolerance)
        self.diagonal = 2.0 * float(action_dim) ** 0.5
        self.min_gain2 = MIN_GAIN2
        self.num_rows = self.barriers.num_rows + 2 * action_dim
        eye = torch.eye(action_dim)
        self.register_buffer("box_g", torch.cat([eye, -eye]))  # a >= -1 and -a >= -1
        self.register_buffer("box_b", -torch.ones(2 * action_dim))

    def constraints(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G (B, M, A), b (B, M), h (B, M_barrier)): the barrier rows followed by the box rows."""
        g, b, h = self.barriers(obs)
        n = obs.shape[0]
        g = torch.cat([g, self.box_g.expand(n, -1, -1)], 1)
        b = torch.cat([b, self.box_b.expand(n, -1)], 1)
        return g, b, h

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        g, b, h = self.constraints(obs)
        norm2 = (g * g).sum(-1)  # (B, M)
        slack = self.tolerance * (1.0 + b.abs())
        violation = b - (g @ action[..., None])[..., 0]  # > 0: violated
        violated = violation > slack
        needs = violated.any(-1)

        # One violated constraint: its projection, accepted when it meets every other row too.
        single = violated.sum(-1) == 1
        step = torch.where(violated, violation / norm2.clamp(min=1.0e-12), 0.0)
        closed = action + (step[..., None] * g).sum(1)
        closed_ok = single & ((b - (g @ closed[..., None])[..., 0]) <= slack).all(-1)

        # Hildreth: coordinate ascent on the dual of the projection QP, one row at a time.
        x = action.clone()
        # Rows the action can barely move are left to the infeasible flag; no row may push the action
        # further than the box's diagonal (an infeasible row would push it without bound).
        usable = norm2 > self.min_gain2
        inv = torch.where(usable, 1.0 / norm2.clamp(min=self.min_gain2), 0.0)
        cap = torch.where(usable, self.diagonal * inv.sqrt(), 0.0)
        rows = [g[:, i] for i in range(self.num_rows)]
        lams = [torch.zeros_like(b[:, 0]) for _ in range(self.num_rows)]
        for _ in range(self.iterations):
            for i in range(self.num_rows):
                gi = rows[i]
                new = (lams[i] + (b[:, i] - (gi * x).sum(-1)) * inv[:, i]).clamp(min=0.0)
                new = torch.minimum(new, cap[:, i])
                x = x + (new - lams[i])[:, None] * gi
                lams[i] = new
        x = x.clamp(-1.0, 1.0)

        solved = torch.where(closed_ok[:, None], closed, x)
        safe = torch.where(needs[:, None], solved, action)
        infeasible = ((b - (g @ safe[..., None])[..., 0]) > slack).any(-1)
        info = {
            "infeasible": infeasible,
            "active": violated.float().sum(-1),
            "min_h": h.amin(-1),
        }
        return safe, needs, info
