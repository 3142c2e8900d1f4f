"""Which world-model config a task gets, and how a run's saved one is completed."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from embodied.cli import compose
from embodied.errors import ConfigError
from embodied.world_model import _world_model_file, with_current_defaults


def test_driving_lane_follow_selects_the_route_world_model_and_the_command_line_still_wins() -> None:
    cfg = compose(["task=driving_lane_follow"])
    assert cfg.world_model.name == "route"
    assert cfg.world_model.input_noise == 3.0 and cfg.world_model.linear_skip is True
    assert cfg.world_model.hidden == [200, 200, 200]  # everything else is the ensemble's
    assert compose(["task=driving_lane_follow", "world_model.input_noise=0.5"]).world_model.input_noise == 0.5
    assert compose(["task=driving_lane_follow", "world_model=ensemble"]).world_model.name == "ensemble"
    assert compose(["task=arm_push"]).world_model.name == "ensemble"


def test_go2_velocity_selects_the_legged_world_model() -> None:
    wm = compose(["task=go2_velocity"]).world_model
    assert wm.name == "legged" and wm.input_noise == 1.0 and wm.linear_skip is True and wm.lr_end == 1e-4
    assert wm.lr == 1e-3 and wm.members == 7


def test_a_saved_config_of_an_extending_world_model_gains_the_keys_of_both_files() -> None:
    # A run saved before noise_share existed, on the route model: its own values win, the rest is
    # filled from route.yaml and the ensemble.yaml it extends; no Hydra `defaults` key leaks in.
    saved = OmegaConf.create({"world_model": {"name": "route", "input_noise": 2.0, "epochs": 7}})
    wm = with_current_defaults(saved).world_model
    assert wm.input_noise == 2.0 and wm.epochs == 7
    assert wm.noise_share == 1.0 and wm.linear_skip is True and wm.members == 7
    assert "defaults" not in wm


def test_a_world_model_file_that_extends_itself_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "world_model").mkdir()
    (tmp_path / "world_model" / "loop.yaml").write_text("defaults:\n  - loop\n  - _self_\nname: loop\n")
    monkeypatch.setattr("embodied.world_model.config_dirs", lambda: [str(tmp_path)])
    with pytest.raises(ConfigError, match="'loop' lists itself among its defaults"):
        _world_model_file("loop")


def test_the_task_registry_reads_a_task_that_selects_its_world_model() -> None:
    from embodied.registry import task_config

    cfg = task_config("driving_lane_follow")  # its defaults list holds an `override /world_model` entry
    assert cfg.name == "driving_lane_follow" and "world_model" not in cfg and "defaults" not in cfg
