"""Command-line behaviour: listing tasks, and bad input -> one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embodied.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def embodied(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "embodied.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_tasks_lists_registered_tasks():
    p = embodied("tasks")
    assert p.returncode == 0
    assert "go2_velocity" in p.stdout and "ant" in p.stdout


def test_unknown_task_lists_valid_ones():
    assert_one_line_error(embodied("train", "task=nope"), "unknown task 'nope'", "go2_velocity")


def test_unknown_config_key():
    assert_one_line_error(embodied("train", "learning_rat=0.1"), "learning_rat")


def test_unknown_reward_term():
    assert_one_line_error(
        embodied("train", "+task.rewards.dance={weight: 1.0}", "num_envs=2"), "unknown reward term 'dance'"
    )


def test_missing_robot_file(tmp_path):
    p = embodied("train", f"task.model={tmp_path}/robot.xml", f"run_dir={tmp_path}/run")
    assert_one_line_error(p, "robot model file not found")


def test_malformed_robot_file(tmp_path):
    bad = tmp_path / "robot.xml"
    bad.write_text("<mujoco><worldbody><body></mujoco>")
    assert_one_line_error(
        embodied("train", f"task.model={bad}", f"run_dir={tmp_path}/run"), "malformed robot model"
    )


def test_unknown_command():
    p = embodied("fly")
    assert p.returncode == 2 and "unknown command 'fly'" in p.stderr


def _fake_run(tmp_path: Path, task: str = "go2_velocity") -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(_composed_yaml(task))
    return run


def _composed_yaml(task: str) -> str:
    from omegaconf import OmegaConf

    from embodied.cli import compose

    return OmegaConf.to_yaml(compose([f"task={task}"]), resolve=True)


def test_eval_on_corrupt_checkpoint(tmp_path):
    run = _fake_run(tmp_path)
    (run / "checkpoints" / "model_5.pt").write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(embodied("eval", f"run={run}", "num_envs=2"), "corrupt")


def test_eval_on_checkpoint_of_another_task(tmp_path):
    run = _fake_run(tmp_path)
    save_checkpoint(run / "checkpoints" / "model_5.pt", {"task": "ant", "obs_spec": {}, "iteration": 5})
    assert_one_line_error(embodied("eval", f"run={run}", "num_envs=2"), "belongs to task 'ant'")


def test_eval_on_truncated_checkpoint(tmp_path):
    run = _fake_run(tmp_path)
    good = run / "checkpoints" / "model_5.pt"
    save_checkpoint(good, {"task": "go2_velocity", "weights": torch.zeros(1000)})
    good.write_bytes(good.read_bytes()[:500])
    assert_one_line_error(embodied("eval", f"run={run}", "num_envs=2"), "corrupt")


def test_eval_needs_a_run_dir(tmp_path):
    assert_one_line_error(embodied("eval", f"run={tmp_path}"), "not a run directory")


def test_eval_unknown_option(tmp_path):
    assert_one_line_error(embodied("eval", "runn=x"), "unknown option 'runn'")


@pytest.mark.parametrize("bad", ["num_envs=0", "sim.nthread=0"])
def test_invalid_sizes(tmp_path, bad):
    assert_one_line_error(embodied("train", bad, f"run_dir={tmp_path}/run"), "must be >= 1")
    assert not (tmp_path / "run").exists(), "a rejected config leaves no run directory behind"


def test_export_on_corrupt_checkpoint(tmp_path):
    run = _fake_run(tmp_path)
    (run / "checkpoints" / "model_5.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(embodied("export", f"run={run}"), "corrupt")


def test_sim2sim_without_export(tmp_path):
    run = _fake_run(tmp_path)
    assert_one_line_error(embodied("sim2sim", f"run={run}"), "no exported policy")
