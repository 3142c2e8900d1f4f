"""Hard-constraint accounting: how often the states a policy acts on break the task's barriers.

A task's ``barriers:`` block (policies/safety/barriers.py) declares its hard constraints h(x) >= 0;
``safety.filters=[cbf]`` enforces them, costs only price soft events. ``BarrierMonitor`` evaluates
h on the ``policy`` observation of every state it is shown and counts, per barrier, the states
with h < -tolerance, with or without a filter installed, so the two can be set side by side. It
is a Runner observer (``on_step``: the state each action was taken in) and wraps a policy for
evaluation (``watch``: the same states seen by ``evaluate``). ``close`` writes ``path`` (JSON).

``tolerance``: one number, or per barrier name (the task's ``barrier_tolerance:``), for barriers
that keep a margin over the physical limit (arm hand_height: 1 cm over the table top, for the
fitted dynamics' error; the hard constraint is the table itself, tolerance 0.01).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from embodied.env import Obs, StepOut
from policies.safety.barriers import Barriers, layout_dim

DEFAULT_TOLERANCE = 1.0e-3


class BarrierMonitor:
    """Counts barrier violations (h < -tolerance) of the states given; batched, on the env's device."""

    def __init__(
        self,
        env: Any,
        barriers: Mapping[str, Mapping[str, Any]],
        tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE,
        path: str | Path | None = None,
    ) -> None:
        layout = env.obs_layout("policy")
        self.barriers = Barriers(dict(barriers), layout, env.action_dim, layout_dim(layout)).to(env.device)
        self.names = [
            n for n, r in zip(self.barriers.names, self.barriers.row_counts, strict=True) for _ in range(r)
        ]
        tol = dict(tolerance) if isinstance(tolerance, Mapping) else {}
        unknown = sorted(set(tol) - set(self.barriers.names))
        if unknown:
            raise ValueError(
                f"barrier_tolerance names {unknown}; the task's barriers are {self.barriers.names}"
            )
        default = DEFAULT_TOLERANCE if isinstance(tolerance, Mapping) else float(tolerance)
        self.tolerances = {n: float(tol.get(n, default)) for n in self.barriers.names}
        rows = [self.tolerances[n] for n in self.names]
        self.tolerance = torch.tensor(rows, device=env.device)
        self.path = None if path is None else Path(path)
        self.states = torch.zeros((), dtype=torch.long, device=env.device)
        self.violating = torch.zeros((), dtype=torch.long, device=env.device)  # states breaking any barrier
        self.per_row = torch.zeros(self.barriers.num_rows, dtype=torch.long, device=env.device)
        self.worst = torch.zeros((), device=env.device)

    @torch.no_grad()
    def check(self, obs: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the states of ``policy`` observations (N, D) that break a barrier; counted."""
        h = self.barriers(obs.float())[2]
        bad = h < -self.tolerance
        self.states += obs.shape[0]
        self.violating += bad.any(-1).sum()
        self.per_row += bad.sum(0)
        self.worst = torch.minimum(self.worst, h.min())
        return bad.any(-1)

    def on_step(self, obs: Obs, action: torch.Tensor, out: StepOut) -> None:
        self.check(obs["policy"])

    def watch(self, policy: Callable[[Obs], torch.Tensor]) -> Callable[[Obs], torch.Tensor]:
        """``policy`` with every observation it acts on checked first."""

        def watched(obs: Obs) -> torch.Tensor:
            self.check(obs["policy"])
            return policy(obs)

        return watched

    @classmethod
    def for_task(cls, env: Any, task_cfg: Any, path: str | Path | None = None) -> BarrierMonitor | None:
        """The monitor of a task config's ``barriers:`` / ``barrier_tolerance:``; None without barriers.

        A tolerance naming no barrier is a one-line ConfigError."""
        from omegaconf import OmegaConf

        from embodied.errors import ConfigError

        if not task_cfg.get("barriers"):
            return None
        barriers = OmegaConf.to_container(task_cfg.barriers, resolve=True)
        node = task_cfg.get("barrier_tolerance")
        tol = {} if node is None else OmegaConf.to_container(node, resolve=True)
        try:
            return cls(env, barriers, tol, path=path)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def summary(self) -> dict[str, Any]:
        per: dict[str, int] = {}
        for name, n in zip(self.names, self.per_row.tolist(), strict=True):
            per[name] = per.get(name, 0) + int(n)
        states = int(self.states)
        return {
            "states": states,
            "violating_states": int(self.violating),
            "violation_rate": int(self.violating) / max(states, 1),
            "per_barrier": per,
            "min_h": float(self.worst),
            "tolerance": self.tolerances,
        }

    def close(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.summary(), indent=2))
