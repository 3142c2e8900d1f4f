"""Genesis backend: N copies of one MJCF model in one batched Genesis scene (CPU or GPU).

Genesis loads the same MJCF file the MuJoCo backend uses (robot, floor or table, position servos with
their kp/kv and force ranges, joint damping/armature/frictionloss, equality constraints). One
``step`` is one ``scene.step()`` of ``decimation`` substeps, so control targets and external forces
are held for the whole control step. The state is read back as torch tensors and permuted into
MuJoCo's qpos/qvel layout (free joint: xyz + quaternion wxyz, world linear + body angular velocity),
so task code is the same for every engine.

What MuJoCo computes and Genesis does not is computed here from Genesis quantities: sensors (frame
sensors from link poses and velocities, contact ``found`` counts from Genesis' contact list,
actuator forces from the applied control forces) and per-body gravity compensation (an external
force at each compensated link's centre of mass; Genesis only has it per entity). A sensor that
cannot be computed reads NaN and ``sensor(name)`` refuses it; a model feature Genesis lacks is a
one-line ``SimConfigError`` at build time.

Genesis compiles its kernels on first use: 2-3 minutes for the first scene on a CPU, a few seconds
for later builds that find them in the cache (``sim.cache_dir`` / ``$EMBODIED_GENESIS_CACHE``, by
default ``$XDG_CACHE_HOME/embodied/genesis``). Every scene is built with the same solver switches
(per-env model data on, float32) so that scenes share their compiled kernels. A closed backend's
scene is kept and handed to the next backend built with the same model and sizes, restored to the
nominal model and initial state, because even a cached build takes seconds.
``python -m sim.warm genesis MODEL...`` fills the kernel cache ahead of time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from sim.assets import load_model, resolve_model_path
from sim.backend import SimConfigError, check_backend_args
from sim.genesis_setup import _geom_map, _joint_map, _link_map, check_model, init_genesis, resolve_backend
from sim.model_info import ModelInfo, sensor_slice
from sim.randomize import PhysicsParams
from sim.render import Marker, RendererCache
from sim.state import SimState

OPTIONS = ("backend", "cache_dir", "precision", "log_level")
MAX_VAL = 1e10  # MuJoCo's blow-up threshold (mjMAXVAL) on |qpos| and |qvel|
S = mujoco.mjtSensor
_FRAME = (
    S.mjSENS_FRAMEPOS, S.mjSENS_FRAMEQUAT, S.mjSENS_FRAMEXAXIS, S.mjSENS_FRAMEYAXIS, S.mjSENS_FRAMEZAXIS,
    S.mjSENS_FRAMELINVEL, S.mjSENS_FRAMEANGVEL, S.mjSENS_FRAMELINACC, S.mjSENS_FRAMEANGACC,
    S.mjSENS_GYRO, S.mjSENS_VELOCIMETER, S.mjSENS_ACCELEROMETER,
)  # fmt: skip
_ACC = (S.mjSENS_FRAMELINACC, S.mjSENS_FRAMEANGACC, S.mjSENS_ACCELEROMETER)
_JOINT = (S.mjSENS_JOINTPOS, S.mjSENS_JOINTVEL, S.mjSENS_ACTUATORPOS, S.mjSENS_ACTUATORVEL)
_FORCE = (S.mjSENS_ACTUATORFRC, S.mjSENS_JOINTACTFRC)
# MuJoCo integrator -> Genesis integrator. Genesis has no RK4; implicitfast (the integrator of
# the project's own models) takes its place, which also keeps one set of compiled kernels.
_INTEGRATORS = {
    mujoco.mjtIntegrator.mjINT_EULER: "Euler",
    mujoco.mjtIntegrator.mjINT_RK4: "implicitfast",
    mujoco.mjtIntegrator.mjINT_IMPLICIT: "implicitfast",
    mujoco.mjtIntegrator.mjINT_IMPLICITFAST: "implicitfast",
}
_POOL: dict[tuple, list[_Scene]] = {}  # built scenes of closed backends, by _scene_key


# -- quaternions (wxyz), batched over leading dims ---------------------------------------------------
def _qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def _rotate(q: torch.Tensor, v: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """v rotated by q (or by q's inverse)."""
    w, u = q[..., :1], q[..., 1:] * (-1.0 if inverse else 1.0)
    t = 2.0 * torch.cross(u, v, dim=-1)
    return v + w * t + torch.cross(u, t, dim=-1)


@dataclass
class _Scene:
    """A built Genesis scene and what is needed to restore it for reuse."""

    scene: Any
    entity: Any
    key: tuple
    dirty: bool = False  # set_physics changed its model data
    nominal: dict[str, torch.Tensor] | None = None  # model data as built, read before any change


def _scene_key(path: Path, n: int, decimation: int, dt: float, device: torch.device) -> tuple:
    return (str(path), path.stat().st_mtime_ns, n, decimation, dt, str(device))


class GenesisBackend:
    """N copies of one MJCF model in one Genesis scene, on Genesis' CPU or GPU backend.

    Args:
        model_path: MJCF file (see ``sim.assets.resolve_model_path``).
        num_envs: envs stepped in lockstep.
        device: where the (N, ...) torch tensors live; also picks the Genesis backend (cuda -> gpu).
        decimation: physics steps per ``step`` call (Genesis substeps of one scene step).
        nthread: accepted so every engine takes the same arguments; Genesis' CPU backend runs its
            kernels on one thread (its fastest setting; ``QD_NUM_THREADS`` overrides it per process).
        physics_dt: overrides the model's timestep.
        backend: ``cpu`` or ``gpu``; None: from ``device``.
        cache_dir: kernel and asset caches (see ``default_cache_dir``); fixed by the first build of a process.
        precision: ``"32"`` or ``"64"`` bit floats in the physics; fixed by the first build of a process.
        log_level: Genesis' logging level (``error`` hides its per-build model remarks).
    """

    def __init__(
        self,
        model_path: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        *,
        decimation: int = 1,
        nthread: int = 1,
        physics_dt: float | None = None,
        backend: str | None = None,
        cache_dir: str | Path | None = None,
        precision: str = "32",
        log_level: str = "error",
    ) -> None:
        check_backend_args(
            "genesis", num_envs, device, decimation=decimation, nthread=nthread, physics_dt=physics_dt
        )
        if str(precision) not in ("32", "64"):
            raise SimConfigError(f"genesis precision must be 32 or 64, got {precision!r}")
        self.device, self.backend_name = resolve_backend(device, backend)
        path = resolve_model_path(model_path)
        self.model = m = load_model(path)
        if physics_dt is not None:
            m.opt.timestep = physics_dt
        check_model(m)
        self.num_envs, self.decimation, self.nthread = num_envs, decimation, nthread
        self.physics_dt = float(m.opt.timestep)
        self.joint_names = [m.joint(i).name for i in range(m.njnt)]
        self.actuator_names = [m.actuator(i).name for i in range(m.nu)]
        self.sensor_names = [m.sensor(i).name for i in range(m.nsensor)]
        self.info = ModelInfo.from_mujoco(m)
        self.nq, self.nv, self.nu = m.nq, m.nv, m.nu
        self.gs = gs = init_genesis(self.backend_name, cache_dir, str(precision), log_level)
        self._gs_dev = gs.device

        # Gravity compensation: Genesis has one factor per entity; bodies that differ from it get
        # the difference as an external force at their centre of mass.
        moving = [b for b in range(1, m.nbody) if m.body_weldid[b] != 0]
        levels = [float(m.body_gravcomp[b]) for b in moving]
        self._gravcomp = max(set(levels), key=levels.count) if levels else 0.0
        self._gc_bodies = [b for b in moving if float(m.body_gravcomp[b]) != self._gravcomp]

        key = _scene_key(path, num_envs, decimation, self.physics_dt, self._gs_dev)
        pool = _POOL.get(key)
        self._built = pool.pop() if pool else self._build(path, key)
        self.scene, self.entity = self._built.scene, self._built.entity
        self._maps()
        self._init_sensors()
        self._init_state()
        self._renderers = RendererCache(self.model)
        if self._built.dirty:
            self.set_physics(torch.ones(num_envs, dtype=torch.bool), PhysicsParams.nominal(num_envs, m.nbody))
            self._built.dirty = False
        self.reset(torch.ones(num_envs, dtype=torch.bool), self._q0.expand(num_envs, -1), self._v0)

    # -- contract ---------------------------------------------------------------------------
    def step(self, ctrl: torch.Tensor) -> torch.Tensor:
        """Hold ctrl (N, nu) for ``decimation`` physics steps. Returns (N,) bool: blew up (then reset)."""
        if ctrl.shape != (self.num_envs, self.nu):
            raise ValueError(f"ctrl must be {(self.num_envs, self.nu)}, got {tuple(ctrl.shape)}")
        c = torch.minimum(
            torch.maximum(ctrl.detach().to(self._gs_dev, self._dtype), self._ctrl_lo), self._ctrl_hi
        )
        if self._servo.numel():
            self.entity.control_dofs_position(c[:, self._servo], self._servo_dofs)
        if self._motor.numel():
            self.entity.control_dofs_force(c[:, self._motor] * self._motor_gain, self._motor_dofs)
        if self._gc_links:
            force = self._gc_mass[..., None] * self._gc_accel  # (N, k, 3)
            self.entity.apply_links_external_wrench(
                force, links_idx_local=self._gc_links, ref=self.gs.link_ref_frame.link_COM
            )
        self.scene.step()
        self._time = self._time + self.decimation * self.physics_dt
        qpos, qvel = self._read()
        errno = self.gs.utils.misc.qd_to_torch(self._solver._errno, copy=True).to(qpos.device)
        unstable = (errno != 0) | ~(qpos.abs() < MAX_VAL).all(1) | ~(qvel.abs() < MAX_VAL).all(1)
        sens = None
        if bool(unstable.any()):
            # As MuJoCo does: a blown-up env restarts from the initial state (and is reported).
            self._set(unstable, self._q0.expand_as(qpos), self._v0)
            self._time = torch.where(unstable, 0.0, self._time)
            qpos, qvel = self._read()
            sens = torch.where(unstable[:, None], self._sens_template, self._sensors(qpos, qvel))
        self._publish(qpos, qvel, self._sensors(qpos, qvel) if sens is None else sens)
        return unstable.to(self.device)

    def reset(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Start new episodes where mask (N,) is true: state and clock (sensors read 0 until stepped)."""
        m = mask.to(self._gs_dev).bool()
        self._set(m, qpos, qvel)
        self._time = torch.where(m, 0.0, self._time)
        prev = getattr(self, "_sens", self._sens_template.expand(self.num_envs, -1))
        self._publish(*self._read(), torch.where(m[:, None], self._sens_template, prev))

    def set_state(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Overwrite qpos (N, nq) and qvel (N, nv) where mask is true (pushes use this)."""
        self._set(mask.to(self._gs_dev).bool(), qpos, qvel)
        self._publish(*self._read(), self._sens)

    def set_physics(self, mask: torch.Tensor, params: PhysicsParams) -> None:
        """Apply per-env randomization factors to the masked envs with Genesis' batched setters."""
        envs = mask.to(self._gs_dev).bool().nonzero().flatten()
        if envs.numel() == 0:
            return
        self._built.dirty = True
        e, nom, dt = self.entity, self._nominal, self._dtype

        def p(name: str) -> torch.Tensor:
            return getattr(params, name)[envs.to(getattr(params, name).device)].to(self._gs_dev, dt)

        e.set_friction_ratio(p("friction")[:, None].expand(-1, len(self._fr_links)), self._fr_links, envs)
        scale = p("mass_scale")[:, self._mass_bodies]  # (n, k): MuJoCo body order -> moving links
        e.set_links_mass(nom["mass"] * scale, self._mass_links, envs)
        e.set_links_inertia(nom["inertia"] * scale[..., None, None], self._mass_links, envs)
        if self.info.floating_base:
            com = nom["com"][None] + p("com_offset")
            e.set_links_COM(com[:, None], [self._base_link], envs)
        if self._servo.numel():
            e.set_dofs_kp(nom["kp"] * p("kp_scale")[:, None], self._servo_dofs, envs)
            e.set_dofs_kv(nom["kv"] * p("kd_scale")[:, None], self._servo_dofs, envs)
        ms = p("motor_strength")[:, None]
        e.set_dofs_force_range(nom["f_lo"] * ms, nom["f_hi"] * ms, self._act_dofs, envs)
        if self._gc_links:
            gc_scale = scale[:, self._gc_in_mass]
            self._gc_mass[envs] = nom["gc_mass"] * gc_scale

    def state(self) -> SimState:
        return self._view

    def sensor(self, name: str) -> slice:
        cols = sensor_slice(self.model, name)
        sid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SENSOR, name)
        if sid in self._unsupported:
            raise SimConfigError(
                f"genesis backend cannot compute sensor {name!r} ({self._unsupported[sid]}); "
                "use the mujoco engine for it"
            )
        return cols

    def render(
        self,
        env_ids: list[int],
        width: int,
        height: int,
        camera: str | int = -1,
        markers: Sequence[Marker] = (),
    ) -> torch.Tensor:
        """Frames of the chosen envs, (n, 3, H, W) uint8: their qpos drawn by MuJoCo's renderer
        (nominal model: randomized masses do not move tracking cameras here)."""
        r = self._renderers.get(width, height, len(env_ids), camera)
        ids = torch.as_tensor(env_ids, dtype=torch.long, device=self._view.qpos.device)
        qpos = self._qpos64[ids.to(self._qpos64.device)].numpy()
        return r.render(qpos, spec=int(mujoco.mjtState.mjSTATE_QPOS), markers=markers).to(self.device)

    def close(self) -> None:
        """Free the renderers; the scene goes back to a pool for the next backend of the same model."""
        self._renderers.close()
        if self._built is not None:
            _POOL.setdefault(self._built.key, []).append(self._built)
            self._built = None

    # -- build --------------------------------------------------------------------------------
    def _build(self, path: Path, key: tuple) -> _Scene:
        gs, m = self.gs, self.model
        cone = (
            gs.friction_cone.elliptic
            if m.opt.cone == mujoco.mjtCone.mjCONE_ELLIPTIC
            else gs.friction_cone.pyramidal
        )
        rigid = gs.options.RigidOptions(
            integrator=getattr(gs.integrator, _INTEGRATORS[mujoco.mjtIntegrator(m.opt.integrator)]),
            iterations=max(1, int(m.opt.iterations)),
            ls_iterations=max(1, int(m.opt.ls_iterations)),
            friction_cone=cone,
            impratio=float(m.opt.impratio),
            constraint_timeconst=0.02,  # MuJoCo's default solref for geoms and limits that set none
            enable_neutral_collision=True,  # MuJoCo filters no pair for touching in qpos0
            enable_torsional_friction=bool((m.geom_condim >= 4).any()),
            # Per-env model data in every scene: randomization writes it, and one switch setting
            # means one set of compiled kernels for every model.
            batch_links_info=True,
            batch_dofs_info=True,
        )
        sim = gs.options.SimOptions(
            dt=self.physics_dt * self.decimation,
            substeps=self.decimation,
            gravity=tuple(float(g) for g in m.opt.gravity),
        )
        scene = gs.Scene(sim_options=sim, rigid_options=rigid, show_viewer=False)
        morph = gs.morphs.MJCF(file=str(path), align=False)
        try:
            entity = scene.add_entity(morph, material=gs.materials.Rigid(gravity_compensation=self._gravcomp))
            scene.build(n_envs=self.num_envs)
        except gs.GenesisException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SimConfigError(f"genesis cannot load {path.name}: {first}") from None
        return _Scene(scene, entity, key)

    def _maps(self) -> None:
        """Index maps between MuJoCo's layout and Genesis' (qpos, dofs, links, geoms, actuators)."""
        m, e, dev = self.model, self.entity, self._gs_dev
        self._solver = self.scene.sim.rigid_solver
        self._dtype = self.gs.tc_float
        self._links = _link_map(m, e)
        q_idx, d_idx = _joint_map(m, e)
        self._q_idx = torch.tensor(q_idx, device=dev)
        self._d_idx = torch.tensor(d_idx, device=dev)
        self._q_inv = torch.argsort(self._q_idx)
        self._d_inv = torch.argsort(self._d_idx)
        self._geom_to_mj = torch.as_tensor(_geom_map(m, e, self._links), device=dev)
        act_dofs = [d_idx[int(m.jnt_dofadr[int(m.actuator_trnid[a, 0])])] for a in range(m.nu)]
        servo = m.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE
        self._servo = torch.as_tensor(np.flatnonzero(servo), device=dev)
        self._motor = torch.as_tensor(np.flatnonzero(~servo), device=dev)
        self._act_dofs = act_dofs
        self._servo_dofs = [act_dofs[a] for a in self._servo.tolist()]
        self._motor_dofs = [act_dofs[a] for a in self._motor.tolist()]
        gain = m.actuator_gear[:, 0] * m.actuator_gainprm[:, 0]
        self._gear = torch.as_tensor(m.actuator_gear[:, 0], dtype=self._dtype, device=dev)
        self._motor_gain = torch.as_tensor(gain[~servo], dtype=self._dtype, device=dev)
        cr = torch.as_tensor(self.info.ctrl_range, dtype=self._dtype, device=dev)
        self._ctrl_lo, self._ctrl_hi = cr[:, 0], cr[:, 1]

        # Nominal model data that set_physics scales (read back from Genesis, so the same units).
        moving = [b for b in range(1, m.nbody) if m.body_weldid[b] != 0]
        self._mass_bodies = torch.as_tensor(moving, device=dev)
        self._mass_links = [self._links[b] for b in moving]
        self._fr_links = sorted(
            {self._links[b] for b in range(m.nbody) if len(e.links[self._links[b]].geoms)}
        )
        self._base_link = self._links[int(m.jnt_bodyid[0])] if self.info.floating_base else -1
        nom = self._built.nominal
        if nom is None:
            nom = self._built.nominal = self._read_nominal(servo, act_dofs)
        self._gc_links = [self._links[b] for b in self._gc_bodies]
        self._gc_in_mass = torch.as_tensor(
            [moving.index(b) for b in self._gc_bodies], device=dev, dtype=torch.long
        )
        if self._gc_links:
            gc = torch.as_tensor([m.body_gravcomp[b] - self._gravcomp for b in self._gc_bodies], device=dev)
            nom["gc_mass"] = nom["mass"][self._gc_in_mass]
            self._gc_mass = nom["gc_mass"].expand(self.num_envs, -1).clone()
            g = torch.as_tensor(m.opt.gravity, dtype=self._dtype, device=dev)
            self._gc_accel = -(gc.to(self._dtype)[:, None] * g)  # (k, 3): compensating force per kg
        self._nominal = nom

    def _read_nominal(self, servo: np.ndarray, act_dofs: list[int]) -> dict[str, torch.Tensor]:
        """The model data set_physics scales, read back from the freshly built scene (same units)."""
        e, dev, dt = self.entity, self._gs_dev, self._dtype
        nom = {
            "mass": e.get_links_mass(self._mass_links)[0].to(dev, dt),
            "inertia": e.get_links_inertia(self._mass_links)[0].to(dev, dt),
            "kp": torch.as_tensor(self.info.kp[servo], dtype=dt, device=dev),
            "kv": torch.as_tensor(self.info.kd[servo], dtype=dt, device=dev),
        }
        lo, hi = e.get_dofs_force_range(act_dofs)
        nom["f_lo"], nom["f_hi"] = lo[0].to(dev, dt), hi[0].to(dev, dt)
        if self.info.floating_base:
            nom["com"] = e.get_links_COM([self._base_link])[0, 0].to(dev, dt)
        return nom

    def _init_state(self) -> None:
        m, dev = self.model, self._gs_dev
        d0 = mujoco.MjData(m)
        if m.nkey > 0:
            mujoco.mj_resetDataKeyframe(m, d0, 0)
        self._q0 = torch.as_tensor(d0.qpos, dtype=self._dtype, device=dev)[None]
        self._v0 = torch.as_tensor(d0.qvel, dtype=self._dtype, device=dev).expand(self.num_envs, -1)
        self._time = torch.zeros(self.num_envs, dtype=self._dtype, device=dev)

    # -- state ----------------------------------------------------------------------------------
    def _read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(qpos (N, nq), qvel (N, nv)) in MuJoCo's layout, on Genesis' device."""
        qpos, qvel = self.entity.get_qpos(), self.entity.get_dofs_velocity()
        return qpos.index_select(1, self._q_idx), qvel.index_select(1, self._d_idx)

    def _set(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        q = qpos.to(self._gs_dev, self._dtype).index_select(1, self._q_inv)
        v = qvel.to(self._gs_dev, self._dtype).index_select(1, self._d_inv)
        q, v = q.expand(self.num_envs, -1), v.expand(self.num_envs, -1)
        self.entity.set_qpos(q, envs_idx=mask, zero_velocity=False)
        self.entity.set_dofs_velocity(v, envs_idx=mask)

    def _publish(self, qpos: torch.Tensor, qvel: torch.Tensor, sens: torch.Tensor) -> None:
        # Copies, not views: a SimState is a snapshot that later steps must not change.
        f32 = dict(device=self.device, dtype=torch.float32)
        self._view = SimState(
            qpos=qpos.to(**f32, copy=True),
            qvel=qvel.to(**f32, copy=True),
            sensordata=sens.to(**f32, copy=True),
            time=self._time.to(**f32, copy=True),
        )
        self._sens = sens

    @property
    def _qpos64(self) -> torch.Tensor:
        return self._view.qpos.to("cpu", torch.float64)

    # -- sensors --------------------------------------------------------------------------------
    def _init_sensors(self) -> None:
        """Sort the model's sensors into what is computed from Genesis state each step."""
        m, dev, dt = self.model, self._gs_dev, self._dtype
        self._unsupported: dict[int, str] = {}
        frame: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (sensor, link, offset pos, offset quat)
        joint: list[tuple[int, str, int, float]] = []  # (column, qpos|qvel, column there, scale)
        force: list[tuple[int, int, float]] = []  # (column, dof, 1 / gear)
        contact: list[tuple[int, np.ndarray, np.ndarray]] = []  # (column, geoms of side 1, of side 2)
        self._clock: list[int] = []
        obj, one = mujoco.mjtObj, np.array([1.0, 0.0, 0.0, 0.0])
        subtree = [{b for b in range(m.nbody) if self._in_subtree(b, r)} for r in range(m.nbody)]

        def geoms(kind: int, oid: int) -> np.ndarray | None:
            if kind == obj.mjOBJ_UNKNOWN:
                return np.ones(m.ngeom, dtype=bool)
            if kind == obj.mjOBJ_GEOM:
                return np.arange(m.ngeom) == oid
            if kind == obj.mjOBJ_BODY:
                return m.geom_bodyid == oid
            if kind == obj.mjOBJ_XBODY:
                return np.isin(m.geom_bodyid, list(subtree[oid]))
            return None

        for s in range(m.nsensor):
            kind, adr = mujoco.mjtSensor(m.sensor_type[s]), int(m.sensor_adr[s])
            ot, oid, rt = int(m.sensor_objtype[s]), int(m.sensor_objid[s]), int(m.sensor_reftype[s])
            why = ""
            if kind in _FRAME:
                if m.sensor_refid[s] >= 0:
                    why = f"{kind.name} relative to another frame"
                elif ot == obj.mjOBJ_SITE:
                    frame.append((s, int(m.site_bodyid[oid]), m.site_pos[oid], m.site_quat[oid]))
                elif ot == obj.mjOBJ_XBODY:
                    frame.append((s, oid, np.zeros(3), one))
                elif ot == obj.mjOBJ_BODY:
                    frame.append((s, oid, m.body_ipos[oid], m.body_iquat[oid]))
                elif ot == obj.mjOBJ_GEOM:
                    frame.append((s, int(m.geom_bodyid[oid]), m.geom_pos[oid], m.geom_quat[oid]))
                else:
                    why = f"{kind.name} of a {mujoco.mjtObj(ot).name}"
            elif kind in _JOINT:
                act = kind in (S.mjSENS_ACTUATORPOS, S.mjSENS_ACTUATORVEL)
                jid = int(m.actuator_trnid[oid, 0]) if act else oid
                if m.jnt_type[jid] in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL):
                    why = f"{kind.name} of a free or ball joint"
                else:
                    vel = kind in (S.mjSENS_JOINTVEL, S.mjSENS_ACTUATORVEL)
                    col = int(m.jnt_dofadr[jid] if vel else m.jnt_qposadr[jid])
                    joint.append(
                        (adr, "qvel" if vel else "qpos", col, float(m.actuator_gear[oid, 0]) if act else 1.0)
                    )
            elif kind in _FORCE:
                if kind == S.mjSENS_ACTUATORFRC:
                    force.append((adr, self._act_dofs[oid], 1.0 / float(m.actuator_gear[oid, 0])))
                elif m.jnt_type[oid] in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL):
                    why = f"{kind.name} of a free or ball joint"
                else:
                    force.append((adr, int(self._d_idx[int(m.jnt_dofadr[oid])]), 1.0))
            elif kind == S.mjSENS_CLOCK:
                self._clock.append(adr)
            elif kind == S.mjSENS_CONTACT:
                g1, g2 = geoms(ot, oid), geoms(rt, int(m.sensor_refid[s]))
                if m.sensor_intprm[s, 0] != 1 or m.sensor_intprm[s, 2] > 1:
                    why = "contact data other than one 'found' count"
                elif g1 is None or g2 is None:
                    why = "contact sensor of a site volume"
                else:
                    contact.append((adr, g1, g2))
            else:
                why = kind.name
            if why:
                self._unsupported[s] = why

        nan = torch.zeros(m.nsensordata, dtype=dt, device=dev)
        for s in self._unsupported:
            nan[int(m.sensor_adr[s]) : int(m.sensor_adr[s] + m.sensor_dim[s])] = float("nan")
        self._sens_template = nan  # what a sensor reads before its env is stepped: 0, NaN if never computed
        self._frame = self._frame_plan(frame)
        self._joint = joint
        self._force_cols = torch.as_tensor([c for c, _, _ in force], dtype=torch.long, device=dev)
        self._force_dofs = [d for _, d, _ in force]
        self._force_scale = torch.as_tensor([k for _, _, k in force], dtype=dt, device=dev)
        self._contact_cols = torch.as_tensor([c for c, _, _ in contact], dtype=torch.long, device=dev)
        if contact:
            g1 = torch.as_tensor(np.stack([np.append(a, False) for _, a, _ in contact]), device=dev)
            g2 = torch.as_tensor(np.stack([np.append(b, False) for _, _, b in contact]), device=dev)
            pairs = g1[:, :, None] & g2[:, None, :]
            pairs = pairs | pairs.transpose(1, 2)  # (S, ngeom + 1, ngeom + 1)
            self._contact_pairs = pairs.flatten(1).T.to(dt)  # (pair id, S): contacts of pair a, b count for S
        self._gravity = torch.as_tensor(m.opt.gravity, dtype=dt, device=dev)

    def _in_subtree(self, b: int, root: int) -> bool:
        while b > 0 and b != root:
            b = int(self.model.body_parentid[b])
        return b == root

    def _frame_plan(self, frame: list[tuple[int, int, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        m, dev, dt = self.model, self._gs_dev, self._dtype
        plan: dict[str, Any] = {"links": [self._links[b] for _, b, _, _ in frame], "groups": []}
        if not frame:
            return plan
        plan["pos"] = torch.as_tensor(np.stack([p for _, _, p, _ in frame]), dtype=dt, device=dev)
        plan["quat"] = torch.as_tensor(np.stack([q for _, _, _, q in frame]), dtype=dt, device=dev)
        kinds = [mujoco.mjtSensor(m.sensor_type[s]) for s, _, _, _ in frame]
        for kind in dict.fromkeys(kinds):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            cols = [
                c
                for i in rows
                for c in range(
                    m.sensor_adr[frame[i][0]], m.sensor_adr[frame[i][0]] + m.sensor_dim[frame[i][0]]
                )
            ]
            plan["groups"].append(
                (kind, torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev))
            )
        plan["vel"] = any(
            k not in (S.mjSENS_FRAMEPOS, S.mjSENS_FRAMEQUAT) and "AXIS" not in k.name for k in kinds
        )
        plan["acc"] = any(k in _ACC for k in kinds)
        return plan

    def _sensors(self, qpos: torch.Tensor, qvel: torch.Tensor) -> torch.Tensor:
        """(N, nsensordata) computed from the current Genesis state."""
        e, n = self.entity, self.num_envs
        out = self._sens_template.expand(n, -1).clone()
        fp = self._frame
        if fp["groups"]:
            lp, lq = e.get_links_pos(fp["links"]), e.get_links_quat(fp["links"])
            pos = lp + _rotate(lq, fp["pos"].expand_as(lp))
            quat = _qmul(lq, fp["quat"].expand(n, -1, -1))
            r = pos - lp
            w = v = a = aw = pos
            if fp["vel"]:
                w = e.get_links_ang(fp["links"])
                v = e.get_links_vel(fp["links"]) + torch.cross(w, r, dim=-1)
            if fp["acc"]:
                aw = e.get_links_acc_ang(fp["links"])
                a = e.get_links_acc(fp["links"]) + torch.cross(aw, r, dim=-1)
                a = a + torch.cross(w, torch.cross(w, r, dim=-1), dim=-1)
            world = {
                S.mjSENS_FRAMEPOS: pos,
                S.mjSENS_FRAMEQUAT: quat,
                S.mjSENS_FRAMELINVEL: v,
                S.mjSENS_FRAMEANGVEL: w,
                S.mjSENS_FRAMELINACC: a,
                S.mjSENS_FRAMEANGACC: aw,
            }
            local = {S.mjSENS_GYRO: w, S.mjSENS_VELOCIMETER: v, S.mjSENS_ACCELEROMETER: a - self._gravity}
            axis = {S.mjSENS_FRAMEXAXIS: 0, S.mjSENS_FRAMEYAXIS: 1, S.mjSENS_FRAMEZAXIS: 2}
            for kind, rows, cols in fp["groups"]:
                q = quat[:, rows]
                if kind in world:
                    value = world[kind][:, rows]
                elif kind in local:
                    value = _rotate(q, local[kind][:, rows], inverse=True)
                else:
                    unit = torch.zeros(3, dtype=q.dtype, device=q.device)
                    unit[axis[kind]] = 1.0
                    value = _rotate(q, unit.expand(*q.shape[:2], 3))
                out[:, cols] = value.reshape(n, -1).to(out.dtype)
        for col, src, i, scale in self._joint:
            out[:, col] = (qpos if src == "qpos" else qvel)[:, i] * scale
        if self._force_dofs:
            out[:, self._force_cols] = e.get_dofs_control_force(self._force_dofs) * self._force_scale
        for col in self._clock:
            out[:, col] = self._time
        if self._contact_cols.numel():
            c = e.get_contacts(is_padded=True)
            last = self._geom_to_mj.numel() - 1
            ga = self._geom_to_mj.take(c["geom_a"].long().clamp(0, last))
            gb = self._geom_to_mj.take(c["geom_b"].long().clamp(0, last))
            top = self.model.ngeom  # geom ids run 0..ngeom (ngeom: not a MuJoCo collision geom)
            pair = ga * (top + 1) + gb  # (N, C) pair id
            per_pair = torch.zeros(n, self._contact_pairs.shape[0], dtype=out.dtype, device=out.device)
            per_pair.scatter_add_(1, pair, c["valid_mask"].to(out.dtype))
            out[:, self._contact_cols] = per_pair @ self._contact_pairs
        return out
