"""Export for every family: deploy.yaml's action mode, parity, the deploy runner on arm and car, sim2sim."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from embodied.cli import compose
from embodied.deploy import DeployError, DeployRunner, load_manifest
from embodied.export import PARITY_TOL, ExportError, export_from_env
from embodied.registry import task_names
from embodied.sim2sim_tasks import EnvRobot
from embodied.workflow import build_env, build_policy
from tests.test_cli import embodied

EXPORTS = {
    "go2_velocity",
    "go2_velocity_proprio",
    "arm_reach",
    "driving_lane_follow",
    "driving_traffic",
    "driving_dense",
}
REFUSALS = {
    "ant": "is not in the deploy schema",
    "ant_velocity": "is not in the deploy schema",
    "arm_push": "binary gripper command",
    "arm_pick_place": "binary gripper command",
}


def _export(task: str, out: Path) -> dict[str, float]:
    cfg = compose([f"task={task}"])
    env = build_env(cfg, num_envs=2)
    try:
        torch.manual_seed(0)
        return export_from_env(env, build_policy(cfg, env).eval(), cfg.task, out, steps=5)
    finally:
        env.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path | str]:
    """Each registered task exported (its folder) or refused (the reason)."""
    root = tmp_path_factory.mktemp("modes")
    out: dict[str, Path | str] = {}
    for task in task_names():
        try:
            diffs = _export(task, root / task)
            assert max(diffs.values()) <= PARITY_TOL, (task, diffs)  # ONNX vs torch on every check set
            out[task] = root / task
        except ExportError as e:
            out[task] = str(e)
    return out


def test_every_registered_task_exports_or_refuses_in_one_line(exported):
    assert set(exported) == set(task_names())
    assert {t for t, v in exported.items() if isinstance(v, Path)} == EXPORTS
    for task, needle in REFUSALS.items():
        assert needle in exported[task] and "\n" not in exported[task]


def test_deploy_yaml_names_each_action_mode(exported):
    modes = {
        t: yaml.safe_load((p / "deploy.yaml").read_text())["action"]
        for t, p in exported.items()
        if isinstance(p, Path)
    }
    assert modes["go2_velocity"]["mode"] == "joint_position"
    arm = modes["arm_reach"]
    assert arm["mode"] == "ee_delta" and arm["frame"] == "base" and arm["orientation"] == "hold"
    assert arm["scale"] == [0.03, 0.03, 0.03] and arm["offset"] == [0.0, 0.0, 0.0]
    car = modes["driving_lane_follow"]
    assert car["mode"] == "car_controls" and car["steering_angle_max"] == 0.3 and car["speed_max"] == 12.0
    assert car["offset"] == [0.0, 6.0] and car["scale"] == [0.3, 6.0]
    m = load_manifest(exported["driving_lane_follow"] / "deploy.yaml")
    assert m.action.output == "car_controls" and m.num_joints == 0 and m.action_dim == 2
    assert "perception/route_waypoints" in m.observation.inputs


def test_unknown_action_mode_is_refused_at_export_and_at_load(exported, tmp_path):
    cfg = compose(["task=arm_reach"])
    env = build_env(cfg, num_envs=2)
    task = dict(cfg.task)
    task["action_mode"] = "torque"
    with pytest.raises(
        ExportError, match="action mode 'torque' of task 'arm_reach' is not in the deploy schema"
    ):
        export_from_env(env, build_policy(cfg, env), task, tmp_path / "x", steps=2)
    env.close()
    d = yaml.safe_load((exported["arm_reach"] / "deploy.yaml").read_text())
    d["action"]["mode"] = "torque"
    for f in ("policy.onnx", "observation.onnx"):
        (tmp_path / f).write_bytes((exported["arm_reach"] / f).read_bytes())
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(DeployError, match=r"unknown action\.mode 'torque'"):
        load_manifest(tmp_path / "deploy.yaml")


@pytest.mark.parametrize("task", ["arm_reach", "driving_lane_follow"])
def test_deploy_runner_drives_the_simulated_robot_like_the_torch_policy(exported, task):
    """Same episode, same seed: the runner's observation and actions match the torch policy's."""
    cfg = compose([f"task={task}"])
    env = build_env(cfg, num_envs=1)
    torch.manual_seed(0)
    policy = build_policy(cfg, env).eval()
    env.close()
    manifest = load_manifest(exported[task] / "deploy.yaml")
    robot = EnvRobot(dict(cfg.task), manifest, seed=3, perturb={})
    runner = DeployRunner(exported[task], robot)
    for _ in range(15):
        obs = robot.obs["policy"]
        with torch.no_grad():
            want = policy(robot.obs)[0].numpy()
        runner.step(robot.command())
        assert np.abs(runner.last_obs - obs[0].numpy()).max() <= 1e-4
        assert np.abs(runner.last_action - want).max() <= 1e-4
        assert np.abs(robot.action - np.clip(want, -1, 1)).max() <= 1e-4  # the command maps back
        robot.advance()
    robot.close()


def test_sim2sim_on_arm_and_car_reports_their_own_metrics(tmp_path):
    for task, metric in (("arm_reach", "success_rate"), ("driving_lane_follow", "route_completion")):
        run = tmp_path / task
        p = embodied(
            "train",
            f"task={task}",
            "num_envs=16",
            "train.max_iterations=1",
            "train.evaluate=false",
            "threads.torch=1",
            "sim.nthread=1",
            f"run_dir={run}",
            timeout=300,
        )
        assert p.returncode == 0, p.stderr[-1500:]
        assert (run / "exported" / "deploy.yaml").is_file()
        p = embodied("sim2sim", f"run={run}", "episodes=2", "perturb=mass_friction_latency", timeout=300)
        assert p.returncode in (0, 1), p.stderr[-1500:]
        assert ("PASS" if p.returncode == 0 else "FAIL") in p.stdout
        report = json.loads((run / "sim2sim" / "mujoco_mass_friction_latency" / "report.json").read_text())
        assert metric in report and len(report["target"]) == 2 and report["verdict"] in ("PASS", "FAIL")


def test_perception_input_without_its_term_is_refused(exported, tmp_path):
    src = exported["driving_lane_follow"]
    d = yaml.safe_load((src / "deploy.yaml").read_text())
    inputs = d["observation"]["inputs"]
    inputs["perception/lidar"] = inputs.pop("perception/range_rays")
    for f in ("policy.onnx", "observation.onnx"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(DeployError, match="perception/lidar: no observation term 'lidar' of dim 15"):
        load_manifest(tmp_path / "deploy.yaml")
