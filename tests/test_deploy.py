"""The robot-side deploy runner: manifest validation, the observation graph, joint mapping, the MuJoCo robot."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper

from embodied.deploy import DeployError, DeployRunner, MujocoRobot, ObservationBuilder, RobotReading
from embodied.deploy.manifest import load_manifest, sha256_of
from embodied.deploy.mujoco_robot import Perturbation
from embodied.export import ObservationGraph, write_observation_onnx
from embodied.math import quat_rotate_inverse
from embodied.terms import Term
from embodied.terms.observations import OBSERVATIONS

ROOT = Path(__file__).resolve().parents[1]
GO2 = ROOT / "sim" / "assets" / "go2_flat.xml"
JOINTS = [f"{leg}_{part}_joint" for leg in ("FL", "FR", "RL", "RR") for part in ("hip", "thigh", "calf")]
HOME = [0.1, 0.8, -1.5, -0.1, 0.8, -1.5, 0.1, 1.0, -1.5, -0.1, 1.0, -1.5]
NAMES = "base_lin_vel base_ang_vel projected_gravity velocity_commands joint_pos_rel joint_vel last_action"
# name, dim, scale: the schema doc's example, 48 wide
TERMS = list(zip(NAMES.split(), (3, 3, 3, 3, 12, 12, 12), (2.0, 0.25, 1.0, 1.0, 1.0, 0.05, 1.0), strict=True))
ZERO_CMD = np.zeros(3)
MISSING_KEYS = [
    "joints.kp",
    "policy.input.dim",
    "control.decimation",
    "observations[5].history",
    "observation",
    "observation.onnx_sha256",
    "observation.inputs",
]
SIGNAL_WIDTHS = {"base_lin_vel": 3, "imu_gyro": 3, "imu_quat": 4, "command": 3}


def _write_onnx(path: Path, obs_dim: int, weight: np.ndarray, bias: np.ndarray) -> None:
    """policy: actions = clip(obs @ weight + bias, -1, 1); joint_targets = HOME + 0.25 * actions."""
    consts = {"w": weight, "b": bias, "lo": -1.0, "hi": 1.0, "scale": np.full(12, 0.25), "offset": HOME}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    nodes = [
        helper.make_node("MatMul", ["obs", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["raw"]),
        helper.make_node("Clip", ["raw", "lo", "hi"], ["actions"]),
        helper.make_node("Mul", ["actions", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["joint_targets"]),
    ]
    graph = helper.make_graph(
        nodes,
        "test_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", obs_dim])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 12])
            for n in ("joint_targets", "actions")
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _manifest(terms=TERMS) -> dict:
    kp = [30.0, 35.0, 40.0] * 4  # distinct per joint kind so misrouted gains show
    return {
        "schema_version": 2,
        "task": "go2_velocity",
        "policy": {
            "onnx": "policy.onnx",
            "onnx_sha256": "",
            "torchscript": "policy.ts",
            "input": {"name": "obs", "dim": sum(d for _, d, _ in terms)},
            "outputs": {"joint_targets": {"dim": 12}, "actions": {"dim": 12}},
        },
        "observation": {"onnx": "observation.onnx", "onnx_sha256": "", "inputs": {}},
        "joints": {
            "names": list(JOINTS),
            "default_positions": list(HOME),
            "kp": kp,
            "kd": [0.8, 0.9, 1.0] * 4,
            "torque_limits": [23.7, 23.7, 45.43] * 4,
            "position_limits": [[-1.0472, 1.0472], [-1.5708, 3.4907], [-2.7227, -0.83776]] * 4,
        },
        "control": {"dt": 0.02, "physics_dt": 0.005, "decimation": 4},
        "action": {"offset": list(HOME), "scale": [0.25] * 12},
        "observations": [{"name": n, "dim": d, "scale": s, "clip": None, "history": 1} for n, d, s in terms],
        "safety_filters": [],
        "commands": {"lin_vel_x": [-1.0, 1.0], "lin_vel_y": [-0.5, 0.5], "ang_vel_yaw": [-1.0, 1.0]},
        "obs_clip": 100.0,
    }


def _graph(observations: list[dict]) -> ObservationGraph:
    """The observation graph of a deploy.yaml term list, from the training term functions."""
    terms = [Term(t["name"], OBSERVATIONS[t["name"]]) for t in observations]
    return ObservationGraph(
        terms, observations, num_joints=12, constants={"default_joint_pos": torch.tensor(HOME)}
    )


def _write_observation(folder: Path, m: dict, observations: list[dict] | None = None) -> None:
    """observation.onnx of ``observations`` (default: the manifest's) and its section of ``m``."""
    graph = _graph(observations or m["observations"])
    write_observation_onnx(graph, folder / "observation.onnx")
    m["observation"]["inputs"] = {k: SIGNAL_WIDTHS.get(k, 12) for k in graph.inputs}
    m["observation"]["onnx_sha256"] = sha256_of(folder / "observation.onnx")


def _write_deploy(folder: Path, *, manifest=None, weight=None, bias=None, onnx_dim=None) -> Path:
    """observation.onnx, policy.onnx + deploy.yaml (with the right hashes) in folder; returns the folder."""
    m = manifest or _manifest()
    dim = onnx_dim or m["policy"]["input"]["dim"]
    folder.mkdir(parents=True, exist_ok=True)
    weight = np.zeros((dim, 12)) if weight is None else weight
    _write_onnx(folder / "policy.onnx", dim, weight, np.zeros(12) if bias is None else bias)
    m["policy"]["onnx_sha256"] = sha256_of(folder / "policy.onnx")
    if "observation" in m:
        _write_observation(folder, m)
    (folder / "deploy.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    return folder


def _rewrite_yaml(folder: Path, m: dict) -> None:
    (folder / "deploy.yaml").write_text(yaml.safe_dump(m, sort_keys=False))


class FakeRobot:
    """A RobotInterface standing still in its zero pose."""

    def __init__(self, names: list[str]):
        self.joint_names = names

    def read(self) -> RobotReading:
        n = len(self.joint_names)
        return RobotReading(np.zeros(n), np.zeros(n), np.array([1.0, 0, 0, 0]), np.zeros(3), np.zeros(3))

    def write_targets(self, q_des, kp, kd) -> None: ...

    def advance(self) -> None: ...


def test_deploy_runner_imports_without_torch(tmp_path):
    folder = _write_deploy(tmp_path / "exported", weight=np.full((48, 12), 0.01))
    script = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed on this robot")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from embodied.deploy import DeployRunner, MujocoRobot

        robot = MujocoRobot({str(GO2)!r}, physics_dt=0.005, decimation=4)
        runner = DeployRunner({str(folder)!r}, robot)
        for _ in range(5):
            q = runner.step(np.array([0.5, 0.0, 0.0]))
            robot.advance()
        assert q.shape == (12,) and np.all(np.isfinite(q))
        heavy = [m for m in ("torch", "sim", "policies", "embodied.env", "embodied.registry") if m in sys.modules]
        assert not heavy, heavy
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_joint_name_mismatch_lists_names(tmp_path):
    folder = _write_deploy(tmp_path)
    names = [*JOINTS[:-1], "RR_knee_joint"]
    with pytest.raises(DeployError) as e:
        DeployRunner(folder, FakeRobot(names))
    msg = str(e.value)
    assert "RR_calf_joint" in msg and "RR_knee_joint" in msg and "\n" not in msg


def test_shuffled_joint_order_is_reordered(tmp_path):
    rng = np.random.default_rng(0)
    folder = _write_deploy(tmp_path, weight=rng.normal(0, 0.3, (48, 12)), bias=np.linspace(-0.5, 0.5, 12))
    shuffled = [JOINTS[i] for i in rng.permutation(12)]
    straight = MujocoRobot(GO2, physics_dt=0.005, decimation=4)
    permuted = MujocoRobot(GO2, physics_dt=0.005, decimation=4, joint_names=shuffled)
    runners = [DeployRunner(folder, r) for r in (straight, permuted)]
    for _ in range(3):
        q_a, q_b = (run.step(np.array([0.3, 0.0, 0.1])) for run in runners)
        by_name_a, by_name_b = dict(zip(JOINTS, q_a, strict=True)), dict(zip(shuffled, q_b, strict=True))
        assert by_name_b == pytest.approx(by_name_a, abs=1e-6)
        for r in (straight, permuted):
            r.advance()
        # the same targets and gains reached the same actuators of both simulations
        np.testing.assert_allclose(straight.data.ctrl, permuted.data.ctrl, atol=1e-6)
        np.testing.assert_allclose(straight.model.actuator_gainprm, permuted.model.actuator_gainprm)
        np.testing.assert_allclose(straight.data.qpos, permuted.data.qpos, atol=1e-9)
    # the servos run the manifest's kp, not the model's own 35
    assert straight.model.actuator_gainprm[:3, 0].tolist() == [30.0, 35.0, 40.0]


@pytest.mark.parametrize("key", MISSING_KEYS)
def test_missing_key_is_one_line_error(tmp_path, key):
    folder = _write_deploy(tmp_path)
    m = yaml.safe_load((folder / "deploy.yaml").read_text())
    node = m
    *parents, last = key.replace("[5]", ".5").split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    del node[last]
    _rewrite_yaml(folder, m)
    with pytest.raises(DeployError, match=rf"missing required key '{re.escape(key)}'") as e:
        load_manifest(folder / "deploy.yaml")
    assert "\n" not in str(e.value)


def test_schema_1_is_refused(tmp_path):
    m = _manifest()
    m["schema_version"] = 1  # hand-kept terms in the runner: gone; such a folder must be re-exported
    folder = _write_deploy(tmp_path, manifest=m)
    with pytest.raises(DeployError, match=r"unknown deploy\.yaml schema_version 1; this runner reads 2"):
        DeployRunner(folder, FakeRobot(JOINTS))


def test_onnx_hash_mismatch(tmp_path):
    folder = _write_deploy(tmp_path)
    _write_onnx(folder / "policy.onnx", 48, np.ones((48, 12)), np.zeros(12))  # replaced after export
    with pytest.raises(
        DeployError, match=r"policy\.onnx hash [0-9a-f]{64} .* does not match deploy\.yaml"
    ) as e:
        load_manifest(folder / "deploy.yaml")
    assert "\n" not in str(e.value)


def test_wrong_obs_shape_or_dtype(tmp_path):
    runner = DeployRunner(_write_deploy(tmp_path / "ok"), FakeRobot(JOINTS))
    targets, actions = runner.run_policy(np.zeros((5, 48), np.float32))
    assert targets.shape == actions.shape == (5, 12)
    with pytest.raises(
        DeployError, match=r"expected float32 of shape \(48,\) or \(B, 48\), got float32 \(47,\)"
    ):
        runner.run_policy(np.zeros(47, np.float32))
    with pytest.raises(DeployError, match=r"got float64 \(48,\)"):
        runner.run_policy(np.zeros(48))
    # an ONNX graph whose input width disagrees with deploy.yaml is refused at load
    with pytest.raises(DeployError, match=r"input 'obs' is tensor\(float\) \['batch', 45\]"):
        DeployRunner(_write_deploy(tmp_path / "bad", onnx_dim=45), FakeRobot(JOINTS))


def test_observation_builder_matches_hand_computation(tmp_path):
    m = _manifest()
    obs_terms = m["observations"]
    obs_terms[1]["clip"] = 0.5  # base_ang_vel
    obs_terms[4]["history"] = 2  # joint_pos_rel
    m["policy"]["input"]["dim"] = 48 + 12
    m["obs_clip"] = 10.0
    builder = ObservationBuilder(load_manifest(_write_deploy(tmp_path, manifest=m) / "deploy.yaml"))
    s = math.sqrt(0.5)
    joint_vel = np.zeros(12)
    joint_vel[3] = 300.0  # 0.05 * 300 = 15 -> obs_clip 10

    def reading(offset: float) -> RobotReading:
        return RobotReading(
            joint_pos=np.array(HOME) + offset,
            joint_vel=joint_vel,
            imu_quat=np.array([s, s, 0.0, 0.0]),  # rolled +90 deg about x
            imu_gyro=np.array([4.0, -1.0, 0.2]),
            base_lin_vel=np.array([1.0, -0.5, 0.2]),
        )

    last_action = np.linspace(-1, 1, 12)
    first = builder.build(reading(0.1), np.array([0.5, 0.0, -0.3]), last_action)
    second = builder.build(reading(-0.2), np.array([0.5, 0.0, -0.3]), last_action)
    head = [2.0, -1.0, 0.4, 0.5, -0.25, 0.05, 0.0, -1.0, 0.0, 0.5, 0.0, -0.3]
    expect_vel = [0.0, 0.0, 0.0, 10.0] + [0.0] * 8
    expect_first = [*head, *[0.1] * 12, *[0.1] * 12, *expect_vel, *last_action]  # history starts filled
    expect_second = [*head, *[0.1] * 12, *[-0.2] * 12, *expect_vel, *last_action]  # oldest first
    assert first.dtype == np.float32 and first.shape == (60,)
    np.testing.assert_allclose(first, expect_first, atol=1e-6)
    np.testing.assert_allclose(second, expect_second, atol=1e-6)
    no_estimator = reading(0.0)
    no_estimator.base_lin_vel = None
    with pytest.raises(DeployError, match="base_lin_vel"):
        builder.build(no_estimator, ZERO_CMD, last_action)


def _reading(rng: np.random.Generator, quat=(1.0, 0.0, 0.0, 0.0)) -> RobotReading:
    return RobotReading(
        joint_pos=np.array(HOME) + rng.normal(0, 0.3, 12),
        joint_vel=rng.normal(0, 5.0, 12),
        imu_quat=np.asarray(quat, dtype=np.float64),
        imu_gyro=rng.normal(0, 1.0, 3),
        base_lin_vel=rng.normal(0, 1.0, 3),
    )


def test_runner_builds_its_observation_from_the_exported_graph(tmp_path):
    m = _manifest()
    folder = _write_deploy(tmp_path, manifest=m)
    # Re-export the graph with base_ang_vel scaled by 3 (deploy.yaml still lists 0.25): the runner
    # must follow the graph, proving it computes no term itself.
    changed = [dict(t) for t in m["observations"]]
    changed[1]["scale"] = 3.0
    _write_observation(folder, m, changed)
    _rewrite_yaml(folder, m)
    runner = DeployRunner(folder, FakeRobot(JOINTS))
    rng = np.random.default_rng(1)
    q = np.array([0.9, 0.1, -0.3, 0.2])
    reading = _reading(rng, q / np.linalg.norm(q))
    command, last = np.array([0.4, -0.1, 0.3]), rng.uniform(-1, 1, 12)
    obs = runner.obs_builder.build(runner.policy_reading(reading), command, last)
    signals = {
        "base_lin_vel": reading.base_lin_vel,
        "imu_gyro": reading.imu_gyro,
        "imu_quat": reading.imu_quat,
        "command": command,
        "joint_pos": reading.joint_pos,
        "joint_vel": reading.joint_vel,
        "last_action": last,
    }
    expected = _graph(changed).run(
        {k: torch.tensor(v, dtype=torch.float32)[None] for k, v in signals.items()}
    )
    np.testing.assert_allclose(obs, torch.cat(list(expected.values()), -1)[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(obs[3:6], 3.0 * reading.imu_gyro, atol=1e-6)
    assert runner.obs_builder.inputs == m["observation"]["inputs"]


def test_non_unit_quaternion_is_refused_not_normalized(tmp_path):
    builder = ObservationBuilder(load_manifest(_write_deploy(tmp_path) / "deploy.yaml"))
    rng = np.random.default_rng(2)
    q = np.array([0.8, 0.3, -0.4, 0.2])
    unit = q / np.linalg.norm(q)
    down = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    gravity = quat_rotate_inverse(torch.tensor(unit)[None], down)[0].numpy()
    for k in (1.0, 1.004):  # within tolerance: the training formula on the reading as given
        obs = builder.build(_reading(rng, k * unit), ZERO_CMD, np.zeros(12))
        as_trained = quat_rotate_inverse(torch.tensor(k * unit)[None], down)[0].numpy()
        np.testing.assert_allclose(obs[6:9], as_trained, atol=1e-6)
    assert np.abs(obs[6:9] - gravity).max() > 1e-3, "the graph must not normalize the quaternion"
    for k in (1.5, 0.99):
        with pytest.raises(
            DeployError, match=r"reading\.imu_quat .* has norm .*; expected a unit quaternion"
        ) as e:
            builder.build(_reading(rng, k * unit), ZERO_CMD, np.zeros(12))
        assert "\n" not in str(e.value)


def test_missing_observation_graph_is_one_line_error(tmp_path):
    folder = _write_deploy(tmp_path)
    (folder / "observation.onnx").unlink()
    with pytest.raises(DeployError, match=r"observation\.onnx '.*observation\.onnx' not found") as e:
        DeployRunner(folder, FakeRobot(JOINTS))
    assert "\n" not in str(e.value)


def test_corrupt_observation_graph_is_one_line_error(tmp_path):
    folder = _write_deploy(tmp_path)
    path = folder / "observation.onnx"
    path.write_bytes(path.read_bytes()[:200])  # truncated after export
    with pytest.raises(DeployError, match=r"observation\.onnx hash [0-9a-f]{64} .* does not match") as e:
        DeployRunner(folder, FakeRobot(JOINTS))
    assert "\n" not in str(e.value)
    m = yaml.safe_load((folder / "deploy.yaml").read_text())
    m["observation"]["onnx_sha256"] = sha256_of(path)  # the hash agrees, the file is still garbage
    _rewrite_yaml(folder, m)
    with pytest.raises(DeployError, match=r"cannot load .*observation\.onnx with onnxruntime") as e:
        DeployRunner(folder, FakeRobot(JOINTS))
    assert "\n" not in str(e.value)


def test_observation_graph_that_disagrees_with_deploy_yaml_is_refused(tmp_path):
    m = _manifest()
    folder = _write_deploy(tmp_path, manifest=m)
    del m["observation"]["inputs"]["base_lin_vel"]
    _rewrite_yaml(folder, m)
    with pytest.raises(DeployError, match=r"graph inputs .* differ from deploy\.yaml observation\.inputs"):
        DeployRunner(folder, FakeRobot(JOINTS))
    m["observation"]["inputs"]["base_lin_vel"] = 3
    m["observations"][0]["name"] = "base_lin_vel_estimate"  # no such output in the graph
    _rewrite_yaml(folder, m)
    with pytest.raises(DeployError, match=r"no output 'obs/base_lin_vel_estimate'"):
        DeployRunner(folder, FakeRobot(JOINTS))


def test_a_policy_without_base_lin_vel_needs_no_estimator(tmp_path):
    terms = TERMS[1:]
    folder = _write_deploy(tmp_path, manifest=_manifest(terms))
    runner = DeployRunner(folder, FakeRobot(JOINTS))
    assert "base_lin_vel" not in runner.obs_builder.inputs
    reading = _reading(np.random.default_rng(3))
    reading.base_lin_vel = None
    assert runner.obs_builder.build(reading, ZERO_CMD, np.zeros(12)).shape == (45,)


def test_mujoco_robot_holds_home_pose(tmp_path):
    robot = MujocoRobot(GO2, physics_dt=0.005, decimation=4)
    runner = DeployRunner(_write_deploy(tmp_path), robot)  # zero-action policy
    heights = []
    for _ in range(100):  # 2 s
        q = runner.step(ZERO_CMD)
        robot.advance()
        heights.append(robot.base_state().pos[2])
    np.testing.assert_allclose(q, HOME, atol=1e-6)
    assert min(heights) > 0.25
    _, x, y, _ = robot.base_state().quat
    assert 1 - 2 * (x * x + y * y) > 0.99  # still upright: body z axis within ~8 deg of vertical
    assert robot.limit_hits() == {"joint_limit": 0, "torque_limit": 0}


def test_latency_delays_targets():
    def first_step_applied(latency_s: float) -> int:
        robot = MujocoRobot(GO2, physics_dt=0.005, decimation=1, perturb=Perturbation(latency_s=latency_s))
        target = np.array(HOME) + 0.05
        robot.write_targets(target, np.full(12, 35.0), np.full(12, 0.8))
        for step in range(10):
            robot.advance()
            if np.allclose(robot.data.ctrl, target):
                return step
        return -1

    assert first_step_applied(0.0) == 0
    assert first_step_applied(0.02) == 4


def test_perturbation_rejects_unknown_and_invalid_values():
    with pytest.raises(DeployError, match="unknown perturbation"):
        Perturbation.from_dict({"mass_scal": 1.1})
    with pytest.raises(DeployError, match="mass_scale must be > 0"):
        Perturbation(mass_scale=0.0)
    with pytest.raises(DeployError, match="latency_s must be >= 0"):
        Perturbation(latency_s=-0.01)
    weaker = Perturbation(motor_strength=0.5, mass_scale=1.2)
    weak = MujocoRobot(GO2, physics_dt=0.005, decimation=4, perturb=weaker)
    nominal = MujocoRobot(GO2, physics_dt=0.005, decimation=4)
    np.testing.assert_allclose(weak.model.actuator_forcerange, 0.5 * nominal.model.actuator_forcerange)
    np.testing.assert_allclose(weak.model.body_mass, 1.2 * nominal.model.body_mass)
