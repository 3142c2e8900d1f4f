"""World-model predictive safety filter: imagine where an action leads, replace it when that is risky.

For each row the filter rolls K futures of H steps through a learned ensemble (``imagine``): the first
step takes the proposed action, the following steps the bound policy acting on the predicted
observations. A future *incurs cost* with probability ``1 - prod_h (1 - hazard_h)``, where a step's
hazard is 1 when its predicted cost exceeds ``cost_threshold`` and otherwise the predicted termination
probability (a true terminal: a fall, a collision, leaving the road). The risk of an action is the
mean of that probability over its K futures. An action whose risk is at most ``threshold`` passes
unchanged (bit for bit). Otherwise M candidates near the proposal (the proposal plus M - 1 fixed
Gaussian offsets of std ``noise``, drawn once from ``seed``, clamped to [-1, 1]) are scored the same
way, all B * M * K futures as one batch; the candidate with the lowest risk is returned (ties go to
the one nearest the proposal) and the row is flagged ``intervened``. A row where even that candidate's
risk is over ``threshold`` is flagged in ``info["infeasible"]``, never passed as safe.

The filter reads only the policy observation, so its model must be trained on the ``policy`` group
(``world_model.groups=[policy]``): every state column has to be an observation column. Without a
bound policy (``bind_policy``) the imagined futures repeat the first action for all H steps.

It does not export: the rollout loops over H steps through a sampled ensemble and an outside policy,
so ``exportable`` is False and ``embodied export`` refuses a chain holding it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from policies.safety import register_filter
from policies.safety.base import FilterError, Layout, SafetyFilter
from world_models.errors import WorldModelError
from world_models.imagine import PRECISIONS, imagine, state_actor
from world_models.layout import StateLayout
from world_models.model import load_world_model


def observation_index(state: StateLayout, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(obs -> state columns (S,), state -> obs columns (D,)); FilterError unless each gives the other."""
    starts: dict[str, tuple[int, Mapping[str, Any]]] = {}
    start = 0
    for t in layout:
        dim = int(t["dim"]) * int(t.get("history", 1))
        starts[str(t["name"])] = (start, {**t, "dim": dim})
        start += dim
    cols: list[int] = []
    for t in state.terms:
        name = t["name"]
        if name not in starts:
            raise FilterError(
                f"predictive.model: the world-model state has term {name!r} (group {t['group']!r}) that the "
                "policy observation lacks; train the model with world_model.groups=[policy]"
            )
        at, want = starts[name]
        here = (int(want["dim"]), float(want.get("scale", 1.0)), want.get("clip"))
        if (t["dim"], t["scale"], t["clip"]) != here:
            raise FilterError(
                f"predictive.model: term {name!r} differs between the model state ({t['dim']} values, "
                f"scale {t['scale']}, clip {t['clip']}) and the policy observation ({dict(want)})"
            )
        cols.extend(range(at, at + t["dim"]))
    try:
        back = state.index_for([{**t, "dim": int(t["dim"]) * int(t.get("history", 1))} for t in layout])
    except WorldModelError as e:
        raise FilterError(f"predictive.model: {e}") from None
    return torch.tensor(cols, dtype=torch.long), back


def _number(name: str, value: Any, low: float, integer: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    if not ok or not math.isfinite(value) or value < low:
        kind = "an integer" if integer else "a finite number"
        raise FilterError(f"predictive.{name} must be {kind} >= {low:g}, got {value!r}")
    return value


class PredictiveFilter(SafetyFilter):
    """Replace actions whose imagined futures are likely to incur cost; not exportable.

    Params (``safety.params.predictive``): ``model`` (required: a ``world_model/model.pt`` trained on
    the policy group), ``horizon`` (H steps imagined), ``futures`` (K per action), ``candidates`` (M,
    the proposal included), ``noise`` (std of the candidate offsets), ``threshold`` (largest risk that
    passes), ``cost_threshold`` (a predicted per-step cost above it is a cost event), ``seed`` (of the
    offsets and the imagination noise), ``precision`` (of the ensemble's layers: float32 or
    bfloat16). info: ``infeasible`` (B,) bool, ``risk`` (B,) of the proposal,
    ``risk_safe`` (B,) of the returned action.
    """

    exportable = False

    def __init__(
        self,
        layout: Layout,
        action_dim: int,
        model: str | None = None,
        horizon: int = 10,
        futures: int = 8,
        candidates: int = 16,
        noise: float = 0.5,
        threshold: float = 0.2,
        cost_threshold: float = 0.5,
        seed: int = 0,
        precision: str = "float32",
    ) -> None:
        super().__init__("predictive")
        if model is None or str(model) == "":
            raise FilterError("predictive.model is required: a world_model/model.pt of the policy group")
        self.horizon = int(_number("horizon", horizon, 1, integer=True))
        self.futures = int(_number("futures", futures, 1, integer=True))
        self.num_candidates = int(_number("candidates", candidates, 1, integer=True))
        noise = float(_number("noise", noise, 0.0))
        self.threshold = float(_number("threshold", threshold, 0.0))
        self.cost_threshold = float(_number("cost_threshold", cost_threshold, -math.inf))
        seed = int(_number("seed", seed, -math.inf, integer=True))
        if precision not in PRECISIONS:
            raise FilterError(f"predictive.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = str(precision)
        try:
            wm = load_world_model(str(model), "cpu")
        except WorldModelError as e:
            raise FilterError(f"predictive.model: {e}") from None
        if wm.action_dim != int(action_dim):
            raise FilterError(
                f"predictive.model: {model} predicts {wm.action_dim} actions, this env has {action_dim}"
            )
        to_state, to_obs = observation_index(wm.layout, layout)
        self.ensemble = wm.ensemble.eval().requires_grad_(False)
        self.register_buffer("to_state", to_state)
        self.register_buffer("to_obs", to_obs)
        gen = torch.Generator().manual_seed(seed)
        offset = noise * torch.randn(self.num_candidates, int(action_dim), generator=gen)
        offset[0] = 0.0  # candidate 0 is the proposal itself
        self.register_buffer("offset", offset)
        self.generator = torch.Generator().manual_seed(seed + 1)  # imagination noise, on the CPU
        self._policy: list[nn.Module] = []  # kept out of the module tree: not saved, not moved

    def bind_policy(self, policy: nn.Module | None) -> None:
        """The policy that acts after the first imagined step (``policy.act_inference({"policy": obs})``);
        None: the futures repeat the first action."""
        self._policy = [] if policy is None else [policy]

    def candidates(self, action: torch.Tensor) -> torch.Tensor:
        """(B, A) -> (B, M, A): the proposal plus the fixed offsets, clamped to [-1, 1]."""
        return (action[:, None, :] + self.offset).clamp(-1.0, 1.0)

    def risk(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, M) chance that a future opening with ``actions`` (B, M, A) at ``obs`` (B, D) incurs cost."""
        b, m, a = actions.shape
        k, h = self.futures, self.horizon
        start = obs.index_select(-1, self.to_state).repeat_interleave(m, 0)  # (B*M, S)
        first = actions.reshape(b * m, a)
        if self._policy:
            follow = state_actor(self._policy[0], self.to_obs)
            step = [0]

            def actor(x: torch.Tensor) -> torch.Tensor:
                step[0] += 1
                return first.repeat_interleave(k, 0) if step[0] == 1 else follow(x)

            plan: Any = actor
        else:
            plan = first[None].expand(h, -1, -1)
        fut = imagine(
            self.ensemble, start, plan, h, k, spread=False, generator=self.generator, precision=self.precision
        )
        hazard = torch.where(fut.cost > self.cost_threshold, 1.0, fut.terminated)  # (H, B*M, K)
        p_event = 1.0 - torch.prod(1.0 - hazard, 0)  # (B*M, K)
        return p_event.mean(-1).reshape(b, m)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        cand = self.candidates(action)
        risk = self.risk(obs, cand)  # (B, M)
        passes = risk[:, 0] <= self.threshold
        best = risk.min(-1, keepdim=True).values
        dist = (cand - action[:, None, :]).square().sum(-1).masked_fill(risk > best + 1e-6, float("inf"))
        idx = dist.argmin(-1)
        chosen = cand.gather(1, idx[:, None, None].expand(-1, 1, cand.shape[-1]))[:, 0]
        safe = torch.where(passes[:, None], action, chosen)
        risk_safe = torch.where(passes, risk[:, 0], best[:, 0])
        infeasible = ~passes & (best[:, 0] > self.threshold)
        return safe, ~passes, {"infeasible": infeasible, "risk": risk[:, 0], "risk_safe": risk_safe}


def bind_policy(chain: nn.Module, policy: nn.Module | None) -> None:
    """Bind ``policy`` to every filter of ``chain`` that follows a policy in its imagined futures."""
    for f in getattr(chain, "filters", ()):
        if hasattr(f, "bind_policy"):
            f.bind_policy(policy)


register_filter("predictive", PredictiveFilter)
