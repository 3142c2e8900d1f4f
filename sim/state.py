"""Batched physics state: (N, ...) torch tensors on the backend's device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SimState:
    """What a backend exposes after every step.

    Attributes:
        qpos: (N, nq) generalized positions (free joint: xyz, quaternion wxyz).
        qvel: (N, nv) generalized velocities (free joint: world linear, body angular).
        sensordata: (N, nsensordata) the model's sensors, sliced by name with ``SimBackend.sensor``.
        time: (N,) simulated time since each env's last reset, seconds.
    """

    qpos: torch.Tensor
    qvel: torch.Tensor
    sensordata: torch.Tensor
    time: torch.Tensor
