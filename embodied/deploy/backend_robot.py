"""A simulated robot on any engine behind the batched contract (Genesis, MuJoCo Warp), for sim2sim.

``MujocoRobot`` drives one MjData directly; this robot drives one env of an engine's backend
(``sim.backend.make_backend``), so an exported policy trained in MuJoCo can be checked in Genesis
through the deploy runner and the exported files alone. The backend runs one physics step per
call (decimation 1), so written targets can be delayed by whole physics steps like on the MuJoCo
robot, and the same ``Perturbation`` applies: masses, friction and motor strength through the
backend's own randomization setters, latency and sensor noise here.

The servos are the model's position actuators with the model's gains. ``write_targets`` may scale
them (a uniform factor over the joints, as ``kp_scale`` / ``kd_scale`` do in training); gains that
differ per joint from the model's ratios are refused, since the engines' servos take one factor.
Torque-limit hits are not counted here (the contract's state has no actuator forces).
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import numpy as np
import torch

from embodied.deploy.manifest import DeployError, one_line
from embodied.deploy.mujoco_robot import NEAR_JOINT_LIMIT, BaseState, Perturbation, _to_base
from embodied.deploy.robot import RobotReading
from sim.backend import SimConfigError, make_backend
from sim.randomize import PhysicsParams


class BackendRobot:
    """RobotInterface on env 0 of a one-env backend of ``engine`` (genesis, mjwarp or mujoco)."""

    def __init__(
        self,
        engine: str,
        model_path: str | Path,
        *,
        physics_dt: float,
        decimation: int,
        joint_names: list[str] | None = None,
        perturb: Perturbation | None = None,
        seed: int = 0,
        options: dict | None = None,
        actuator: dict | None = None,
    ):
        if not (isinstance(physics_dt, (int, float)) and physics_dt > 0):
            raise DeployError(f"physics_dt must be > 0, got {physics_dt!r}")
        if isinstance(decimation, bool) or not isinstance(decimation, int) or decimation < 1:
            raise DeployError(f"decimation must be an integer >= 1, got {decimation!r}")
        try:
            self.backend = make_backend(
                engine, str(model_path), 1, "cpu", decimation=1, physics_dt=physics_dt, options=options
            )
        except (SimConfigError, ValueError) as e:
            raise DeployError(one_line(f"cannot build a {engine} robot for {model_path}: {e}")) from None
        if actuator is not None:  # the robot's own motors, e.g. a DC motor the policy never trained with
            if not hasattr(self.backend, "set_actuator"):
                raise DeployError(f"the {engine} backend has no actuator models (sim/actuators.py)")
            try:
                self.backend.set_actuator(dict(actuator))
            except (SimConfigError, ValueError) as e:
                raise DeployError(one_line(f"robot actuator {dict(actuator)}: {e}")) from None
        self.engine, self.physics_dt, self.decimation = engine, float(physics_dt), decimation
        self.perturb = perturb or Perturbation()
        info = self.backend.info
        if not info.floating_base:
            raise DeployError(f"{model_path}: no free joint; BackendRobot needs a floating base for its IMU")
        if np.any(info.kp <= 0):
            raise DeployError(f"{model_path}: every actuator must be a position servo on a joint")
        by_joint = {name: a for a, name in enumerate(info.actuated_joints)}
        if joint_names is None:
            joint_names = list(info.actuated_joints)
        if sorted(joint_names) != sorted(by_joint):
            raise DeployError(
                f"joint_names {list(joint_names)} must be a permutation of the actuated joints "
                f"{list(by_joint)}"
            )
        self.joint_names = list(joint_names)
        self._act = np.array([by_joint[n] for n in self.joint_names])  # actuator ids, robot order
        self._qadr, self._dadr = info.qpos_adr[self._act], info.dof_adr[self._act]
        self._jnt_lo, self._jnt_hi = info.joint_range[self._act, 0], info.joint_range[self._act, 1]
        self._kp0, self._kd0 = info.kp[self._act].astype(np.float64), info.kd[self._act].astype(np.float64)
        self._home = info.home_qpos.astype(np.float64)
        self.latency_steps = round(self.perturb.latency_s / self.physics_dt)
        self._rng = np.random.default_rng(seed)
        self._gain_scale = (1.0, 1.0)
        self._apply_physics(1.0, 1.0)
        self.reset()

    @property
    def control_dt(self) -> float:
        return self.physics_dt * self.decimation

    def _apply_physics(self, kp_scale: float, kd_scale: float) -> None:
        p, nbody = self.perturb, self.backend.info.nbody
        params = PhysicsParams(
            friction=torch.tensor([p.friction_scale]),
            mass_scale=torch.full((1, nbody), p.mass_scale),
            com_offset=torch.zeros(1, 3),
            motor_strength=torch.tensor([p.motor_strength]),
            kp_scale=torch.tensor([p.motor_strength * kp_scale]),
            kd_scale=torch.tensor([p.motor_strength * kd_scale]),
        )
        self.backend.set_physics(torch.ones(1, dtype=torch.bool), params)
        self._gain_scale = (kp_scale, kd_scale)

    def reset(self, qpos: np.ndarray | None = None) -> None:
        """Go to the model's home pose (or ``qpos`` (nq,)) at rest; the servos hold the joints there."""
        info = self.backend.info
        q = self._home if qpos is None else np.asarray(qpos, dtype=np.float64)
        if q.shape != (info.nq,):
            raise DeployError(f"reset qpos must have shape ({info.nq},), got {q.shape}")
        self.backend.reset(
            torch.ones(1, dtype=torch.bool),
            torch.as_tensor(q, dtype=torch.float32)[None],
            torch.zeros(1, info.nv),
        )
        hold = self._ctrl_for(q[self._qadr])
        self._written = (hold, self._gain_scale)
        self._pending = deque([self._written] * self.latency_steps)
        self._hits = {"joint_limit": 0, "diverged": 0}

    def _ctrl_for(self, q_des: np.ndarray) -> torch.Tensor:
        ctrl = np.zeros(self.backend.info.nu)
        ctrl[self._act] = q_des
        return torch.as_tensor(ctrl, dtype=torch.float32)[None]

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.backend.state()
        return s.qpos[0].double().cpu().numpy(), s.qvel[0].double().cpu().numpy()

    def read(self) -> RobotReading:
        """Joint pos/vel (robot order), IMU, and base_lin_vel from a perfect state estimator."""
        qpos, qvel = self._state()
        p, j = self.perturb, len(self.joint_names)
        quat = qpos[3:7].copy()
        return RobotReading(
            joint_pos=qpos[self._qadr] + self._rng.normal(0.0, p.joint_pos_noise_std, j),
            joint_vel=qvel[self._dadr] + self._rng.normal(0.0, p.joint_vel_noise_std, j),
            imu_quat=quat,
            imu_gyro=qvel[3:6] + self._rng.normal(0.0, p.gyro_noise_std, 3),
            base_lin_vel=_to_base(quat, qvel[0:3]),
        )

    def write_targets(self, q_des: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """PD targets (J,) in robot order; gains must be the model's times one factor each."""
        j = len(self.joint_names)
        cmd = tuple(np.array(x, dtype=np.float64) for x in (q_des, kp, kd))
        for name, x in zip(("q_des", "kp", "kd"), cmd, strict=True):
            if x.shape != (j,) or not np.all(np.isfinite(x)):
                raise DeployError(f"write_targets: {name} must be ({j},) finite, got {x.shape} {x.tolist()}")
        scales = []
        for name, x, x0 in (("kp", cmd[1], self._kp0), ("kd", cmd[2], self._kd0)):
            ratio = np.divide(x, x0, out=np.ones_like(x), where=x0 > 0)
            if np.ptp(ratio) > 1e-6 * max(1.0, float(np.abs(ratio).max())):
                raise DeployError(
                    f"write_targets: {name} must be the model's gains times one factor on the {self.engine} "
                    f"robot, got ratios {np.round(ratio, 4).tolist()}"
                )
            scales.append(float(ratio.mean()))
        self._written = (self._ctrl_for(cmd[0]), (scales[0], scales[1]))

    def physics_step(self) -> None:
        """One physics step: the target written ``latency_steps`` steps ago drives the servos."""
        self._pending.append(self._written)
        ctrl, scale = self._pending.popleft()
        if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(scale, self._gain_scale, strict=True)):
            self._apply_physics(*scale)
        if bool(self.backend.step(ctrl)[0]):
            self._hits["diverged"] += 1
        q = self._state()[0][self._qadr]
        if np.any((q - self._jnt_lo < NEAR_JOINT_LIMIT) | (self._jnt_hi - q < NEAR_JOINT_LIMIT)):
            self._hits["joint_limit"] += 1

    def advance(self) -> None:
        """Let one control period pass: ``decimation`` physics steps."""
        for _ in range(self.decimation):
            self.physics_step()

    def limit_hits(self) -> dict[str, int]:
        """Physics steps since reset with a joint within 0.01 rad of a limit, and blow-ups."""
        return dict(self._hits)

    def base_state(self) -> BaseState:
        qpos, qvel = self._state()
        return BaseState.from_free_joint(qpos[0:7], qvel[0:6])

    def contacts(self, names: list[str]) -> dict[str, bool]:
        """Whether each named contact sensor currently touches."""
        data = self.backend.state().sensordata[0]
        out = {}
        for n in names:
            try:
                cols = self.backend.sensor(n)
            except (SimConfigError, KeyError, ValueError) as e:
                raise DeployError(one_line(f"contact sensor {n!r}: {e}")) from None
            out[n] = bool(data[cols][0] > 0)
        return out

    def render(self, width: int = 640, height: int = 480, camera: str | int = "track") -> np.ndarray:
        """The current frame, (H, W, 3) uint8."""
        return self.backend.render([0], width, height, camera)[0].permute(1, 2, 0).cpu().numpy()

    def close(self) -> None:
        self.backend.close()
