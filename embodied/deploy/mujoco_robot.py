"""A simulated robot for the deploy runner: one MuJoCo MjData, PD in the model's position servos.

The policy runs at the control rate; `advance()` steps the physics `decimation` times, and the
servos apply PD at every physics step with the gains `write_targets` set. `Perturbation` changes the
dynamics (mass, friction, motor strength), delays targets (latency) and adds sensor noise, for
sim-to-sim checks of an exported policy.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path

import mujoco
import numpy as np

from embodied.deploy.manifest import DeployError, one_line
from embodied.deploy.robot import RobotReading

NEAR_JOINT_LIMIT = 0.01  # rad
NEAR_FORCE_LIMIT = 0.99  # fraction of forcerange


def _to_base(quat: np.ndarray, v: np.ndarray) -> np.ndarray:
    """World vector v (3,) in the frame of the base orientation quat (4,) w x y z, by MuJoCo."""
    inv, out = np.empty(4), np.empty(3)
    mujoco.mju_negQuat(inv, quat)
    mujoco.mju_rotVecQuat(out, np.asarray(v, dtype=np.float64), inv)
    return out


@dataclass(frozen=True)
class Perturbation:
    """Dynamics and sensing changes applied to a MujocoRobot (defaults: none)."""

    mass_scale: float = 1.0  # multiplies every body's mass (and inertia, as a uniform density change)
    friction_scale: float = 1.0  # multiplies every geom's sliding friction
    latency_s: float = 0.0  # written targets reach the servos this much later (rounded to physics steps)
    joint_pos_noise_std: float = 0.0  # rad, Gaussian, added in read()
    joint_vel_noise_std: float = 0.0  # rad/s
    gyro_noise_std: float = 0.0  # rad/s
    motor_strength: float = 1.0  # scales actuator gains and force limits

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DeployError(f"Perturbation.{f.name} must be a finite number, got {v!r}")
            positive = f.name.endswith("_scale") or f.name == "motor_strength"
            if (positive and v <= 0) or v < 0:
                raise DeployError(f"Perturbation.{f.name} must be {'> 0' if positive else '>= 0'}, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict) -> Perturbation:
        """Build from a mapping (e.g. a config); unknown keys are an error, not ignored."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise DeployError(f"unknown perturbation {unknown}; valid: {', '.join(known)}")
        return cls(**d)


@dataclass
class BaseState:
    """Ground-truth base state for evaluation (no noise)."""

    pos: np.ndarray  # (3,) world, m
    quat: np.ndarray  # (4,) w x y z
    lin_vel_world: np.ndarray  # (3,) m/s
    lin_vel_base: np.ndarray  # (3,) m/s, base frame
    ang_vel_base: np.ndarray  # (3,) rad/s, base frame

    @classmethod
    def from_free_joint(cls, qpos: np.ndarray, qvel: np.ndarray) -> BaseState:
        """From a free joint's 7 qpos (xyz, quat wxyz) and 6 qvel (world linear, local angular)."""
        quat, lin = np.array(qpos[3:7], dtype=np.float64), np.array(qvel[0:3], dtype=np.float64)
        return cls(np.array(qpos[0:3], dtype=np.float64), quat, lin, _to_base(quat, lin), np.array(qvel[3:6]))


class MujocoRobot:
    """RobotInterface on one MuJoCo model with a free-joint base and position-servo actuators."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        physics_dt: float,
        decimation: int,
        joint_names: list[str] | None = None,
        perturb: Perturbation | None = None,
        seed: int = 0,
    ):
        if not (isinstance(physics_dt, (int, float)) and physics_dt > 0):
            raise DeployError(f"physics_dt must be > 0, got {physics_dt!r}")
        if isinstance(decimation, bool) or not isinstance(decimation, int) or decimation < 1:
            raise DeployError(f"decimation must be an integer >= 1, got {decimation!r}")
        try:
            self.model = mujoco.MjModel.from_xml_path(str(model_path))
        except ValueError as e:
            raise DeployError(one_line(f"cannot load MuJoCo model {model_path}: {e}")) from None
        m = self.model
        m.opt.timestep = physics_dt
        self.physics_dt, self.decimation = float(physics_dt), decimation
        self.perturb = perturb or Perturbation()

        by_joint = {}  # actuated joint name -> actuator id
        for a in range(m.nu):
            name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_ACTUATOR, a)
            servo = m.actuator_gaintype[a] == mujoco.mjtGain.mjGAIN_FIXED and (
                m.actuator_biastype[a] == mujoco.mjtBias.mjBIAS_AFFINE
            )
            if m.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT or not servo:
                raise DeployError(f"actuator {name!r} is not a position servo on a joint")
            by_joint[mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, int(m.actuator_trnid[a, 0]))] = a
        if joint_names is None:
            joint_names = list(by_joint)
        if sorted(joint_names) != sorted(by_joint):
            raise DeployError(
                f"joint_names {list(joint_names)} must be a permutation of the actuated joints "
                f"{list(by_joint)}"
            )
        self.joint_names = list(joint_names)
        self._act = np.array([by_joint[n] for n in self.joint_names])  # actuator ids, robot joint order
        jnt = np.array([m.actuator_trnid[a, 0] for a in self._act])
        self._qadr, self._dadr = m.jnt_qposadr[jnt], m.jnt_dofadr[jnt]
        limited = m.jnt_limited[jnt].astype(bool)
        self._jnt_lo = np.where(limited, m.jnt_range[jnt, 0], -np.inf)
        self._jnt_hi = np.where(limited, m.jnt_range[jnt, 1], np.inf)
        free = np.flatnonzero(m.jnt_type == mujoco.mjtJoint.mjJNT_FREE)
        if free.size == 0:
            raise DeployError(f"{model_path}: no free joint; MujocoRobot needs a floating base for its IMU")
        self._fq, self._fd = int(m.jnt_qposadr[free[0]]), int(m.jnt_dofadr[free[0]])

        p = self.perturb
        m.body_mass[:] *= p.mass_scale
        m.body_inertia[:] *= p.mass_scale
        m.geom_friction[:, 0] *= p.friction_scale
        m.actuator_forcerange[:] *= p.motor_strength
        self._kp0 = m.actuator_gainprm[self._act, 0].copy()  # the model's own gains, before any write
        self._kd0 = -m.actuator_biasprm[self._act, 2].copy()
        frc = m.actuator_forcerange[self._act]
        limited = m.actuator_forcelimited[self._act].astype(bool)
        self._force_lo = np.where(limited & (frc[:, 0] < 0), frc[:, 0], -np.inf)
        self._force_hi = np.where(limited & (frc[:, 1] > 0), frc[:, 1], np.inf)
        self.latency_steps = round(p.latency_s / self.physics_dt)
        self._home = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "home")
        self.data = mujoco.MjData(m)
        self._rng = np.random.default_rng(seed)
        self._renderer: mujoco.Renderer | None = None
        self.reset()

    @property
    def control_dt(self) -> float:
        return self.physics_dt * self.decimation

    def reset(self, qpos: np.ndarray | None = None) -> None:
        """Go to keyframe "home" (or `qpos` (nq,)) at rest; servos hold the joints where they are."""
        m, d = self.model, self.data
        if self._home >= 0:
            mujoco.mj_resetDataKeyframe(m, d, self._home)
        else:
            mujoco.mj_resetData(m, d)
        if qpos is not None:
            qpos = np.asarray(qpos, dtype=np.float64)
            if qpos.shape != (m.nq,):
                raise DeployError(f"reset qpos must have shape ({m.nq},), got {qpos.shape}")
            d.qpos[:] = qpos
            d.qvel[:] = 0.0
        mujoco.mj_forward(m, d)
        hold = (d.qpos[self._qadr].copy(), self._kp0.copy(), self._kd0.copy())
        self._written = hold
        self._pending = deque([hold] * self.latency_steps)  # targets still travelling to the motors
        self._apply(hold)
        self._hits = {"joint_limit": 0, "torque_limit": 0}

    def set_base_yaw(self, yaw: float) -> None:
        """Replace the base orientation with a pure rotation of `yaw` rad about +z."""
        self.data.qpos[self._fq + 3 : self._fq + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        mujoco.mj_forward(self.model, self.data)

    def read(self) -> RobotReading:
        """Joint pos/vel (robot order), IMU, and base_lin_vel from a simulated state estimator.

        The estimator is perfect: the free joint's world linear velocity rotated into the base frame.
        """
        d, p = self.data, self.perturb
        j = len(self.joint_names)
        quat = d.qpos[self._fq + 3 : self._fq + 7].copy()
        return RobotReading(
            joint_pos=d.qpos[self._qadr] + self._rng.normal(0.0, p.joint_pos_noise_std, j),
            joint_vel=d.qvel[self._dadr] + self._rng.normal(0.0, p.joint_vel_noise_std, j),
            imu_quat=quat,
            imu_gyro=d.qvel[self._fd + 3 : self._fd + 6] + self._rng.normal(0.0, p.gyro_noise_std, 3),
            base_lin_vel=_to_base(quat, d.qvel[self._fd : self._fd + 3]),
        )

    def write_targets(self, q_des: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """PD targets and gains (J,) in robot joint order; they reach the servos after the latency."""
        j = len(self.joint_names)
        cmd = tuple(np.array(x, dtype=np.float64) for x in (q_des, kp, kd))
        for name, x in zip(("q_des", "kp", "kd"), cmd, strict=True):
            if x.shape != (j,) or not np.all(np.isfinite(x)):
                raise DeployError(f"write_targets: {name} must be ({j},) finite, got {x.shape} {x.tolist()}")
        self._written = cmd

    def _apply(self, cmd: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        q, kp, kd = cmd
        s, m = self.perturb.motor_strength, self.model
        m.actuator_gainprm[self._act, 0] = s * kp
        m.actuator_biasprm[self._act, 1] = -s * kp
        m.actuator_biasprm[self._act, 2] = -s * kd
        self.data.ctrl[self._act] = q

    def physics_step(self) -> None:
        """One physics step: the target written `latency_steps` steps ago drives the servos."""
        self._pending.append(self._written)
        self._apply(self._pending.popleft())
        mujoco.mj_step(self.model, self.data)
        q = self.data.qpos[self._qadr]
        if np.any((q - self._jnt_lo < NEAR_JOINT_LIMIT) | (self._jnt_hi - q < NEAR_JOINT_LIMIT)):
            self._hits["joint_limit"] += 1
        f = self.data.actuator_force[self._act]
        if np.any((f >= NEAR_FORCE_LIMIT * self._force_hi) | (f <= NEAR_FORCE_LIMIT * self._force_lo)):
            self._hits["torque_limit"] += 1

    def advance(self) -> None:
        """Let one control period pass: `decimation` physics steps."""
        for _ in range(self.decimation):
            self.physics_step()

    def limit_hits(self) -> dict[str, int]:
        """Physics steps since reset with any joint within 0.01 rad of a limit / any motor at >= 99% force."""
        return dict(self._hits)

    def base_state(self) -> BaseState:
        d = self.data
        return BaseState.from_free_joint(d.qpos[self._fq : self._fq + 7], d.qvel[self._fd : self._fd + 6])

    def contacts(self, names: list[str]) -> dict[str, bool]:
        """Whether each named contact sensor (e.g. "FL_foot_contact") currently touches."""
        out = {}
        for n in names:
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SENSOR, n) < 0:
                raise DeployError(f"model has no sensor named {n!r}")
            out[n] = bool(self.data.sensor(n).data[0] > 0)
        return out

    def render(self, width: int = 640, height: int = 480, camera: str | int = "track") -> np.ndarray:
        """The current frame, (H, W, 3) uint8 (needs an OpenGL backend, e.g. MUJOCO_GL=egl)."""
        r = self._renderer
        if r is None or (r.width, r.height) != (width, height):
            self.close()
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(width, vis.offwidth), max(height, vis.offheight)
            r = self._renderer = mujoco.Renderer(self.model, height=height, width=width)
        r.update_scene(self.data, camera=camera)
        return r.render().copy()

    def close(self) -> None:
        """Free the renderer, if one was made."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
