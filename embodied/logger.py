"""Run logging: TensorBoard events, a metrics.csv history and the learning-curve plot."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """Writes scalars to TensorBoard and appends each iteration's row to ``metrics.csv``."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step, flush_secs=30)
        self.csv_path = self.run_dir / "metrics.csv"

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        row = {"step": step, **scalars}
        exists = self.csv_path.exists()
        fields = list(row)
        if exists:
            with self.csv_path.open() as f:
                header = next(csv.reader(f), [])
            if header:
                fields = header + [k for k in row if k not in header]
                if fields != header:
                    self._rewrite_header(fields)
        with self.csv_path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            if not exists:
                w.writeheader()
            w.writerow(row)

    def _rewrite_header(self, fields: list[str]) -> None:
        with self.csv_path.open() as f:
            rows = list(csv.DictReader(f))
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)

    def truncate_after(self, step: int) -> None:
        """Drop csv rows past ``step`` (a resumed run rewrites them)."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open() as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], [r for r in reader if int(float(r["step"])) <= step]
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)

    def close(self) -> None:
        self.writer.close()


GENERIC_CURVES = ("train/mean_episode_reward", "train/mean_episode_length_s", "perf/samples_per_s")


def plot_learning_curve(
    run_dir: str | Path, keys: tuple[str, ...] | None = None, max_metrics: int = 3
) -> Path:
    """``learning_curve.png``: each key of metrics.csv against environment steps.

    By default the generic curves plus the first ``max_metrics`` per-episode task metrics the run
    logged (``episode/<name>``, costs left out): no task's term is named here.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    if keys is None:
        header = list(rows[0]) if rows else []
        metrics = [
            k
            for k in header
            if k.startswith("episode/") and not k.startswith("episode/cost/") and not k.endswith("_final")
        ]
        keys = (*GENERIC_CURVES, *metrics[:max_metrics])
    keys = tuple(k for k in keys if rows and k in rows[0])
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), squeeze=False, sharex=True)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_ylabel(key.split("/")[-1])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("environment steps")
    fig.suptitle(run_dir.parent.name + " / " + run_dir.name)
    fig.tight_layout()
    out = run_dir / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
