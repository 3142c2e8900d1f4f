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


@runtime_checkable
class SignalRobot(Protocol):
    """A robot driven in the ee_delta or car_controls action mode (docs/deploy_schema.md).

    It names its signals (``joint_pos``, ``joint_vel``, ``ee_pos``, ``perception/<term>``, ...)
    and runs the mode's controller itself: an IK or Cartesian controller for ``ee_delta``, steering
    and speed control for ``car_controls``.
    """

    joint_names: list[str]  # the joints it reports, in its own order (empty for a car)

    def read_signals(self) -> dict[str, np.ndarray]:
        """Latest values of its signals, {name: (width,)}."""
        ...

    def write_command(self, command: np.ndarray) -> None:
        """The mode's command: an end-effector displacement in action.frame, or (steering, speed)."""
        ...

    def advance(self) -> None:
        """Let one control period pass."""
        ...
