"""A task's own reward and cost terms evaluated on a world model's predicted state.

The model predicts reward and cost with heads. Where a task's terms are pure functions of what the
model predicts, they can also be evaluated on the predicted state itself: the task's shaping is then
exact by construction and only the state prediction can be wrong. This module rebuilds, from a
predicted observation vector, the state fields the terms read, and evaluates every term that needs
nothing else. A term that reads a field the prediction does not give (contact history, a command
that is resampled, a success flag) is reported as not computable, never evaluated on stale data.

Observation terms map back to state fields by name: ``value / scale`` for a term that copies a
field, and three derived ones (``joint_pos_rel`` -> ``joint_pos``, ``ee_goal_error`` ->
``goal_pos``, ``object_goal_error`` -> ``goal_pos``). Task constants (limits, default pose, table
geometry) come from the env.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from embodied.terms import Term

# Observation term -> the state field it copies (value = field * scale).
COPIES = {
    "ee_pos": "ee_pos",
    "joint_vel": "joint_vel",
    "last_action": "last_action",
    "object_pos": "object_pos",
    "gripper_pos": "gripper_pos",
    "object_lin_vel": "object_lin_vel",
    "object_quat": "object_quat",
    "ee_lin_vel": "ee_lin_vel",
    "base_lin_vel": "base_lin_vel",
    "base_ang_vel": "base_ang_vel",
    "projected_gravity": "projected_gravity",
    "velocity_commands": "command",
}
# Per-task constants a term may read; nothing else is taken from the env's current state.
CONSTANTS = (
    "num_envs",
    "dt",
    "default_joint_pos",
    "joint_pos_limits",
    "joint_hard_limits",
    "torque_limits",
    "table_height",
    "table_bounds",
    "object_half_size",
)


def predicted_state(
    obs: torch.Tensor, layout: Sequence[Mapping[str, Any]], constants: Any
) -> SimpleNamespace:
    """The state fields recoverable from an observation vector (B, D) laid out as ``layout``;
    ``constants`` (the env's state) gives only the task constants in ``CONSTANTS``."""
    parts: dict[str, torch.Tensor] = {}
    start = 0
    for t in layout:
        d = int(t["dim"])
        parts[str(t["name"])] = obs[..., start : start + d] / float(t.get("scale", 1.0))
        start += d
    fields: dict[str, Any] = {k: getattr(constants, k) for k in CONSTANTS if hasattr(constants, k)}
    if "num_envs" in fields:
        fields["num_envs"] = obs.shape[0]
    for name, field in COPIES.items():
        if name in parts:
            fields[field] = parts[name]
    if "joint_pos_rel" in parts and "default_joint_pos" in fields:
        fields["joint_pos"] = parts["joint_pos_rel"] + fields["default_joint_pos"]
    if "ee_goal_error" in parts and "ee_pos" in parts:
        fields["goal_pos"] = parts["ee_pos"] + parts["ee_goal_error"]
    if "object_goal_error" in parts and "object_pos" in parts:
        fields["goal_pos"] = parts["object_pos"] + parts["object_goal_error"]
    return SimpleNamespace(**fields)


def evaluate_terms(
    terms: Sequence[Term], state: SimpleNamespace, scale: float, batch: int
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Sum of weight * scale * term over the computable terms (B,), their names, and the others'."""
    total, used, skipped = None, [], []
    for t in terms:
        try:
            value = t(state) * (t.weight * scale)
        except (AttributeError, TypeError):  # reads a field the prediction does not give
            skipped.append(t.name)
            continue
        total = value if total is None else total + value
        used.append(t.name)
    if total is None:
        total = torch.zeros(batch)
    return total, used, skipped


def rewards_on_prediction(
    env: Any, group: str, obs_before: torch.Tensor, obs_after: torch.Tensor, action: torch.Tensor
) -> tuple[torch.Tensor, list[str], list[str]]:
    """The task's reward (B,) of the step ``obs_before`` -a-> ``obs_after`` (observations of
    ``group``, predicted or real), from its reward terms alone; returns (reward, used, not computable).

    ``action_rate_l2``-style terms read ``last_action`` from ``obs_before``'s last_action term.
    """
    layout = env.obs_layout(group)
    before = predicted_state(obs_before, layout, env.state)
    after = predicted_state(obs_after, layout, env.state)
    after.action = action
    if hasattr(before, "last_action"):
        after.last_action = before.last_action
    return evaluate_terms(env.rewards, after, env.dt, obs_after.shape[0])
