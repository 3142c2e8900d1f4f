"""Locomotion (and generic) observation terms: pure functions of a task's state returning (N, d)."""

from __future__ import annotations

import math

import torch

from embodied.errors import ConfigError


def base_lin_vel(s) -> torch.Tensor:  # 3
    return s.base_lin_vel


def base_ang_vel(s) -> torch.Tensor:  # 3
    return s.base_ang_vel


def projected_gravity(s) -> torch.Tensor:  # 3
    return s.projected_gravity


def velocity_commands(s) -> torch.Tensor:  # 3: vx, vy, yaw rate
    return s.command


def joint_pos_rel(s) -> torch.Tensor:  # num joints
    return s.joint_pos - s.default_joint_pos


def joint_vel(s) -> torch.Tensor:  # num joints
    return s.joint_vel


def last_action(s) -> torch.Tensor:  # action dim
    return s.action


def gait_clock(s) -> torch.Tensor:  # 2: sin, cos of the gait phase
    """The gait clock: the phase of ``gait_time`` in cycles of the task's ``gait_period``."""
    if s.gait_period is None:
        raise ConfigError("observation gait_clock needs the task key gait_period (seconds per gait cycle)")
    phase = (2 * math.pi) * s.gait_time / s.gait_period
    return torch.cat([torch.sin(phase), torch.cos(phase)], -1)


def foot_contact(s) -> torch.Tensor:  # num feet
    return s.foot_contact.float()


def base_height(s) -> torch.Tensor:  # 1
    return s.base_pos[:, 2:3]


def joint_torque(s) -> torch.Tensor:  # num joints
    return s.joint_torque


def qpos_no_xy(s) -> torch.Tensor:  # nq - 2 (gymnasium MuJoCo convention)
    return s.qpos[:, 2:]


def qvel(s) -> torch.Tensor:  # nv
    return s.qvel


class RobotQpos:
    """(N, q) the generalized positions that draw the robot (and what it moves), for world models
    and ghost rendering: the columns ``env.robot_qpos_columns()`` names, of the scene's qpos."""

    def __init__(self, env) -> None:
        self.env = env
        self.cols: torch.Tensor | None = None

    def __call__(self, s) -> torch.Tensor:
        if self.cols is None:  # resolved on first use: the env has finished building by then
            self.cols = self.env.robot_qpos_columns().to(s.qpos.device)
        return s.qpos.index_select(1, self.cols)


OBSERVATIONS = {
    "robot_qpos": RobotQpos,
} | {
    f.__name__: f
    for f in (
        base_lin_vel,
        base_ang_vel,
        projected_gravity,
        velocity_commands,
        joint_pos_rel,
        joint_vel,
        last_action,
        gait_clock,
        foot_contact,
        base_height,
        joint_torque,
        qpos_no_xy,
        qvel,
    )
}
