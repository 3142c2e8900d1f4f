"""Rollout videos: H.264 files, with each frame's safety-cost events drawn on it and logged beside it.

A frame shows the state a step produced, so it is annotated with the cost terms that step reported
(``info["metric/cost/<name>"]``). Frames with a cost event get a red border and the names of the
active terms; ``<video>.costs.csv`` lists every term's value per frame, so events can be found
without watching the video.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

BORDER = 4
RED = (230, 40, 40)


class CostVideo:
    """Collects frames of one env and the cost terms of the state each frame shows."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.frames: list[torch.Tensor] = []
        self.costs: list[dict[str, float]] = []

    def add(self, frame: torch.Tensor, info: Mapping[str, torch.Tensor] | None, env_id: int = 0) -> None:
        """frame (3, H, W) uint8; info is the StepOut.info of the step that produced it (None: a reset)."""
        costs = {
            k.removeprefix("metric/cost/"): float(v[env_id])
            for k, v in (info or {}).items()
            if k.startswith("metric/cost/")
        }
        self.frames.append(overlay_costs(frame, costs))
        self.costs.append(costs)

    def write(self, path: str | Path) -> Path:
        """Write the mp4 and ``<path stem>.costs.csv``; returns the mp4's path."""
        path = write_video(path, torch.stack(self.frames), self.fps)
        names = sorted({k for c in self.costs for k in c})
        with path.with_suffix(".costs.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "time_s", *names])
            for i, c in enumerate(self.costs):
                w.writerow([i, f"{i / self.fps:.3f}", *(f"{c.get(k, 0.0):g}" for k in names)])
        return path


def overlay_costs(frame: torch.Tensor, costs: Mapping[str, float]) -> torch.Tensor:
    """A copy of frame (3, H, W) uint8 with a red border and the active cost names, if any is > 0."""
    active = [k for k, v in costs.items() if v > 0]
    if not active:
        return frame
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for i in range(min(BORDER, w // 2, h // 2)):
        draw.rectangle([i, i, w - 1 - i, h - 1 - i], outline=RED)
    for row, name in enumerate(active):
        draw.text((BORDER + 3, BORDER + 2 + 11 * row), f"cost: {name}", fill=RED)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def write_video(path: str | Path, frames: torch.Tensor, fps: int) -> Path:
    """frames: (T, 3, H, W) uint8 -> an H.264 mp4."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=8) as w:
        for f in frames.permute(0, 2, 3, 1).cpu().numpy():
            w.append_data(f)
    return path
