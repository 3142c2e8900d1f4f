"""Legged locomotion on a floating-base robot: velocity tracking (Go2) and forward running (Ant).

Both are the same module with different configs: the command ranges, action mode, rewards,
observations and terminations all come from ``configs/task/<name>.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from embodied.errors import ConfigError
from embodied.math import quat_rotate_inverse, yaw_quat
from embodied.task_env import TaskEnv
from sim.backend import SimBackend

ACTION_MODES = ("joint_position", "direct")


@dataclass
class LocoState:
    """Everything locomotion terms read; (N, ...) tensors, world frame unless named ``base``."""

    num_envs: int
    dt: float
    qpos: torch.Tensor  # (N, nq)
    qvel: torch.Tensor  # (N, nv)
    base_pos: torch.Tensor  # (N, 3)
    base_quat: torch.Tensor  # (N, 4) wxyz
    base_lin_vel: torch.Tensor  # (N, 3) base frame
    base_lin_vel_world: torch.Tensor  # (N, 3)
    base_ang_vel: torch.Tensor  # (N, 3) base frame
    projected_gravity: torch.Tensor  # (N, 3) base frame
    joint_pos: torch.Tensor  # (N, J) actuated joints, actuator order
    joint_vel: torch.Tensor  # (N, J)
    last_joint_vel: torch.Tensor  # (N, J)
    default_joint_pos: torch.Tensor  # (J,)
    joint_pos_limits: torch.Tensor  # (J, 2) soft limits
    joint_hard_limits: torch.Tensor  # (J, 2)
    torque_limits: torch.Tensor  # (J,)
    action: torch.Tensor  # (N, A)
    last_action: torch.Tensor  # (N, A)
    command: torch.Tensor  # (N, 3) vx, vy, yaw rate
    gait_time: torch.Tensor | None = None  # (N, 1) seconds since the episode started: the gait clock
    gait_period: float | None = None  # s per gait cycle (task key ``gait_period``); None: no clock
    joint_torque: torch.Tensor | None = None  # (N, J)
    foot_contact: torch.Tensor | None = None  # (N, F) bool
    foot_pos: torch.Tensor | None = None  # (N, F, 3) world frame (sensor group ``foot_pos``)
    first_contact: torch.Tensor | None = None  # (N, F) bool
    last_air_time: torch.Tensor | None = None  # (N, F) air time before this step's touchdown
    air_time: torch.Tensor | None = None  # (N, F) airborne so far, this step included (0 in contact)
    contact_time: torch.Tensor | None = None  # (N, F) in contact so far, this step included (0 airborne)
    base_contact: torch.Tensor | None = None  # (N,) bool
    undesired_contact: torch.Tensor | None = None  # (N, K) bool


class LocomotionEnv(TaskEnv):
    """Floating-base robot tracking sampled (vx, vy, yaw-rate) commands, one command per episode."""

    def __init__(self, cfg: Mapping[str, Any], backend: SimBackend, seed: int = 0) -> None:
        info = backend.info
        if not info.floating_base:
            raise ConfigError("locomotion tasks need a robot whose first joint is a free joint")
        dev = backend.device
        self.action_mode = cfg.get("action_mode", "joint_position")
        if self.action_mode not in ACTION_MODES:
            raise ConfigError(
                f"unknown action_mode {self.action_mode!r}; choose one of {', '.join(ACTION_MODES)}"
            )
        self.action_scale = float(cfg.get("action_scale", 0.25))
        self._qpos_adr = torch.as_tensor(info.qpos_adr, device=dev)
        self._dof_adr = torch.as_tensor(info.dof_adr, device=dev)
        self.home_qpos = torch.as_tensor(info.home_qpos, dtype=torch.float32, device=dev)
        self.default_joint_pos = self.home_qpos[self._qpos_adr]
        jr = torch.as_tensor(info.joint_range, dtype=torch.float32, device=dev)
        mid, half = jr.mean(-1), 0.5 * (jr[:, 1] - jr[:, 0])
        soft = float(cfg.get("soft_joint_limit", 0.9))
        self.joint_hard_limits = jr
        self.joint_soft_limits = torch.stack([mid - soft * half, mid + soft * half], -1)
        self.torque_limits = torch.as_tensor(info.force_range[:, 1], dtype=torch.float32, device=dev)
        cr = torch.as_tensor(info.ctrl_range, dtype=torch.float32, device=dev)
        self._ctrl_lo, self._ctrl_hi = cr[:, 0], cr[:, 1]
        if self.action_mode == "joint_position":
            self._affine = (
                self.default_joint_pos,
                torch.full_like(self.default_joint_pos, self.action_scale),
            )
        elif not torch.isfinite(cr).all():
            raise ConfigError("action_mode 'direct' needs every actuator to have a ctrlrange")
        else:
            self._affine = (0.5 * (cr[:, 0] + cr[:, 1]), 0.5 * (cr[:, 1] - cr[:, 0]))

        self.command_ranges = self._parse_command_ranges(cfg.get("commands") or {}, dev)
        self.zero_command_prob = float((cfg.get("commands") or {}).get("zero_prob", 0.0))
        self.reset_cfg = dict(cfg.get("reset") or {})
        self.gait_period = self._gait_period(cfg.get("gait_period"))
        self._sensor_cols = self._resolve_sensors(backend, cfg.get("sensors") or {})

        n, dev = backend.num_envs, dev
        self.command = torch.zeros(n, 3, device=dev)
        self.last_action = torch.zeros(n, info.nu, device=dev)
        self.last_joint_vel = torch.zeros(n, info.nu, device=dev)
        nfeet = len(self._sensor_cols.get("foot_contact", ()))
        self.air_time = torch.zeros(n, nfeet, device=dev)
        self.contact_time = torch.zeros(n, nfeet, device=dev)
        super().__init__(cfg, backend, seed)

    # -- hooks ---------------------------------------------------------------------------------
    def _action_to_ctrl(self, action: torch.Tensor) -> torch.Tensor:
        offset, scale = self._affine
        return offset + scale * action

    def action_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._affine

    def _read_state(self, action: torch.Tensor) -> LocoState:
        sim = self.backend.state()
        qpos, qvel = sim.qpos, sim.qvel
        quat = qpos[:, 3:7]
        gravity = torch.tensor([0.0, 0.0, -1.0], device=self.device).expand(self.num_envs, 3)
        lin_world = qvel[:, 0:3]
        s = LocoState(
            num_envs=self.num_envs,
            dt=self.dt,
            qpos=qpos,
            qvel=qvel,
            base_pos=qpos[:, 0:3],
            base_quat=quat,
            base_lin_vel=quat_rotate_inverse(quat, lin_world),
            base_lin_vel_world=lin_world,
            base_ang_vel=qvel[:, 3:6],  # a free joint's angular velocity is already in the body frame
            projected_gravity=quat_rotate_inverse(quat, gravity),
            joint_pos=qpos[:, self._qpos_adr],
            joint_vel=qvel[:, self._dof_adr],
            last_joint_vel=self.last_joint_vel,
            default_joint_pos=self.default_joint_pos,
            joint_pos_limits=self.joint_soft_limits,
            joint_hard_limits=self.joint_hard_limits,
            torque_limits=self.torque_limits,
            action=action,
            last_action=self.last_action,
            command=self.command,
            gait_time=self.episode_length[:, None].float() * self.dt,
            gait_period=self.gait_period,
        )
        cols, data = self._sensor_cols, sim.sensordata
        if "joint_torque" in cols:
            s.joint_torque = data[:, cols["joint_torque"]]
        if "foot_contact" in cols:
            contact = data[:, cols["foot_contact"]] > 0
            s.foot_contact = contact
            s.first_contact = (self.air_time > 0) & contact
            # The air time this step ends with: what feet touching down now were airborne for.
            s.last_air_time = self.air_time + self.dt
            s.air_time = s.last_air_time * ~contact
            s.contact_time = (self.contact_time + self.dt) * contact
        if "foot_pos" in cols:
            s.foot_pos = data[:, cols["foot_pos"]].reshape(self.num_envs, -1, 3)
        if "base_contact" in cols:
            s.base_contact = (data[:, cols["base_contact"]] > 0).any(-1)
        if "undesired_contact" in cols:
            s.undesired_contact = data[:, cols["undesired_contact"]] > 0
        return s

    def _advance(self, s: LocoState) -> None:
        if s.foot_contact is not None:
            self.air_time = s.air_time
            self.contact_time = s.contact_time
        self.last_action = s.action
        self.last_joint_vel = s.joint_vel

    def _reset_state(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, g, dev = self.num_envs, self.generator, self.device
        r = self.reset_cfg
        qpos = self.home_qpos.expand(n, -1).clone()
        qvel = torch.zeros(n, self.backend.info.nv, device=dev)
        jn = float(r.get("joint_pos_noise", 0.0))
        if jn > 0:
            noise = (torch.rand(n, len(self._qpos_adr), generator=g, device=dev) * 2 - 1) * jn
            qpos[:, self._qpos_adr] += noise
        yaw = (torch.rand(n, generator=g, device=dev) * 2 - 1) * float(r.get("yaw_range", 0.0))
        qpos[:, 3:7] = yaw_quat(yaw)
        vn = float(r.get("base_vel_noise", 0.0))
        if vn > 0:
            qvel[:, 0:6] = (torch.rand(n, 6, generator=g, device=dev) * 2 - 1) * vn
        return qpos, qvel

    def _on_reset(self, mask: torch.Tensor) -> None:
        n, g, dev = self.num_envs, self.generator, self.device
        lo, hi = self.command_ranges[:, 0], self.command_ranges[:, 1]
        cmd = lo + (hi - lo) * torch.rand(n, 3, generator=g, device=dev)
        zero = torch.rand(n, generator=g, device=dev) < self.zero_command_prob
        cmd = torch.where(zero[:, None], 0.0, cmd)
        self.command = torch.where(mask[:, None], cmd, self.command)
        self.air_time = torch.where(mask[:, None], 0.0, self.air_time)
        self.contact_time = torch.where(mask[:, None], 0.0, self.contact_time)
        self.last_joint_vel = torch.where(mask[:, None], 0.0, self.last_joint_vel)
        self.last_action = torch.where(mask[:, None], 0.0, self.last_action)

    def _disturb(self) -> None:
        """Random pushes: every ``push.interval_s`` each env's base gets a random xy velocity kick."""
        push = self.rand_cfg.get("push")
        if not push:
            return
        unknown = set(push) - {"interval_s", "max_vel"}
        if unknown:
            raise ConfigError(
                f"randomization.push has unknown keys {sorted(unknown)}; known: interval_s, max_vel"
            )
        every = max(1, round(float(push["interval_s"]) / self.dt))
        due = (self.episode_length > 0) & (self.episode_length % every == 0)
        if not bool(due.any()):
            return
        st = self.backend.state()
        kick = torch.rand(self.num_envs, 2, generator=self.generator, device=self.device) * 2 - 1
        qvel = st.qvel.clone()
        qvel[:, 0:2] += kick * float(push["max_vel"]) * due[:, None]
        self.backend.set_state(due, st.qpos, qvel)

    def _metrics(self, s: LocoState) -> dict[str, torch.Tensor]:
        m = {
            "lin_vel_error": (s.command[:, :2] - s.base_lin_vel[:, :2]).norm(dim=-1),
            "ang_vel_error": (s.command[:, 2] - s.base_ang_vel[:, 2]).abs(),
            "world_x_velocity": s.base_lin_vel_world[:, 0],  # progress along +x (Ant); yaw-random for go2
        }
        if s.first_contact is not None:  # gait: feet landing this step and their summed flight time
            m["touchdowns"] = s.first_contact.float().sum(-1)
            m["touchdown_air_time"] = (s.last_air_time * s.first_contact).sum(-1)
        return m

    # -- helpers -------------------------------------------------------------------------------
    def set_command_ranges(self, ranges: Mapping[str, Any], zero_prob: float = 0.0) -> None:
        """Replace the command distribution (evaluation sweeps use this)."""
        self.command_ranges = self._parse_command_ranges(ranges, self.device)
        self.zero_command_prob = zero_prob

    @staticmethod
    def _gait_period(period: Any) -> float | None:
        if period is None:
            return None
        try:
            value = float(period)
        except (TypeError, ValueError):
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"gait_period must be a positive number of seconds, got {period!r}")
        return value

    @staticmethod
    def _parse_command_ranges(c: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        rows = []
        for key in ("lin_vel_x", "lin_vel_y", "ang_vel_yaw"):
            lo, hi = (float(v) for v in c.get(key, (0.0, 0.0)))
            if lo > hi:
                raise ConfigError(f"commands.{key} range is empty: [{lo}, {hi}]")
            rows.append((lo, hi))
        return torch.tensor(rows, device=device)
