"""The safety filter protocol: ``(policy obs (B, D), action (B, A)) -> (safe action, intervened, info)``.

A filter is a torch module that reads only the policy observation and the action, so one module
runs inside the env (training and evaluation), inside the exported ONNX/TorchScript graph and on the
robot. It finds the observation terms it needs by name in the observation layout it is built with
(``[{name, dim, scale, clip}, ...]``, as ``env.obs_layout("policy")`` gives), never by offset.
Actions are in the policy's normalized [-1, 1] space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

Layout = Sequence[Mapping[str, Any]]


class FilterError(ValueError):
    """A filter cannot be built for this observation layout or action size."""


def term_slice(layout: Layout, name: str) -> tuple[int, int, float]:
    """(start, stop, scale) of observation term ``name``'s current value; raw = obs[:, start:stop] / scale.

    A term with history stacks its samples oldest first: the slice is its newest sample.
    """
    start = 0
    for t in layout:
        dim, history = int(t["dim"]), int(t.get("history", 1))
        if t["name"] == name:
            newest = start + (history - 1) * dim
            return newest, newest + dim, float(t.get("scale", 1.0))
        start += dim * history
    names = ", ".join(str(t["name"]) for t in layout)
    raise FilterError(f"the policy observation has no term {name!r} (it has: {names})")


class SafetyFilter(nn.Module):
    """Base class: subclasses implement ``forward``; ``exportable`` says whether it goes into ONNX.

    forward(obs (B, D), action (B, A)) -> (safe_action (B, A), intervened (B,) bool,
    info {str: (B,) tensor}).
    """

    exportable: bool = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class FilterChain(nn.Module):
    """Filters applied in order; each sees the previous one's output.

    forward(obs, action) -> (safe_action (B, A), intervened (B,) bool: any filter changed it,
    info {"<filter>/intervened": (B,) bool, "<filter>/magnitude": (B,) |change|, ...}).
    An empty chain returns the action unchanged.
    """

    __jit_unused_properties__ = ["names", "exportable", "params"]  # noqa: RUF012

    def __init__(self, filters: Sequence[SafetyFilter] = ()) -> None:
        super().__init__()
        self.filters = nn.ModuleList(filters)
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise FilterError(f"a filter appears twice in the chain: {names}")

    @torch.jit.unused
    def __len__(self) -> int:
        return len(self.filters)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]

    @property
    def exportable(self) -> bool:
        return all(f.exportable for f in self.filters)

    @property
    def params(self) -> dict[str, Any]:
        """Each filter's parameters as it was built ({} for one built by hand)."""
        return {f.name: dict(getattr(f, "params", {}) or {}) for f in self.filters}

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        intervened = torch.zeros(action.shape[0], dtype=torch.bool, device=action.device)
        info: dict[str, torch.Tensor] = {}
        for f in self.filters:
            safe, hit, extra = f(obs, action)
            info[f.name + "/intervened"] = hit
            info[f.name + "/magnitude"] = torch.linalg.vector_norm(safe - action, dim=-1)
            for k, v in extra.items():
                info[f.name + "/" + k] = v
            intervened = intervened | hit
            action = safe
        return action, intervened, info
