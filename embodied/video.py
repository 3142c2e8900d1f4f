"""Rollout videos: H.264 files, with each frame's safety-cost events drawn on it and logged beside it.

A frame shows the state a step produced, so it is annotated with the cost terms that step reported
(``info["metric/cost/<name>"]``). Frames with a cost event get a red border and the names of the
active terms; ``<video>.costs.csv`` lists every term's value per frame, so events can be found
without watching the video. Safety-filter interventions of that step (``info["safety/<filter>/
intervened"]``) get a blue inner border and the filter's name at the bottom, and a ``filter/<name>``
column (0/1) in the csv when the env has filters.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

BORDER = 4
RED = (230, 40, 40)
BLUE = (40, 150, 255)  # safety-filter interventions


class CostVideo:
    """Collects frames of one env and the cost terms of the state each frame shows."""

    def __init__(self, fps: int) -> None:
        self.fps = fps
        self.frames: list[torch.Tensor] = []
        self.costs: list[dict[str, float]] = []
        self.interventions: list[dict[str, float]] = []

    def add(self, frame: torch.Tensor, info: Mapping[str, torch.Tensor] | None, env_id: int = 0) -> None:
        """frame (3, H, W) uint8; info is the StepOut.info of the step that produced it (None: a reset)."""
        costs = {
            k.removeprefix("metric/cost/"): float(v[env_id])
            for k, v in (info or {}).items()
            if k.startswith("metric/cost/")
        }
        filters = {
            k.removeprefix("safety/").removesuffix("/intervened"): float(v[env_id])
            for k, v in (info or {}).items()
            if k.startswith("safety/") and k.endswith("/intervened") and k != "safety/intervened"
        }
        self.frames.append(overlay_interventions(overlay_costs(frame, costs), filters))
        self.costs.append(costs)
        self.interventions.append(filters)

    def write(self, path: str | Path) -> Path:
        """Write the mp4 and ``<path stem>.costs.csv``; returns the mp4's path."""
        path = write_video(path, torch.stack(self.frames), self.fps)
        names = sorted({k for c in self.costs for k in c})
        filters = sorted({k for c in self.interventions for k in c})
        with path.with_suffix(".costs.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame", "time_s", *names, *(f"filter/{k}" for k in filters)])
            for i, (c, hit) in enumerate(zip(self.costs, self.interventions, strict=True)):
                values = [*(c.get(k, 0.0) for k in names), *(hit.get(k, 0.0) for k in filters)]
                w.writerow([i, f"{i / self.fps:.3f}", *(f"{v:g}" for v in values)])
        return path


def overlay_costs(frame: torch.Tensor, costs: Mapping[str, float]) -> torch.Tensor:
    """A copy of frame (3, H, W) uint8 with a red border and the active cost names, if any is > 0."""
    active = [k for k, v in costs.items() if v > 0]
    if not active:
        return frame
    lines = [((BORDER + 3, BORDER + 2 + 11 * row), f"cost: {name}") for row, name in enumerate(active)]
    return _framed(frame, 0, RED, lines)


def overlay_interventions(frame: torch.Tensor, filters: Mapping[str, float]) -> torch.Tensor:
    """A copy of frame (3, H, W) uint8 with a blue inner border and the names of the filters that
    intervened (value > 0) at the bottom, if any did; inside the cost border, so both can show."""
    active = [k for k, v in filters.items() if v > 0]
    if not active:
        return frame
    h = frame.shape[1]
    return _framed(
        frame, BORDER, BLUE, [((2 * BORDER + 3, h - 2 * BORDER - 12), "filter: " + "+".join(active))]
    )


def _framed(
    frame: torch.Tensor, inset: int, color: tuple[int, int, int], lines: list[tuple[tuple[int, int], str]]
) -> torch.Tensor:
    """frame with a BORDER-pixel border ``inset`` pixels in from the edge, and text at positions."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for i in range(inset, min(inset + BORDER, w // 2, h // 2)):
        draw.rectangle([i, i, w - 1 - i, h - 1 - i], outline=color)
    for xy, text in lines:
        draw.text(xy, text, fill=color)
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
