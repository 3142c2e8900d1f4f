"""Safety filters: one protocol (policies/safety/base.py), a registry, and the chain built from config.

A new filter is one module with a builder ``(layout, action_dim, **params) -> SafetyFilter`` plus
one ``register_filter`` call; ``safety.filters=[name, ...]`` chains them, parameters come from
``safety.params.<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from policies.safety.base import FilterChain, FilterError, Layout, SafetyFilter, term_slice

FilterBuilder = Callable[..., SafetyFilter]
FILTERS: dict[str, FilterBuilder] = {}

__all__ = [
    "FILTERS",
    "FilterChain",
    "FilterError",
    "SafetyFilter",
    "build_chain",
    "register_filter",
    "term_slice",
]


def register_filter(name: str, builder: FilterBuilder) -> None:
    """Make ``builder(layout, action_dim, **params)`` available as ``safety.filters=[name]``."""
    if name in FILTERS and FILTERS[name] is not builder:
        raise FilterError(f"a safety filter named {name!r} is already registered")
    FILTERS[name] = builder


def build_chain(
    names: Sequence[str], params: Mapping[str, Mapping[str, Any]], layout: Layout, action_dim: int
) -> FilterChain:
    """The chain of registered filters ``names`` in order; unknown names or params are FilterErrors."""
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise FilterError(f"safety.params has entries for filters not in safety.filters: {unknown}")
    filters = []
    for name in names:
        if name not in FILTERS:
            known = ", ".join(sorted(FILTERS)) or "none registered"
            raise FilterError(f"unknown safety filter {name!r}; known: {known}")
        try:
            f = FILTERS[name](layout, action_dim, **dict(params.get(name) or {}))
        except TypeError as e:
            raise FilterError(f"safety filter {name!r}: {e}") from None
        f.name = name
        filters.append(f)
    return FilterChain(filters)


def _register_builtin() -> None:
    from policies.safety.box import BoxFilter, RateFilter

    register_filter("box", BoxFilter)
    register_filter("rate", RateFilter)


_register_builtin()
