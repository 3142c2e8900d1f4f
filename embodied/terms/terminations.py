"""Locomotion termination terms: pure functions of a task's state returning (N,) bool."""

from __future__ import annotations

import math

import torch


def base_contact(s) -> torch.Tensor:
    """The trunk touches the ground."""
    return s.base_contact


def bad_orientation(s, max_tilt: float = 1.0) -> torch.Tensor:
    """The base is tilted more than ``max_tilt`` radians from upright."""
    return s.projected_gravity[:, 2] > -math.cos(max_tilt)


def base_height_out_of_range(s, min_height: float = 0.2, max_height: float = 1.0) -> torch.Tensor:
    z = s.base_pos[:, 2]
    return (z < min_height) | (z > max_height)


TERMINATIONS = {f.__name__: f for f in (base_contact, bad_orientation, base_height_out_of_range)}
