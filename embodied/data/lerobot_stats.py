"""LeRobot's statistics (meta/stats.json, the episodes' ``stats/<feature>/<stat>`` columns), exact.

Per feature: min, max, mean, std (population), count [F] and the quantiles q01 q10 q50 q90 q99;
vectors per dimension, camera frames per channel in [0, 1] units with shape (3, 1, 1).
"""

from __future__ import annotations

import torch

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def quantiles(v: torch.Tensor, ps: tuple[float, ...]) -> torch.Tensor:
    """(len(ps), D) quantiles of (F, D) values along F, linear between order statistics (numpy's and
    torch.quantile's default), without torch.quantile's limit on the input size."""
    s = v.sort(0).values
    pos = torch.tensor(ps, dtype=torch.float64) * (v.shape[0] - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    w = (pos - lo)[:, None]
    return s[lo] * (1 - w) + s[hi] * w


def feature_stats(x: torch.Tensor) -> dict[str, list]:
    """LeRobot's per-feature statistics of a (F,) or (F, D) column, exact: per dimension min, max, mean,
    std (population), count [F], and the quantiles q01 q10 q50 q90 q99 (linear interpolation)."""
    v = x.double().reshape(x.shape[0], -1)
    q = quantiles(v, QUANTILES)
    out = {
        "min": v.min(0).values,
        "max": v.max(0).values,
        "mean": v.mean(0),
        "std": v.std(0, correction=0),
    }
    out.update({f"q{round(p * 100):02d}": q[i] for i, p in enumerate(QUANTILES)})
    stats = {k: s.tolist() for k, s in out.items()}
    stats["count"] = [int(x.shape[0])]
    return stats


class ImageStats:
    """Per-channel statistics of uint8 frames in [0, 1] units (LeRobot's image stats, shape (3, 1, 1)),
    exact: from a 256-bin histogram per channel accumulated as frames arrive."""

    def __init__(self) -> None:
        self.hist = torch.zeros(3, 256, dtype=torch.float64)
        self.frames = 0

    def add(self, frames: torch.Tensor) -> None:
        """frames: (F, 3, H, W) uint8."""
        flat = frames.permute(1, 0, 2, 3).reshape(3, -1).long()
        self.hist += torch.zeros(3, 256, dtype=torch.float64).scatter_add_(
            1, flat, torch.ones_like(flat, dtype=torch.float64)
        )
        self.frames += int(frames.shape[0])

    def stats(self) -> dict[str, list]:
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        n = self.hist.sum(1)
        mean = (self.hist * levels).sum(1) / n
        std = ((self.hist * (levels - mean[:, None]) ** 2).sum(1) / n).sqrt()
        seen = self.hist > 0
        cdf = self.hist.cumsum(1) / n[:, None]
        out = {
            "min": levels[seen.float().argmax(1)],
            "max": levels[255 - seen.flip(1).float().argmax(1)],
            "mean": mean,
            "std": std,
        }
        for p in QUANTILES:  # the smallest level whose cumulative share reaches p
            out[f"q{round(p * 100):02d}"] = levels[(cdf < p).sum(1).clamp(max=255)]
        stats = {k: [[[float(c)]] for c in v] for k, v in out.items()}
        stats["count"] = [self.frames]
        return stats
