"""MuJoCo Warp backend: N worlds of one model stepped by ``mujoco_warp`` on a Warp device.

Layout of one control step: the (N, nu) targets are copied into ``Data.ctrl`` (a torch view of
the Warp array), ``decimation`` physics steps run as Warp kernels over all worlds (replayed as one
CUDA graph on a GPU), a small kernel after each physics step flags worlds whose state went
non-finite or huge, and the state is copied out of torch views of the Warp arrays (on the same
device) into a SimState. There is no per-env Python work and no host round trip on a GPU.

Warp compiles its kernels on first use (about a minute per model on a CPU) into a kernel cache,
``sim.cache_dir`` / ``$EMBODIED_WARP_CACHE``, by default ``$XDG_CACHE_HOME/embodied/warp``;
later starts load them from there in about a second. ``python -m sim.warm mjwarp MODEL...``
fills the cache ahead of time.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mujoco
import torch

from sim.assets import load_model
from sim.backend import SimConfigError, check_backend_args
from sim.model_info import ModelInfo, sensor_slice
from sim.randomize import PhysicsParams, refresh_subtree_mass
from sim.render import Marker, RendererCache
from sim.state import SimState

try:
    import mujoco_warp as mjw
    import warp as wp
except ImportError as e:  # pragma: no cover - make_backend checks first, this is for direct imports
    raise SimConfigError(f"mjwarp needs `pip install -e .[mjwarp]` (mujoco-warp): {e}") from None

CACHE_ENV = "EMBODIED_WARP_CACHE"
# MuJoCo's own blow-up threshold (mjMAXVAL): a world whose qpos, qvel or qacc leaves it is unstable.
MAX_VAL = 1e10
# Overflows that mean the physics of a world is wrong (contacts or constraints were dropped);
# solver and line-search iteration limits and EPA horizon limits only cost accuracy.
_BAD_OVERFLOW = int(
    mjw.OverflowType.NEFC
    | mjw.OverflowType.NJMAX_NNZ
    | mjw.OverflowType.BROADPHASE
    | mjw.OverflowType.NARROWPHASE
    | mjw.OverflowType.CCD
    | mjw.OverflowType.HFIELD
    | mjw.OverflowType.NVMAX
    | mjw.OverflowType.CONTACT_MATCH
    | mjw.OverflowType.TACTILE
)
NCONMAX = 48  # contacts allocated per world (one pool for all worlds: a world may use more)
OPTIONS = ("warp_device", "cache_dir", "nconmax", "njmax", "deterministic", "graph")


def default_cache_dir() -> Path:
    """``$EMBODIED_WARP_CACHE``, else ``$XDG_CACHE_HOME/embodied/warp``, else ``~/.cache/embodied/warp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "embodied" / "warp"


def init_warp(cache_dir: str | Path | None = None) -> Path:
    """Point Warp's kernel cache at ``cache_dir`` (before its first compile) and start Warp.

    Returns the cache directory in use (Warp adds a subdirectory per Warp version).
    """
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    if wp.config.log_level == wp.LOG_INFO:
        wp.config.log_level = wp.LOG_WARNING  # INFO is one line per module compiled or loaded
    current = wp.config.kernel_cache_dir  # after wp.init(): <dir>/<warp version>
    if current is None or Path(current).resolve().parent != path.resolve():
        wp.config.kernel_cache_dir = str(path)  # read by the first wp.init()
        wp.init()
        if Path(wp.config.kernel_cache_dir).parent != path.resolve():
            # Warp was already running with another cache; no public API re-points it.
            from warp._src.build import init_kernel_cache

            init_kernel_cache(str(path))
    wp.init()
    return Path(wp.config.kernel_cache_dir)


def resolve_devices(device: str | torch.device, warp_device: str | None) -> tuple[torch.device, str]:
    """The torch device tensors live on and the Warp device the physics runs on."""
    dev = torch.device(device)  # already checked by check_backend_args
    name = str(warp_device) if warp_device else ("cpu" if dev.type == "cpu" else f"cuda:{dev.index or 0}")
    if name.startswith("cuda") and not wp.is_cuda_available():
        raise SimConfigError(f"mjwarp warp_device {name} was asked for but Warp finds no CUDA device here")
    if name != "cpu" and not name.startswith("cuda"):
        raise SimConfigError(f"mjwarp warp_device must be cpu or cuda[:k], got {name!r}")
    return dev, name


@wp.kernel
def _check_worlds(
    qpos: wp.array2d(dtype=float),
    qvel: wp.array2d(dtype=float),
    qacc: wp.array2d(dtype=float),
    overflow: wp.array(dtype=int),
    bad_mask: int,
    max_val: float,
    bad: wp.array(dtype=wp.uint8),
):
    """Flag a world (sticky within one control step) whose state is non-finite or huge, or
    whose contacts/constraints overflowed; clear its overflow bits for the next physics step."""
    w = wp.tid()
    b = bad[w]
    if (overflow[w] & bad_mask) != 0:
        b = wp.uint8(1)
    overflow[w] = 0
    for i in range(qpos.shape[1]):
        if not (wp.abs(qpos[w, i]) < max_val):
            b = wp.uint8(1)
    for i in range(qvel.shape[1]):
        if not (wp.abs(qvel[w, i]) < max_val) or not (wp.abs(qacc[w, i]) < max_val):
            b = wp.uint8(1)
    bad[w] = b


class MjwarpBackend:
    """N worlds of one MJCF model in MuJoCo Warp, on a CPU or CUDA Warp device.

    Args:
        model_path: MJCF or URDF file (see ``sim.assets.resolve_model_path``).
        num_envs: worlds stepped in lockstep.
        device: where the (N, ...) torch tensors live.
        decimation: physics steps per ``step`` call.
        nthread: unused (Warp's CPU device runs kernels on one thread); accepted so that every
            engine takes the same arguments.
        physics_dt: overrides the model's timestep.
        warp_device: where the physics runs (``cpu``, ``cuda:k``); None: the same as ``device``.
        cache_dir: Warp kernel cache (see ``default_cache_dir``).
        nconmax, njmax: contacts and constraint rows allocated per world; None: mujoco_warp's
            estimate from the model, at least 4x the contacts and rows of the initial state.
        deterministic: bitwise reproducible results on CUDA (stable contact and constraint order,
            ordered atomics); the CPU device is deterministic anyway.
        graph: replay the decimation loop as one CUDA graph (CUDA only).
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
        warp_device: str | None = None,
        cache_dir: str | Path | None = None,
        nconmax: int | None = None,
        njmax: int | None = None,
        deterministic: bool = True,
        graph: bool = True,
    ) -> None:
        check_backend_args(
            "mjwarp", num_envs, device, decimation=decimation, nthread=nthread, physics_dt=physics_dt
        )
        self.cache_dir = init_warp(cache_dir)
        self.device, self.warp_device = resolve_devices(device, warp_device)
        self.model = load_model(model_path)
        if physics_dt is not None:
            self.model.opt.timestep = physics_dt
        m = self.model
        self.num_envs = num_envs
        self.decimation = decimation
        self.physics_dt = float(m.opt.timestep)
        self.nthread = nthread
        self.joint_names = [m.joint(i).name for i in range(m.njnt)]
        self.actuator_names = [m.actuator(i).name for i in range(m.nu)]
        self.sensor_names = [m.sensor(i).name for i in range(m.nsensor)]
        self.info = ModelInfo.from_mujoco(m)
        self.nq, self.nv, self.nu = m.nq, m.nv, m.nu

        d0 = mujoco.MjData(m)
        if m.nkey > 0:
            mujoco.mj_resetDataKeyframe(m, d0, 0)
        mujoco.mj_forward(m, d0)
        with wp.ScopedDevice(self.warp_device):
            try:
                self.wmodel = mjw.put_model(m)
                self.wdata = mjw.put_data(
                    m,
                    d0,
                    nworld=num_envs,
                    nconmax=nconmax if nconmax is not None else NCONMAX,
                    njmax=njmax if njmax is not None else default_njmax(m, nconmax or NCONMAX),
                )
            except (NotImplementedError, ValueError) as e:
                # mujoco_warp names the feature it lacks (e.g. "mjSOL_PGS is unsupported.").
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise SimConfigError(f"mjwarp cannot simulate {model_path}: {first}") from None
            # Print only the overflows that break physics (and make a world unstable, below), not
            # every solver iteration limit a model's low ``iterations`` setting reaches by design.
            self.wmodel.opt.warn_overflow = _BAD_OVERFLOW
            if deterministic and self.warp_device != "cpu":
                self.wmodel.opt.deterministic = int(mjw.DeterminismType.ALL)
            self._bad = wp.zeros(num_envs, dtype=wp.uint8)
        d = self.wdata
        # Zero-copy torch views of the Warp arrays (on the Warp device).
        self._t = {
            k: wp.to_torch(getattr(d, k)) for k in ("qpos", "qvel", "act", "ctrl", "time", "sensordata")
        }
        self._t["qacc_warmstart"] = wp.to_torch(d.qacc_warmstart)
        self._bad_t = wp.to_torch(self._bad)
        self._use_graph = graph and self.warp_device.startswith("cuda")
        self._graph: Any = None
        self._batched: dict[str, torch.Tensor] | None = None  # per-world model fields once randomized
        self._nominal: dict[str, torch.Tensor] = {}
        self._render_models: dict[int, mujoco.MjModel] = {}
        self._renderers = RendererCache(self.model)
        self._publish()

    # -- contract ---------------------------------------------------------------------------
    def step(self, ctrl: torch.Tensor) -> torch.Tensor:
        """Hold ctrl (N, nu) for ``decimation`` physics steps. Returns (N,) bool: blew up."""
        if ctrl.shape != (self.num_envs, self.nu):
            raise ValueError(f"ctrl must be {(self.num_envs, self.nu)}, got {tuple(ctrl.shape)}")
        self._t["ctrl"].copy_(ctrl.detach())
        with wp.ScopedDevice(self.warp_device):
            if self._use_graph:
                if self._graph is None:
                    with wp.ScopedCapture() as cap:
                        self._control_step()
                    self._graph = cap.graph
                wp.capture_launch(self._graph)
            else:
                self._control_step()
        unstable = self._bad_t.to(self.device, torch.bool)
        self._publish()
        return unstable

    def reset(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Start new episodes where mask (N,) is true: state, actuator state, clock, warm start."""
        m = mask.to(self._t["qpos"].device).bool()
        for k in ("act", "qacc_warmstart", "sensordata"):
            # Sensors of a freshly reset env are unknown until it is stepped: zeros, not stale values.
            self._t[k].masked_fill_(m[:, None], 0.0)
        self._t["time"].masked_fill_(m, 0.0)
        self.set_state(mask, qpos, qvel)

    def set_state(self, mask: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Overwrite qpos (N, nq) and qvel (N, nv) where mask is true (pushes use this)."""
        for k, v in (("qpos", qpos), ("qvel", qvel)):
            t = self._t[k]
            m = mask.to(t.device).bool()[:, None]
            t.copy_(torch.where(m, v.to(t.device, t.dtype), t))
        self._publish()

    def set_physics(self, mask: torch.Tensor, params: PhysicsParams) -> None:
        """Apply per-env randomization factors to the masked worlds' model fields.

        The first call gives the randomized fields of the Warp model one row per world
        (mujoco_warp indexes a field's rows by ``world % rows``); each call then writes only the
        masked rows, as batched tensor ops.
        """
        if self._batched is None:
            self._batch_model_fields()
        b, nom = self._batched, self._nominal
        dev = b["geom_friction"].device
        m = mask.to(dev).bool()
        p = {k: getattr(params, k).to(dev, torch.float32) for k in PhysicsParams.__dataclass_fields__}

        def put(name: str, value: torch.Tensor) -> None:
            t = b[name]
            t.copy_(torch.where(m.view(-1, *([1] * (t.dim() - 1))), value.expand_as(t), t))

        def nominal(name: str) -> torch.Tensor:
            return nom[name].expand_as(b[name]).clone()

        friction = nominal("geom_friction")
        friction[..., 0] = nom["geom_friction"][..., 0] * p["friction"][:, None]
        put("geom_friction", friction)
        put("body_mass", nom["body_mass"] * p["mass_scale"])
        put("body_inertia", nom["body_inertia"] * p["mass_scale"][..., None])
        if self.info.floating_base:
            base = int(self.model.jnt_bodyid[0])
            ipos = nominal("body_ipos")
            ipos[:, base] = nom["body_ipos"][0, base] + p["com_offset"]
            put("body_ipos", ipos)
        servo = torch.as_tensor(self.info.kp > 0, device=dev)
        kp = nom["kp"] * p["kp_scale"][:, None]
        kd = nom["kd"] * p["kd_scale"][:, None]
        gain, bias = nominal("actuator_gainprm"), nominal("actuator_biasprm")
        gain[..., 0] = torch.where(servo, kp, gain[..., 0])
        bias[..., 1] = torch.where(servo, -kp, bias[..., 1])
        bias[..., 2] = torch.where(servo, -kd, bias[..., 2])
        put("actuator_gainprm", gain)
        put("actuator_biasprm", bias)
        put("actuator_forcerange", nom["actuator_forcerange"] * p["motor_strength"][:, None, None])
        self._render_models.clear()

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
        """Frames of the chosen envs, (n, 3, H, W) uint8: their qpos drawn by MuJoCo's renderer."""
        r = self._renderers.get(width, height, len(env_ids), camera)
        ids = torch.as_tensor(env_ids, dtype=torch.long)
        qpos = self._t["qpos"][ids.to(self._t["qpos"].device)].to("cpu", torch.float64).numpy()
        models = None if self._batched is None else [self._render_model(int(i)) for i in ids]
        frames = r.render(qpos, spec=int(mujoco.mjtState.mjSTATE_QPOS), models=models, markers=markers)
        return frames.to(self.device)

    def close(self) -> None:
        self._renderers.close()
        self._graph = None

    # -- internals --------------------------------------------------------------------------
    def _control_step(self) -> None:
        """``decimation`` physics steps of every world, each followed by the blow-up check."""
        self._bad.zero_()
        d = self.wdata
        for _ in range(self.decimation):
            mjw.step(self.wmodel, d)
            wp.launch(
                _check_worlds,
                dim=self.num_envs,
                inputs=[d.qpos, d.qvel, d.qacc, d.overflow, _BAD_OVERFLOW, MAX_VAL],
                outputs=[self._bad],
            )

    def _publish(self) -> None:
        # Copies, not views: a SimState is a snapshot that later steps must not change under a
        # task that keeps it (last joint velocities, final observations).
        t, dev = self._t, self.device
        self._view = SimState(
            qpos=t["qpos"].to(dev, copy=True),
            qvel=t["qvel"].to(dev, copy=True),
            sensordata=t["sensordata"].to(dev, copy=True),
            time=t["time"].to(dev, copy=True),
        )

    def _batch_model_fields(self) -> None:
        """Replace the randomized Warp model fields by (N, ...) copies and keep torch views."""
        n, wm = self.num_envs, self.wmodel
        names = ("geom_friction", "body_mass", "body_inertia", "body_ipos")
        names += ("actuator_gainprm", "actuator_biasprm", "actuator_forcerange")
        self._batched = {}
        with wp.ScopedDevice(self.warp_device):
            for name in names:
                arr = getattr(wm, name)
                if arr.shape[0] != 1:
                    continue
                batched = wp.empty((n, *arr.shape[1:]), dtype=arr.dtype)
                nominal = wp.to_torch(arr)
                wp.to_torch(batched).copy_(nominal.expand(n, *nominal.shape[1:]))
                setattr(wm, name, batched)
                self._batched[name] = wp.to_torch(batched)
                self._nominal[name] = nominal.clone()
        dev = self._batched["geom_friction"].device
        self._nominal["kp"] = torch.as_tensor(self.info.kp, dtype=torch.float32, device=dev)
        self._nominal["kd"] = torch.as_tensor(self.info.kd, dtype=torch.float32, device=dev)
        self._graph = None  # the captured graph holds the old arrays' addresses

    def _render_model(self, i: int) -> mujoco.MjModel:
        """World i's host model with its randomized mass and centre of mass (tracking cameras)."""
        rm = self._render_models.get(i)
        if rm is None:
            rm = self._render_models[i] = copy.copy(self.model)
            rm.body_mass[:] = self._batched["body_mass"][i].cpu().numpy()
            refresh_subtree_mass(rm)
            rm.body_ipos[:] = self._batched["body_ipos"][i].cpu().numpy()
        return rm


def default_njmax(m: mujoco.MjModel, nconmax: int) -> int:
    """Constraint rows per world: every joint limit and friction-loss dof, equality rows, and
    ``nconmax`` contacts of the model's widest contact (pyramidal cones take 2 (condim - 1) rows).

    mujoco_warp's own default (64 rows for these models) is too small for the arm-and-table scene,
    where CPU MuJoCo counts up to 89 rows under random actions.
    """
    condim = int(max(m.geom_condim.max(initial=1), m.pair_dim.max(initial=1)))
    per_contact = 2 * (condim - 1) if m.opt.cone == mujoco.mjtCone.mjCONE_PYRAMIDAL else condim
    rows = int(m.jnt_limited.sum() + (m.dof_frictionloss > 0).sum() + 6 * m.neq + m.ntendon)
    return -(-(rows + nconmax * max(per_contact, 1)) // 16) * 16
