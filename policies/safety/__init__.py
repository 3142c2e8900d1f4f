"""Safety filters: one protocol (policies/safety/base.py), a registry, and the chain built from config.

A new filter is one module with a builder ``(layout, action_dim, **params) -> SafetyFilter`` plus
one ``register_filter`` call; ``safety.filters=[name, ...]`` chains them, parameters come from
``safety.params.<name>``. A filter that reads the task's own declarations (the cbf filter reads
``barriers:``) names those task config keys at registration; they reach its builder as parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from policies.safety.base import FilterChain, FilterError, Layout, SafetyFilter, term_slice

FilterBuilder = Callable[..., SafetyFilter]
FILTERS: dict[str, FilterBuilder] = {}
TASK_KEYS: dict[str, tuple[str, ...]] = {}  # filter -> the task config keys its builder receives

__all__ = [
    "FILTERS",
    "FilterChain",
    "FilterError",
    "SafetyFilter",
    "build_chain",
    "register_filter",
    "term_slice",
]


def register_filter(name: str, builder: FilterBuilder, task_keys: Sequence[str] = ()) -> None:
    """Make ``builder(layout, action_dim, **params)`` available as ``safety.filters=[name]``.

    ``task_keys``: task config keys passed to the builder as parameters of the same name (unless
    ``safety.params.<name>`` sets them).
    """
    if name in FILTERS and FILTERS[name] is not builder:
        raise FilterError(f"a safety filter named {name!r} is already registered")
    FILTERS[name] = builder
    TASK_KEYS[name] = tuple(task_keys)


def build_chain(
    names: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    layout: Layout,
    action_dim: int,
    task: Mapping[str, Any] | None = None,
) -> FilterChain:
    """The chain of registered filters ``names`` in order; unknown names or params are FilterErrors.

    ``task``: the task's config, for the keys a filter registered with ``task_keys``.
    """
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise FilterError(f"safety.params has entries for filters not in safety.filters: {unknown}")
    filters = []
    for name in names:
        if name not in FILTERS:
            known = ", ".join(sorted(FILTERS)) or "none registered"
            raise FilterError(f"unknown safety filter {name!r}; known: {known}")
        kwargs = {k: (task or {}).get(k) for k in TASK_KEYS.get(name, ())}
        kwargs.update(params.get(name) or {})
        try:
            f = FILTERS[name](layout, action_dim, **kwargs)
        except TypeError as e:
            raise FilterError(f"safety filter {name!r}: {e}") from None
        f.name = name
        f.params = _plain(kwargs)  # what deploy.yaml lists beside the filter's name
        filters.append(f)
    return FilterChain(filters)


def _plain(value: Any) -> Any:
    """Config values as plain YAML-able Python (mappings, lists, numbers, strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _register_builtin() -> None:
    from policies.safety.box import BoxFilter, RateFilter
    from policies.safety.cbf import CBFFilter
    from policies.safety.critic import CriticFilter

    register_filter("box", BoxFilter)
    register_filter("rate", RateFilter)
    register_filter("cbf", CBFFilter, task_keys=("barriers",))
    register_filter("critic", CriticFilter)


_register_builtin()
