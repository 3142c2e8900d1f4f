"""Imitation of a teacher observation group inside an on-policy update (DAgger-style guidance).

A task whose ``observations`` have a group of teacher actions (e.g. a scripted grasp,
embodied/terms/arm_teacher.py) and a ``teacher:`` block trains with an extra loss on the states the
learner itself visited: the negative log-likelihood of the teacher's action under the policy
(``loss: nll``, per action dim; it also narrows the exploration noise where the teacher is sure,
which a grasp needs: a noisy gripper command drops the cube), or the squared error of the action
mean alone (``loss: mse``). The learner's own actions are what the env executes, so the labels are
where the learner goes (DAgger), not only along the teacher's trajectories. The coefficient falls
linearly from ``coef`` to ``min_coef`` over ``decay_iterations`` (0: constant), so PPO's own
objective takes over; the run logs ``loss/teacher``, ``teacher/action_mse`` (the mean's squared
error, whichever loss trains) and ``teacher/coef``.

    teacher: {group: teacher, coef: 1.0, decay_iterations: 150, min_coef: 0.0, loss: nll}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from embodied.algorithms.config import check_types, parse_config
from embodied.errors import ConfigError
from policies.distributions import gaussian_log_prob

LOSSES = ("nll", "mse")


@dataclass
class TeacherConfig:
    """How strongly, and for how long, the policy imitates the teacher group."""

    group: str = "teacher"
    coef: float = 1.0
    decay_iterations: int = 0
    min_coef: float = 0.0
    loss: str = "nll"  # "nll" | "mse"

    def __post_init__(self) -> None:
        check_types(self)
        checks = {
            "group": bool(self.group),
            "coef": self.coef >= 0,
            "decay_iterations": self.decay_iterations >= 0,
            "min_coef": 0 <= self.min_coef <= self.coef,
            "loss": self.loss in LOSSES,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TeacherConfig.{name} is invalid: {getattr(self, name)!r}")

    def coefficient(self, iteration: int) -> float:
        """The loss weight at update ``iteration`` (0-based)."""
        if self.decay_iterations == 0:
            return self.coef
        frac = min(iteration / self.decay_iterations, 1.0)
        return self.coef + (self.min_coef - self.coef) * frac


def parse_teacher(cfg: Mapping[str, Any] | None) -> TeacherConfig | None:
    """The task's ``teacher`` block as a TeacherConfig; None (or coef 0 throughout) means no teacher."""
    if not cfg:
        return None
    try:
        (teacher,) = parse_config("teacher", cfg, [TeacherConfig])
    except ConfigError as e:
        raise ConfigError(f"task.teacher: {str(e).replace('algo key', 'key')}") from None
    if teacher.coef == 0.0:
        return None
    return teacher


def imitation_loss(
    kind: str, action_mean: torch.Tensor, action_std: torch.Tensor, teacher_action: torch.Tensor
) -> torch.Tensor:
    """The ``kind`` loss of (B, A) policy means and stds against teacher actions, per action dim;
    a scalar."""
    if kind == "mse":
        return (action_mean - teacher_action).square().mean()
    return -gaussian_log_prob(teacher_action, action_mean, action_std).mean() / action_mean.shape[-1]
