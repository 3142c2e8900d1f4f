"""Cost-event overlays on rollout videos and the per-frame cost log beside them."""

from __future__ import annotations

import csv

import torch

from embodied.video import BORDER, RED, CostVideo, overlay_costs


def _frame(h: int = 60, w: int = 80) -> torch.Tensor:
    return torch.full((3, h, w), 100, dtype=torch.uint8)


def test_a_cost_event_draws_a_red_border_and_a_clear_frame_is_untouched():
    frame = _frame()
    assert torch.equal(overlay_costs(frame, {"collision": 0.0}), frame)
    hit = overlay_costs(frame, {"collision": 1.0, "lane_departure": 0.0})
    assert hit.shape == frame.shape and hit.dtype == torch.uint8
    assert hit[:, 0, 40].tolist() == list(RED) and hit[:, 30, BORDER - 1].tolist() == list(RED)
    assert hit[:, 45, 40].tolist() == [100, 100, 100], "the inside of the frame is kept"
    assert torch.equal(frame, _frame()), "the input frame is not modified"


def test_cost_video_writes_mp4_and_per_frame_cost_log(tmp_path):
    video = CostVideo(fps=25)
    video.add(_frame(), None)  # the reset frame: no step has reported costs yet
    for hit in (0.0, 1.0, 0.0):
        info = {"metric/cost/collision": torch.tensor([hit, 0.0]), "metric/success": torch.tensor([0.0, 1.0])}
        video.add(_frame(), info)
    path = video.write(tmp_path / "play.mp4")
    assert path.stat().st_size > 0
    rows = list(csv.DictReader(path.with_suffix(".costs.csv").open()))
    assert [r["collision"] for r in rows] == ["0", "0", "1", "0"]
    assert rows[2]["time_s"] == "0.080" and "success" not in rows[0]
