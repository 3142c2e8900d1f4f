"""Engine-independent facts about a loaded model that tasks need (joint layout, limits, home pose)."""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """Static description of one robot model, in actuator order where it says so.

    Attributes:
        nq, nv, nu, nbody: sizes of qpos, qvel and ctrl, and the number of bodies (world included).
        floating_base: the first joint is a free joint (qpos[:7] = xyz + quat wxyz).
        actuated_joints: joint names driven by each actuator, in actuator order.
        actuator_names: actuator names.
        qpos_adr, dof_adr: (nu,) qpos / qvel column of each actuated joint.
        joint_range: (nu, 2) joint position limits (-inf, inf when unlimited).
        ctrl_range: (nu, 2) actuator control range (-inf, inf when unlimited).
        force_range: (nu, 2) actuator force (torque) limits.
        kp, kd: (nu,) position-servo gains (0 for plain motors).
        home_qpos: (nq,) keyframe "home" (or keyframe 0, or qpos0).
    """

    nq: int
    nv: int
    nu: int
    nbody: int
    floating_base: bool
    actuated_joints: list[str]
    actuator_names: list[str]
    qpos_adr: np.ndarray
    dof_adr: np.ndarray
    joint_range: np.ndarray
    ctrl_range: np.ndarray
    force_range: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    home_qpos: np.ndarray

    @classmethod
    def from_mujoco(cls, m: mujoco.MjModel) -> ModelInfo:
        jids = m.actuator_trnid[:, 0].copy()
        inf = np.array([-np.inf, np.inf])
        joint_range = (
            np.stack([m.jnt_range[j] if m.jnt_limited[j] else inf for j in jids])
            if m.nu
            else np.zeros((0, 2))
        )
        ctrl_range = (
            np.stack([m.actuator_ctrlrange[i] if m.actuator_ctrllimited[i] else inf for i in range(m.nu)])
            if m.nu
            else np.zeros((0, 2))
        )
        force_range = (
            np.stack([m.actuator_forcerange[i] if m.actuator_forcelimited[i] else inf for i in range(m.nu)])
            if m.nu
            else np.zeros((0, 2))
        )
        # A position servo is an affine bias with a position term (-kp); a velocity servo has none.
        is_servo = (m.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE) & (m.actuator_biasprm[:, 1] != 0)
        kp = np.where(is_servo, m.actuator_gainprm[:, 0], 0.0)
        kd = np.where(is_servo, -m.actuator_biasprm[:, 2], 0.0)
        home = m.qpos0.copy()
        if m.nkey > 0:
            kid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, "home")
            home = m.key_qpos[kid if kid >= 0 else 0].copy()
        return cls(
            nq=m.nq,
            nv=m.nv,
            nu=m.nu,
            nbody=m.nbody,
            floating_base=m.njnt > 0 and m.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE,
            actuated_joints=[m.joint(int(j)).name for j in jids],
            actuator_names=[m.actuator(i).name for i in range(m.nu)],
            qpos_adr=m.jnt_qposadr[jids].copy(),
            dof_adr=m.jnt_dofadr[jids].copy(),
            joint_range=joint_range,
            ctrl_range=ctrl_range,
            force_range=force_range,
            kp=kp,
            kd=kd,
            home_qpos=home,
        )


def sensor_slice(model: mujoco.MjModel, name: str) -> slice:
    """Columns of sensordata that hold the named sensor; a one-line error when there is none."""
    try:
        sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SENSOR, name)
    except ValueError:
        sid = -1
    if sid < 0:
        from sim.backend import SimConfigError

        raise SimConfigError(f"model has no sensor named {name!r}")
    adr = int(model.sensor_adr[sid])
    return slice(adr, adr + int(model.sensor_dim[sid]))
