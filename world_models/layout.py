"""What the world model's state vector is: observation terms of named groups, concatenated in order.

The state is built from replay groups (by default the privileged ``critic`` group and the ``draw``
group, the robot's joint positions). A layout records each term's group, name, size, scale and clip,
so a consumer can cut the policy observation out of a predicted state, or the joint positions to
draw a ghost robot, by name and not by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from world_models.errors import WorldModelError

DRAW_GROUP = "draw"


@dataclass(frozen=True)
class StateLayout:
    """Terms in state order: each ``{"group", "name", "dim", "scale", "clip"}``."""

    terms: tuple[dict[str, Any], ...]

    @classmethod
    def from_groups(cls, layouts: Mapping[str, Sequence[Mapping[str, Any]]]) -> StateLayout:
        """{group: env.obs_layout(group)} in the order the state concatenates them."""
        terms = []
        for group, layout in layouts.items():
            for t in layout:
                if int(t.get("history", 1)) != 1:
                    raise WorldModelError(
                        f"observation term {group}.{t['name']} stacks {t['history']} samples (history); a "
                        "world model predicts one step's observation: give it a group without history"
                    )
                terms.append(
                    {
                        "group": str(group),
                        "name": str(t["name"]),
                        "dim": int(t["dim"]),
                        "scale": float(t.get("scale", 1.0)),
                        "clip": t.get("clip"),
                    }
                )
        if not terms:
            raise WorldModelError("a world-model state needs at least one observation term")
        return cls(tuple(terms))

    @classmethod
    def from_list(cls, terms: Sequence[Mapping[str, Any]]) -> StateLayout:
        return cls(tuple(dict(t) for t in terms))

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self.terms]

    @property
    def dim(self) -> int:
        return sum(t["dim"] for t in self.terms)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(t["group"] for t in self.terms))

    def slices(self) -> list[tuple[dict[str, Any], slice]]:
        out, start = [], 0
        for t in self.terms:
            out.append((t, slice(start, start + t["dim"])))
            start += t["dim"]
        return out

    def group_slice(self, group: str) -> slice:
        """The contiguous columns of one group."""
        cols = [s for t, s in self.slices() if t["group"] == group]
        if not cols:
            raise WorldModelError(f"the world-model state has no {group!r} group; it has {self.groups}")
        return slice(cols[0].start, cols[-1].stop)

    def draw_slice(self) -> slice:
        """Columns of the robot's joint positions (the ``draw`` group) used to render ghosts."""
        return self.group_slice(DRAW_GROUP)

    def index_for(self, layout: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """State columns (D,) that give an observation with ``layout`` (env.obs_layout(group)).

        Each term must be in the state under the same name, size, scale and clip; the first group
        holding it is used. A term the state lacks is a WorldModelError naming it.
        """
        found: dict[str, tuple[dict[str, Any], slice]] = {}
        for t, s in self.slices():
            found.setdefault(t["name"], (t, s))
        cols: list[int] = []
        for want in layout:
            name = str(want["name"])
            if name not in found:
                raise WorldModelError(
                    f"observation term {name!r} is not in the world-model state "
                    f"(groups {self.groups}); train the model on a group that has it"
                )
            t, s = found[name]
            same = (t["dim"], t["scale"], t["clip"]) == (
                int(want["dim"]),
                float(want.get("scale", 1.0)),
                want.get("clip"),
            )
            if not same:
                raise WorldModelError(
                    f"observation term {name!r} differs between the model state ({t}) "
                    f"and the observation ({dict(want)})"
                )
            cols.extend(range(s.start, s.stop))
        return torch.tensor(cols, dtype=torch.long)
