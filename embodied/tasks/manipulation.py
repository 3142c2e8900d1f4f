"""Fixed-base arm manipulation: reach, push and pick-and-place with a Panda-class arm on a table.

One module, three objectives chosen by config (``objective: reach | push | pick_place``), two action
modes (``action_mode: joint_position | ee_delta``). Everything geometric the task needs (the
kinematic chain, the table top, the cube size) is read from the task's MJCF, so the torch kinematics
and the simulated arm cannot drift apart.

Actions, (N, A) in [-1, 1]: ``joint_position`` gives 7 joint targets ``home + action_scale * a``
(an affine map, like locomotion); ``ee_delta`` gives a 6-D delta pose per control step (world-frame
translation ``ik.pos_scale * a[:3]`` m and rotation vector ``ik.rot_scale * a[3:6]`` rad), turned into
joint targets by one damped-least-squares step on the geometric Jacobian of ``ArmKinematics``: a
batched torch forward kinematics of the chain (7 small matmuls per step for all N envs, no per-env
MuJoCo calls). With ``ik.orientation: hold`` the policy gives only the 3-D translation and the IK
step steers the hand back to its home orientation (Fetch-style position control, which is what a
top-down push or grasp needs). push and pick_place add one gripper dim: >= 0 opens, < 0 closes.

Success (``info["metric/success"]``, per env, every step) means the goal condition holds at that
step: reach, the end effector within ``success_threshold`` of the target; push, the cube's centre
within the threshold of the goal in xy while it rests on the table; pick_place, the cube's centre
within the threshold of the goal point. The eval configs set ``warmup_s`` so that evaluation averages
it over the last 0.5 s of each episode: an episode counts as a success when it *ends* at the goal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np
import torch

from embodied.errors import ConfigError
from embodied.task_env import Markers, TaskEnv
from sim.assets import load_model
from sim.backend import SimBackend, SimConfigError

OBJECTIVES = ("reach", "push", "pick_place")
ACTION_MODES = ("joint_position", "ee_delta")
IK_ORIENTATIONS = ("free", "hold")
ARM_DOF = 7
GOAL_RGBA = (0.15, 0.85, 0.25, 0.9)


@dataclass
class ArmState:
    """Everything manipulation terms read; (N, ...) tensors in the world frame (arm base at the origin)."""

    num_envs: int
    dt: float
    joint_pos: torch.Tensor  # (N, 7) arm joints
    joint_vel: torch.Tensor  # (N, 7)
    default_joint_pos: torch.Tensor  # (7,)
    joint_pos_limits: torch.Tensor  # (7, 2) soft limits
    joint_hard_limits: torch.Tensor  # (7, 2)
    gripper_pos: torch.Tensor  # (N, 1) finger opening, 0 closed .. 0.04 m open
    ee_pos: torch.Tensor  # (N, 3) tool centre point
    ee_rot: torch.Tensor  # (N, 3, 3) its orientation, columns = its axes in the world
    ee_lin_vel: torch.Tensor  # (N, 3)
    jacobian: torch.Tensor  # (N, 6, 7) geometric Jacobian of the ee site (linear; angular)
    object_pos: torch.Tensor  # (N, 3) cube centre
    object_quat: torch.Tensor  # (N, 4) wxyz
    object_lin_vel: torch.Tensor  # (N, 3)
    goal_pos: torch.Tensor  # (N, 3) reach: end-effector target; push/pick_place: cube goal
    action: torch.Tensor  # (N, A)
    last_action: torch.Tensor  # (N, A)
    success: torch.Tensor  # (N,) bool, the objective's goal condition holds now
    table_height: float  # z of the table top
    table_bounds: torch.Tensor  # (2, 2) [[x_lo, y_lo], [x_hi, y_hi]] of the table top
    object_half_size: float
    table_contact: torch.Tensor | None = None  # (N,) bool: a moving arm geom touches the table
    self_contact: torch.Tensor | None = None  # (N,) bool: the arm touches itself
    finger_contact: torch.Tensor | None = None  # (N, 2) bool: each finger touches the cube
    qpos: torch.Tensor | None = None  # (N, nq) the whole scene's generalized positions


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(J, 3) vectors -> (J, 3, 3) cross-product matrices."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)


class ArmKinematics:
    """Batched forward kinematics and geometric Jacobian of a serial hinge chain to one site.

    Read once from an MjModel: each joint's body offset (pos, rotation) from its parent, its axis,
    the fixed pose of the chain's base and of the site in the last link. Joints must sit at their
    body's origin (the DH-frame convention the bundled arm follows).
    """

    def __init__(self, m: mujoco.MjModel, joints: list[str], site: str, device: torch.device) -> None:
        f32 = dict(dtype=torch.float32, device=device)
        jids = [m.joint(n).id for n in joints]
        bodies = [int(m.jnt_bodyid[j]) for j in jids]
        base = int(m.body_parentid[bodies[0]])
        for i, (j, b) in enumerate(zip(jids, bodies, strict=True)):
            parent_ok = int(m.body_parentid[b]) == (bodies[i - 1] if i else base)
            if not parent_ok or m.body_jntnum[b] != 1 or np.abs(m.jnt_pos[j]).max() > 1e-9:
                raise ConfigError(f"joints {joints} are not a serial chain, one joint per body at its origin")
        if int(m.body_weldid[base]) != 0:
            raise ConfigError("the arm's base must be fixed to the world")
        d = mujoco.MjData(m)
        mujoco.mj_kinematics(m, d)
        self.base_pos = torch.as_tensor(d.xpos[base], **f32)
        self.base_rot = torch.as_tensor(d.xmat[base].reshape(3, 3), **f32)
        self.local_pos = torch.as_tensor(m.body_pos[bodies], **f32)  # (J, 3)
        self.local_rot = torch.stack([self._quat_mat(m.body_quat[b], f32) for b in bodies])  # (J, 3, 3)
        self.axes = torch.as_tensor(m.jnt_axis[jids], **f32)  # (J, 3) in each body's frame
        self._k = _skew(self.axes)  # Rodrigues: R(q) = I + sin q K + (1 - cos q) K^2
        self._k2 = self._k @ self._k
        self._eye = torch.eye(3, **f32)
        # Site pose in the last link: compose the fixed bodies in between (the hand).
        sid = m.site(site).id
        pos, rot = torch.as_tensor(m.site_pos[sid], **f32), self._quat_mat(m.site_quat[sid], f32)
        b = int(m.site_bodyid[sid])
        while b != bodies[-1]:
            if b == 0 or m.body_jntnum[b] > 0:
                raise ConfigError(f"site {site!r} is not rigidly attached to the chain's last link")
            lrot = self._quat_mat(m.body_quat[b], f32)
            pos, rot = torch.as_tensor(m.body_pos[b], **f32) + lrot @ pos, lrot @ rot
            b = int(m.body_parentid[b])
        self.site_pos, self.site_rot = pos, rot

    @staticmethod
    def _quat_mat(q: np.ndarray, f32: dict) -> torch.Tensor:
        out = np.zeros(9)
        mujoco.mju_quat2Mat(out, np.asarray(q, dtype=np.float64))
        return torch.as_tensor(out.reshape(3, 3), **f32)

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (N, J) -> site pos (N, 3), rotation (N, 3, 3), Jacobian (N, 6, J), joint origins (N, J, 3)."""
        n = q.shape[0]
        rot, pos = self.base_rot.expand(n, 3, 3), self.base_pos.expand(n, 3)
        axes, origins = [], []
        for i in range(q.shape[1]):
            pos = pos + rot @ self.local_pos[i]
            rot = rot @ self.local_rot[i]
            axes.append(rot @ self.axes[i])
            origins.append(pos)
            sin, cos = torch.sin(q[:, i])[:, None, None], torch.cos(q[:, i])[:, None, None]
            rot = rot @ (self._eye + sin * self._k[i] + (1 - cos) * self._k2[i])
        ee = pos + rot @ self.site_pos
        a, o = torch.stack(axes, -1), torch.stack(origins, -1)  # (N, 3, J)
        jac = torch.cat([torch.cross(a, ee[:, :, None] - o, dim=1), a], dim=1)
        return ee, rot @ self.site_rot, jac, o.transpose(1, 2)


def _rotvec(r: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices -> (N, 3) rotation vectors (axis * angle), angle in [0, pi)."""
    cos = ((r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.acos(cos)
    axis = torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], -1)
    # axis has norm 2 sin(angle); near angle 0 the ratio angle / (2 sin angle) tends to 1/2.
    return axis * torch.where(angle > 1e-4, angle / (2 * torch.sin(angle)).clamp(min=1e-8), 0.5)[:, None]


def dls_ik(jac: torch.Tensor, err: torch.Tensor, damping: float) -> torch.Tensor:
    """Damped least squares: dq = J^T (J J^T + damping^2 I)^-1 err; jac (N, 6, J), err (N, 6) -> (N, J)."""
    jjt = jac @ jac.transpose(1, 2) + damping**2 * torch.eye(jac.shape[1], device=jac.device)
    return (jac.transpose(1, 2) @ torch.linalg.solve(jjt, err[:, :, None]))[:, :, 0]


def _box(spec: Mapping[str, Any] | None, name: str, default_z: float | None = None) -> torch.Tensor:
    """``{x: [lo, hi], y: [lo, hi], z: [lo, hi]}`` -> (2, 3) [[lo], [hi]]; z may default to a height."""
    spec = dict(spec or {})
    rows = []
    for k in ("x", "y", "z"):
        v = spec.get(k, None if k != "z" or default_z is None else (default_z, default_z))
        if v is None or len(v) != 2:
            raise ConfigError(f"{name}.{k} must be a range [lo, hi], got {v!r}")
        lo, hi = float(v[0]), float(v[1])
        if lo > hi:
            raise ConfigError(f"{name}.{k} range is empty: [{lo}, {hi}]")
        rows.append((lo, hi))
    return torch.tensor(rows).T


class ArmEnv(TaskEnv):
    """A Panda-class arm reaching a target, or pushing / picking a cube to a goal sampled per episode."""

    def __init__(self, cfg: Mapping[str, Any], backend: SimBackend, seed: int = 0) -> None:
        dev, info = backend.device, backend.info
        self.objective = cfg.get("objective", "reach")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        self.action_mode = cfg.get("action_mode", "joint_position")
        if self.action_mode not in ACTION_MODES:
            raise ConfigError(
                f"unknown action_mode {self.action_mode!r}; choose one of {', '.join(ACTION_MODES)}"
            )
        if info.nu != ARM_DOF + 1 or not info.floating_base:
            raise ConfigError(
                "manipulation needs a scene whose first joint frees the object and whose actuators are "
                f"7 arm joints + 1 gripper (like arm_table.xml); this model has {info.nu} actuators"
            )
        try:
            model = load_model(cfg["model"])
        except SimConfigError as e:
            raise ConfigError(str(e)) from None
        self.kin = ArmKinematics(model, info.actuated_joints[:ARM_DOF], cfg.get("ee_site", "ee"), dev)
        table = model.geom(cfg.get("table_geom", "table"))
        mujoco_data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, mujoco_data)
        centre, half = mujoco_data.geom_xpos[table.id], model.geom_size[table.id]
        self.table_height = float(centre[2] + half[2])
        self.table_bounds = torch.tensor(
            np.stack([centre[:2] - half[:2], centre[:2] + half[:2]]), dtype=torch.float32, device=dev
        )
        self.object_half = float(model.geom_size[model.geom(cfg.get("object_geom", "cube")).id][2])

        self._qpos_adr = torch.as_tensor(info.qpos_adr, device=dev)
        self._dof_adr = torch.as_tensor(info.dof_adr, device=dev)
        self.home_qpos = torch.as_tensor(info.home_qpos, dtype=torch.float32, device=dev)
        self.default_joint_pos = self.home_qpos[self._qpos_adr[:ARM_DOF]]
        self.home_ee_rot = self.kin.forward(self.default_joint_pos[None])[1]  # (1, 3, 3)
        jr = torch.as_tensor(info.joint_range, dtype=torch.float32, device=dev)
        self.joint_hard_limits, self.gripper_range = jr[:ARM_DOF], jr[ARM_DOF]
        mid, half_range = jr[:ARM_DOF].mean(-1), 0.5 * (jr[:ARM_DOF, 1] - jr[:ARM_DOF, 0])
        soft = float(cfg.get("soft_joint_limit", 0.95))
        self.joint_soft_limits = torch.stack([mid - soft * half_range, mid + soft * half_range], -1)

        ik = dict(cfg.get("ik") or {})
        self.ik_orientation = ik.get("orientation", "free")
        if self.ik_orientation not in IK_ORIENTATIONS:
            raise ConfigError(
                f"unknown ik.orientation {self.ik_orientation!r}; choose one of {', '.join(IK_ORIENTATIONS)}"
            )
        self.use_gripper = self.objective != "reach"
        arm_dims = {"joint_position": ARM_DOF, "ee_delta": 6 if self.ik_orientation == "free" else 3}
        arm_dims = arm_dims[self.action_mode]
        self._num_actions = self.action_dim = arm_dims + int(self.use_gripper)
        self.action_scale = float(cfg.get("action_scale", 0.5))
        self.ik_pos_scale = float(ik.get("pos_scale", 0.03))  # metres per unit action per step
        self.ik_rot_scale = float(ik.get("rot_scale", 0.15))  # radians per unit action per step
        self.ik_damping = float(ik.get("damping", 0.05))
        self.ik_max_lag = float(ik.get("max_lag", 0.2))  # rad between target and measured joint
        self.ik_hold_gain = float(ik.get("hold_gain", 0.5))  # hold: fraction of the tilt removed per step
        self.success_threshold = float(cfg.get("success_threshold", 0.03))
        self.reset_cfg = dict(cfg.get("reset") or {})

        # Shoulder = origin of joint 2; the reach radius is the farthest the ee site gets from it.
        g = torch.Generator(device=dev).manual_seed(0)
        lo, hi = self.joint_hard_limits[:, 0], self.joint_hard_limits[:, 1]
        ee, _, _, origins = self.kin.forward(
            lo + (hi - lo) * torch.rand(8192, ARM_DOF, generator=g, device=dev)
        )
        self.shoulder = origins[0, 1]
        self.reach_radius = float((ee - self.shoulder).norm(dim=-1).max())
        self.object_range = _box(cfg.get("object"), "object", self.table_height + self.object_half).to(dev)
        goal_z = None if self.objective == "reach" else self.table_height + self.object_half
        self.goal_range = _box(cfg.get("goal"), "goal", goal_z if self.objective == "push" else None).to(dev)
        self.min_goal_distance = float(cfg.get("min_goal_distance", 0.0))
        self._check_reachable()

        self._sensor_cols = self._resolve_sensors(backend, cfg.get("sensors") or {})
        n = backend.num_envs
        self.goal_pos = torch.zeros(n, 3, device=dev)
        self._ik_target = self.default_joint_pos.expand(n, ARM_DOF).clone()  # ee_delta joint targets
        self.last_action = torch.zeros(n, self._num_actions, device=dev)
        super().__init__(cfg, backend, seed)

    # -- hooks ---------------------------------------------------------------------------------
    def _action_to_ctrl(self, action: torch.Tensor) -> torch.Tensor:
        if self.action_mode == "joint_position":
            arm = self.default_joint_pos + self.action_scale * action[:, :ARM_DOF]
        else:
            # Targets accumulate (target += dq) so that a zero action holds the pose and the per-joint
            # servo lag does not bend the commanded direction; they stay within max_lag of the
            # measured joints, so a blocked arm does not wind up.
            s, lim, lag = self.state, self.joint_hard_limits, self.ik_max_lag
            if self.ik_orientation == "free":
                rot_err = self.ik_rot_scale * action[:, 3:6]
            else:  # steer the hand back to its home orientation
                rot_err = (self.ik_hold_gain * _rotvec(self.home_ee_rot @ s.ee_rot.transpose(1, 2))).clamp(
                    -self.ik_rot_scale, self.ik_rot_scale
                )
            err = torch.cat([self.ik_pos_scale * action[:, :3], rot_err], -1)
            arm = self._ik_target + dls_ik(s.jacobian, err, self.ik_damping)
            arm = torch.minimum(torch.maximum(arm, s.joint_pos - lag), s.joint_pos + lag)
            arm = self._ik_target = arm.clamp(lim[:, 0], lim[:, 1])
        lo, hi = self.gripper_range
        if self.use_gripper:  # binary: >= 0 opens, < 0 closes
            grip = torch.where(action[:, -1:] >= 0, hi, lo)
        else:
            grip = hi.expand(action.shape[0], 1)
        return torch.cat([arm, grip], -1)

    def action_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.action_mode != "joint_position" or self.use_gripper:
            raise ConfigError(
                "this arm task has no (offset, scale) action map: ee_delta goes through differential IK "
                "and the gripper command is binary; only reach with action_mode=joint_position exports"
            )
        return self.default_joint_pos, torch.full_like(self.default_joint_pos, self.action_scale)

    def robot_qpos_columns(self) -> torch.Tensor:
        """Arm joints and fingers, then the cube's free joint (pos, quat): what a ghost arm draws."""
        return torch.cat([self._qpos_adr, torch.arange(7, device=self.device)])

    def _read_state(self, action: torch.Tensor) -> ArmState:
        sim = self.backend.state()
        qpos, qvel = sim.qpos, sim.qvel
        q, qd = qpos[:, self._qpos_adr[:ARM_DOF]], qvel[:, self._dof_adr[:ARM_DOF]]
        # Kinematics from qpos, not the ee sensors: valid right after a reset too (sensors read 0 then).
        ee, rot, jac, _ = self.kin.forward(q)
        obj = qpos[:, 0:3]
        if self.objective == "reach":
            dist = (ee - self.goal_pos).norm(dim=-1)
        elif self.objective == "push":
            dist = (obj[:, :2] - self.goal_pos[:, :2]).norm(dim=-1)
        else:
            dist = (obj - self.goal_pos).norm(dim=-1)
        success = dist < self.success_threshold
        if self.objective == "push":
            success &= obj[:, 2] < self.table_height + self.object_half + 0.01
        s = ArmState(
            qpos=qpos,
            num_envs=self.num_envs,
            dt=self.dt,
            joint_pos=q,
            joint_vel=qd,
            default_joint_pos=self.default_joint_pos,
            joint_pos_limits=self.joint_soft_limits,
            joint_hard_limits=self.joint_hard_limits,
            gripper_pos=qpos[:, self._qpos_adr[ARM_DOF:]],
            ee_pos=ee,
            ee_rot=rot,
            ee_lin_vel=(jac[:, :3] @ qd[:, :, None])[:, :, 0],
            jacobian=jac,
            object_pos=obj,
            object_quat=qpos[:, 3:7],
            object_lin_vel=qvel[:, 0:3],
            goal_pos=self.goal_pos,
            action=action,
            last_action=self.last_action,
            success=success,
            table_height=self.table_height,
            table_bounds=self.table_bounds,
            object_half_size=self.object_half,
        )
        cols, data = self._sensor_cols, sim.sensordata
        if "table_contact" in cols:
            s.table_contact = (data[:, cols["table_contact"]] > 0).any(-1)
        if "self_contact" in cols:
            s.self_contact = (data[:, cols["self_contact"]] > 0).any(-1)
        if "finger_contact" in cols:
            s.finger_contact = data[:, cols["finger_contact"]] > 0
        return s

    def markers(self) -> list[Markers]:
        """The goal, drawn into camera frames: a green sphere (reach, pick_place) of the success
        radius, or a green pad of that radius flat on the table (push)."""
        r = float(self.success_threshold)
        if self.objective == "push":
            pad = self.goal_pos.clone()
            pad[:, 2] = self.table_height + 0.001
            return [Markers(pad, "cylinder", (r, 0.001, 0.0), GOAL_RGBA)]
        return [Markers(self.goal_pos, "sphere", (r, 0.0, 0.0), GOAL_RGBA)]

    def _advance(self, s: ArmState) -> None:
        self.last_action = s.action

    def _reset_state(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, g, dev = self.num_envs, self.generator, self.device
        qpos = self.home_qpos.expand(n, -1).clone()
        qvel = torch.zeros(n, self.backend.info.nv, device=dev)
        noise = float(self.reset_cfg.get("joint_pos_noise", 0.0))
        arm = self._qpos_adr[:ARM_DOF]
        jitter = (torch.rand(n, ARM_DOF, generator=g, device=dev) * 2 - 1) * noise
        lim = self.joint_soft_limits
        qpos[:, arm] = (qpos[:, arm] + jitter).clamp(lim[:, 0], lim[:, 1])
        lo, hi = self.object_range
        qpos[:, 0:3] = lo + (hi - lo) * torch.rand(n, 3, generator=g, device=dev)
        yaw = (torch.rand(n, generator=g, device=dev) * 2 - 1) * float(self.reset_cfg.get("object_yaw", 0.0))
        zeros = torch.zeros_like(yaw)
        qpos[:, 3:7] = torch.stack([torch.cos(yaw / 2), zeros, zeros, torch.sin(yaw / 2)], -1)
        self._spawn = qpos[:, 0:3]
        self._ik_target = torch.where(mask[:, None], qpos[:, arm], self._ik_target)
        return qpos, qvel

    def _on_reset(self, mask: torch.Tensor) -> None:
        n, g, dev = self.num_envs, self.generator, self.device
        lo, hi = self.goal_range
        # A few candidates per env; the first one at least min_goal_distance from the cube wins.
        cand = lo + (hi - lo) * torch.rand(n, 4, 3, generator=g, device=dev)
        far = (cand[..., :2] - self._spawn[:, None, :2]).norm(dim=-1) >= self.min_goal_distance
        pick = torch.where(far.any(-1), far.float().argmax(-1), 3)
        goal = cand[torch.arange(n, device=dev), pick]
        self.goal_pos = torch.where(mask[:, None], goal, self.goal_pos)
        self.last_action = torch.where(mask[:, None], 0.0, self.last_action)

    def _metrics(self, s: ArmState) -> dict[str, torch.Tensor]:
        if self.objective == "reach":
            dist = (s.ee_pos - s.goal_pos).norm(dim=-1)
        else:
            dist = (s.object_pos - s.goal_pos).norm(dim=-1)
        ok = s.success.float()
        return {"success": ok, "failure_rate": 1.0 - ok, "goal_distance": dist}

    # -- helpers -------------------------------------------------------------------------------
    def _check_reachable(self) -> None:
        """Refuse, at build time, goal/object ranges the arm cannot reach or that leave the table.

        A box is reachable when its corner farthest from the shoulder is within the reach radius
        (distance is convex, so the farthest point of a box is a corner).
        """
        on_table = self.table_height + self.object_half
        checks = [  # name, box, lowest allowed z, must reach, must lie over the table
            ("object", self.object_range, on_table, self.objective != "reach", True),
            (
                "goal",
                self.goal_range,
                self.table_height if self.objective == "reach" else on_table,
                True,
                False,
            ),
        ]
        for name, box, bottom, reach, over_table in checks:
            box = box.cpu()
            if float(box[0, 2]) < bottom - 1e-6:
                raise ConfigError(
                    f"{name} range z [{float(box[0, 2]):g}, {float(box[1, 2]):g}] goes below the table "
                    f"(lowest allowed: {bottom:g} m)"
                )
            corners = torch.cartesian_prod(*box.T)  # (8, 3)
            far = (corners - self.shoulder.cpu()).norm(dim=-1)
            if reach and float(far.max()) > self.reach_radius:
                c = ", ".join(f"{v:g}" for v in corners[far.argmax()].tolist())
                raise ConfigError(
                    f"{name} range is unreachable: its corner ({c}) is {float(far.max()):.3f} m from the "
                    f"shoulder, the arm reaches {self.reach_radius:.3f} m"
                )
            lo, hi = self.table_bounds.cpu() + torch.tensor([[self.object_half], [-self.object_half]])
            if over_table and not bool(((box[:, :2] >= lo) & (box[:, :2] <= hi)).all()):
                raise ConfigError(
                    f"{name} range xy leaves the table top (x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g})"
                )
