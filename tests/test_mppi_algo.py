"""algo=mppi end to end on a tiny budget: checkpoints with the model and data, eval, resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embodied.checkpoint import latest_checkpoint, load_checkpoint
from tests.test_cli import assert_one_line_error, embodied

TINY = [
    "task=arm_reach",
    "algo=mppi",
    "num_envs=4",
    "algo.num_steps_per_env=10",
    "task.episode_length_s=0.2",  # 5-step episodes: every iteration ends some
    "algo.model.hidden=[32,32]",
    "algo.model.members=3",
    "algo.model.elites=2",
    "algo.planner.samples=16",
    "algo.planner.elites=4",
    "algo.planner.horizon=3",
    "algo.planner.iterations=2",
    "algo.updates=20",
    "train.save_interval=1",
    "train.evaluate=false",
    "train.export=false",
    "threads.torch=1",
    "threads.torch_collect=1",
    "sim.nthread=1",
]


@pytest.fixture(scope="module")
def mppi_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mppi") / "run"
    p = embodied("train", *TINY, "train.max_iterations=2", f"run_dir={run}", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return run


def test_two_iterations_checkpoint_the_fitted_model_and_all_data(mppi_run):
    assert sorted(p.name for p in (mppi_run / "checkpoints").glob("*.pt")) == ["model_1.pt", "model_2.pt"]
    ckpt = load_checkpoint(latest_checkpoint(mppi_run))
    assert ckpt["policy"]["name"] == "planner" and ckpt["algo"]["name"] == "mppi"
    assert bool(ckpt["policy"]["state"]["fitted"])
    data = ckpt["algo"]["state"]["data"]
    assert data["state"].shape[:2] == (20, 4) and data["action"].shape == (20, 4, 3)
    assert int(data["truncated"].sum()) == 16  # 4 envs x 4 finished 5-step episodes
    rows = list(csv.DictReader((mppi_run / "metrics.csv").open()))
    assert [int(r["perf/iteration"]) for r in rows] == [1, 2]
    assert float(rows[0]["wm/transitions"]) == 40 and float(rows[1]["wm/transitions"]) == 80
    assert rows[0]["planner/score"] == ""  # the first iteration acts at random
    assert rows[1]["planner/score"] != "" and float(rows[1]["wm/val_mse"]) > 0


def test_eval_of_an_mppi_run_plans_with_its_model(mppi_run):
    p = embodied("eval", f"run={mppi_run}", "num_envs=2", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((mppi_run / "eval.json").read_text())
    assert result["iteration"] == 2 and result["episodes"] == 2
    assert 0.0 <= result["success"] <= 1.0 and result["mean_length_s"] == pytest.approx(0.2)


def test_play_and_export_of_an_mppi_run(mppi_run):
    p = embodied("play", f"run={mppi_run}", "seconds=0.2", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (mppi_run / "videos" / "play.mp4").stat().st_size > 0
    assert_one_line_error(embodied("export", f"run={mppi_run}"))  # a planner has no single graph


def test_resume_continues_with_the_recorded_data(mppi_run):
    p = embodied("train", f"resume={mppi_run}", "train.max_iterations=3", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    ckpt = load_checkpoint(latest_checkpoint(mppi_run))
    assert ckpt["iteration"] == 3 and ckpt["total_steps"] == 120
    assert ckpt["algo"]["state"]["data"]["state"].shape[:2] == (30, 4)
    assert ckpt["algo"]["state"]["updates"] == 3
    rows = list(csv.DictReader((mppi_run / "metrics.csv").open()))
    assert [int(r["perf/iteration"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["wm/transitions"]) == 120


def test_mppi_with_a_network_policy_is_a_one_line_error(tmp_path):
    p = embodied("train", *TINY, "policy=mlp", "train.max_iterations=1", f"run_dir={tmp_path / 'r'}")
    assert_one_line_error(p, "algo=mppi needs policy=planner")
    assert not (tmp_path / "r").exists()


def test_bad_planner_setting_is_a_one_line_error(tmp_path):
    p = embodied(
        "train", *TINY, "algo.planner.elites=99", "train.max_iterations=1", f"run_dir={tmp_path / 'r'}"
    )
    assert_one_line_error(p, "planner.elites")
