"""Run an exported policy on a robot: read -> observation.onnx -> policy.onnx -> PD targets.

Needs only numpy, pyyaml and onnxruntime (no torch, no training code). The caller owns the clock:

    runner = DeployRunner("runs/go2_velocity/<date>/exported", robot)
    while True:
        runner.step(command)   # read sensors, run the policy, write PD targets
        robot.advance()        # wait one control period (real) or step the physics (sim)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embodied.deploy.manifest import DeployError, Manifest, load_manifest
from embodied.deploy.observations import ObservationBuilder
from embodied.deploy.robot import RobotInterface, RobotReading
from embodied.deploy.session import load_session

OUTPUTS = ("joint_targets", "actions")  # joint_position mode; other modes: (action.output, "actions")


def joint_permutation(robot_names: Sequence[str], policy_names: Sequence[str]) -> np.ndarray:
    """perm (A,) with robot_names[perm[i]] == policy_names[i]; DeployError if the name sets differ."""
    robot_names, policy_names = list(robot_names), list(policy_names)
    missing = [n for n in policy_names if n not in robot_names]
    unexpected = [n for n in robot_names if n not in policy_names]
    if missing or unexpected:
        raise DeployError(
            f"robot joints do not match deploy.yaml joints.names: missing on the robot {missing}, "
            f"unexpected on the robot {unexpected}"
        )
    dup = sorted({n for n in robot_names if robot_names.count(n) > 1})
    if dup or len(robot_names) != len(policy_names):
        raise DeployError(f"robot joint_names repeat {dup}; each joint must appear once")
    index = {n: i for i, n in enumerate(robot_names)}
    return np.array([index[n] for n in policy_names], dtype=np.int64)


class DeployRunner:
    """Drives `robot` with the policy in `deploy_dir_or_yaml` (a folder holding deploy.yaml, or the file)."""

    def __init__(
        self,
        deploy_dir_or_yaml: str | Path,
        robot: RobotInterface,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ):
        path = Path(deploy_dir_or_yaml)
        self.manifest: Manifest = load_manifest(path / "deploy.yaml" if path.is_dir() else path)
        m = self.manifest
        self.robot = robot
        self.mode = m.action.mode
        self.outputs = (m.action.output, "actions")
        # perm[i]: robot index of policy joint i; read robot[perm] -> policy, write robot[perm] = policy.
        self.perm = joint_permutation(robot.joint_names, m.joints.names)
        self.kp = self._to_robot(np.asarray(m.joints.kp, dtype=np.float64))  # robot joint order
        self.kd = self._to_robot(np.asarray(m.joints.kd, dtype=np.float64))
        self.session = load_session(m.onnx_path, providers)
        self._check_graph()
        self.obs_builder = ObservationBuilder(m, providers=providers)
        self.last_action = np.zeros(m.action_dim, dtype=np.float32)
        self.last_obs: np.ndarray | None = None  # (D,) the observation the last step() fed the policy

    def _to_robot(self, policy_order: np.ndarray) -> np.ndarray:
        out = np.empty_like(policy_order)
        out[self.perm] = policy_order
        return out

    def _check_graph(self) -> None:
        m = self.manifest
        inputs = {i.name: i for i in self.session.get_inputs()}
        name = m.policy.input_name
        if name not in inputs:
            raise DeployError(f"{m.onnx_path}: no input named {name!r} (graph inputs: {sorted(inputs)})")
        shape, dtype = list(inputs[name].shape), inputs[name].type
        if dtype != "tensor(float)" or len(shape) != 2 or shape[1] != m.obs_dim:
            raise DeployError(
                f"{m.onnx_path}: input {name!r} is {dtype} {shape}; deploy.yaml expects "
                f"tensor(float) [batch, {m.obs_dim}]"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        for out in self.outputs:
            if out not in outputs:
                raise DeployError(
                    f"{m.onnx_path}: no output named {out!r} (graph outputs: {sorted(outputs)})"
                )
            oshape = list(outputs[out].shape)
            if len(oshape) != 2 or (isinstance(oshape[1], int) and oshape[1] != m.action_dim):
                raise DeployError(
                    f"{m.onnx_path}: output {out!r} has shape {oshape}; "
                    f"deploy.yaml expects [batch, {m.action_dim}]"
                )

    def reset(self) -> None:
        """Start a new episode: zero the last action and forget observation histories."""
        self.last_action = np.zeros(self.manifest.action_dim, dtype=np.float32)
        self.obs_builder.reset()
        self.last_obs = None

    def run_policy(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(joint_targets, actions), (A,) or (B, A) in policy joint order, for float32 obs (D,) or (B, D)."""
        d = self.manifest.obs_dim
        ok = (
            isinstance(obs, np.ndarray)
            and obs.dtype == np.float32
            and obs.ndim in (1, 2)
            and obs.shape[-1] == d
        )
        if not ok:
            got = f"{obs.dtype} {obs.shape}" if isinstance(obs, np.ndarray) else type(obs).__name__
            raise DeployError(f"policy observation: expected float32 of shape ({d},) or (B, {d}), got {got}")
        batch = obs if obs.ndim == 2 else obs[None]
        targets, actions = self.session.run(list(self.outputs), {self.manifest.policy.input_name: batch})
        if obs.ndim == 1:
            return targets[0], actions[0]
        return targets, actions

    def policy_reading(self, reading: RobotReading) -> RobotReading:
        """The reading with its joint arrays reordered from the robot's order to the policy's."""
        return RobotReading(
            joint_pos=np.asarray(reading.joint_pos)[self.perm],
            joint_vel=np.asarray(reading.joint_vel)[self.perm],
            imu_quat=reading.imu_quat,
            imu_gyro=reading.imu_gyro,
            base_lin_vel=reading.base_lin_vel,
        )

    def step(self, command: np.ndarray | None) -> np.ndarray:
        """One tick; returns what was written to the robot.

        joint_position: command (3,) = (vx, vy, yaw rate); PD targets (J,) in robot order are written.
        ee_delta: command (3,) = the goal point; the end-effector displacement is written.
        car_controls: no command; (steering angle, speed) is written.
        Does not wait: call `robot.advance()` after it to let the control period pass.
        """
        if self.mode != "joint_position":
            return self._step_signals(command)
        reading = self.policy_reading(self.robot.read())
        obs = self.obs_builder.build(reading, np.asarray(command, dtype=np.float64), self.last_action)
        targets, actions = self.run_policy(obs)
        if not (np.all(np.isfinite(targets)) and np.all(np.isfinite(actions))):
            raise DeployError(f"policy returned non-finite targets {targets.tolist()}; nothing was written")
        q_des = self._to_robot(targets.astype(np.float64))
        self.robot.write_targets(q_des, self.kp, self.kd)
        self.last_action = actions.astype(np.float32).copy()
        self.last_obs = obs
        return q_des

    def _step_signals(self, command: np.ndarray | None) -> np.ndarray:
        """ee_delta / car_controls: named robot signals in, the mode's command out (``SignalRobot``)."""
        given = {
            k: np.asarray(v)[self.perm] if k in ("joint_pos", "joint_vel") else v
            for k, v in self.robot.read_signals().items()
        }
        cmd = None if command is None else np.asarray(command, dtype=np.float64)
        obs = self.obs_builder.stack(self.obs_builder.signals_of(given, cmd, self.last_action))
        out, actions = self.run_policy(obs)
        if not (np.all(np.isfinite(out)) and np.all(np.isfinite(actions))):
            raise DeployError(
                f"policy returned non-finite {self.outputs[0]} {out.tolist()}; nothing was written"
            )
        self.robot.write_command(out.astype(np.float64))
        self.last_action = actions.astype(np.float32).copy()
        self.last_obs = obs
        return out
