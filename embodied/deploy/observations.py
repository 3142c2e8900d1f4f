"""The policy's observation vector, built on the robot from sensor readings (numpy only).

Term semantics follow docs/deploy_schema.md: each term is clip(scale * raw, -clip, clip), terms with
history > 1 stack their last `history` values oldest-first, and the concatenation is clipped to
+-obs_clip. Right after `reset()` a history is filled with the first value it sees, so the first
observation holds no zeros that training never showed the policy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embodied.deploy.manifest import OBS_TERM_DIMS, DeployError, Manifest
from embodied.deploy.robot import RobotReading

GRAVITY_DIR = np.array([0.0, 0.0, -1.0])


def quat_rotate_inverse(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate a world-frame vector v (3,) into the frame of quaternion q (4,) (w, x, y, z)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q)
    w, xyz = q[0], q[1:]
    t = 2.0 * np.cross(xyz, v)
    return v - w * t + np.cross(xyz, t)


@dataclass(frozen=True)
class _Inputs:
    """Everything a raw term may read, already in policy joint order."""

    reading: RobotReading
    command: np.ndarray  # (3,)
    last_action: np.ndarray  # (A,)
    default_pos: np.ndarray  # (A,)


def _base_lin_vel(x: _Inputs) -> np.ndarray:
    if x.reading.base_lin_vel is None:
        raise DeployError(
            "observation term 'base_lin_vel' needs the base linear velocity from a state estimator, "
            "but the robot's reading has base_lin_vel=None"
        )
    return x.reading.base_lin_vel


RAW_TERMS: dict[str, Callable[[_Inputs], np.ndarray]] = {
    "base_lin_vel": _base_lin_vel,  # 3, base frame
    "base_ang_vel": lambda x: x.reading.imu_gyro,  # 3, base frame
    "projected_gravity": lambda x: quat_rotate_inverse(x.reading.imu_quat, GRAVITY_DIR),  # 3
    "velocity_commands": lambda x: x.command,  # 3: vx, vy, yaw rate
    "joint_pos_rel": lambda x: x.reading.joint_pos - x.default_pos,  # A
    "joint_vel": lambda x: x.reading.joint_vel,  # A
    "last_action": lambda x: x.last_action,  # A
}
assert set(RAW_TERMS) == set(OBS_TERM_DIMS), "every term the manifest accepts needs a builder"


def _vector(v: object, n: int, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (n,):
        raise DeployError(f"{what} must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DeployError(f"{what} has non-finite values: {a.tolist()}")
    return a


class ObservationBuilder:
    """Builds the (D,) float32 observation the manifest describes; keeps per-term histories."""

    def __init__(self, manifest: Manifest):
        self.terms = manifest.observations
        self.dim = manifest.obs_dim
        self.num_joints = manifest.num_joints
        self.obs_clip = manifest.obs_clip
        self.default_pos = np.asarray(manifest.joints.default_positions, dtype=np.float64)
        self._history: list[deque[np.ndarray]] = [deque(maxlen=t.history) for t in self.terms]

    def reset(self) -> None:
        """Forget all histories (call at episode start)."""
        for h in self._history:
            h.clear()

    def build(self, reading: RobotReading, command: np.ndarray, last_action: np.ndarray) -> np.ndarray:
        """Observation (D,) float32 from a reading in policy joint order, command (3,), last action (A,)."""
        j = self.num_joints
        checked = RobotReading(
            joint_pos=_vector(reading.joint_pos, j, "reading.joint_pos"),
            joint_vel=_vector(reading.joint_vel, j, "reading.joint_vel"),
            imu_quat=_vector(reading.imu_quat, 4, "reading.imu_quat"),
            imu_gyro=_vector(reading.imu_gyro, 3, "reading.imu_gyro"),
            base_lin_vel=None
            if reading.base_lin_vel is None
            else _vector(reading.base_lin_vel, 3, "reading.base_lin_vel"),
        )
        if np.linalg.norm(checked.imu_quat) < 1e-6:
            raise DeployError("reading.imu_quat is zero; expected a unit quaternion (w, x, y, z)")
        x = _Inputs(
            checked, _vector(command, 3, "command"), _vector(last_action, j, "last_action"), self.default_pos
        )
        parts = []
        for term, hist in zip(self.terms, self._history, strict=True):
            value = np.asarray(term.scale) * RAW_TERMS[term.name](x)
            if term.clip is not None:
                value = np.clip(value, -term.clip, term.clip)
            if not hist:
                hist.extend([value] * term.history)
            else:
                hist.append(value)
            parts.extend(hist)  # oldest first
        obs = np.concatenate(parts)
        if self.obs_clip is not None:
            obs = np.clip(obs, -self.obs_clip, self.obs_clip)
        return obs.astype(np.float32)
