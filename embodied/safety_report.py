"""The safety-eval report: ``report.json`` (every figure, per seed too), ``report.md`` and ``report.png``.

A figure is ``{"mean", "half_width", "per_seed"}`` (see ``embodied.safety_eval.interval``); its text
form is ``mean ± half_width``, or ``mean (n/a)`` where one seed gives no interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The figures every setting has, in table order; per-term costs and task metrics follow.
HEADLINE = (
    ("return", "return"),
    ("cost_per_step", "cost events/step"),
    ("violation_share", "episodes with violation"),
    ("intervention_rate", "intervention rate"),
    ("correction", "correction/step"),
    ("correction_when_intervened", "correction when intervened"),
)


def fmt(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean ± half_width``; ``mean (n/a)`` without an interval; ``n/a`` without a mean."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    mean = f"{stat['mean']:.{digits}f}"
    half = stat.get("half_width")
    return f"{mean} (n/a)" if half is None else f"{mean} ± {half:.{digits}f}"


def _columns(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, header) of the main table: headline figures, each cost term, then the task's metrics."""
    keys: list[str] = []
    for r in report["results"].values():
        keys += [k for k in r["metrics"] if k not in keys]
    cols = list(HEADLINE)
    cols += [
        (k, k.replace("cost_per_step/", "cost/") + " /step") for k in keys if k.startswith("cost_per_step/")
    ]
    cols += [(k, k.removeprefix("task/")) for k in keys if k.startswith("task/")]
    cols += [("fall_rate", "fall rate"), ("length_s", "length (s)")]
    return cols


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: one row per setting, then the per-filter figures of each chain."""
    cols = _columns(report)
    res = report["results"]
    lines = [
        f"# Safety evaluation: {report['task']}",
        "",
        f"Run `{report['run']}`, checkpoint `{report['checkpoint']}` (iteration {report['iteration']}); "
        f"{report['episodes']} episodes per seed, seeds {report['seeds']}, metrics after "
        f"{report['warmup_s']} s warm-up. Each figure: {report['interval']}.",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    lines += _table(
        ["setting", *(h for _, h in cols)],
        [[s, *(fmt(r["metrics"].get(k)) for k, _ in cols)] for s, r in res.items()],
    )
    chained = [(s, f) for s, r in res.items() for f in r["filters"]]
    if chained:
        lines += ["", "Per filter:", ""]
        lines += _table(
            ["setting", "filter", "intervention rate", "correction/step", "correction when intervened"],
            [[s, f, *(fmt(res[s]["metrics"].get(f"{k}/{f}")) for k, _ in HEADLINE[3:])] for s, f in chained],
        )
    worst = report.get("worst_episode")
    if worst:
        lines += [
            "",
            f"Worst episode (most cost events) under `{worst['setting']}`: seed {worst['seed']}, "
            f"episode {worst['episode']}, {worst['cost_events']} cost events; video `{worst['video']}` "
            f"({worst['rerun_cost_events']} in the re-run).",
        ]
    return "\n".join(lines) + "\n"


def compact_table(report: Mapping[str, Any], max_task_metrics: int = 2) -> str:
    """A plain-text table for the terminal: the headline figures and the first task metrics."""
    cols = [c for c in _columns(report) if not c[0].startswith("cost_per_step/")]
    task = [c for c in cols if c[0].startswith("task/")][:max_task_metrics]
    cols = [c for c in cols if c[0] in dict(HEADLINE)] + task
    rows = [["setting", *(h for _, h in cols)]]
    rows += [[s, *(fmt(r["metrics"].get(k)) for k, _ in cols)] for s, r in report["results"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def plot_report(report: Mapping[str, Any], path: str | Path, max_task_metrics: int = 3) -> Path:
    """``report.png``: one panel per headline figure and task metric, one bar per setting, 95 % bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(report)
    task = [c for c in cols if c[0].startswith("task/")][:max_task_metrics]
    cols = [c for c in cols if c[0] in dict(HEADLINE)] + task
    settings = list(report["results"])
    ncols = 3
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, (key, header) in zip(axes.flat, cols, strict=False):
        stats = [report["results"][s]["metrics"].get(key) or {} for s in settings]
        means = [st.get("mean") or 0.0 for st in stats]
        errs = [st.get("half_width") or 0.0 for st in stats]
        ax.bar(
            range(len(settings)), means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(settings))]
        )
        for i, st in enumerate(stats):
            if st.get("mean") is None:  # e.g. the correction when intervened of a setting that never did
                ax.text(i, 0.0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(settings)), settings, rotation=20)
        ax.set_title(header, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    fig.suptitle(f"{report['task']}: {len(report['seeds'])} seeds x {report['episodes']} episodes")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return [out / "report.json", out / "report.md", plot_report(report, out / "report.png")]
