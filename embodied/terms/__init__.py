"""Term machinery: named pure functions (state, **params) -> (N,) weighted from config.

A term may also be a small class (state or a model, e.g. a VLM scorer): it is built once as
``cls(context, **params)`` and then called as ``term(state)``; if it has ``reset(mask)`` the env
calls it for the envs that reset.
"""

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
        if self.stateful:
            return self.fn(state)
        return self.fn(state, **self.params)

    @property
    def stateful(self) -> bool:
        """Built from a class: holds state or a model, called without parameters."""
        return not inspect.isfunction(self.fn) and not inspect.isbuiltin(self.fn)

    def reset(self, mask: torch.Tensor) -> None:
        """Forward an env reset (N,) bool to a stateful term that keeps per-env state."""
        hook = getattr(self.fn, "reset", None) if self.stateful else None
        if hook is not None:
            hook(mask)


def build_terms(
    cfg: Mapping[str, Any] | None,
    table: Mapping[str, TermFn],
    kind: str,
    *,
    reserved: tuple = ("weight",),
    context: Any = None,
) -> list[Term]:
    """Parse ``{name: {weight: w, fn: other_name?, **params}}`` against a table of term functions.

    Unknown term names and parameters the function does not take are errors, not silently ignored.
    A class in the table is instantiated once as ``cls(context, **params)`` (``context`` is the env).
    A term set to ``false`` is off: how a variant (or an override) drops a term its parent has.
    """
    terms: list[Term] = []
    for name, spec in (cfg or {}).items():
        if spec is False:
            continue
        spec = dict(spec or {}) if isinstance(spec, Mapping) else {"weight": float(spec)}
        fn_name = spec.pop("fn", name)
        if fn_name not in table:
            raise ConfigError(f"unknown {kind} term {fn_name!r}; known: {', '.join(sorted(table))}")
        fn = table[fn_name]
        meta = {k: spec.pop(k) for k in reserved if k in spec}
        is_class = inspect.isclass(fn)
        skip = 2 if is_class else 1  # (self, context) of a class, the state of a function
        accepted = list(inspect.signature(fn.__init__ if is_class else fn).parameters)[skip:]
        for p in spec:
            if p not in accepted:
                raise ConfigError(
                    f"{kind} term {name!r} has no parameter {p!r}; it takes: {', '.join(accepted) or 'none'}"
                )
        if is_class:
            fn = fn(context, **spec)
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
