"""What the deploy runner needs from a robot, real or simulated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class RobotReading:
    """One sample of the robot's sensors, in the robot's own joint order."""

    joint_pos: np.ndarray  # (J,) rad
    joint_vel: np.ndarray  # (J,) rad/s
    imu_quat: np.ndarray  # (4,) base orientation, w x y z
    imu_gyro: np.ndarray  # (3,) base angular velocity, base frame, rad/s
    base_lin_vel: np.ndarray | None = None  # (3,) base frame, m/s, from a state estimator; None: none


@runtime_checkable
class RobotInterface(Protocol):
    """A robot the deploy runner can drive at the policy's control rate."""

    joint_names: list[str]  # the robot's joint order; the runner maps it to the policy's by name

    def read(self) -> RobotReading:
        """Latest sensor values."""
        ...

    def write_targets(self, q_des: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """Command PD position targets q_des (J,) with gains kp, kd (J,), in the robot's joint order."""
        ...

    def advance(self) -> None:
        """Let one control period pass: sleep until the next tick (real) or step the physics (sim)."""
        ...
