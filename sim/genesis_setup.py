"""Genesis process set-up and model mapping: init (backend, precision, caches), device choice,
the model features the Genesis backend refuses, and index maps from MuJoCo's model to Genesis' entity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from sim.backend import SimConfigError

CACHE_ENV = "EMBODIED_GENESIS_CACHE"


def default_cache_dir() -> Path:
    """``$EMBODIED_GENESIS_CACHE``, else ``$XDG_CACHE_HOME/embodied/genesis`` (``~/.cache`` without it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "embodied" / "genesis"


def init_genesis(
    backend: str, cache_dir: str | Path | None = None, precision: str = "32", log_level: str = "error"
) -> Any:
    """Start Genesis once per process (its backend, precision and caches are process-wide); returns ``gs``.

    The kernel cache of Quadrants (Genesis' compiler) and Genesis' own asset cache go to
    ``<cache_dir>/quadrants`` and ``<cache_dir>/genesis``, as they would under ``$XDG_CACHE_HOME``.
    """
    path = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()).resolve()
    try:
        import genesis as gs
    except ImportError as e:
        raise SimConfigError(f"genesis needs `pip install -e .[genesis]` (genesis-world): {e}") from None
    if gs._initialized:
        active = (os.environ.get("QD_OFFLINE_CACHE_FILE_PATH"), str(gs.tc_float)[-2:])
        wanted = (str(path / "quadrants"), precision)
        if (backend == "cpu") != (gs.backend.name == "cpu"):
            raise SimConfigError(
                f"genesis already runs on {gs.backend.name} in this process; it takes one backend"
            )
        if active != wanted:
            raise SimConfigError(
                f"genesis already runs with cache {active[0]} and float{active[1]} in this process; "
                f"asked for {wanted[0]} and float{precision} (one setting per process)"
            )
        return gs
    path.mkdir(parents=True, exist_ok=True)
    os.environ["GS_CACHE_FILE_PATH"] = str(path / "genesis")
    os.environ["QD_OFFLINE_CACHE_FILE_PATH"] = str(path / "quadrants")
    gs.init(backend=gs.cpu if backend == "cpu" else gs.gpu, precision=precision, logging_level=log_level)
    if backend == "gpu" and gs.backend.name == "cpu":
        raise SimConfigError("genesis backend gpu was asked for but Genesis finds no GPU here")
    return gs


def resolve_backend(device: str | torch.device, backend: str | None) -> tuple[torch.device, str]:
    """The torch device tensors live on and the Genesis backend (cpu or gpu) the physics runs on."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise SimConfigError(f"genesis runs on cpu or cuda devices, got {dev}")
    name = backend or ("cpu" if dev.type == "cpu" else "gpu")
    if name not in ("cpu", "gpu"):
        raise SimConfigError(f"genesis backend must be cpu or gpu, got {name!r}")
    if (dev.type == "cuda" or name == "gpu") and not torch.cuda.is_available():
        raise SimConfigError(
            f"genesis on {dev} (backend {name}) was asked for but CUDA is not available on this machine"
        )
    return dev, name


# -- model checks and index maps ------------------------------------------------------------------
def check_model(m: mujoco.MjModel) -> None:
    """A one-line SimConfigError naming the first model feature this backend cannot simulate."""
    if m.ntendon:
        raise SimConfigError(
            "genesis backend does not support tendons (the model has tendon actuators or limits)"
        )
    if getattr(m, "nflex", 0):
        raise SimConfigError("genesis backend does not support flex (deformable) objects")
    for e in range(m.neq):
        kind = mujoco.mjtEq(m.eq_type[e])
        if kind not in (mujoco.mjtEq.mjEQ_CONNECT, mujoco.mjtEq.mjEQ_WELD, mujoco.mjtEq.mjEQ_JOINT):
            raise SimConfigError(f"genesis backend does not support {kind.name} equality constraints")
    seen: set[int] = set()
    for a in range(m.nu):
        name = m.actuator(a).name or str(a)
        jid = int(m.actuator_trnid[a, 0])
        if m.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT:
            kind = mujoco.mjtTrn(m.actuator_trntype[a]).name
            raise SimConfigError(f"genesis backend does not support {kind} actuator transmission ({name})")
        if m.actuator_dyntype[a] != mujoco.mjtDyn.mjDYN_NONE:
            kind = mujoco.mjtDyn(m.actuator_dyntype[a]).name
            raise SimConfigError(f"genesis backend does not support actuator dynamics {kind} ({name})")
        if m.actuator_gaintype[a] != mujoco.mjtGain.mjGAIN_FIXED:
            raise SimConfigError(f"genesis backend does not support non-fixed actuator gains ({name})")
        bias = mujoco.mjtBias(m.actuator_biastype[a])
        if bias not in (mujoco.mjtBias.mjBIAS_NONE, mujoco.mjtBias.mjBIAS_AFFINE):
            raise SimConfigError(f"genesis backend does not support actuator bias {bias.name} ({name})")
        if bias == mujoco.mjtBias.mjBIAS_AFFINE and m.actuator_gear[a, 0] != 1.0:
            raise SimConfigError(f"genesis backend supports servo actuators with gear 1 only ({name})")
        if m.jnt_type[jid] in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL):
            raise SimConfigError(
                f"genesis backend does not support actuators on free or ball joints ({name})"
            )
        if jid in seen:
            raise SimConfigError(f"genesis backend supports one actuator per joint ({m.joint(jid).name})")
        seen.add(jid)


def _link_map(m: mujoco.MjModel, entity: Any) -> list[int]:
    """Entity-local link index of each MuJoCo body (world included when Genesis kept it)."""
    links = entity.links
    by_name = {lk.name: i for i, lk in enumerate(links)}
    offset = len(links) - m.nbody  # -1 when Genesis has no world link
    out = []
    for b in range(m.nbody):
        name = m.body(b).name if b else "world"
        if name and name in by_name:
            out.append(by_name[name])
        elif offset in (0, -1) and b + offset >= 0 and not links[b + offset].name:
            out.append(b + offset)  # an unnamed body: Genesis keeps MuJoCo's depth-first order
        else:
            out.append(-1)
    if offset not in (0, -1) or any(i < 0 for i in out[1:]):
        raise SimConfigError("genesis loaded a different body tree than MuJoCo from this model")
    return out


def _joint_map(m: mujoco.MjModel, entity: Any) -> tuple[list[int], list[int]]:
    """Entity-local (qpos, dof) index of each MuJoCo qpos and qvel column."""
    joints = {j.name: j for j in entity.joints}
    q_idx, d_idx = [0] * m.nq, [0] * m.nv
    for j in range(m.njnt):
        name = m.joint(j).name or m.body(int(m.jnt_bodyid[j])).name
        gj = joints.get(name)
        nq = {0: 7, 1: 4}.get(int(m.jnt_type[j]), 1)
        if gj is None or gj.n_qs != nq:
            raise SimConfigError(f"genesis has no joint matching MuJoCo joint {name!r}")
        qa, da = int(m.jnt_qposadr[j]), int(m.jnt_dofadr[j])
        q_idx[qa : qa + nq] = range(gj.q_start - entity.q_start, gj.q_start - entity.q_start + nq)
        d_idx[da : da + gj.n_dofs] = range(
            gj.dof_start - entity.dof_start, gj.dof_start - entity.dof_start + gj.n_dofs
        )
    return q_idx, d_idx


def _geom_map(m: mujoco.MjModel, entity: Any, links: list[int]) -> np.ndarray:
    """MuJoCo geom id of each Genesis (collision) geom of the scene, by body and order in the body."""
    out = np.full(entity.geom_end, m.ngeom, dtype=np.int64)  # ngeom: no MuJoCo geom
    for b in range(m.nbody):
        mj = [
            g
            for g in range(m.ngeom)
            if m.geom_bodyid[g] == b and (m.geom_contype[g] or m.geom_conaffinity[g])
        ]
        gs_geoms = entity.links[links[b]].geoms if links[b] >= 0 else []
        if len(mj) != len(gs_geoms):
            raise SimConfigError(
                f"genesis has {len(gs_geoms)} collision geoms on body {m.body(b).name!r}, MuJoCo {len(mj)}"
            )
        for g, gg in zip(mj, gs_geoms, strict=True):
            out[gg.idx] = g
    return out
