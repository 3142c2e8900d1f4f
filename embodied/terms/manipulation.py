"""Arm manipulation terms: pure functions of ``ArmState`` (embodied/tasks/manipulation.py).

Rewards return (N,), observations (N, d), terminations (N,) bool, costs (N,) in {0, 1}. The generic
terms that only read ``joint_pos``/``joint_vel``/``action`` (joint_pos_rel, joint_vel, last_action,
action_rate_l2, joint_pos_limits, joint_limit_violation) work on ArmState as they are. The tables
below are merged into REWARDS / OBSERVATIONS / TERMINATIONS / COSTS; their names must stay unique.
"""

from __future__ import annotations

import torch

from embodied.terms.arm_teacher import ARM_TEACHERS


def _tanh_kernel(dist: torch.Tensor, std: float) -> torch.Tensor:
    """1 at distance 0, falling to ~0.24 at ``std`` and to 0 far away."""
    return 1.0 - torch.tanh(dist / std)


def _lifted(s, min_lift: float) -> torch.Tensor:
    """(N,) bool: the cube's bottom is more than ``min_lift`` above the table."""
    return s.object_pos[:, 2] - s.object_half_size - s.table_height > min_lift


# -- rewards -------------------------------------------------------------------------------------
def ee_goal_tanh(s, std: float = 0.1) -> torch.Tensor:
    """End effector close to the reach target (tanh kernel)."""
    return _tanh_kernel((s.ee_pos - s.goal_pos).norm(dim=-1), std)


def ee_goal_distance(s) -> torch.Tensor:
    """Distance from the end effector to the reach target, metres (use a negative weight)."""
    return (s.ee_pos - s.goal_pos).norm(dim=-1)


def ee_object_tanh(s, std: float = 0.1) -> torch.Tensor:
    """End effector close to the cube (tanh kernel): the approach."""
    return _tanh_kernel((s.ee_pos - s.object_pos).norm(dim=-1), std)


def push_pose(s, offset: float) -> torch.Tensor:
    """(N, 3) where the end effector should be to push the cube toward its goal: ``offset`` m behind
    the cube's centre on the goal-cube line, at the cube's height."""
    away = s.object_pos[:, :2] - s.goal_pos[:, :2]
    away = away / away.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return torch.cat([s.object_pos[:, :2] + offset * away, s.object_pos[:, 2:]], -1)


def ee_push_pose_tanh(s, std: float = 0.1, offset: float = 0.05) -> torch.Tensor:
    """End effector close to the push pose behind the cube (tanh kernel): the approach for pushing."""
    return _tanh_kernel((s.ee_pos - push_pose(s, offset)).norm(dim=-1), std)


def object_goal_tanh(s, std: float = 0.1, min_lift: float = -1.0, xy_only: bool = False) -> torch.Tensor:
    """Cube close to its goal (tanh kernel); paid only while lifted above ``min_lift`` when >= 0."""
    err = s.object_pos - s.goal_pos
    dist = (err[:, :2] if xy_only else err).norm(dim=-1)
    paid = _lifted(s, min_lift) if min_lift >= 0 else torch.ones_like(dist, dtype=torch.bool)
    return _tanh_kernel(dist, std) * paid


def object_lifted(s, min_lift: float = 0.02) -> torch.Tensor:
    """1 while the cube is more than ``min_lift`` m above the table."""
    return _lifted(s, min_lift).float()


def object_grasped(s) -> torch.Tensor:
    """1 while both fingers touch the cube."""
    return s.finger_contact.all(-1).float()


def goal_reached(s) -> torch.Tensor:
    """1 while the objective's success condition holds (the task's ``success_threshold``)."""
    return s.success.float()


def joint_vel_l2(s) -> torch.Tensor:
    """Arm joint speeds squared."""
    return s.joint_vel.square().sum(-1)


# -- observations --------------------------------------------------------------------------------
def ee_pos(s) -> torch.Tensor:  # 3
    return s.ee_pos


def ee_orientation(s) -> torch.Tensor:  # 6: the ee frame's x and z axes (continuous, unlike a quaternion)
    return torch.cat([s.ee_rot[:, :, 0], s.ee_rot[:, :, 2]], -1)


def ee_lin_vel(s) -> torch.Tensor:  # 3
    return s.ee_lin_vel


def goal_pos(s) -> torch.Tensor:  # 3
    return s.goal_pos


def ee_goal_error(s) -> torch.Tensor:  # 3: goal - ee
    return s.goal_pos - s.ee_pos


def object_pos(s) -> torch.Tensor:  # 3
    return s.object_pos


def object_quat(s) -> torch.Tensor:  # 4 (wxyz, sign-canonical: w >= 0)
    return torch.where(s.object_quat[:, :1] < 0, -s.object_quat, s.object_quat)


def object_lin_vel(s) -> torch.Tensor:  # 3
    return s.object_lin_vel


def object_ee_error(s) -> torch.Tensor:  # 3: cube - ee
    return s.object_pos - s.ee_pos


def object_goal_error(s) -> torch.Tensor:  # 3: goal - cube
    return s.goal_pos - s.object_pos


def gripper_pos(s) -> torch.Tensor:  # 1: finger opening, metres
    return s.gripper_pos


def finger_contact(s) -> torch.Tensor:  # 2: each finger touches the cube
    return s.finger_contact.float()


def arm_contacts(s) -> torch.Tensor:  # 2: arm-table, arm-arm
    return torch.stack([s.table_contact, s.self_contact], -1).float()


# Multi-object scenes (arm_multi): ``s.goal`` (N, 2) names a cube and a pad; object_* and goal_*
# above then read that cube and that pad.
def goal_onehot(s) -> torch.Tensor:  # K + P: one-hot of the goal's cube, then of its pad
    k, p = s.cubes_pos.shape[1], s.pads_pos.shape[1]
    cube = torch.nn.functional.one_hot(s.goal[:, 0], k)
    return torch.cat([cube, torch.nn.functional.one_hot(s.goal[:, 1], p)], -1).float()


def cubes_pos(s) -> torch.Tensor:  # 3 K: every cube's centre, in the scene's cube order
    return s.cubes_pos.flatten(1)


def cubes_lin_vel(s) -> torch.Tensor:  # 3 K
    return s.cubes_lin_vel.flatten(1)


def pads_pos(s) -> torch.Tensor:  # 3 P: every target pad's centre on the table
    return s.pads_pos.flatten(1)


# -- terminations --------------------------------------------------------------------------------
def object_out_of_bounds(s, max_height: float = 0.8, drop: float = 0.05) -> torch.Tensor:
    """The cube fell off the table (``drop`` m below its top), left it, or flew over ``max_height``."""
    p, (lo, hi) = s.object_pos, s.table_bounds
    off_table = ((p[:, :2] < lo) | (p[:, :2] > hi)).any(-1)
    z = p[:, 2] - s.table_height
    return off_table | (z < -drop) | (z > max_height)


def cubes_out_of_bounds(s, max_height: float = 0.8, drop: float = 0.05) -> torch.Tensor:
    """Any cube of a multi-object scene fell off the table, left it, or flew over ``max_height``."""
    p, (lo, hi) = s.cubes_pos, s.table_bounds
    off_table = ((p[..., :2] < lo) | (p[..., :2] > hi)).any(-1)
    z = p[..., 2] - s.table_height
    return (off_table | (z < -drop) | (z > max_height)).any(-1)


# -- costs ---------------------------------------------------------------------------------------
def arm_table_contact(s) -> torch.Tensor:
    """1 when any moving arm geom (fingers included) touches the table."""
    return s.table_contact.float()


def arm_self_contact(s) -> torch.Tensor:
    """1 when the forearm, wrist, hand or fingers touch the base or shoulder."""
    return s.self_contact.float()


def ee_speed_over_limit(s, max_speed: float = 1.0) -> torch.Tensor:
    """1 when the end effector moves faster than ``max_speed`` m/s."""
    return (s.ee_lin_vel.norm(dim=-1) > max_speed).float()


def _table(*fns) -> dict:
    return {f.__name__: f for f in fns}


MANIP_REWARDS = _table(
    ee_goal_tanh,
    ee_goal_distance,
    ee_object_tanh,
    ee_push_pose_tanh,
    object_goal_tanh,
    object_lifted,
    object_grasped,
    goal_reached,
    joint_vel_l2,
)
MANIP_OBSERVATIONS = _table(
    ee_pos,
    ee_orientation,
    ee_lin_vel,
    goal_pos,
    ee_goal_error,
    object_pos,
    object_quat,
    object_lin_vel,
    object_ee_error,
    object_goal_error,
    gripper_pos,
    finger_contact,
    arm_contacts,
    goal_onehot,
    cubes_pos,
    cubes_lin_vel,
    pads_pos,
)
MANIP_OBSERVATIONS.update(ARM_TEACHERS)
MANIP_TERMINATIONS = _table(object_out_of_bounds, cubes_out_of_bounds)
MANIP_COSTS = _table(arm_table_contact, arm_self_contact, ee_speed_over_limit)
