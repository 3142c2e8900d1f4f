"""CPU MuJoCo backend: N MjData stepped in native threads by ``mujoco.rollout``.

Layout of one control step: the (N, nu) PD targets are copied once into a float64 buffer that
``rollout`` reads, the thread pool steps every env ``decimation`` physics steps with the GIL
released, and the last physics state is read back as torch views of the same memory. There is
no per-env Python work; the only Python cost is O(1) per control step.
"""

from __future__ import annotations

import copy

import mujoco
import numpy as np
import torch
from mujoco import rollout

from sim.assets import load_model
from sim.backend import check_backend_args
from sim.model_info import ModelInfo, sensor_slice
from sim.randomize import PhysicsParams
from sim.render import RendererCache
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
        self._publish()

    # -- contract ---------------------------------------------------------------------------
    def step(self, ctrl: torch.Tensor) -> torch.Tensor:
        """Hold ctrl (N, nu) for ``decimation`` physics steps. Returns (N,) bool: blew up."""
        if ctrl.shape != (self.num_envs, self.nu):
            raise ValueError(f"ctrl must be {(self.num_envs, self.nu)}, got {tuple(ctrl.shape)}")
        self._ctrl.copy_(ctrl.detach().to("cpu", torch.float64).unsqueeze(1).expand_as(self._ctrl))
        t_expected = self._state[:, 0] + self.decimation * self.physics_dt
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
            m.body_inertia[:] = nom["inertia"] * p["mass_scale"][j][:, None]
            if base >= 0:
                m.body_ipos[base] = nom["ipos"][base] + p["com_offset"][j]
            kp, kd = nom["kp"] * p["kp_scale"][j], nom["kd"] * p["kd_scale"][j]
            m.actuator_gainprm[servo, 0] = kp[servo]
            m.actuator_biasprm[servo, 1] = -kp[servo]
            m.actuator_biasprm[servo, 2] = -kd[servo]
            m.actuator_forcerange[:] = nom["forcerange"] * p["motor_strength"][j]

    def state(self) -> SimState:
        return self._view

    def sensor(self, name: str) -> slice:
        return sensor_slice(self.model, name)

    def render(self, env_ids: list[int], width: int, height: int, camera: str | int = -1) -> torch.Tensor:
        """Frames of the chosen envs, (n, 3, H, W) uint8, drawn as tiles of one offscreen buffer."""
        r = self._renderers.get(width, height, len(env_ids), camera)
        ids = np.asarray(env_ids, dtype=np.int64)
        models = None if self._nominal is None else [self._models[i] for i in ids]
        return r.render(self._state_np[ids], spec=_FULL, models=models).to(self.device)

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
