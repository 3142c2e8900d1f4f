"""What a policy's action means to the robot: the deploy.yaml ``action`` section of each task family.

The exported graph always ends in ``command = offset + scale * action`` (embodied/export/graph.py);
the action mode says what that command is, and so what the robot-side controller does with it:

- ``joint_position``: PD position targets (rad) for ``joints.names``; the robot's motor drivers
  track them with ``joints.kp`` / ``kd``.
- ``ee_delta``: an end-effector displacement per control step (m, and rad of rotation vector when
  ``orientation: free``) in ``frame``; the robot's own IK or Cartesian controller moves the hand
  by it (the training env's controller: one damped-least-squares step, ``ik`` in the task config).
- ``car_controls``: (steering angle rad, left positive; speed m/s); the car's steering and
  speed controllers track them (training: Ackermann geometry and an electronic differential).

A task whose action is none of these (a binary gripper command, torque motors) is refused with
a one-line ExportError naming the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from embodied.deploy.manifest import ACTION_MODES
from embodied.errors import ConfigError
from embodied.export.graph import ExportError


@dataclass
class ActionInterface:
    mode: str  # a key of ACTION_MODES
    offset: torch.Tensor  # (A,)
    scale: torch.Tensor  # (A,)
    params: dict[str, Any] = field(default_factory=dict)  # written beside offset/scale in deploy.yaml

    @property
    def output(self) -> str:
        return ACTION_MODES[self.mode]


def action_interface(env: Any, task_cfg: Mapping[str, Any]) -> ActionInterface:
    """The action mode of ``env``'s task with its affine map and parameters; ExportError if the
    deploy schema has no mode for it."""
    family = str(task_cfg.get("family"))
    mode = "car_controls" if family == "driving" else str(task_cfg.get("action_mode", "joint_position"))
    if mode not in ACTION_MODES:
        raise ExportError(
            f"action mode {mode!r} of task {task_cfg.get('name')!r} is not in the deploy schema "
            f"(action.mode: {', '.join(ACTION_MODES)})"
        )
    if mode == "joint_position":
        try:
            offset, scale = env.action_affine()
        except ConfigError as e:
            raise ExportError(str(e)) from None
        if family == "locomotion" and not bool((torch.as_tensor(env.backend.info.kp) > 0).all()):
            raise ExportError(
                f"task {task_cfg.get('name')!r} drives torque motors, not position servos: the deploy "
                "schema has no torque action mode"
            )
        return ActionInterface(mode, offset, scale)
    dev = env.device
    if mode == "ee_delta":
        if getattr(env, "use_gripper", False):
            raise ExportError(
                f"task {task_cfg.get('name')!r} adds a binary gripper command (>= 0 opens) to its "
                "ee_delta action: the deploy schema has no gripper mode"
            )
        free = env.ik_orientation == "free"
        scale = [env.ik_pos_scale] * 3 + ([env.ik_rot_scale] * 3 if free else [])
        params = {
            "frame": "base",  # the arm's base frame (the scene's world frame: base at the origin)
            "orientation": env.ik_orientation,  # hold: the controller keeps the home orientation
            "units": "m per control step" + (", rad (rotation vector) per control step" if free else ""),
        }
        s = torch.tensor(scale, device=dev)
        return ActionInterface(mode, torch.zeros_like(s), s, params)
    half = 0.5 * env.max_speed  # speed = max_speed (a + 1) / 2: -1 stops, 0 is half speed
    params = {"steering_angle_max": float(env.steer_max), "speed_max": float(env.max_speed)}
    return ActionInterface(
        mode, torch.tensor([0.0, half], device=dev), torch.tensor([env.steer_max, half], device=dev), params
    )
