"""What the driving task reads from its MJCF (``car_road.xml`` or a model laid out like it).

The car: its steering servos, driven rear wheels, wheelbase, track and ray origin. The road: a chain of
equal segments (bodies ``road0``, ``road1``, ...) hinged about z, laid out per env through those
hinges. The boxes: obstacle and traffic bodies on planar joints (slide x, slide y, hinge z), whose
poses and sizes the torch ray caster reads. Anything else is a one-line ``ConfigError``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import mujoco
import numpy as np
import torch

from embodied.errors import ConfigError

STEER_JOINTS = ("fl_steer", "fr_steer")  # left, right
SPIN_JOINTS = ("fl_spin", "fr_spin", "rl_spin", "rr_spin")
DRIVE_ACTUATORS = ("rl_drive", "rr_drive")  # velocity servos of the rear wheels: left, right
REAR_TYRE = "rl_tyre"
RAY_SITE = "ray_origin"


def _planar_joints(m: mujoco.MjModel, body: int) -> tuple[int, int, int]:
    """qpos addresses of a body's slide x, slide y, hinge z joints (the layout the task moves)."""
    jnts = [j for j in range(m.njnt) if m.jnt_bodyid[j] == body]
    want = [
        (mujoco.mjtJoint.mjJNT_SLIDE, (1, 0, 0)),
        (mujoco.mjtJoint.mjJNT_SLIDE, (0, 1, 0)),
        (mujoco.mjtJoint.mjJNT_HINGE, (0, 0, 1)),
    ]
    ok = len(jnts) == 3 and all(
        m.jnt_type[j] == t and np.allclose(m.jnt_axis[j], a) for j, (t, a) in zip(jnts, want, strict=True)
    )
    if not ok:
        raise ConfigError(
            f"body {m.body(body).name!r} needs joints slide x, slide y, hinge z (in that order)"
        )
    return tuple(int(m.jnt_qposadr[j]) for j in jnts)


class DrivingModel:
    """Reads the car, the road chain and the obstacle/traffic boxes out of the task's MjModel into
    index tensors and dimensions (``DrivingEnv`` mixes it in; it holds no per-step state)."""

    def _read_car(self, m: mujoco.MjModel, info: Any, dev: torch.device) -> None:
        try:
            steer = [m.joint(j) for j in STEER_JOINTS]
            spin = [m.joint(j) for j in SPIN_JOINTS]
            drive = [m.actuator(a).id for a in DRIVE_ACTUATORS]
            tyre = m.geom(REAR_TYRE)
            self._ray_site = m.site(RAY_SITE)
        except KeyError as e:
            raise ConfigError(f"the driving task needs a car model like car_road.xml ({e})") from None
        if not info.floating_base:
            raise ConfigError("the driving task needs the car's free joint first in the model")
        names = info.actuator_names
        steer_act = [names.index(a) if a in names else -1 for a in STEER_JOINTS]
        if min(steer_act) < 0:
            raise ConfigError(f"the driving task needs position servos named {', '.join(STEER_JOINTS)}")
        self._steer_act = torch.tensor(steer_act, device=dev)
        self._drive_act = torch.tensor(drive, device=dev)
        self._steer_q = torch.tensor([int(j.qposadr[0]) for j in steer], device=dev)
        self._spin_v = torch.tensor([int(j.dofadr[0]) for j in spin], device=dev)
        front_l, front_r = (m.body_pos[int(j.bodyid[0])] for j in steer)
        rear = m.body_pos[int(tyre.bodyid[0])]
        self.wheelbase = float(front_l[0] - rear[0])
        self.track = float(front_l[1] - front_r[1])
        self.wheel_radius = float(tyre.size[0])
        self.ray_site_pos = torch.as_tensor(self._ray_site.pos, dtype=torch.float32, device=dev)
        if self.wheelbase <= 0 or self.track <= 0:
            raise ConfigError("car model: the steered wheels must be ahead of the rear axle, left of right")

    def _read_road(self, m: mujoco.MjModel, dev: torch.device) -> None:
        """Road bodies road0, road1, ...: each one segment (its geom ``road<i>``, a box from the body's
        origin along +x), hinged about z inside the one before, or starting a chain with planar joints."""
        bodies = sorted(
            (int(mt.group(1)), i)
            for i in range(m.nbody)
            if (mt := re.fullmatch(r"road(\d+)", m.body(i).name)) is not None
        )
        if [k for k, _ in bodies] != list(range(len(bodies))) or len(bodies) < 2:
            raise ConfigError("the road needs at least 2 bodies road0, road1, ... (one per segment)")
        ids = [b for _, b in bodies]
        lengths = np.array([2 * m.geom(f"road{k}").size[0] for k in range(len(ids))])
        if not np.allclose(lengths, lengths[0]) or lengths[0] <= 0:
            raise ConfigError("road segments must all have the same positive length")
        self.num_segments = len(ids)
        self.segment_length = float(lengths[0])
        self.road_length = self.segment_length * self.num_segments
        self.road_half_width = float(m.geom("road0").size[1])
        self.road_origin = torch.as_tensor(m.body_pos[ids[0]][:2], dtype=torch.float32, device=dev)
        hinge_q, hinge_i, hinge_rel, root_q, root_i, root_home = [], [], [], [], [], []
        for k, b in enumerate(ids):
            jnts = [j for j in range(m.njnt) if m.jnt_bodyid[j] == b]
            parent = int(m.body_parentid[b])
            if len(jnts) == 3 and parent == 0:
                root_q.append(_planar_joints(m, b))
                root_i.append(k)
                root_home.append(m.body_pos[b][:2])
            elif (
                len(jnts) == 1
                and m.jnt_type[jnts[0]] == mujoco.mjtJoint.mjJNT_HINGE
                and np.allclose(m.jnt_axis[jnts[0]], (0, 0, 1))
                and (parent == ids[k - 1] if k else parent == 0)
            ):
                hinge_q.append(int(m.jnt_qposadr[jnts[0]]))
                hinge_i.append(k)
                hinge_rel.append(k > 0)
            else:
                raise ConfigError(
                    f"road body road{k} needs a hinge about z inside road{k - 1}, or planar joints "
                    "(slide x, slide y, hinge z) at the top level"
                )
        i64 = dict(dtype=torch.long, device=dev)
        self._road_hinge_q, self._road_hinge_i = torch.tensor(hinge_q, **i64), torch.tensor(hinge_i, **i64)
        self._road_hinge_rel = torch.tensor(hinge_rel, dtype=torch.bool, device=dev)
        self._road_root_q = torch.tensor(root_q, **i64).view(-1, 3)
        self._road_root_i = torch.tensor(root_i, **i64)
        self._road_root_home = torch.tensor(
            np.array(root_home).reshape(-1, 2), dtype=torch.float32, device=dev
        )

    def _read_boxes(self, m: mujoco.MjModel, dev: torch.device) -> None:
        """Obstacle and traffic boxes (the bodies inside "obstacles" / "traffic"), the rays' targets.

        Each body has planar joints in a world-aligned parent and one colliding box geom; traffic bodies
        have a velocity servo on each joint. Parked spots are the bodies' positions at qpos 0.
        """
        d = mujoco.MjData(m)
        mujoco.mj_kinematics(m, d)
        joint_trn = mujoco.mjtTrn.mjTRN_JOINT
        servo = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu) if m.actuator_trntype[a] == joint_trn}
        rows, box_dof, traffic_act, traffic_dof, counts = [], [], [], [], {}
        for kind in ("obstacles", "traffic"):
            bodies = [b for b in range(m.nbody) if m.body(int(m.body_parentid[b])).name == kind]
            counts[kind] = len(bodies)
            for b in bodies:
                geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b and m.geom_contype[g]]
                aligned = np.allclose(d.xquat[int(m.body_parentid[b])], (1, 0, 0, 0))
                if len(geoms) != 1 or m.geom_type[geoms[0]] != mujoco.mjtGeom.mjGEOM_BOX or not aligned:
                    raise ConfigError(
                        f"{kind} body {m.body(b).name!r} needs one colliding box geom, world-aligned parent"
                    )
                g, q = geoms[0], _planar_joints(m, b)
                yaw = 2 * math.atan2(m.geom_quat[g][3], m.geom_quat[g][0])
                rows.append((*q, *d.xpos[b][:2], *m.geom_pos[g][:2], yaw, *m.geom_size[g][:2]))
                box_dof.append([int(m.jnt_dofadr[j]) for j in range(m.njnt) if m.jnt_bodyid[j] == b])
                self.box_group = int(m.geom_group[g])
                if kind == "traffic":
                    jnts = [j for j in range(m.njnt) if m.jnt_bodyid[j] == b]
                    if any(j not in servo for j in jnts):
                        raise ConfigError(
                            f"traffic body {m.body(b).name!r} needs a velocity servo on each joint"
                        )
                    traffic_act.append([servo[j] for j in jnts])
                    traffic_dof.append([int(m.jnt_dofadr[j]) for j in jnts])
        t = torch.tensor(np.array(rows, dtype=np.float64).reshape(-1, 10), dtype=torch.float32, device=dev)
        self._box_q = t[:, 0:3].long()
        self._box_dof = torch.tensor(box_dof, dtype=torch.long, device=dev).view(-1, 3)  # qvel columns
        self._box_home, self._box_offset, self._box_yaw0, self._all_box_half = (
            t[:, 3:5],
            t[:, 5:7],
            t[:, 7],
            t[:, 8:],
        )
        nob = counts["obstacles"]
        self.obstacle_q, self.traffic_q = self._box_q[:nob], self._box_q[nob:]
        self.obstacle_half = self._all_box_half[:nob]
        self._traffic_act = torch.tensor(traffic_act, dtype=torch.long, device=dev).view(-1, 3)
        self._traffic_dof = torch.tensor(traffic_dof, dtype=torch.long, device=dev).view(-1, 3)
