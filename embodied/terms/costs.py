"""Locomotion (and generic) safety costs: pure functions of a state returning (N,) >= 0 (1 = violation)."""

from __future__ import annotations

import torch


def undesired_contact(s) -> torch.Tensor:
    """1 when any thigh, calf or trunk geom touches the ground."""
    return (s.undesired_contact.any(-1) | s.base_contact).float()


def joint_limit_violation(s, margin: float = 0.0) -> torch.Tensor:
    """1 when any joint is within ``margin`` radians of (or past) its hard limit."""
    lo, hi = s.joint_hard_limits[:, 0] + margin, s.joint_hard_limits[:, 1] - margin
    return ((s.joint_pos < lo) | (s.joint_pos > hi)).any(-1).float()


def torque_limit_hit(s, fraction: float = 0.99) -> torch.Tensor:
    """1 when any motor saturates at ``fraction`` of its torque limit."""
    return (s.joint_torque.abs() >= fraction * s.torque_limits).any(-1).float()


def base_speed_over_limit(s, limit: float = 2.6222) -> torch.Tensor:
    """1 when the base's planar (world x-y) speed exceeds ``limit`` m/s (Safety-Gymnasium's
    velocity constraint; 2.6222 m/s is its Ant threshold)."""
    return (s.base_lin_vel_world[:, :2].norm(dim=-1) > limit).float()


COSTS = {
    f.__name__: f for f in (undesired_contact, joint_limit_violation, torque_limit_hit, base_speed_over_limit)
}
