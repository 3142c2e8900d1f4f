"""End-to-end CLI runs on a tiny budget: the run directory, eval, play, SIGKILL + resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embodied.checkpoint import latest_checkpoint, load_checkpoint
from tests.test_cli import ROOT, embodied

TINY = [
    "num_envs=16",
    "algo.num_steps_per_env=8",
    "task.episode_length_s=0.1",
    "task.eval.num_envs=2",
    "policy.actor_hidden_dims=[32,32]",
    "policy.critic_hidden_dims=[32,32]",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("e2e") / "run"
    p = embodied(
        "train", *TINY, "train.max_iterations=3", "train.save_interval=2", f"run_dir={run}", timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return run


def test_train_leaves_a_complete_run_directory(trained_run):
    run = trained_run
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["model_2.pt", "model_3.pt"]
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events"
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert (run / "videos" / "eval.mp4").stat().st_size > 1000
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["perf/iteration"]) for r in rows] == [1, 2, 3]
    assert any(k.startswith("env/reward/track_lin_vel_xy_exp") for k in rows[0]), "each reward term is logged"
    result = json.loads((run / "eval.json").read_text())
    assert {"lin_vel_error", "fall_rate", "mean_return"} <= set(result)


def test_tensorboard_has_every_reward_term(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for term in ("track_lin_vel_xy_exp", "feet_air_time", "undesired_contacts", "action_rate_l2"):
        assert f"env/reward/{term}" in tags
    assert {"perf/samples_per_s", "train/mean_episode_reward", "loss/value", "policy/kl"} <= tags, tags


def test_eval_prints_and_saves_metrics(trained_run):
    (trained_run / "eval.json").unlink()
    p = embodied("eval", f"run={trained_run}", "num_envs=3", "seed=5")
    assert p.returncode == 0, p.stderr
    printed = json.loads(p.stdout[: p.stdout.rindex("}") + 1])
    assert printed["episodes"] == 3 and printed["seed"] == 5
    assert json.loads((trained_run / "eval.json").read_text()) == printed


def test_play_writes_a_video(trained_run):
    p = embodied("play", f"run={trained_run}", "seconds=0.5")
    assert p.returncode == 0, p.stderr
    assert (trained_run / "videos" / "play.mp4").stat().st_size > 500


def test_new_run_refuses_to_overwrite_an_existing_one(trained_run):
    p = embodied("train", *TINY, f"run_dir={trained_run}")
    assert p.returncode == 2 and "use resume=" in p.stderr


def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [
        *TINY,
        "train.save_interval=1",
        "train.max_iterations=10000",
        "train.evaluate=false",
        f"run_dir={run}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "embodied.cli", "train", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(list((run / "checkpoints").glob("model_*.pt"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, likely mid-write of the next checkpoint
    proc.wait()
    ckpts = list((run / "checkpoints").glob("model_*.pt"))
    assert len(ckpts) >= 3
    for c in ckpts:  # every visible checkpoint is complete: atomic rename, no partial files
        assert load_checkpoint(c, task="go2_velocity")["iteration"] == int(c.stem.split("_")[1])
    last = load_checkpoint(latest_checkpoint(run), task="go2_velocity")["iteration"]

    p = embodied("train", f"resume={run}", f"train.max_iterations={last + 2}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"from model_{last}.pt" in p.stderr
    final = load_checkpoint(run / "checkpoints" / f"model_{last + 2}.pt", task="go2_velocity")
    assert final["iteration"] == last + 2
    steps = [int(r["step"]) for r in csv.DictReader((run / "metrics.csv").open())]
    assert steps == sorted(set(steps)), "no iteration logged twice after the resume"
    assert steps[-1] == final["total_steps"]


def test_resume_may_not_change_the_task(tmp_path, trained_run):
    p = embodied("train", f"resume={trained_run}", "task=ant")
    assert p.returncode == 2 and "only train.*" in p.stderr
