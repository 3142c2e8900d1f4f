"""Observation specs: the shape and dtype of each observation group, read instead of assumed.

Storage, policies, evaluation and export all take a ``{group: TensorSpec}`` mapping (an env's
``obs_spec``), so a new group (camera frames, an instruction) needs no change in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "uint8": torch.uint8, "int64": torch.int64, "bool": torch.bool}


@dataclass(frozen=True)
class TensorSpec:
    """One observation group per env: ``shape`` excludes the env dimension N.

    kind: "vector" (float features), "rgb" ((3, H, W) uint8 frames) or "instruction" (int64 token
    ids or an index into the task's instruction list).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    kind: str = "vector"

    @property
    def dim(self) -> int:
        """Number of values per env (the feature width of a vector group)."""
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    def zeros(self, *batch: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """A zero tensor (*batch, *shape) of this spec's dtype."""
        return torch.zeros(*batch, *self.shape, dtype=self.dtype, device=device)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints and manifests."""
        name = next(k for k, v in DTYPES.items() if v == self.dtype)
        return {"shape": list(self.shape), "dtype": name, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(tuple(int(s) for s in d["shape"]), DTYPES[str(d["dtype"])], str(d.get("kind", "vector")))


ObsSpec = dict[str, TensorSpec]


def spec_to_dict(spec: Mapping[str, TensorSpec]) -> dict[str, dict[str, Any]]:
    return {g: s.to_dict() for g, s in spec.items()}


def spec_from_dict(d: Mapping[str, Mapping[str, Any]]) -> ObsSpec:
    return {g: TensorSpec.from_dict(s) for g, s in d.items()}
