"""Sweeps through Hydra's multirun, and ``embodied compare`` over their run directories."""

from __future__ import annotations

import math

from embodied.compare import t_interval
from tests.test_cli import assert_one_line_error, embodied

TINY = [
    "num_envs=4",
    "algo.num_steps_per_env=8",
    "task.episode_length_s=0.1",
    "policy.actor_hidden_dims=[16]",
    "policy.critic_hidden_dims=[16]",
    "train.max_iterations=2",
    "train.evaluate=false",
    "train.export=false",
    "threads.torch=1",
]


def test_t_interval_of_known_values():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-9)
    assert math.isnan(t_interval([5.0])[1])


def test_multirun_writes_one_run_per_job_and_compare_plots_and_tabulates_them(tmp_path):
    sweep = tmp_path / "sweep"
    p = embodied("train", "-m", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert [r.name for r in runs] == ["0", "1"]
    for r in runs:
        assert (r / "config.yaml").is_file() and (r / "checkpoints" / "model_2.pt").is_file()
    assert {f"seed: {s}" in (r / "config.yaml").read_text() for r, s in zip(runs, (1, 2), strict=True)} == {
        True
    }

    p = embodied("compare", f"{sweep}/*", f"out={tmp_path / 'cmp'}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    table = (tmp_path / "cmp" / "compare.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| all runs"))
    assert "| 2 |" in row and "±" in row, "the two seeds form one config with a 95% interval"


def test_compare_without_runs_is_one_line(tmp_path):
    assert_one_line_error(embodied("compare", str(tmp_path / "none")), "no run directories")
