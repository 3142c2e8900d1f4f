"""CPU MuJoCo backend: N MjData stepped in native threads by ``mujoco.rollout``.

Layout of one control step: the (N, nu) PD targets are copied once into a float64 buffer that
``rollout`` reads, the thread pool steps every env ``decimation`` physics steps with the GIL
released, and the last physics state is read back as torch views of the same memory. There is
no per-env Python work; the only Python cost is O(1) per control step.

Actuator models (sim/actuators.py): with none set (``ideal_pd``) the MJCF position servos run as
written. ``delay`` stays in the native step: ``rollout`` takes one control per physics step, so
the delayed targets are handed over as an (N, decimation, nu) sequence. The torque models
(``dc_motor``, ``mlp``) turn the actuators into plain torque motors and run ``decimation``
one-step rollouts with the torque computed in torch between them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import mujoco
import numpy as np
import torch
from mujoco import rollout

from sim.actuators import Actuator
from sim.assets import load_model
from sim.backend import check_backend_args
from sim.model_info import ModelInfo, sensor_slice
from sim.randomize import PhysicsParams, refresh_subtree_mass
from sim.render import Marker, RendererCache
from sim.state import SimState

_FULL = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)


def _state_offset(model: mujoco.MjModel, part: int) -> int:
    """Column where ``part`` (one mjtState bit) starts inside a FULLPHYSICS state vector."""
    offset, bit = 0, 1
    while bit < part:
        if _FULL & bit:
            offset += mujoco.mj_stateSize(model, bit)
        bit <<= 1
    return offset


class MujocoBackend:
    """N copies of one MJCF model on the CPU, stepped in ``nthread`` native threads."""

    def __init__(
        self,
        model_path: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        *,
        decimation: int = 1,
        nthread: int = 1,
        physics_dt: float | None = None,
    ) -> None:
        self.device = check_backend_args(
            "mujoco", num_envs, device, decimation=decimation, nthread=nthread, physics_dt=physics_dt
        )
        self.model = load_model(model_path)
        if physics_dt is not None:
            self.model.opt.timestep = physics_dt
        self.num_envs = num_envs
        self.decimation = decimation
        self.physics_dt = float(self.model.opt.timestep)
        self.nthread = nthread
        m = self.model
        self.joint_names = [m.joint(i).name for i in range(m.njnt)]
        self.actuator_names = [m.actuator(i).name for i in range(m.nu)]
        self.sensor_names = [m.sensor(i).name for i in range(m.nsensor)]
        self.info = ModelInfo.from_mujoco(m)
        self.nq, self.nv, self.nu = m.nq, m.nv, m.nu

        nstate = mujoco.mj_stateSize(m, _FULL)
        self._qpos_sl = slice(_state_offset(m, 2), _state_offset(m, 2) + m.nq)
        self._qvel_sl = slice(_state_offset(m, 4), _state_offset(m, 4) + m.nv)
        self._act_sl = slice(_state_offset(m, 8), _state_offset(m, 8) + m.na)

        # Initial state: keyframe 0 when the model has one, else qpos0.
        d0 = mujoco.MjData(m)
        if m.nkey > 0:
            mujoco.mj_resetDataKeyframe(m, d0, 0)
        mujoco.mj_forward(m, d0)
        s0 = np.empty(nstate)
        mujoco.mj_getState(m, d0, s0, _FULL)

        # float64 buffers shared between numpy (what rollout reads/writes) and torch.
        self._state_np = np.ascontiguousarray(np.tile(s0, (num_envs, 1)))
        self._ctrl_np = np.zeros((num_envs, decimation, m.nu))
        self._out_state_np = np.zeros((num_envs, decimation, nstate))
        self._out_sens_np = np.zeros((num_envs, decimation, m.nsensordata))
        self._state = torch.from_numpy(self._state_np)
        self._ctrl = torch.from_numpy(self._ctrl_np)
        self._out_state = torch.from_numpy(self._out_state_np)
        self._out_sens = torch.from_numpy(self._out_sens_np)
        self._sens = torch.zeros(num_envs, m.nsensordata, dtype=torch.float64)
        self._out_sens[:, -1] = torch.from_numpy(d0.sensordata.copy())
        self._sens.copy_(self._out_sens[:, -1])

        self._models = [m] * num_envs  # one shared model until set_physics gives each env its own
        self._nominal: dict[str, np.ndarray] | None = None
        self._datas = [mujoco.MjData(m) for _ in range(nthread)]
        self._pool = rollout.Rollout(nthread=nthread if nthread > 1 else 0)
        # rollout's last argument divides the batch into nthread * divisor chunks.
        self._chunk_divisor = 4
        # One batched renderer per (width, height, camera), made on the first render() call.
        self._renderers = RendererCache(self.model)
        self.actuator: Actuator | None = None
        self._publish()

    def set_actuator(self, cfg: dict | str | None) -> None:
        """Use an actuator model (sim/actuators.py) instead of the MJCF servos; call before set_physics.

        ``ideal_pd`` without delay keeps the native servos untouched (the default).
        """
        act = self._make_actuator(cfg or {"model": "ideal_pd"})
        if act.model == "ideal_pd" and not act.delayed:
            self.actuator = None
            return
        if self._nominal is not None:
            raise ValueError("set_actuator must come before set_physics")
        self.actuator = act
        if act.torque_mode:
            self._torque_motors()

    def _make_actuator(self, cfg: dict | str) -> Actuator:
        info = self.info
        return Actuator(
            cfg,
            num_envs=self.num_envs,
            kp=torch.from_numpy(info.kp),
            kd=torch.from_numpy(info.kd),
            effort=torch.from_numpy(info.force_range[:, 1].copy()),
            ctrl_range=torch.from_numpy(info.ctrl_range),
            physics_dt=self.physics_dt,
            decimation=self.decimation,
        )

    def _torque_motors(self) -> None:
        """Plain motors: ctrl is the joint torque, limited by the actuator model."""
        info = self.info
        m = self.model
        m.actuator_gaintype[:] = mujoco.mjtGain.mjGAIN_FIXED
        m.actuator_gainprm[:, :] = 0.0
        m.actuator_gainprm[:, 0] = 1.0
        m.actuator_biastype[:] = mujoco.mjtBias.mjBIAS_NONE
        m.actuator_biasprm[:, :] = 0.0
        m.actuator_ctrllimited[:] = 0
        m.actuator_forcelimited[:] = 0
        cols = torch.as_tensor(info.qpos_adr, dtype=torch.long)
        self._act_q = cols + self._qpos_sl.start
        self._act_qd = torch.as_tensor(info.dof_adr, dtype=torch.long) + self._qvel_sl.start
        self._ctrl1_np = np.zeros((self.num_envs, 1, m.nu))
        self._out1_np = np.zeros((self.num_envs, 1, self._state_np.shape[1]))
        self._sens1_np = np.zeros((self.num_envs, 1, m.nsensordata))
        self._ctrl1 = torch.from_numpy(self._ctrl1_np)
        self._out1 = torch.from_numpy(self._out1_np)
        self._sens1 = torch.from_numpy(self._sens1_np)

    # -- contract ---------------------------------------------------------------------------
    def step(self, ctrl: torch.Tensor) -> torch.Tensor:
        """Hold ctrl (N, nu) for ``decimation`` physics steps. Returns (N,) bool: blew up."""
        if ctrl.shape != (self.num_envs, self.nu):
            raise ValueError(f"ctrl must be {(self.num_envs, self.nu)}, got {tuple(ctrl.shape)}")
        t_expected = self._state[:, 0] + self.decimation * self.physics_dt
        act = self.actuator
        if act is None:
            self._ctrl.copy_(ctrl.detach().to("cpu", torch.float64).unsqueeze(1).expand_as(self._ctrl))
        else:
            targets = act.targets(ctrl.detach().to("cpu", torch.float64))
            if act.torque_mode:
                self._step_torque(act, targets)
                return self._finish(self._state, t_expected)
            self._ctrl.copy_(targets)
        self._pool.rollout(
            self._models,
            self._datas,
            self._state_np,
            self._ctrl_np,
            skip_checks=True,
            nstep=self.decimation,
            state=self._out_state_np,
            sensordata=self._out_sens_np,
            chunk_size=self._chunk_divisor,
        )
        last = self._out_state[:, -1]
        self._state.copy_(last)
        self._sens.copy_(self._out_sens[:, -1])
        return self._finish(last, t_expected)

    def _step_torque(self, act: Actuator, targets: torch.Tensor) -> None:
        """``decimation`` one-step rollouts, each with the torque the actuator model gives."""
        for k in range(self.decimation):
            st = self._state
            self._ctrl1[:, 0] = act.torque(targets[:, k], st[:, self._act_q], st[:, self._act_qd])
            self._pool.rollout(
                self._models,
                self._datas,
                self._state_np,
                self._ctrl1_np,
                skip_checks=True,
                nstep=1,
                state=self._out1_np,
                sensordata=self._sens1_np,
                chunk_size=self._chunk_divisor,
            )
            self._state.copy_(self._out1[:, 0])
        self._sens.copy_(self._sens1[:, 0])

    def _finish(self, last: torch.Tensor, t_expected: torch.Tensor) -> torch.Tensor:
        # MuJoCo resets an env whose qpos/qvel/qacc went non-finite or huge (and warns); its
        # clock then restarts, which is how a blow-up is seen here without per-env Python.
        unstable = (last[:, 0] - t_expected).abs() > 0.5 * self.physics_dt
        unstable |= ~torch.isfinite(last).all(dim=1) | ~torch.isfinite(self._sens).all(dim=1)
        self._publish()
        return unstable.to(self.device)

    def reset(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Start new episodes where mask (N,) is true: state, actuator state and clock."""
        m = mask.to("cpu").bool()[:, None]
        st = self._state
        st[:, self._act_sl] = torch.where(m, 0.0, st[:, self._act_sl])
        st[:, 0] = torch.where(m[:, 0], 0.0, st[:, 0])
        # Sensors of a freshly reset env are unknown until it is stepped: zeros, not stale values.
        self._sens.masked_fill_(m, 0.0)
        if self.actuator is not None:
            self.actuator.reset(mask.to("cpu"))
        self.set_state(mask, qpos, qvel)

    def set_state(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Overwrite qpos (N, nq) and qvel (N, nv) where mask is true (pushes use this)."""
        m = mask.to("cpu").bool()[:, None]
        st = self._state
        st[:, self._qpos_sl] = torch.where(m, qpos.to("cpu", torch.float64), st[:, self._qpos_sl])
        st[:, self._qvel_sl] = torch.where(m, qvel.to("cpu", torch.float64), st[:, self._qvel_sl])
        self._publish()

    def set_physics(self, mask: torch.Tensor, params: PhysicsParams) -> None:
        """Apply per-env randomization factors to the masked envs' own model copies.

        The first call gives every env its own MjModel (rollout takes one model per env). The
        loop below runs only over envs being reset, never per step.
        """
        if self._nominal is None:
            m = self.model
            self._nominal = {
                "friction": m.geom_friction[:, 0].copy(),
                "mass": m.body_mass.copy(),
                "inertia": m.body_inertia.copy(),
                "ipos": m.body_ipos.copy(),
                "kp": self.info.kp.copy(),
                "kd": self.info.kd.copy(),
                "forcerange": m.actuator_forcerange.copy(),
            }
            self._models = [copy.copy(m) for _ in range(self.num_envs)]
        nom = self._nominal
        if self.actuator is None and bool((params.actuator_delay > 0).any()):
            self.actuator = self._make_actuator({"model": "ideal_pd"})  # the servos, delayed per env
        act = self.actuator
        if act is not None:
            act.randomize(mask.to("cpu"), params)
        torque_mode = act is not None and act.torque_mode  # kp, kd and limits live in the actuator
        servo = self.info.kp > 0
        base = int(self.model.jnt_bodyid[0]) if self.info.floating_base else -1
        idx = mask.to("cpu").nonzero().flatten()
        p = {
            k: getattr(params, k)[idx].to("cpu", torch.float64).numpy()
            for k in PhysicsParams.__dataclass_fields__
        }
        for j, i in enumerate(idx.tolist()):
            m = self._models[i]
            m.geom_friction[:, 0] = nom["friction"] * p["friction"][j]
            m.body_mass[:] = nom["mass"] * p["mass_scale"][j]
            refresh_subtree_mass(m)
            m.body_inertia[:] = nom["inertia"] * p["mass_scale"][j][:, None]
            if base >= 0:
                m.body_ipos[base] = nom["ipos"][base] + p["com_offset"][j]
            if torque_mode:
                continue
            kp, kd = nom["kp"] * p["kp_scale"][j], nom["kd"] * p["kd_scale"][j]
            m.actuator_gainprm[servo, 0] = kp[servo]
            m.actuator_biasprm[servo, 1] = -kp[servo]
            m.actuator_biasprm[servo, 2] = -kd[servo]
            m.actuator_forcerange[:] = nom["forcerange"] * p["motor_strength"][j]

    def state(self) -> SimState:
        return self._view

    def sensor(self, name: str) -> slice:
        return sensor_slice(self.model, name)

    def render(
        self,
        env_ids: list[int],
        width: int,
        height: int,
        camera: str | int = -1,
        markers: Sequence[Marker] = (),
    ) -> torch.Tensor:
        """Frames of the chosen envs, (n, 3, H, W) uint8, drawn as tiles of one offscreen buffer."""
        r = self._renderers.get(width, height, len(env_ids), camera)
        ids = np.asarray(env_ids, dtype=np.int64)
        models = None if self._nominal is None else [self._models[i] for i in ids]
        return r.render(self._state_np[ids], spec=_FULL, models=models, markers=markers).to(self.device)

    def close(self) -> None:
        self._renderers.close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # -- internals --------------------------------------------------------------------------
    def _publish(self) -> None:
        f32 = dict(device=self.device, dtype=torch.float32)
        self._view = SimState(
            qpos=self._state[:, self._qpos_sl].to(**f32),
            qvel=self._state[:, self._qvel_sl].to(**f32),
            sensordata=self._sens.to(**f32),
            time=self._state[:, 0].to(**f32),
        )
