"""The MuJoCo Warp backend: the SimBackend contract, its errors, and agreement with CPU MuJoCo.

Tolerances of the cross-engine checks (measured on Warp's CPU device, float32, against MuJoCo's
float64; see docs/engines.md): contact-free motion agrees to ~2e-5 over 2 s, the Go2 standing
under PD to ~2e-4 rad, and the Go2 stepping open loop to ~1 cm / 0.02 rad after 2.5 s.
"""

from __future__ import annotations

import math

import pytest
import torch

from sim import backend as sim_backend
from sim.backend import SimConfigError, available_backends, make_backend
from sim.consistency import compare
from sim.randomize import PhysicsParams

HAVE_MJWARP = "mjwarp" in available_backends()
needs_mjwarp = pytest.mark.skipif(not HAVE_MJWARP, reason="mujoco-warp is not installed")

# A free-tumbling box (first joint: the floating base) and a two-link arm under position servos;
# nothing collides, so both engines integrate the same smooth dynamics.
FREE_AND_ARM = """
<mujoco>
  <option timestep="0.005" integrator="implicitfast" gravity="0 0 {gravity}"/>
  <worldbody>
    <body name="tumbler" pos="0 0 1">
      <freejoint name="free"/>
      <geom type="box" size="0.1 0.05 0.02" mass="1" contype="0" conaffinity="0"/>
    </body>
    <body name="upper" pos="1 0 1">
      <joint name="shoulder" type="hinge" axis="0 1 0" damping="0.05" armature="0.01"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" mass="0.5" contype="0" conaffinity="0"/>
      <body name="lower" pos="0.3 0 0">
        <joint name="elbow" type="hinge" axis="0 1 0" damping="0.05" armature="0.01"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.025" mass="0.3" contype="0" conaffinity="0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position name="shoulder" joint="shoulder" kp="20" kv="1" forcerange="-5 5"/>
    <position name="elbow" joint="elbow" kp="10" kv="0.5" forcerange="-3 3"/>
  </actuator>
  <sensor>
    <jointpos name="elbow_pos" joint="elbow"/>
    <actuatorfrc name="shoulder_torque" actuator="shoulder"/>
    <framequat name="tumbler_quat" objtype="body" objname="tumbler"/>
  </sensor>
</mujoco>
"""
N = 4
DECIMATION = 4
SMOOTH_TOL = {"base_pos": 1e-4, "base_rot": 1e-4, "joint_pos": 1e-4, "qvel": 1e-3}


@pytest.fixture(scope="module")
def free_xml(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("mjwarp") / "free_and_arm.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.81))
    return str(p)


@pytest.fixture(scope="module")
def warp_free(free_xml):
    pytest.importorskip("mujoco_warp")
    b = make_backend("mjwarp", free_xml, N, decimation=DECIMATION)
    yield b
    b.close()


@pytest.fixture(scope="module")
def warp_go2():
    pytest.importorskip("mujoco_warp")
    b = make_backend("mjwarp", "go2_flat.xml", N, decimation=4, physics_dt=0.005)
    yield b
    b.close()


def _free_start(b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tumbling, rising box and a sinusoidally driven arm: (qpos0, qvel0, ctrl (T, N, 2))."""
    steps = 100  # 2 s
    qpos0 = torch.tensor(b.info.home_qpos, dtype=torch.float32).expand(N, -1).clone()
    qvel0 = torch.zeros(N, b.info.nv)
    qvel0[:, 0:3] = torch.tensor([0.1, 0.0, 2.0])
    qvel0[:, 3:6] = torch.tensor([3.0, 0.5, 0.2]) * (1 + 0.1 * torch.arange(N))[:, None]
    t = torch.arange(steps)[:, None, None] * b.physics_dt * b.decimation
    ctrl = 0.8 * torch.sin(2 * math.pi * 0.7 * t + torch.tensor([0.0, 1.0])) * torch.ones(steps, N, 2)
    return qpos0, qvel0, ctrl


def _go2_stand_then_step(b, steps: int = 125) -> torch.Tensor:
    """PD targets (T, N, 12): home pose for 0.5 s, then a trot-like sinusoid ramped in over 0.5 s."""
    home = torch.tensor(b.info.home_qpos, dtype=torch.float32)[b.info.qpos_adr]
    t = torch.arange(steps)[:, None, None] * b.physics_dt * b.decimation
    phase = torch.tensor([0.0, math.pi, math.pi, 0.0]).repeat_interleave(3)  # FL+RR, FR+RL
    amp = torch.tensor([0.0, 0.15, 0.25]).repeat(4)  # hip, thigh, calf (rad)
    ramp = ((t - 0.5) / 0.5).clamp(0.0, 1.0)
    per_env = (1 + 0.05 * torch.arange(N))[:, None]
    return home + ramp * amp * torch.sin(2 * math.pi * 2.0 * t + phase) * per_env


# -- errors -------------------------------------------------------------------------------------
def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(SimConfigError, match=r"unknown sim engine 'bullet'.*mjwarp") as e:
        make_backend("bullet", "go2_flat.xml", 1)
    assert "\n" not in str(e.value)


def test_missing_package_names_the_pip_extra(monkeypatch):
    real = sim_backend.importlib.util.find_spec
    monkeypatch.setattr(
        sim_backend.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mujoco_warp" else real(name, *a),
    )
    assert "mjwarp" not in available_backends() and "mujoco" in available_backends()
    with pytest.raises(SimConfigError, match=r"mjwarp needs `pip install -e \.\[mjwarp\]` \(mujoco-warp\)"):
        make_backend("mjwarp", "go2_flat.xml", 1)


@needs_mjwarp
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(SimConfigError, match="CUDA is not available"):
        make_backend("mjwarp", "go2_flat.xml", 1, device="cuda")
    with pytest.raises(SimConfigError, match="finds no CUDA device") as e:
        make_backend("mjwarp", "go2_flat.xml", 1, options={"warp_device": "cuda:0"})
    assert "\n" not in str(e.value)


@needs_mjwarp
def test_model_feature_the_engine_lacks_is_a_one_line_error_naming_it(tmp_path):
    p = tmp_path / "pgs.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.81).replace("<option ", '<option solver="PGS" '))
    with pytest.raises(SimConfigError, match=r"mjwarp cannot simulate .*mjSOL_PGS") as e:
        make_backend("mjwarp", str(p), 1)
    assert "\n" not in str(e.value)


@needs_mjwarp
def test_unknown_option_is_refused():
    with pytest.raises(SimConfigError, match=r"unknown mjwarp option.*nconmaxx.*known: warp_device"):
        make_backend("mjwarp", "go2_flat.xml", 1, options={"nconmaxx": 10})
    with pytest.raises(SimConfigError, match=r"unknown mujoco option.*known: none"):
        make_backend("mujoco", "go2_flat.xml", 1, options={"warp_device": "cpu"})


@needs_mjwarp
def test_kernel_cache_dir_comes_from_env_then_xdg(monkeypatch, tmp_path):
    from sim.mjwarp_backend import default_cache_dir

    monkeypatch.setenv("EMBODIED_WARP_CACHE", str(tmp_path / "kc"))
    assert default_cache_dir() == tmp_path / "kc"
    monkeypatch.delenv("EMBODIED_WARP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "embodied" / "warp"


# -- contract -----------------------------------------------------------------------------------
def test_one_step_is_decimation_physics_steps_and_state_has_contract_shapes(warp_free):
    b = warp_free
    b.reset(torch.ones(N, dtype=torch.bool), *_free_start(b)[:2])
    unstable = b.step(torch.zeros(N, b.info.nu))
    st = b.state()
    assert unstable.shape == (N,) and unstable.dtype == torch.bool and not unstable.any()
    assert torch.allclose(st.time, torch.full((N,), DECIMATION * 0.005))
    assert st.qpos.shape == (N, 9) and st.qvel.shape == (N, 8) and st.sensordata.shape == (N, 6)
    assert all(x.dtype == torch.float32 and x.device == b.device for x in (st.qpos, st.qvel, st.sensordata))
    assert b.joint_names == ["free", "shoulder", "elbow"] and b.actuator_names == ["shoulder", "elbow"]


def test_sensor_slices_match_cpu_mujoco_and_read_the_right_columns(warp_free, free_xml):
    ref = make_backend("mujoco", free_xml, N, decimation=DECIMATION)
    assert warp_free.sensor_names == ref.sensor_names
    for name in ref.sensor_names:
        assert warp_free.sensor(name) == ref.sensor(name)
    with pytest.raises(SimConfigError, match="no sensor named"):
        warp_free.sensor("nope")
    b = warp_free
    b.reset(torch.ones(N, dtype=torch.bool), *_free_start(b)[:2])
    for _ in range(3):
        b.step(torch.full((N, 2), 0.3))
    st = b.state()
    # Sensors are evaluated before the last physics step's integration, as in MuJoCo.
    assert torch.allclose(st.sensordata[:, b.sensor("elbow_pos")], st.qpos[:, 8:9], atol=0.05)
    assert torch.allclose(st.sensordata[:, b.sensor("tumbler_quat")].norm(dim=1), torch.ones(N), atol=1e-5)
    ref.close()


def test_masked_reset_writes_only_masked_rows_and_restarts_their_clock(warp_free):
    b = warp_free
    qpos0, qvel0, _ = _free_start(b)
    b.reset(torch.ones(N, dtype=torch.bool), qpos0, qvel0)
    for _ in range(3):
        b.step(torch.full((N, 2), 0.4))
    before = b.state()
    mask = torch.tensor([True, False, True, False])
    new = qpos0.clone()
    new[:, 7] = -0.2
    b.reset(mask, new, torch.zeros(N, b.info.nv))
    after = b.state()
    assert torch.equal(after.qpos[~mask], before.qpos[~mask])
    assert torch.equal(after.qvel[~mask], before.qvel[~mask])
    assert torch.equal(after.qpos[mask], new[mask]) and (after.qvel[mask] == 0).all()
    assert (after.time[mask] == 0).all() and (after.time[~mask] > 0).all()
    assert (after.sensordata[mask] == 0).all(), "a reset env's sensors are unknown until stepped"


def test_state_is_a_snapshot_that_later_steps_do_not_change(warp_free):
    b = warp_free
    st = b.state()
    qpos = st.qpos.clone()
    b.step(torch.full((N, 2), 0.5))
    assert torch.equal(st.qpos, qpos)
    assert not torch.equal(b.state().qpos, qpos)


def test_same_inputs_give_bitwise_identical_states(free_xml):
    pytest.importorskip("mujoco_warp")
    runs = []
    for _ in range(2):
        b = make_backend("mjwarp", free_xml, N, decimation=DECIMATION)
        qpos0, qvel0, ctrl = _free_start(b)
        b.reset(torch.ones(N, dtype=torch.bool), qpos0, qvel0)
        for u in ctrl[:20]:
            b.step(u)
        runs.append(b.state())
        b.close()
    assert torch.equal(runs[0].qpos, runs[1].qpos) and torch.equal(runs[0].sensordata, runs[1].sensordata)


def test_blow_up_is_flagged_only_for_the_envs_that_blew_up(warp_go2):
    b = warp_go2
    home = torch.tensor(b.info.home_qpos, dtype=torch.float32).expand(N, -1)
    qvel = torch.zeros(N, b.info.nv)
    qvel[1] = float("nan")
    qvel[2] = 1e12
    b.reset(torch.ones(N, dtype=torch.bool), home, qvel)
    ctrl = home[:, b.info.qpos_adr]
    assert b.step(ctrl).tolist() == [False, True, True, False]
    b.reset(torch.ones(N, dtype=torch.bool), home, torch.zeros(N, b.info.nv))
    assert not b.step(ctrl).any(), "a reset clears the flag and the state"
    assert torch.isfinite(b.state().qpos).all()


def test_render_gives_uint8_frames_of_chosen_envs(warp_go2):
    frames = warp_go2.render([0, 2], 64, 48, camera="track")
    assert frames.shape == (2, 3, 48, 64) and frames.dtype == torch.uint8
    assert frames.float().std() > 1.0, "an image, not a blank buffer"


# -- agreement with CPU MuJoCo ---------------------------------------------------------------------
def test_contact_free_motion_matches_cpu_mujoco_tightly(warp_free, free_xml):
    ref = make_backend("mujoco", free_xml, N, decimation=DECIMATION)
    qpos0, qvel0, ctrl = _free_start(ref)
    d = compare(ref, warp_free, ctrl, qpos0, qvel0)
    assert d.first_exceeded(SMOOTH_TOL) is None, d.table([0.5, 1.0, 2.0])
    ref.close()


def test_changed_gravity_in_one_engine_is_detected_as_divergence(warp_free, tmp_path):
    # The same check must fail when the physics really differs: 2% weaker gravity in MuJoCo only.
    p = tmp_path / "weak_gravity.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.6))
    ref = make_backend("mujoco", str(p), N, decimation=DECIMATION)
    qpos0, qvel0, ctrl = _free_start(ref)
    d = compare(ref, warp_free, ctrl[:25], qpos0, qvel0)
    hit = d.first_exceeded(SMOOTH_TOL)
    assert hit is not None and hit[0] <= 0.2, d.table([0.1, 0.5])
    assert d.worst()["base_pos"] > 100 * SMOOTH_TOL["base_pos"]
    ref.close()


def test_go2_standing_then_stepping_matches_cpu_mujoco_within_contact_tolerance(warp_go2):
    ref = make_backend("mujoco", "go2_flat.xml", N, decimation=4, physics_dt=0.005)
    ctrl = _go2_stand_then_step(ref)
    home = torch.tensor(ref.info.home_qpos, dtype=torch.float32).expand(N, -1)
    d = compare(ref, warp_go2, ctrl, home, torch.zeros(N, ref.info.nv))
    report = d.table([0.5, 1.0, 1.5, 2.5])
    stand = d.worst(until=0.5)
    assert stand["base_pos"] < 1e-3 and stand["base_rot"] < 2e-3 and stand["joint_pos"] < 2e-3, report
    # Stepping: touchdowns one physics step apart in float32 vs float64 make velocities jump, but
    # the gait stays the same gait.
    step = d.worst()
    assert step["base_pos"] < 0.03 and step["base_rot"] < 0.05 and step["joint_pos"] < 0.1, report
    ref.close()


def test_randomized_physics_matches_cpu_mujoco(warp_go2):
    ref = make_backend("mujoco", "go2_flat.xml", N, decimation=4, physics_dt=0.005)
    p = PhysicsParams.nominal(N, ref.info.nbody)
    # Friction stays >= 0.8: below that the feet slip while standing, and slipping contacts
    # amplify float32 rounding (at 0.4 the engines differ by 0.016 rad after 0.5 s).
    p.friction = torch.tensor([0.8, 1.0, 1.3, 0.9])
    p.mass_scale = p.mass_scale * torch.tensor([1.2, 0.8, 1.0, 1.1])[:, None]
    p.com_offset = torch.tensor([[0.03, 0.0, 0.0], [0.0, -0.02, 0.0], [0.0, 0.0, 0.0], [-0.02, 0.01, 0.0]])
    p.kp_scale = torch.tensor([0.8, 1.2, 1.0, 1.0])
    p.kd_scale = torch.tensor([1.0, 0.7, 1.3, 1.0])
    p.motor_strength = torch.tensor([1.0, 1.0, 0.6, 0.8])
    everyone = torch.ones(N, dtype=torch.bool)
    for b in (ref, warp_go2):
        b.set_physics(everyone, p)
    ctrl = _go2_stand_then_step(ref, steps=25)
    home = torch.tensor(ref.info.home_qpos, dtype=torch.float32).expand(N, -1)
    d = compare(ref, warp_go2, ctrl, home, torch.zeros(N, ref.info.nv))
    w = d.worst()
    assert w["base_pos"] < 1e-3 and w["base_rot"] < 2e-3 and w["joint_pos"] < 3e-3, d.table([0.25, 0.5])
    # and the randomization did something: the heavy, soft env sits lower than the nominal one
    z = warp_go2.state().qpos[:, 2]
    assert z[0] < z[2] - 1e-3
    # nominal again: back to the model as written
    for b in (ref, warp_go2):
        b.set_physics(everyone, PhysicsParams.nominal(N, ref.info.nbody))
    ref.close()
