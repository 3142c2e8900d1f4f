"""Term machinery: named pure functions (state, **params) -> (N,) weighted from config."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from embodied.errors import ConfigError

TermFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Term:
    name: str
    fn: TermFn
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # scale/clip of observation terms

    def __call__(self, state: Any) -> torch.Tensor:
        return self.fn(state, **self.params)


def build_terms(
    cfg: Mapping[str, Any] | None, table: Mapping[str, TermFn], kind: str, *, reserved: tuple = ("weight",)
) -> list[Term]:
    """Parse ``{name: {weight: w, fn: other_name?, **params}}`` against a table of term functions.

    Unknown term names and parameters the function does not take are errors, not silently ignored.
    """
    terms: list[Term] = []
    for name, spec in (cfg or {}).items():
        spec = dict(spec or {}) if isinstance(spec, Mapping) else {"weight": float(spec)}
        fn_name = spec.pop("fn", name)
        if fn_name not in table:
            raise ConfigError(f"unknown {kind} term {fn_name!r}; known: {', '.join(sorted(table))}")
        fn = table[fn_name]
        meta = {k: spec.pop(k) for k in reserved if k in spec}
        accepted = list(inspect.signature(fn).parameters)[1:]
        for p in spec:
            if p not in accepted:
                raise ConfigError(
                    f"{kind} term {name!r} has no parameter {p!r}; it takes: {', '.join(accepted) or 'none'}"
                )
        terms.append(Term(name, fn, float(meta.get("weight", 1.0)), spec, meta))
    return terms


def weighted_sum(
    terms: list[Term],
    state: Any,
    num_envs: int,
    device: torch.device,
    scale: float,
    log: dict,
    prefix: str,
    per_env: dict | None = None,
) -> torch.Tensor:
    """Sum of weight * scale * term(state), logging each term's batch mean as ``prefix/<name>``.

    ``per_env``, when given, also receives each weighted term's (N,) values under its name.
    """
    total = torch.zeros(num_envs, device=device)
    for t in terms:
        value = t(state) * (t.weight * scale)
        log[f"{prefix}/{t.name}"] = value.mean()
        if per_env is not None:
            per_env[t.name] = value
        total += value
    return total
