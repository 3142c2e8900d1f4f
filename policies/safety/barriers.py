"""Barrier declarations h(x) >= 0 with the action's linearized effect, read from a task's config.

Every quantity is a polynomial in *features*: raw policy-observation values (the observation divided
by its term's scale), found by name through the observation layout. A feature is ``term`` (all of
its components), ``term[i]``, ``term[i:j]``, or a product of those joined by ``*``
(``ego_velocity[0]*lane_error[1]``). A polynomial is a mapping ``{feature: coefficient, const: c}``;
a coefficient (and ``const``) is a number or a list with one value per row.

A barrier declares::

    h:     {feature: coeff, ..., const: c}   # h(x), >= 0 where safe
    drift: {feature: coeff, ..., const: c}   # h(x') - h(x) over one policy step with action 0
    gain:  [g_0, ..., g_{A-1}]               # d(h(x') - h(x)) / d a_j: a number, one number per
                                             # row, or a polynomial; or {diagonal: c}: row j
                                             # depends on action j alone, with gain c_j
    rate:  0.5                               # gamma in (0, 1]: h(x') >= (1 - gamma) h(x)

A barrier with ``kind:`` is a module instead (``KINDS``; e.g. ``swept_corridor``, a car's path among
its range-ray hits, policies/safety/corridor.py): it reads its terms through the layout and gives its
rows' G, b and h itself. Its rows follow the polynomial ones.

so that the discrete-time barrier condition h(x') - h(x) >= -gamma h(x) becomes the linear
constraint ``G(x) a >= b(x)`` with ``G = gain`` and ``b = -gamma h - drift``. A barrier has as many
rows as its widest feature (a vector term gives one row per component; scalars broadcast).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from policies.safety.base import FilterError, Layout, term_slice
from policies.safety.corridor import SweptCorridor

KINDS = {"swept_corridor": SweptCorridor}  # barriers that are modules: spec -> rows (G, b, h)

_FACTOR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)(?::(\d+))?\])?$")

# A monomial of a polynomial with R rows: (factors, coefficients (R,)); a factor is (columns (1 or R),
# 1 / scale). The constant is the monomial without factors.
Factor = tuple[list[int], float]
Monomial = tuple[list[Factor], list[float]]


def _columns(layout: Layout, factor: str, where: str) -> Factor:
    """Observation columns of one factor and the factor that turns them into raw values."""
    m = _FACTOR.match(factor.strip())
    if m is None:
        raise FilterError(f"{where}: cannot read feature {factor!r} (write term, term[i] or term[i:j])")
    name, i, j = m.group(1), m.group(2), m.group(3)
    try:
        start, stop, scale = term_slice(layout, name)
    except FilterError as e:
        raise FilterError(f"{where}: {e}") from None
    if scale == 0.0:
        raise FilterError(f"{where}: observation term {name!r} has scale 0, its raw value is lost")
    cols = list(range(start, stop))
    if i is not None:
        lo = int(i)
        hi = int(j) if j is not None else lo + 1
        if not 0 <= lo < hi <= len(cols):
            raise FilterError(f"{where}: {factor!r} is out of range, term {name!r} has {len(cols)} values")
        cols = cols[lo:hi]
    return cols, 1.0 / scale


def _numbers(value: Any, where: str) -> list[float]:
    if isinstance(value, bool) or not isinstance(value, int | float | Sequence) or isinstance(value, str):
        raise FilterError(f"{where}: a coefficient must be a number or a list of numbers, got {value!r}")
    vals = [value] if isinstance(value, int | float) else list(value)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int | float) for v in vals):
        raise FilterError(f"{where}: a coefficient must be a number or a list of numbers, got {value!r}")
    out = [float(v) for v in vals]
    if not all(math.isfinite(v) for v in out):
        raise FilterError(f"{where}: coefficients must be finite, got {value!r}")
    return out


def parse_polynomial(spec: Any, layout: Layout, where: str) -> tuple[int, list[Monomial]]:
    """A declared polynomial -> (rows, monomials); one-value coefficients and columns broadcast."""
    if (isinstance(spec, int | float | Sequence) and not isinstance(spec, bool | str)) and not isinstance(
        spec, Mapping
    ):
        spec = {"const": spec}  # a number, or one number per row
    if not isinstance(spec, Mapping):
        raise FilterError(f"{where}: expected a number or a mapping {{feature: coefficient, const: c}}")
    monos: list[Monomial] = []
    for key, coeff in spec.items():
        factors = [] if key == "const" else [_columns(layout, f, where) for f in str(key).split("*")]
        monos.append((factors, _numbers(coeff, f"{where} {key}")))
    widths = {len(c) for m in monos for c in [m[1], *(f[0] for f in m[0])]} - {1}
    if len(widths) > 1:
        raise FilterError(f"{where}: features and coefficients have different lengths {sorted(widths)}")
    return (widths.pop() if widths else 1), monos


class StackedPolynomial(nn.Module):
    """Row blocks of polynomials evaluated at once: obs (B, D) -> (B, M), scriptable and traceable.

    Monomial k of row m is ``coeff[k, m] * prod_f x[:, cols[k, f, m]] * inv_scale[k, f]``, where
    ``x`` is the observation with a trailing column of ones (the padding of shorter monomials).
    """

    def __init__(self, blocks: Sequence[tuple[int, list[Monomial]]], obs_dim: int) -> None:
        super().__init__()
        rows = sum(r for r, _ in blocks)
        monos = [(offset, r, m) for offset, (r, ms) in zip(_offsets(blocks), blocks, strict=True) for m in ms]
        k, f = max(1, len(monos)), max([1, *(len(m[0]) for _, _, m in monos)])
        cols = torch.full((k, f, rows), obs_dim, dtype=torch.long)  # obs_dim: the ones column
        inv = torch.ones(k, f)
        coeff = torch.zeros(k, rows)
        for i, (offset, r, (factors, c)) in enumerate(monos):
            coeff[i, offset : offset + r] = torch.tensor(c).expand(r)
            for j, (fcols, s) in enumerate(factors):
                cols[i, j, offset : offset + r] = torch.tensor(fcols).expand(r)
                inv[i, j] = s
        self.rows, self.k, self.f = rows, k, f
        self.register_buffer("cols", cols.flatten())
        self.register_buffer("inv", inv[..., None])
        self.register_buffer("coeff", coeff)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, torch.ones_like(obs[:, :1])], 1)
        v = x.index_select(1, self.cols).view(x.shape[0], self.k, self.f, self.rows) * self.inv
        return (v.prod(2) * self.coeff).sum(1)


def _offsets(blocks: Sequence[tuple[int, Any]]) -> list[int]:
    out, at = [], 0
    for r, _ in blocks:
        out.append(at)
        at += r
    return out


class Barriers(nn.Module):
    """The declared barriers of a task as one constraint set ``G(x) a >= b(x)``, plus h(x).

    forward(obs (B, D)) -> (G (B, M, A), b (B, M), h (B, M)); ``names`` and ``rows`` say which rows
    belong to which barrier.
    """

    def __init__(
        self, specs: Mapping[str, Mapping[str, Any]], layout: Layout, action_dim: int, obs_dim: int
    ) -> None:
        super().__init__()
        h_blocks, drift_blocks, rates = [], [], []
        gain_blocks: list[list[tuple[int, list[Monomial]]]] = [[] for _ in range(action_dim)]
        self.names: list[str] = []
        self.row_counts: list[int] = []
        modules: list[tuple[str, nn.Module]] = []
        for name, spec in specs.items():
            where = f"barrier {name!r}"
            if spec is None:  # switched off: a variant's `<name>: null` or `task.barriers.<name>=null`
                continue
            if not isinstance(spec, Mapping):
                raise FilterError(f"{where} must be a mapping with h, drift, gain and rate")
            if "kind" in spec:
                if spec["kind"] not in KINDS:
                    raise FilterError(f"{where}: unknown kind {spec['kind']!r}; known: {sorted(KINDS)}")
                modules.append((str(name), KINDS[spec["kind"]](spec, layout, action_dim, where)))
                continue
            unknown = sorted(set(spec) - {"h", "drift", "gain", "rate"})
            if unknown:
                raise FilterError(f"{where}: unknown key(s) {unknown}; known: h, drift, gain, rate")
            if "h" not in spec or "gain" not in spec:
                raise FilterError(f"{where} needs h and gain (drift and rate are optional)")
            gain = spec["gain"]
            if isinstance(gain, Mapping) and set(gain) == {"diagonal"}:
                gain = _diagonal(gain["diagonal"], action_dim, where)
            if isinstance(gain, Mapping | str) or not isinstance(gain, Sequence) or len(gain) != action_dim:
                raise FilterError(f"{where}: gain needs one entry per action dimension ({action_dim})")
            rate = spec.get("rate", 0.5)
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < float(rate) <= 1.0:
                raise FilterError(f"{where}: rate must be a number in (0, 1], got {rate!r}")
            polys = [
                parse_polynomial(spec["h"], layout, f"{where} h"),
                parse_polynomial(spec.get("drift", 0.0), layout, f"{where} drift"),
                *(parse_polynomial(g, layout, f"{where} gain[{j}]") for j, g in enumerate(gain)),
            ]
            rows = max(r for r, _ in polys)
            if any(r not in (1, rows) for r, _ in polys):
                raise FilterError(f"{where}: h, drift and gain have different row counts")
            polys = [(rows, m) for _, m in polys]
            h_blocks.append(polys[0])
            drift_blocks.append(polys[1])
            for j in range(action_dim):
                gain_blocks[j].append(polys[2 + j])
            rates.extend([float(rate)] * rows)
            self.names.append(str(name))
            self.row_counts.append(rows)
        self.h = StackedPolynomial(h_blocks, obs_dim)
        self.drift = StackedPolynomial(drift_blocks, obs_dim)
        self.gain = nn.ModuleList(StackedPolynomial(g, obs_dim) for g in gain_blocks)
        self.register_buffer("rate", torch.tensor(rates))
        self.modules_ = nn.ModuleList(m for _, m in modules)
        self.names.extend(n for n, _ in modules)
        self.row_counts.extend(int(m.num_rows) for _, m in modules)
        self.num_rows = sum(self.row_counts)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.h(obs)
        g = torch.stack([p(obs) for p in self.gain], -1)
        b = -self.rate * h - self.drift(obs)
        gs, bs, hs = [g], [b], [h]
        for m in self.modules_:
            mg, mb, mh = m(obs)
            gs.append(mg)
            bs.append(mb)
            hs.append(mh)
        return torch.cat(gs, 1), torch.cat(bs, 1), torch.cat(hs, 1)


def _diagonal(value: Any, action_dim: int, where: str) -> list[list[float]]:
    """``gain: {diagonal: c}``: row j's gain is c_j on action j alone (one row per action dimension)."""
    c = _numbers(value, f"{where} gain.diagonal")
    if len(c) == 1:
        c = c * action_dim
    if len(c) != action_dim:
        raise FilterError(f"{where}: gain.diagonal needs 1 or {action_dim} values, got {len(c)}")
    return [[c[j] if r == j else 0.0 for r in range(action_dim)] for j in range(action_dim)]


def layout_dim(layout: Layout) -> int:
    """Width of the observation a layout describes."""
    return sum(int(t["dim"]) * int(t.get("history", 1)) for t in layout)
