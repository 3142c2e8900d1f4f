"""Batched offscreen rendering: the frames of n envs from one GL context and one readback.

Each env's scene is drawn into its own ``width x height`` tile (viewport) of one large offscreen
framebuffer; the whole used region is read back with one ``mjr_readPixels`` and cut into
(n, 3, H, W). One MjData, MjvScene, MjvOption and MjvCamera are reused for every env, and only
positions are recomputed per env (kinematics, centre of mass for tracking cameras, camera
poses), never full dynamics.

On a software rasterizer (Mesa llvmpipe behind MUJOCO_GL=egl) the cost is geometry, so the
renderer draws a private copy of the model with three visual-only changes:
- no multisampling (``offsamples = 0``), which otherwise doubles the cost of every frame;
- tessellation of spheres, capsules and cylinders follows the frame size (``_slices``), and box
  faces are not subdivided where only directional lights shine (the image is the same);
- an infinite plane, which MuJoCo draws as a 200 x 200 grid (several ms per 84x84 frame),
  becomes a finite plane reaching the far clip distance with the same texture scale, re-centred
  under the camera in whole texture periods the way MuJoCo re-centres infinite planes. The only
  visible difference is the horizon haze band MuJoCo draws at an infinite plane's far edge.

For 16 go2 frames at 84x84 about half the time is spent submitting draws (a fixed cost per geom
and frame, plus its triangles) and the rest rasterizing them, which happens inside the readback.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from sim.backend import SimConfigError

FULLPHYSICS = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
MARKER_KINDS = {
    "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
    "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
    "box": mujoco.mjtGeom.mjGEOM_BOX,
}
MAX_BUFFER_SIDE = 4096  # pixels; larger batches are drawn in several passes
_MAX_GEOM = 10_000
_EYE9 = np.eye(3).flatten()


def camera_id(model: mujoco.MjModel, camera: str | int) -> int:
    """A camera's id from its name or id; -1 is the free camera looking at the whole scene."""
    if isinstance(camera, str):
        cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cid < 0:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise SimConfigError(
                f"model has no camera named {camera!r}; its cameras: {', '.join(names) or 'none'} "
                "(or -1 for the free camera)"
            )
        return int(cid)
    cid = int(camera)
    if not -1 <= cid < model.ncam:
        raise SimConfigError(f"camera id {cid} is out of range: the model has {model.ncam} camera(s)")
    return cid


def _slices(height: int, model_slices: int) -> int:
    """Slices per turn of a round geom: one per 14 image rows, at least 6, at most the model's.

    At 84 rows that is 6: a limb or foot a few pixels across stays round to within half a pixel.
    """
    return min(model_slices, max(6, height // 14))


@dataclass
class _Plane:
    """An infinite plane drawn finite: re-centred under the camera in steps of ``step`` metres."""

    geom: int
    step: tuple[float, float]
    scene_index: int = -1


def _make_render_model(
    model: mujoco.MjModel, width: int, height: int, cols: int, rows: int
) -> tuple[mujoco.MjModel, list[_Plane]]:
    """The model copy this renderer draws (visual fields only) and its re-centred planes."""
    rm = copy.copy(model)
    rm.vis.global_.offwidth = cols * width
    rm.vis.global_.offheight = rows * height
    rm.vis.quality.offsamples = 0
    rm.vis.quality.numslices = _slices(height, int(model.vis.quality.numslices))
    rm.vis.quality.numstacks = max(3, rm.vis.quality.numslices // 2)
    # Boxes and planes are subdivided only so that per-vertex lighting from spot and point lights
    # looks right; under directional lights alone (the headlight is one) a face is lit evenly.
    directional = bool((model.light_type == mujoco.mjtLightType.mjLIGHT_DIRECTIONAL).all())
    if directional:
        rm.vis.quality.numquads = 1
    zfar = float(model.vis.map.zfar * model.stat.extent)
    planes = []
    for g in np.flatnonzero(model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE):
        size = model.geom_size[g]
        if size[0] > 0 and size[1] > 0:
            continue
        mat = int(model.geom_matid[g])
        if mat >= 0 and _material_shared(model, mat, g):
            continue  # changing its texture scale would change other objects too
        grid_step = 2.1 * zfar / (mujoco.mjMAXPLANEGRID - 2)
        rep = model.mat_texrepeat[mat] if mat >= 0 else np.zeros(2)
        steps = tuple(float(4.0 / r) if r > 0 else 2 * grid_step for r in rep)
        half = zfar + max(steps)
        for k in range(2):
            if size[k] <= 0:
                rm.geom_size[g, k] = half
        # Grid spacing: one cell per half-side when lighting is even, else MuJoCo's own density.
        rm.geom_size[g, 2] = half if directional else max(size[2], 2.1 * zfar / mujoco.mjMAXPLANEGRID)
        if mat >= 0 and not model.mat_texuniform[mat]:
            # An infinite plane repeats its texture texrepeat times per metre whatever texuniform
            # says; a finite non-uniform one repeats it texrepeat times per half-size.
            rm.mat_texrepeat[mat] = model.mat_texrepeat[mat] * rm.geom_size[g, :2]
        planes.append(_Plane(int(g), (steps[0], steps[1])))
    return rm, planes


def _material_shared(model: mujoco.MjModel, mat: int, plane: int) -> bool:
    """Whether anything but this plane uses the material."""
    if (np.flatnonzero(model.geom_matid == mat) != plane).any():
        return True
    users = ("site_matid", "tendon_matid", "skin_matid", "flex_matid")
    return any((getattr(model, u, np.empty(0)) == mat).any() for u in users)


@dataclass(frozen=True)
class Marker:
    """A visual-only shape drawn into every env's frame at a per-env position (goals, targets, pads).

    Markers are not in the physics model (a goal sampled per episode moves nothing), so every
    engine draws them the same way: added to the scene after MuJoCo's own geoms.
    pos: (n, 3) world positions, one row per rendered env. kind: sphere | cylinder | box;
    size: MuJoCo geom size (radius; radius, half-height; half-extents); rgba in [0, 1].
    """

    pos: np.ndarray
    kind: str = "sphere"
    size: tuple[float, float, float] = (0.02, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = (0.1, 0.8, 0.2, 1.0)

    def __post_init__(self) -> None:
        if self.kind not in MARKER_KINDS:
            raise SimConfigError(f"unknown marker kind {self.kind!r}; known: {', '.join(MARKER_KINDS)}")


class BatchRenderer:
    """Frames of up to ``max_envs`` envs per pass, drawn as tiles of one offscreen buffer.

    Args:
        model: the physics model (not modified; the renderer draws a private copy).
        width, height: frame size in pixels.
        max_envs: most frames one ``render`` call is expected to produce (sizes the buffer).
        camera: camera name or id; -1 is the free camera looking at the whole scene.
    """

    def __init__(
        self, model: mujoco.MjModel, width: int, height: int, max_envs: int, camera: str | int = -1
    ) -> None:
        self._gl = self._con = None  # set first, so close() works whatever __init__ reached
        if width < 1 or height < 1 or max_envs < 1:
            raise SimConfigError(f"render size and max_envs must be >= 1, got {width}x{height}, {max_envs}")
        if width > MAX_BUFFER_SIDE or height > MAX_BUFFER_SIDE:
            raise SimConfigError(f"frames larger than {MAX_BUFFER_SIDE} pixels a side are not supported")
        self.width, self.height, self.max_envs = width, height, max_envs
        cam_id = camera_id(model, camera)
        cols = min(math.ceil(math.sqrt(max_envs)), MAX_BUFFER_SIDE // width)
        rows = min(math.ceil(max_envs / cols), MAX_BUFFER_SIDE // height)
        self.cols, self.rows = cols, rows
        self.model, self._planes = _make_render_model(model, width, height, cols, rows)
        try:
            self._gl = mujoco.GLContext(cols * width, rows * height)
            self._gl.make_current()
            self._con = mujoco.MjrContext(self.model, mujoco.mjtFontScale.mjFONTSCALE_50)
        except Exception as e:
            self.close()
            raise SimConfigError(
                f"cannot create an OpenGL context for offscreen rendering ({e}); on a machine "
                "without a display set MUJOCO_GL=egl (or osmesa) before mujoco is first imported"
            ) from None
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scene = mujoco.MjvScene(self.model, maxgeom=_MAX_GEOM)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._opt = mujoco.MjvOption()
        self._cam = mujoco.MjvCamera()
        if cam_id < 0:
            mujoco.mjv_defaultFreeCamera(self.model, self._cam)
        else:
            self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            self._cam.fixedcamid = cam_id
        self._data = mujoco.MjData(self.model)
        # Tile k sits in row k // cols from the top; GL rows count from the bottom.
        self._rects = [
            mujoco.MjrRect((k % cols) * width, (rows - 1 - k // cols) * height, width, height)
            for k in range(cols * rows)
        ]
        self._pixels = np.empty((rows * height, cols * width, 3), dtype=np.uint8)

    @property
    def capacity(self) -> int:
        """Frames drawn per pass (one readback each)."""
        return self.cols * self.rows

    def render(
        self,
        states: np.ndarray,
        *,
        spec: int = FULLPHYSICS,
        models: Sequence[mujoco.MjModel] | None = None,
        markers: Sequence[Marker] = (),
    ) -> torch.Tensor:
        """Frames of n envs, (n, 3, H, W) uint8 on the CPU, top row first.

        Args:
            states: (n, nstate) float64 ``mj_getState`` vectors of ``spec``.
            models: n per-env physics models (after randomization of masses and centres of mass,
                which move tracking cameras); None uses the nominal model.
            markers: visual-only shapes, each with one position row per env.
        """
        if self._con is None:
            raise RuntimeError("BatchRenderer.render called after close()")
        states = np.asarray(states, dtype=np.float64)
        n = states.shape[0]
        if models is not None and len(models) != n:
            raise ValueError(f"got {n} states but {len(models)} models")
        for mk in markers:
            if np.shape(mk.pos) != (n, 3):
                raise ValueError(f"a marker needs (n, 3) = ({n}, 3) positions, got {np.shape(mk.pos)}")
        out = torch.empty(n, 3, self.height, self.width, dtype=torch.uint8)
        self._gl.make_current()
        for start in range(0, n, self.capacity):
            stop = min(n, start + self.capacity)
            for k, i in enumerate(range(start, stop)):
                self._draw(k, states[i], spec, self.model if models is None else models[i], markers, i)
            self._read(out.numpy()[start:stop])
        return out

    def close(self) -> None:
        """Free the GL resources; the renderer cannot be used afterwards."""
        if self._con is not None:
            self._gl.make_current()
            self._con.free()
            self._con = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None

    def __del__(self) -> None:
        # GL objects must be freed with their own context current, never with another one's.
        with contextlib.suppress(Exception):
            self.close()

    # -- internals --------------------------------------------------------------------------
    def _draw(
        self,
        tile: int,
        state: np.ndarray,
        spec: int,
        physics: mujoco.MjModel,
        markers: Sequence[Marker] = (),
        row: int = 0,
    ) -> None:
        d = self._data
        mujoco.mj_setState(physics, d, state, spec)
        # Positions only: bodies and geoms, subtree centres of mass (tracking cameras), cameras.
        mujoco.mj_kinematics(physics, d)
        mujoco.mj_comPos(physics, d)
        mujoco.mj_camlight(physics, d)
        if physics.ntendon:
            mujoco.mj_tendon(physics, d)
        mujoco.mjv_updateScene(
            self.model, d, self._opt, None, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        self._recentre_planes()
        self._add_markers(markers, row)
        mujoco.mjr_render(self._rects[tile], self._scene, self._con)

    def _add_markers(self, markers: Sequence[Marker], row: int) -> None:
        scn = self._scene
        for mk in markers:
            if scn.ngeom >= scn.maxgeom:
                return
            mujoco.mjv_initGeom(
                scn.geoms[scn.ngeom],
                MARKER_KINDS[mk.kind],
                np.asarray(mk.size, dtype=np.float64),
                np.asarray(mk.pos[row], dtype=np.float64),
                _EYE9,
                np.asarray(mk.rgba, dtype=np.float32),
            )
            scn.ngeom += 1

    def _recentre_planes(self) -> None:
        scn, d = self._scene, self._data
        if not self._planes:
            return
        # Plain floats: numpy on 3-vectors costs more than the arithmetic here.
        cam0, cam1 = scn.camera[0].pos.tolist(), scn.camera[1].pos.tolist()
        eye = [(cam0[i] + cam1[i]) / 2 for i in range(3)]
        for p in self._planes:
            if not (0 <= p.scene_index < scn.ngeom and self._is_plane(p.scene_index, p.geom)):
                p.scene_index = next((j for j in range(scn.ngeom) if self._is_plane(j, p.geom)), -1)
                if p.scene_index < 0:
                    continue  # hidden (geom group off, or transparent)
            centre = d.geom_xpos[p.geom].tolist()
            rot = d.geom_xmat[p.geom].tolist()  # row-major 3x3
            offset = [eye[i] - centre[i] for i in range(3)]
            for k in range(2):
                axis = rot[k::3]  # column k: the plane's k-th axis in world coordinates
                along = sum(offset[i] * axis[i] for i in range(3))
                shift = p.step[k] * round(along / p.step[k])
                centre = [centre[i] + axis[i] * shift for i in range(3)]
            scn.geoms[p.scene_index].pos[:] = centre

    def _is_plane(self, j: int, geom: int) -> bool:
        g = self._scene.geoms[j]
        return g.objtype == mujoco.mjtObj.mjOBJ_GEOM and g.objid == geom

    def _read(self, out: np.ndarray) -> None:
        """Read the tiles of ``len(out)`` frames into out (n, 3, H, W) with one readback."""
        n, h, w, cols = len(out), self.height, self.width, self.cols
        used = math.ceil(n / cols)  # tile rows used, counted from the top of the buffer
        px = self._pixels[: used * h]
        rect = mujoco.MjrRect(0, (self.rows - used) * h, cols * w, used * h)
        mujoco.mjr_readPixels(px, None, rect, self._con)
        # GL's first row is the bottom one: flip, then (rows, H, cols, W, 3) -> (rows, cols, 3, H, W).
        tiles = px[::-1].reshape(used, h, cols, w, 3).transpose(0, 2, 4, 1, 3)
        full = n // cols
        out[: full * cols].reshape(full, cols, 3, h, w)[:] = tiles[:full]
        if n > full * cols:
            out[full * cols :] = tiles[full, : n - full * cols]


class RendererCache:
    """One ``BatchRenderer`` per (width, height, camera), grown when more envs are asked for."""

    def __init__(self, model: mujoco.MjModel) -> None:
        self.model = model
        self._renderers: dict[tuple[int, int, str | int], BatchRenderer] = {}

    def get(self, width: int, height: int, num_envs: int, camera: str | int) -> BatchRenderer:
        key = (width, height, camera)
        r = self._renderers.get(key)
        if r is None or r.max_envs < num_envs:
            if r is not None:
                r.close()
            r = self._renderers[key] = BatchRenderer(self.model, width, height, max(1, num_envs), camera)
        return r

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
