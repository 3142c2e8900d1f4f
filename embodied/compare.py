"""``embodied compare runs/<glob>``: learning curves and final figures of runs, grouped by config.

Runs whose resolved configs differ only in ``seed`` (and ``run_dir``) are one group. Each group's
curve is the mean over its seeds with a band of one standard deviation; the table gives the final
value of each metric as the mean with its 95 % t-interval over seeds.
"""

from __future__ import annotations

import csv
import glob
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embodied.errors import ConfigError

DEFAULT_METRICS = ("train/mean_episode_reward", "train/mean_episode_length_s")
PER_RUN_KEYS = ("seed", "run_dir", "resume")  # what differs between seeds of one config
# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass
class Group:
    label: str
    runs: list[Path] = field(default_factory=list)
    curves: list[list[dict[str, float]]] = field(default_factory=list)  # per run: rows of metrics.csv


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories (holding config.yaml and metrics.csv) named by paths or globs; a folder of runs
    (a multirun sweep) stands for the runs inside it."""
    found: list[Path] = []
    for pattern in patterns:
        paths = [Path(p) for p in sorted(glob.glob(pattern))] or [Path(pattern)]
        for p in paths:
            if (p / "config.yaml").is_file():
                found.append(p)
            elif p.is_dir():
                found += sorted(c for c in p.iterdir() if (c / "config.yaml").is_file())
    runs = [r for r in dict.fromkeys(found) if (r / "metrics.csv").is_file()]
    if not runs:
        raise ConfigError(f"compare: no run directories with metrics.csv in {' '.join(patterns)}")
    return runs


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _read_curve(run: Path) -> list[dict[str, float]]:
    rows = []
    with (run / "metrics.csv").open() as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items() if v not in (None, "")})
    return rows


def group_runs(runs: list[Path]) -> list[Group]:
    """Runs grouped by their config without the per-run keys; labels name what differs between groups."""
    configs = {}
    for run in runs:
        flat = _flatten(yaml.safe_load((run / "config.yaml").read_text()) or {})
        configs[run] = {k: v for k, v in flat.items() if k not in PER_RUN_KEYS}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    groups: dict[str, Group] = {}
    for run, c in configs.items():
        label = " ".join(f"{k}={c.get(k)}" for k in differing) or "all runs"
        g = groups.setdefault(label, Group(label))
        g.runs.append(run)
        g.curves.append(_read_curve(run))
    return list(groups.values())


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95 % t-interval (nan with fewer than two values)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return mean, t * sd / math.sqrt(n)


def _final(curve: list[dict[str, float]], metric: str) -> float | None:
    vals = [r[metric] for r in curve if metric in r]
    return vals[-1] if vals else None


def _mean_curve(group: Group, metric: str) -> tuple[list[float], list[float], list[float]]:
    """Steps every run of the group logged the metric at, with the mean and std over runs there."""
    per_run = [{r["step"]: r[metric] for r in c if metric in r} for c in group.curves]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    means, stds = [], []
    for s in steps:
        vals = [p[s] for p in per_run]
        m = sum(vals) / len(vals)
        means.append(m)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)))
    return steps, means, stds


def plot(groups: list[Group], metrics: list[str], out: Path) -> Path:
    """One panel per metric: each group's mean curve over seeds and a band of +- one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.8 * len(metrics)), squeeze=False, sharex=True)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for g in groups:
            steps, mean, std = _mean_curve(g, metric)
            if not steps:
                continue
            ax.plot(steps, mean, label=f"{g.label} (n={len(g.runs)})")
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(steps, low, high, alpha=0.25)
        ax.set_ylabel(metric.split("/")[-1])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("environment steps")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def table(groups: list[Group], metrics: list[str]) -> str:
    """Markdown: per group, the number of seeds and each metric's final value, mean +- 95 % interval."""
    lines = ["| config | seeds | " + " | ".join(f"final {m}" for m in metrics) + " |"]
    lines.append("|---|---|" + "---|" * len(metrics))
    for g in groups:
        cells = []
        for m in metrics:
            vals = [v for v in (_final(c, m) for c in g.curves) if v is not None]
            mean, half = t_interval(vals)
            cells.append("-" if not vals else f"{mean:.4g}" + ("" if math.isnan(half) else f" ± {half:.3g}"))
        lines.append(f"| {g.label} | {len(g.runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n± is the half-width of the 95 % t-interval over seeds.\n"


def compare(
    patterns: list[str], metrics: list[str] | None = None, out: Path | None = None
) -> tuple[Path, Path]:
    """Write ``compare.png`` and ``compare.md`` (into ``out``, by default the runs' common parent)."""
    runs = find_runs(patterns)
    groups = group_runs(runs)
    metrics = list(
        metrics or [m for m in DEFAULT_METRICS if any(m in r for g in groups for c in g.curves for r in c)]
    )
    if not metrics:
        raise ConfigError(f"compare: the runs logged none of {', '.join(DEFAULT_METRICS)}; pass metrics=...")
    if out is None:
        parents = [r.resolve().parent for r in runs]
        out = Path(*Path(parents[0]).parts[: _common(parents)])
    png = plot(groups, metrics, out / "compare.png")
    md = out / "compare.md"
    md.write_text(f"![learning curves](compare.png)\n\n{table(groups, metrics)}")
    return png, md


def _common(paths: list[Path]) -> int:
    parts = [p.parts for p in paths]
    n = 0
    while all(len(p) > n and p[n] == parts[0][n] for p in parts):
        n += 1
    return n
