"""Locomotion (and generic) rewards: pure functions of a state returning (N,); weights, dt from the env."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from embodied.errors import ConfigError


def track_lin_vel_xy_exp(s, sigma: float = 0.25) -> torch.Tensor:
    """exp(-|cmd_xy - v_xy|^2 / sigma), base frame."""
    err = (s.command[:, :2] - s.base_lin_vel[:, :2]).square().sum(-1)
    return torch.exp(-err / sigma)


def track_ang_vel_z_exp(s, sigma: float = 0.25) -> torch.Tensor:
    """exp(-(cmd_yaw - w_z)^2 / sigma)."""
    return torch.exp(-(s.command[:, 2] - s.base_ang_vel[:, 2]).square() / sigma)


def lin_vel_z_l2(s) -> torch.Tensor:
    """Vertical base velocity squared."""
    return s.base_lin_vel[:, 2].square()


def ang_vel_xy_l2(s) -> torch.Tensor:
    """Roll and pitch rates squared."""
    return s.base_ang_vel[:, :2].square().sum(-1)


def joint_torques_l2(s) -> torch.Tensor:
    return s.joint_torque.square().sum(-1)


def joint_acc_l2(s) -> torch.Tensor:
    return ((s.joint_vel - s.last_joint_vel) / s.dt).square().sum(-1)


def action_rate_l2(s) -> torch.Tensor:
    return (s.action - s.last_action).square().sum(-1)


def feet_air_time(s, threshold: float = 0.5, min_command: float = 0.1) -> torch.Tensor:
    """Rewards steps longer than ``threshold`` s, paid at touchdown, only while asked to move."""
    paid = ((s.last_air_time - threshold) * s.first_contact).sum(-1)
    return paid * (s.command[:, :2].norm(dim=-1) > min_command)


def feet_phase_time(s, mode_time: float = 0.3, velocity_threshold: float = 0.5) -> torch.Tensor:
    """Each foot's current swing or stance duration, paid every step while under ``mode_time``.

    Asked to move (or moving faster than ``velocity_threshold``), a foot earns the length of the
    phase it is in until that reaches ``mode_time``, then nothing until it switches: per unit time
    this peaks when both swing and stance last ``mode_time``, so it sets the step length, where
    ``feet_air_time`` only penalizes short steps (and not a foot that slides). Asked to stand, a foot
    earns its contact time minus its air time, both clipped to ``mode_time``. Isaac Lab's Spot
    ``air_time_reward`` has this form.
    """
    phase = torch.maximum(s.air_time, s.contact_time)
    moving = s.command.norm(dim=-1) > 0.0
    moving |= s.base_lin_vel[:, :2].norm(dim=-1) > velocity_threshold
    gait = torch.where(phase < mode_time, phase, 0.0)
    stand = (s.contact_time - s.air_time).clamp(-mode_time, mode_time)
    return torch.where(moving[:, None], gait, stand).sum(-1)


def gait_contact(s, duty: float = 0.5, offsets: Sequence[float] = (0.0, 0.5, 0.5, 0.0)) -> torch.Tensor:
    """Fraction of feet whose contact matches the gait clock's schedule (unitree_rl_gym's contact).

    Foot f should stand while ``(gait_time / gait_period + offsets[f]) mod 1 < duty`` and swing for
    the rest of the cycle: with the default offsets (feet FL, FR, RL, RR) diagonal pairs alternate,
    a trot, and each swing lasts ``(1 - duty) * gait_period`` seconds. The policy sees the same
    clock through the ``gait_clock`` observation.
    """
    stance = _scheduled_stance(s, duty, offsets, "gait_contact")
    return (s.foot_contact == stance).float().mean(-1)


def feet_swing_height(
    s,
    height: float = 0.08,
    foot_radius: float = 0.022,
    duty: float = 0.5,
    offsets: Sequence[float] = (0.0, 0.5, 0.5, 0.0),
) -> torch.Tensor:
    """How far the feet the gait clock schedules to swing are off the ground, as a fraction of
    ``height`` (clipped at 1), averaged over all feet: 1 - duty at best. Flat ground at z = 0;
    ``foot_radius`` is the foot sphere's, so a standing foot has clearance 0. It pays lifting the
    swing foot clear instead of shuffling it along the ground (walk-these-ways' swing-height term)."""
    swing = ~_scheduled_stance(s, duty, offsets, "feet_swing_height")
    clearance = (s.foot_pos[..., 2] - foot_radius).clamp(min=0.0) / height
    return (clearance.clamp(max=1.0) * swing).mean(-1)


def _scheduled_stance(s, duty: float, offsets: Sequence[float], term: str) -> torch.Tensor:
    """(N, F) bool: which feet the gait clock wants on the ground now."""
    if s.gait_period is None:
        raise ConfigError(f"reward {term} needs the task key gait_period (seconds per gait cycle)")
    if not 0.0 < duty < 1.0:
        raise ConfigError(f"{term}.duty is the stance fraction of a gait cycle, in (0, 1); got {duty!r}")
    off = torch.as_tensor(offsets, dtype=s.gait_time.dtype, device=s.gait_time.device)
    if off.shape != s.foot_contact.shape[1:]:
        raise ConfigError(
            f"{term} has {off.numel()} offsets for {s.foot_contact.shape[1]} feet; give one per foot"
        )
    return torch.remainder(s.gait_time / s.gait_period + off, 1.0) < duty


def flat_orientation_l2(s) -> torch.Tensor:
    """Gravity's xy component in the base frame, squared: zero when level."""
    return s.projected_gravity[:, :2].square().sum(-1)


def undesired_contacts(s) -> torch.Tensor:
    """Number of thigh/calf/trunk geoms touching the ground."""
    return s.undesired_contact.float().sum(-1)


def base_height_l2(s, target: float = 0.3) -> torch.Tensor:
    return (s.base_pos[:, 2] - target).square()


def joint_pos_limits(s) -> torch.Tensor:
    """How far joints are past their soft limits, summed."""
    below = (s.joint_pos_limits[:, 0] - s.joint_pos).clamp(min=0.0)
    above = (s.joint_pos - s.joint_pos_limits[:, 1]).clamp(min=0.0)
    return (below + above).sum(-1)


def joint_deviation_l1(s) -> torch.Tensor:
    return (s.joint_pos - s.default_joint_pos).abs().sum(-1)


def forward_velocity(s) -> torch.Tensor:
    """World-frame x velocity of the base (gymnasium's Ant forward reward)."""
    return s.base_lin_vel_world[:, 0]


def alive(s) -> torch.Tensor:
    return torch.ones(s.num_envs, device=s.base_pos.device)


def control_l2(s) -> torch.Tensor:
    return s.action.square().sum(-1)


REWARDS = {
    f.__name__: f
    for f in (
        track_lin_vel_xy_exp,
        track_ang_vel_z_exp,
        lin_vel_z_l2,
        ang_vel_xy_l2,
        joint_torques_l2,
        joint_acc_l2,
        action_rate_l2,
        feet_air_time,
        feet_phase_time,
        gait_contact,
        feet_swing_height,
        flat_orientation_l2,
        undesired_contacts,
        base_height_l2,
        joint_pos_limits,
        joint_deviation_l1,
        forward_velocity,
        alive,
        control_l2,
    )
}
