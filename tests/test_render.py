"""Camera observations: obs["rgb"] on request, batched tiled rendering, image orientation."""

import copy

import mujoco
import numpy as np
import pytest
import torch

import sim.render
from embodied.registry import make_env
from sim.backend import SimConfigError, make_backend
from sim.render import FULLPHYSICS, BatchRenderer, Marker

RGB = {"rgb": {"enabled": True, "width": 32, "height": 24}}

# A red floor, a green box on a free body, no skybox: a camera looking level at the box sees
# the floor below the horizon and the black background above it.
SCENE = """
<mujoco>
  <visual><quality shadowsize="0"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true"/>
    <geom name="floor" type="plane" size="0 0 0.1" rgba="1 0 0 1"/>
    <body name="box" pos="0 0 0.5">
      <freejoint/>
      <geom type="box" size="0.2 0.2 0.2" rgba="0 1 0 1"/>
      <camera name="chase" pos="0 -3 0" xyaxes="1 0 0 0 0 1" mode="trackcom"/>
    </body>
  </worldbody>
</mujoco>
"""


def _spread_states(model: mujoco.MjModel, n: int, seed: int = 0) -> np.ndarray:
    """(n, nstate) FULLPHYSICS states of go2 scattered over the floor with random joint angles."""
    rng = np.random.default_rng(seed)
    d = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, d, 0)
    out = np.empty((n, mujoco.mj_stateSize(model, FULLPHYSICS)))
    for i in range(n):
        e = copy.copy(d)
        e.qpos[:2] += rng.uniform(-6.0, 6.0, 2)
        e.qpos[7:] += rng.uniform(-0.4, 0.4, model.nq - 7)
        mujoco.mj_getState(model, e, out[i], FULLPHYSICS)
    return out


def test_rgb_obs_has_shape_dtype_device_when_enabled():
    env = make_env("go2_velocity", num_envs=3, overrides=RGB)
    obs = env.reset()
    assert env.rgb_shape == (3, 24, 32)
    assert obs["rgb"].shape == (3, 3, 24, 32) and obs["rgb"].dtype == torch.uint8
    assert obs["rgb"].device == env.device
    assert set(env.obs_spec) == {"policy", "critic", "draw", "rgb"}
    assert env.obs_spec["rgb"].shape == (3, 24, 32) and env.obs_spec["rgb"].dtype == torch.uint8
    out = env.step(torch.zeros(3, env.action_dim))
    assert out.obs["rgb"].shape == (3, 3, 24, 32)
    assert out.info["final_obs"]["rgb"].shape == (3, 3, 24, 32)
    assert out.obs["rgb"].float().std() > 1.0, "an image, not a blank buffer"
    env.close()


def test_rgb_is_absent_and_no_renderer_is_made_when_disabled(monkeypatch):
    def no_renderer(*args, **kwargs):
        raise AssertionError("a renderer was created although rgb is off")

    monkeypatch.setattr(sim.render, "BatchRenderer", no_renderer)
    env = make_env("go2_velocity", num_envs=2)
    assert env.rgb_shape is None
    assert "rgb" not in env.reset()
    out = env.step(torch.zeros(2, env.action_dim))
    assert "rgb" not in out.obs and "rgb" not in out.info["final_obs"]
    assert env.backend._renderers._renderers == {}
    env.close()


def test_envs_in_different_states_give_different_images():
    b = make_backend("mujoco", "go2_flat.xml", 2)
    qpos = b.state().qpos.clone()
    qpos[1, 7:] += 0.5  # bend env 1's legs
    b.set_state(torch.tensor([False, True]), qpos, torch.zeros(2, b.nv))
    frames = b.render([0, 1], 48, 40, "track").float()
    assert (frames[0] - frames[1]).abs().mean() > 0.5
    b.close()


def test_tiled_batch_equals_one_env_at_a_time():
    b = make_backend("mujoco", "go2_flat.xml", 6)
    b._state_np[:] = _spread_states(b.model, 6)
    tiled = b.render(list(range(6)), 48, 40, "track")
    single = torch.cat([b.render([i], 48, 40, "track") for i in range(6)])
    diff = (tiled.int() - single.int()).abs()
    # The rasterizer rounds vertex positions differently at different tile offsets: a few
    # edge pixels may differ by one level, nothing more.
    assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01
    assert torch.equal(tiled[0], single[0]), "the same tile position gives the same pixels"
    b.close()


def test_frames_match_mujocos_own_renderer_of_the_model():
    """An independent reference: flip, channel order, tile cut and floor re-centring."""
    model = make_backend("mujoco", "go2_flat.xml", 1).model
    states = _spread_states(model, 4, seed=1)
    before = (model.geom_size.copy(), model.mat_texrepeat.copy(), model.vis.quality.offsamples)
    br = BatchRenderer(model, 48, 40, 4, "track")
    assert np.array_equal(model.geom_size, before[0]) and np.array_equal(model.mat_texrepeat, before[1])
    assert model.vis.quality.offsamples == before[2], "the physics model is not modified"
    frames = br.render(states)
    ref_model = copy.copy(model)
    ref_model.vis.quality.offsamples = 0
    ref_model.vis.quality.numslices = br.model.vis.quality.numslices
    ref_model.vis.quality.numstacks = br.model.vis.quality.numstacks
    ref = mujoco.Renderer(ref_model, height=40, width=48)
    for flag in (
        mujoco.mjtRndFlag.mjRND_SHADOW,
        mujoco.mjtRndFlag.mjRND_REFLECTION,
        mujoco.mjtRndFlag.mjRND_HAZE,
    ):
        ref.scene.flags[flag] = 0  # haze: the band MuJoCo draws only at an infinite plane's horizon
    d = mujoco.MjData(ref_model)
    for i in range(4):
        mujoco.mj_setState(ref_model, d, states[i], FULLPHYSICS)
        mujoco.mj_forward(ref_model, d)
        ref.update_scene(d, "track")
        expected = torch.from_numpy(ref.render().copy()).permute(2, 0, 1)
        assert (frames[i].float() - expected.float()).abs().mean() < 2.0, f"env {i}"
    ref.close()
    br.close()


def test_image_is_not_upside_down():
    model = mujoco.MjModel.from_xml_string(SCENE)
    d = mujoco.MjData(model)
    d.qpos[:2] = [7.3, -4.1]  # away from the origin: the floor must follow the tracking camera
    mujoco.mj_forward(model, d)
    state = np.empty((1, mujoco.mj_stateSize(model, FULLPHYSICS)))
    mujoco.mj_getState(model, d, state[0], FULLPHYSICS)
    br = BatchRenderer(model, 64, 48, 1, "chase")
    img = br.render(state)[0].float()  # (3, H, W)
    top, bottom = img[:, :12], img[:, -12:]
    assert bottom[0].mean() > 100 and bottom[0].mean() > 3 * bottom[1:].mean(), "red floor at the bottom"
    assert top[0].mean() < 30, "background, not floor, at the top"
    centre = img[:, 21:27, 29:35]
    assert centre[1].mean() > 2 * centre[0].mean(), "the green box in the middle"
    br.close()


def test_unknown_camera_name_is_a_clear_error():
    with pytest.raises(SimConfigError, match=r"no camera named 'nope'.*track"):
        make_env("go2_velocity", num_envs=1, overrides={"rgb": {"enabled": True, "camera": "nope"}})
    model = make_backend("mujoco", "go2_flat.xml", 1).model
    with pytest.raises(SimConfigError, match="out of range"):
        BatchRenderer(model, 32, 32, 1, camera=5)


def test_reset_redraws_only_the_reset_envs():
    env = make_env("go2_velocity", num_envs=3, overrides=RGB)
    first = env.reset()["rgb"]
    kept = first.clone()
    calls = []
    render = env.backend.render
    env.backend.render = lambda ids, *a: calls.append(list(ids)) or render(ids, *a)
    again = env.reset(mask=torch.tensor([True, False, False]))["rgb"]
    assert calls == [[0]]
    assert torch.equal(again[1:], first[1:]) and torch.equal(first, kept), "old frames are not modified"
    fresh = render([0, 1, 2], 32, 24, env.rgb_camera)
    assert (again.int() - fresh.int()).abs().max() <= 2
    env.close()


def test_free_camera_sees_the_scene():
    b = make_backend("mujoco", "go2_flat.xml", 2)
    frames = b.render([0, 1], 40, 32, -1)
    assert frames.shape == (2, 3, 32, 40) and frames.float().std() > 1.0
    assert (frames[0].int() - frames[1].int()).abs().max() <= 2, "same state, same fixed free camera"
    b.close()


def test_markers_draw_at_each_envs_own_position():
    model = mujoco.MjModel.from_xml_string(SCENE)
    d = mujoco.MjData(model)
    mujoco.mj_forward(model, d)
    state = np.empty((2, mujoco.mj_stateSize(model, FULLPHYSICS)))
    mujoco.mj_getState(model, d, state[0], FULLPHYSICS)
    state[1] = state[0]
    br = BatchRenderer(model, 64, 48, 2, "chase")
    plain = br.render(state).float()
    # A blue sphere left of the box in env 0, right of it in env 1.
    pos = np.array([[-0.8, 0.0, 0.5], [0.8, 0.0, 0.5]])
    marked = br.render(state, markers=[Marker(pos, "sphere", (0.15, 0, 0), (0, 0, 1, 1))]).float()
    blue = (marked[:, 2] - plain[:, 2]) > 60  # (2, H, W) pixels the marker turned blue
    cols = [blue[i].nonzero()[:, 1].float().mean().item() for i in range(2)]
    assert blue[0].any() and blue[1].any() and cols[0] < 32 < cols[1]
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        br.render(state, markers=[Marker(pos[:1])])
    with pytest.raises(SimConfigError, match="unknown marker kind"):
        Marker(pos, "cone")
    br.close()


def test_arm_goal_marker_shows_in_frames_and_follows_the_goal():
    env = make_env("arm_reach", num_envs=2, overrides={"rgb": {"enabled": True}})
    env.reset()
    before = env.frames().clone()
    env.goal_pos = env.goal_pos.flip(0)  # swap the two envs' targets; the arms stay where they are
    after = env.frames()
    assert not torch.equal(before, after), "the frames follow the goal, not only qpos"
    env.close()


def test_rgb_observe_false_keeps_frames_out_of_obs_but_renders_on_request() -> None:
    cfg = {"rgb": {**RGB["rgb"], "observe": False}}
    env = make_env("arm_reach", num_envs=2, seed=0, overrides=cfg)
    obs = env.reset(seed=0)
    assert "rgb" not in obs and "rgb" not in env.obs_spec
    out = env.step(torch.zeros(2, env.action_dim))
    assert "rgb" not in out.obs
    frames = env.frames()  # a term that scores frames still gets them
    assert frames.shape == (2, 3, 24, 32) and frames.dtype == torch.uint8
    seen = make_env("arm_reach", num_envs=2, seed=0, overrides=RGB)
    assert "rgb" in seen.reset(seed=0)
    env.close()
    seen.close()


def test_the_chase_camera_follows_a_robot_with_randomized_masses():
    """Mass randomization must not break trackcom: a robot moved 3 m looks the same from its camera.

    (``body_subtreemass`` is a compile-time constant; left stale, the centre of mass the camera
    follows moved only ~80 % as far as the robot, which walked out of frame in eval videos.)"""
    from sim.randomize import PhysicsParams

    b = make_backend("mujoco", "go2_flat.xml", 2)
    p = PhysicsParams.nominal(2, b.info.nbody)
    p.mass_scale = torch.full_like(p.mass_scale, 1.3)
    b.set_physics(torch.ones(2, dtype=torch.bool), p)
    ref = copy.copy(b._models[0])
    mujoco.mj_setConst(ref, mujoco.MjData(ref))  # what MuJoCo compiles for these masses
    np.testing.assert_allclose(b._models[0].body_subtreemass, ref.body_subtreemass, rtol=1e-12)
    qpos = b.state().qpos.clone()
    qpos[1, :2] += torch.tensor([3.0, -2.0])
    b.set_state(torch.tensor([False, True]), qpos, torch.zeros(2, b.nv))
    frames = b.render([0, 1], 48, 40, "track").int()
    assert (frames[0] - frames[1]).abs().float().mean() < 0.5
    b.close()
