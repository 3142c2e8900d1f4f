"""Algorithm config blocks -> validated dataclasses, with one-line errors for bad keys and values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from embodied.errors import ConfigError


def check_types(cfg: Any) -> None:
    """Each field of dataclass ``cfg`` has its default's type (ints pass as floats) and floats are finite.

    YAML reads "1e-3" (no dot) as a string; this catches that here rather than deep in an update.
    """
    name = type(cfg).__name__
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), type(f.default)
        allowed = (int, float) if kind is float else (kind,)
        if not isinstance(value, allowed) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name}.{f.name} must be {kind.__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}.{f.name} must be finite, got {value}")


def parse_config(
    algo: str, cfg: Mapping[str, Any], parts: Iterable[type], extra: Iterable[str] = ()
) -> list[Any]:
    """Split ``cfg`` over the dataclasses ``parts`` (each takes the keys it names); ``extra`` keys are
    the caller's own. Unknown keys and invalid values are ConfigErrors naming them."""
    parts, extra = list(parts), set(extra)
    names = [{f.name for f in fields(p)} for p in parts]
    known = set().union(*names) | extra
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(
            f"unknown algo key(s) {', '.join(unknown)}; {algo} takes: {', '.join(sorted(known))}"
        )

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, list | tuple) else v

    try:
        return [
            p(**{k: plain(v) for k, v in cfg.items() if k in n}) for p, n in zip(parts, names, strict=True)
        ]
    except ValueError as e:
        raise ConfigError(str(e)) from None
