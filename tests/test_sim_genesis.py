"""The Genesis backend: the SimBackend contract, its errors, and agreement with CPU MuJoCo.

Every Genesis scene here is built once per module (a cached build still takes seconds, a cold one
minutes: see docs/engines.md); the go2 scene has the size the contract tests use, so the two
modules share it through the backend's scene pool. Tolerances of the cross-engine checks (Genesis
float32 against MuJoCo float64; measured figures in docs/engines.md): contact-free motion to 1e-4 m
and 1e-5 rad on joints (5e-3 rad on a tumbling body) over 2 s, the Go2 standing under PD to 1e-4,
stepping open loop to 5 mm / 0.02 rad after 1.5 s and 5 cm / 0.3 rad after 2.5 s.
"""

from __future__ import annotations

import math

import pytest
import torch

from sim import backend as sim_backend
from sim.backend import SimConfigError, available_backends, make_backend
from sim.consistency import compare
from sim.randomize import PhysicsParams

HAVE_GENESIS = "genesis" in available_backends()
needs_genesis = pytest.mark.skipif(not HAVE_GENESIS, reason="genesis-world is not installed")

# A free-tumbling box (the floating base) and a two-link arm under position servos; nothing
# collides, so both engines integrate the same smooth dynamics. The touch sensor is one Genesis
# cannot compute.
FREE_AND_ARM = """
<mujoco>
  <option timestep="0.005" integrator="implicitfast" gravity="0 0 {gravity}"/>
  <worldbody>
    <body name="tumbler" pos="0 0 1">
      <freejoint name="free"/>
      <geom type="box" size="0.1 0.05 0.02" mass="1" contype="0" conaffinity="0"/>
      <site name="corner" pos="0.1 0.05 0.02"/>
    </body>
    <body name="upper" pos="1 0 1">
      <joint name="shoulder" type="hinge" axis="0 1 0" damping="0.05" armature="0.01"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03" mass="0.5" contype="0" conaffinity="0"/>
      <body name="lower" pos="0.3 0 0">
        <joint name="elbow" type="hinge" axis="0 1 0" damping="0.05" armature="0.01"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.025" mass="0.3" contype="0" conaffinity="0"/>
        <site name="tip" pos="0.3 0 0" size="0.03"/>
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
    <framepos name="corner_pos" objtype="site" objname="corner"/>
    <framelinvel name="corner_vel" objtype="site" objname="corner"/>
    <gyro name="tumbler_gyro" site="corner"/>
    <framepos name="tip_pos" objtype="site" objname="tip"/>
    <touch name="tip_touch" site="tip"/>
  </sensor>
</mujoco>
"""
ELBOW = '<position name="elbow" joint="elbow" kp="10" kv="0.5" forcerange="-3 3"/>'
N = 4
N_GO2 = 6  # the contract tests' size: the scene is shared with them
DECIMATION = 4
# A free box tumbling torque-free drifts ~1.4e-3 rad/s apart in orientation (the engines integrate
# free-body rotation slightly differently); everything else agrees to float32 rounding.
SMOOTH_TOL = {"base_pos": 1e-4, "base_rot": 5e-3, "joint_pos": 1e-5, "qvel": 5e-3}


@pytest.fixture(scope="module")
def free_xml(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("genesis") / "free_and_arm.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.81))
    return str(p)


@pytest.fixture(scope="module")
def gen_free(free_xml):
    pytest.importorskip("genesis")
    b = make_backend("genesis", free_xml, N, decimation=DECIMATION)
    yield b
    b.close()


@pytest.fixture(scope="module")
def gen_go2():
    pytest.importorskip("genesis")
    b = make_backend("genesis", "go2_flat.xml", N_GO2, decimation=4, physics_dt=0.005)
    yield b
    b.close()


def _free_start(b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tumbling, rising box and a sinusoidally driven arm: (qpos0, qvel0, ctrl (T, N, 2)).

    The servos stay below their force limits: where MuJoCo's force saturates it drops the servo's
    implicit damping, Genesis keeps it, and the arms then accelerate differently (docs/engines.md).
    """
    steps = 100  # 2 s
    qpos0 = torch.tensor(b.info.home_qpos, dtype=torch.float32).expand(N, -1).clone()
    qvel0 = torch.zeros(N, b.info.nv)
    qvel0[:, 0:3] = torch.tensor([0.1, 0.0, 2.0])
    qvel0[:, 3:6] = torch.tensor([1.0, 0.3, 0.1]) * (1 + 0.1 * torch.arange(N))[:, None]
    t = torch.arange(steps)[:, None, None] * b.physics_dt * b.decimation
    ctrl = 0.15 * torch.sin(2 * math.pi * 0.7 * t + torch.tensor([0.0, 1.0])) * torch.ones(steps, N, 2)
    return qpos0, qvel0, ctrl


def _go2_stand_then_step(b, steps: int = 125) -> torch.Tensor:
    """PD targets (T, N, 12): home pose for 0.5 s, then a trot-like sinusoid ramped in over 0.5 s."""
    n = b.num_envs
    home = torch.tensor(b.info.home_qpos, dtype=torch.float32)[b.info.qpos_adr]
    t = torch.arange(steps)[:, None, None] * b.physics_dt * b.decimation
    phase = torch.tensor([0.0, math.pi, math.pi, 0.0]).repeat_interleave(3)  # FL+RR, FR+RL
    amp = torch.tensor([0.0, 0.15, 0.25]).repeat(4)  # hip, thigh, calf (rad)
    ramp = ((t - 0.5) / 0.5).clamp(0.0, 1.0)
    per_env = (1 + 0.05 * torch.arange(n))[:, None]
    return home + ramp * amp * torch.sin(2 * math.pi * 2.0 * t + phase) * per_env


def _home(b) -> tuple[torch.Tensor, torch.Tensor]:
    n = b.num_envs
    return torch.tensor(b.info.home_qpos, dtype=torch.float32).expand(n, -1), torch.zeros(n, b.info.nv)


# -- errors (no Genesis build needed) -----------------------------------------------------------
def test_missing_package_names_the_pip_extra(monkeypatch):
    real = sim_backend.importlib.util.find_spec
    monkeypatch.setattr(
        sim_backend.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "genesis" else real(name, *a),
    )
    assert "genesis" not in available_backends() and "mujoco" in available_backends()
    with pytest.raises(
        SimConfigError, match=r"genesis needs `pip install -e \.\[genesis\]` \(genesis-world\)"
    ):
        make_backend("genesis", "go2_flat.xml", 1)


@needs_genesis
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(SimConfigError, match="CUDA is not available") as e:
        make_backend("genesis", "go2_flat.xml", 1, device="cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(SimConfigError, match="CUDA is not available"):
        make_backend("genesis", "go2_flat.xml", 1, options={"backend": "gpu"})


@needs_genesis
@pytest.mark.parametrize(
    ("edit", "feature"),
    [
        (
            (
                "<actuator>",
                '<tendon><fixed name="t"><joint joint="shoulder" coef="1"/></fixed></tendon><actuator>',
            ),
            "tendons",
        ),
        ((ELBOW, '<cylinder name="elbow" joint="elbow"/>'), "actuator dynamics mjDYN_FILTER"),
        ((ELBOW, '<general name="elbow" joint="elbow" gaintype="affine"/>'), "non-fixed actuator gains"),
    ],
)
def test_model_feature_the_engine_lacks_is_a_one_line_error_naming_it(tmp_path, edit, feature):
    xml = FREE_AND_ARM.format(gravity=-9.81).replace(*edit)
    assert xml != FREE_AND_ARM.format(gravity=-9.81)
    p = tmp_path / "m.xml"
    p.write_text(xml)
    with pytest.raises(SimConfigError, match=f"genesis backend does not support {feature}") as e:
        make_backend("genesis", str(p), 1)
    assert "\n" not in str(e.value)


@needs_genesis
def test_unknown_option_is_refused():
    with pytest.raises(SimConfigError, match=r"unknown genesis option.*cache_dirr.*known: backend"):
        make_backend("genesis", "go2_flat.xml", 1, options={"cache_dirr": "/tmp"})
    with pytest.raises(SimConfigError, match="precision must be 32 or 64"):
        make_backend("genesis", "go2_flat.xml", 1, options={"precision": "16"})


@needs_genesis
def test_kernel_cache_dir_comes_from_env_then_xdg(monkeypatch, tmp_path):
    from sim.genesis_setup import default_cache_dir

    monkeypatch.setenv("EMBODIED_GENESIS_CACHE", str(tmp_path / "kc"))
    assert default_cache_dir() == tmp_path / "kc"
    monkeypatch.delenv("EMBODIED_GENESIS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "embodied" / "genesis"


# -- contract -----------------------------------------------------------------------------------
def test_one_step_is_decimation_physics_steps_and_state_has_contract_shapes(gen_free):
    b = gen_free
    b.reset(torch.ones(N, dtype=torch.bool), *_free_start(b)[:2])
    unstable = b.step(torch.zeros(N, b.info.nu))
    st = b.state()
    assert unstable.shape == (N,) and unstable.dtype == torch.bool and not unstable.any()
    assert torch.allclose(st.time, torch.full((N,), DECIMATION * 0.005))
    assert st.qpos.shape == (N, 9) and st.qvel.shape == (N, 8) and st.sensordata.shape == (N, 19)
    assert all(x.dtype == torch.float32 and x.device == b.device for x in (st.qpos, st.qvel, st.sensordata))
    assert b.joint_names == ["free", "shoulder", "elbow"] and b.actuator_names == ["shoulder", "elbow"]


def test_sensors_match_cpu_mujoco_and_an_uncomputable_one_is_refused(gen_free, free_xml):
    ref = make_backend("mujoco", free_xml, N, decimation=DECIMATION)
    assert gen_free.sensor_names == ref.sensor_names
    for name in ref.sensor_names[:-1]:
        assert gen_free.sensor(name) == ref.sensor(name)
    with pytest.raises(SimConfigError, match=r"cannot compute sensor 'tip_touch' \(mjSENS_TOUCH\)") as e:
        gen_free.sensor("tip_touch")
    assert "\n" not in str(e.value)
    with pytest.raises(SimConfigError, match="no sensor named"):
        gen_free.sensor("nope")
    qpos0, qvel0, ctrl = _free_start(ref)
    everyone = torch.ones(N, dtype=torch.bool)
    for b in (ref, gen_free):
        b.reset(everyone, qpos0, qvel0)
        for u in ctrl[:10]:
            b.step(u)
    g, r = gen_free.state().sensordata, ref.state().sensordata
    assert torch.isnan(g[:, gen_free.model.sensor_adr[-1]]).all(), "never silent zeros"
    # Genesis reads sensors after the last physics step, MuJoCo before its integration: one step apart.
    for name, tol in [("elbow_pos", 0.02), ("shoulder_torque", 0.1), ("tumbler_quat", 0.05)]:
        sl = gen_free.sensor(name)
        assert torch.allclose(g[:, sl], r[:, sl], atol=tol), name
    for name in ("corner_pos", "tip_pos", "corner_vel", "tumbler_gyro"):
        sl = gen_free.sensor(name)
        assert (g[:, sl] - r[:, sl]).abs().max() < 0.05 * (1 + r[:, sl].abs().max()), name
    ref.close()


def test_masked_reset_writes_only_masked_rows_and_restarts_their_clock(gen_free):
    b = gen_free
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
    assert torch.allclose(after.qpos[mask], new[mask], atol=1e-6) and (after.qvel[mask] == 0).all()
    assert (after.time[mask] == 0).all() and (after.time[~mask] > 0).all()
    computable = ~torch.isnan(after.sensordata[0])
    assert (after.sensordata[mask][:, computable] == 0).all(), (
        "a reset env's sensors are unknown until stepped"
    )
    assert torch.allclose(after.sensordata[~mask], before.sensordata[~mask], rtol=0, atol=0, equal_nan=True)


def test_state_is_a_snapshot_that_later_steps_do_not_change(gen_free):
    b = gen_free
    st = b.state()
    qpos = st.qpos.clone()
    b.step(torch.full((N, 2), 0.1))
    assert torch.equal(st.qpos, qpos)
    assert not torch.equal(b.state().qpos, qpos)


def test_closed_backend_scene_is_reused_restored_to_the_initial_state(free_xml, gen_free):
    b = make_backend("genesis", free_xml, 2, decimation=DECIMATION)  # its own size: its own scene
    q0 = b.state().qpos.clone()
    b.set_physics(torch.ones(2, dtype=torch.bool), PhysicsParams.nominal(2, b.info.nbody))
    for _ in range(5):
        b.step(torch.full((2, 2), 0.5))
    scene = b.scene
    b.close()
    again = make_backend("genesis", free_xml, 2, decimation=DECIMATION)
    assert again.scene is scene, "the pooled scene, not a new build"
    assert torch.equal(again.state().qpos, q0) and (again.state().time == 0).all()
    again.close()


def test_blow_up_is_flagged_only_for_the_envs_that_blew_up(gen_go2):
    b = gen_go2
    home, zeros = _home(b)
    qvel = zeros.clone()
    qvel[1] = float("nan")
    qvel[2] = 1e12
    b.reset(torch.ones(N_GO2, dtype=torch.bool), home, qvel)
    ctrl = home[:, b.info.qpos_adr]
    assert b.step(ctrl).tolist() == [False, True, True, False, False, False]
    assert torch.isfinite(b.state().qpos).all(), "a blown-up env restarts from the initial state"
    assert not b.step(ctrl).any(), "and steps normally afterwards"


def test_go2_sensors_see_feet_on_the_ground_and_match_cpu_mujoco(gen_go2):
    ref = make_backend("mujoco", "go2_flat.xml", N_GO2, decimation=4, physics_dt=0.005)
    home, zeros = _home(ref)
    ctrl = home[:, ref.info.qpos_adr]
    for b in (ref, gen_go2):
        b.reset(torch.ones(N_GO2, dtype=torch.bool), home, zeros)
        for _ in range(25):
            b.step(ctrl)
    g, r = gen_go2.state().sensordata, ref.state().sensordata
    feet = [gen_go2.sensor(f"{leg}_foot_contact").start for leg in ("FL", "FR", "RL", "RR")]
    assert (g[:, feet] > 0).all() and (r[:, feet] > 0).all(), "standing: every foot touches the floor"
    assert (g[:, gen_go2.sensor("trunk_contact")] == 0).all()
    pos = [
        c for leg in ("FL", "FR", "RL", "RR") for c in range(*gen_go2.sensor(f"{leg}_foot_pos").indices(99))
    ]
    assert torch.allclose(g[:, pos], r[:, pos], atol=0.01)
    torque = slice(gen_go2.sensor("FL_hip_torque").start, gen_go2.sensor("RR_calf_torque").stop)
    assert torch.allclose(g[:, torque], r[:, torque], atol=1.5), "standing torques within 1.5 N m"
    ref.close()


def test_render_gives_uint8_frames_of_chosen_envs(gen_go2):
    frames = gen_go2.render([0, 2], 64, 48, camera="track")
    assert frames.shape == (2, 3, 48, 64) and frames.dtype == torch.uint8
    assert frames.float().std() > 1.0, "an image, not a blank buffer"


# -- agreement with CPU MuJoCo ---------------------------------------------------------------------
def test_contact_free_motion_matches_cpu_mujoco_tightly(gen_free, free_xml):
    ref = make_backend("mujoco", free_xml, N, decimation=DECIMATION)
    qpos0, qvel0, ctrl = _free_start(ref)
    d = compare(ref, gen_free, ctrl, qpos0, qvel0)
    assert d.first_exceeded(SMOOTH_TOL) is None, d.table([0.5, 1.0, 2.0])
    ref.close()


def test_changed_gravity_in_one_engine_is_detected_as_divergence(gen_free, tmp_path):
    # The same check must fail when the physics really differs: 2% weaker gravity in MuJoCo only.
    p = tmp_path / "weak_gravity.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.6))
    ref = make_backend("mujoco", str(p), N, decimation=DECIMATION)
    qpos0, qvel0, ctrl = _free_start(ref)
    d = compare(ref, gen_free, ctrl[:25], qpos0, qvel0)
    hit = d.first_exceeded(SMOOTH_TOL)
    assert hit is not None and hit[0] <= 0.3, d.table([0.1, 0.5])
    assert d.worst()["base_pos"] > 10 * SMOOTH_TOL["base_pos"]
    ref.close()


def test_go2_standing_then_stepping_matches_cpu_mujoco_within_contact_tolerance(gen_go2):
    ref = make_backend("mujoco", "go2_flat.xml", N_GO2, decimation=4, physics_dt=0.005)
    ctrl = _go2_stand_then_step(ref)
    d = compare(ref, gen_go2, ctrl, *_home(ref))
    report = d.table([0.5, 1.0, 1.5, 2.5])
    stand = d.worst(until=0.5)
    assert stand["base_pos"] < 1e-4 and stand["base_rot"] < 5e-4 and stand["joint_pos"] < 1e-3, report
    # Stepping: two contact solvers (Genesis' and MuJoCo's) touch down at different physics steps,
    # but the gait stays the same gait.
    early = d.worst(until=1.5)
    assert early["base_pos"] < 5e-3 and early["base_rot"] < 0.02 and early["joint_pos"] < 0.05, report
    step = d.worst()
    assert step["base_pos"] < 0.05 and step["base_rot"] < 0.3 and step["joint_pos"] < 0.3, report
    ref.close()


def test_randomized_physics_changes_the_robot_and_nominal_restores_it(gen_go2):
    b = gen_go2
    everyone = torch.ones(N_GO2, dtype=torch.bool)
    p = PhysicsParams.nominal(N_GO2, b.info.nbody)
    p.mass_scale = p.mass_scale * torch.tensor([1.3, 1.0, 1.0, 1.0, 1.0, 1.0])[:, None]
    p.kp_scale = torch.tensor([0.7, 1.0, 1.0, 1.0, 1.0, 1.0])
    p.friction = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0, 1.0])
    p.com_offset = torch.tensor([[0.0, 0.0, 0.0]] * 3 + [[0.03, 0.0, 0.0]] + [[0.0, 0.0, 0.0]] * 2)
    p.kd_scale = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.2, 1.0])
    p.motor_strength = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    b.set_physics(everyone, p)
    home, zeros = _home(b)
    b.reset(everyone, home, zeros)
    for _ in range(25):
        b.step(home[:, b.info.qpos_adr])
    z = b.state().qpos[:, 2]
    assert z[0] < z[1] - 2e-3, "the heavy, soft env sits lower than the nominal one"
    b.set_physics(everyone, PhysicsParams.nominal(N_GO2, b.info.nbody))
    b.reset(everyone, home, zeros)
    for _ in range(25):
        b.step(home[:, b.info.qpos_adr])
    z = b.state().qpos[:, 2]
    assert torch.allclose(z, z[1].expand_as(z), atol=1e-5), "nominal again: the model as written"
