"""MuJoCo Warp and Genesis: the SimBackend contract, each engine's errors, and agreement with CPU
MuJoCo, in one module parametrized over the two engines.

Tolerances differ by engine and live in ``ENGINES`` (each engine's CPU device, float32, against
MuJoCo's float64; measured figures in docs/engines.md). MuJoCo Warp runs MuJoCo's own algorithms:
contact-free motion agrees to ~2e-5 over 2 s, the Go2 standing under PD to ~2e-4 rad, stepping open
loop to ~1 cm / 0.02 rad after 2.5 s. Genesis has its own integrator and contact solver: contact-free
motion to 1e-4 m and 1e-5 rad on joints (5e-3 rad on a tumbling body), the Go2 standing to 1e-4,
stepping to 5 mm / 0.02 rad after 1.5 s and 5 cm / 0.3 rad after 2.5 s.

Every backend here is built once per module and engine (a cached Genesis build still takes seconds,
a cold one minutes: see docs/engines.md); the Go2 backend has the contract tests' size, so Genesis
shares that scene with tests/test_env_contract.py through its scene pool.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import pytest
import torch

from sim import backend as sim_backend
from sim.backend import BACKENDS, SimConfigError, available_backends, make_backend
from sim.consistency import compare
from sim.randomize import PhysicsParams
from tests.conftest import engine_params, engine_skip

# A free-tumbling box (first joint: the floating base) and a two-link arm under position servos;
# nothing collides, so the engines integrate the same smooth dynamics. The touch sensor is one
# Genesis cannot compute.
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
DECIMATION = 4
GO2 = {"decimation": 4, "physics_dt": 0.005}


@dataclass(frozen=True)
class Engine:
    """What differs between the engines: how hard the smooth model is driven, the tolerances of the
    cross-engine checks, and each engine's own options, errors and cache."""

    name: str
    go2_envs: int  # Go2 worlds; the trot's amplitude grows by 5 % per env
    spin: tuple[float, float, float]  # the tumbler's initial angular velocity (rad/s), env 0
    arm_amplitude: float  # of the arm's sinusoidal servo targets (rad)
    smooth_tol: dict[str, float]  # contact-free motion over the whole 2 s
    sensor_tol: dict[str, tuple[float, float]]  # sensor -> (atol, rtol of its largest value) vs MuJoCo
    gravity_caught_by_s: float  # 2 % weaker gravity in MuJoCo exceeds smooth_tol by then
    gravity_excess: float  # ... and its worst base_pos error is this many times the tolerance
    go2_tol: tuple[tuple[float | None, dict[str, float]], ...]  # (until s, None: all), Go2 gait
    randomized_tol: dict[str, float] | None  # randomized Go2 standing vs MuJoCo; None: not checked
    reset_atol: float  # a masked reset writes qpos exactly (0) or through the engine's layout
    restarts_blown_up: bool  # the engine itself restarts a blown-up env from the initial state
    uncomputable: dict[str, str] = field(default_factory=dict)  # sensor -> why it reads NaN
    cuda_option: tuple[dict[str, str], str] = ({}, "")  # option asking for GPU physics, its error
    cache: tuple[str, str, str] = ("", "", "")  # module of default_cache_dir, env variable, subdir


SENSORS = ("elbow_pos", "shoulder_torque", "tumbler_quat", "corner_pos", "corner_vel", "tumbler_gyro")
SENSORS += ("tip_pos", "tip_touch")
STAND = {"base_pos": 1e-3, "base_rot": 2e-3, "joint_pos": 2e-3}
ENGINES = {
    "mjwarp": Engine(
        name="mjwarp",
        go2_envs=4,
        spin=(3.0, 0.5, 0.2),
        arm_amplitude=0.8,
        smooth_tol={"base_pos": 1e-4, "base_rot": 1e-4, "joint_pos": 1e-4, "qvel": 1e-3},
        # The same sensor code at the same point of the step: float32 rounding (~1e-6 measured).
        sensor_tol={name: (1e-5, 1e-5) for name in SENSORS},
        gravity_caught_by_s=0.2,
        gravity_excess=100.0,
        # Stepping: touchdowns one physics step apart in float32 vs float64 make velocities jump,
        # but the gait stays the same gait.
        go2_tol=((0.5, STAND), (None, {"base_pos": 0.03, "base_rot": 0.05, "joint_pos": 0.1})),
        randomized_tol={"base_pos": 1e-3, "base_rot": 2e-3, "joint_pos": 3e-3},
        reset_atol=0.0,
        restarts_blown_up=False,
        cuda_option=({"warp_device": "cuda:0"}, "finds no CUDA device"),
        cache=("sim.mjwarp_backend", "EMBODIED_WARP_CACHE", "warp"),
    ),
    "genesis": Engine(
        name="genesis",
        go2_envs=6,  # the contract tests' size: the scene is shared with them
        # The servos stay below their force limits: where MuJoCo's force saturates it drops the
        # servo's implicit damping, Genesis keeps it, and the arms then accelerate differently.
        spin=(1.0, 0.3, 0.1),
        arm_amplitude=0.15,
        # A free box tumbling torque-free drifts ~1.4e-3 rad/s apart in orientation (the engines
        # integrate free-body rotation slightly differently); the rest agrees to float32 rounding.
        smooth_tol={"base_pos": 1e-4, "base_rot": 5e-3, "joint_pos": 1e-5, "qvel": 5e-3},
        # Genesis reads sensors after the last physics step, MuJoCo before its integration: one
        # physics step apart.
        sensor_tol={
            "elbow_pos": (0.02, 0.0),
            "shoulder_torque": (0.1, 0.0),
            "tumbler_quat": (0.05, 0.0),
            **{name: (0.05, 0.05) for name in ("corner_pos", "tip_pos", "corner_vel", "tumbler_gyro")},
        },
        gravity_caught_by_s=0.3,
        gravity_excess=10.0,
        # Two contact solvers touch down at different physics steps; the gait stays the same gait.
        go2_tol=(
            (0.5, {"base_pos": 1e-4, "base_rot": 5e-4, "joint_pos": 1e-3}),
            (1.5, {"base_pos": 5e-3, "base_rot": 0.02, "joint_pos": 0.05}),
            (None, {"base_pos": 0.05, "base_rot": 0.3, "joint_pos": 0.3}),
        ),
        randomized_tol=None,
        reset_atol=1e-6,
        restarts_blown_up=True,
        uncomputable={"tip_touch": "mjSENS_TOUCH"},
        cuda_option=({"backend": "gpu"}, "CUDA is not available"),
        cache=("sim.genesis_setup", "EMBODIED_GENESIS_CACHE", "genesis"),
    ),
}
OPTIONAL = {"mjwarp": ("mujoco_warp", "mujoco-warp"), "genesis": ("genesis", "genesis-world")}
ENGINE_PARAMS = engine_params(engines=tuple(ENGINES))


def only(*names: str) -> pytest.MarkDecorator:
    """Runs a test on these engines only (a behaviour the others do not have)."""
    return pytest.mark.parametrize("engine", engine_params(engines=names), indirect=True)


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def engine(request) -> Engine:
    return ENGINES[request.param]


@pytest.fixture(scope="module")
def free_xml(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("engines") / "free_and_arm.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.81))
    return str(p)


@pytest.fixture(scope="module")
def free(engine, free_xml):
    b = make_backend(engine.name, free_xml, N, decimation=DECIMATION)
    yield b
    b.close()


@pytest.fixture(scope="module")
def go2(engine):
    b = make_backend(engine.name, "go2_flat.xml", engine.go2_envs, **GO2)
    yield b
    b.close()


def _free_start(b, e: Engine) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tumbling, rising box and a sinusoidally driven arm: (qpos0, qvel0, ctrl (T, N, 2))."""
    steps = 100  # 2 s
    qpos0 = torch.tensor(b.info.home_qpos, dtype=torch.float32).expand(N, -1).clone()
    qvel0 = torch.zeros(N, b.info.nv)
    qvel0[:, 0:3] = torch.tensor([0.1, 0.0, 2.0])
    qvel0[:, 3:6] = torch.tensor(e.spin) * (1 + 0.1 * torch.arange(N))[:, None]
    t = torch.arange(steps)[:, None, None] * b.physics_dt * b.decimation
    wave = torch.sin(2 * math.pi * 0.7 * t + torch.tensor([0.0, 1.0]))
    return qpos0, qvel0, e.arm_amplitude * wave * torch.ones(steps, N, 2)


def _go2_stand_then_step(b, steps: int = 125) -> torch.Tensor:
    """PD targets (T, N, 12): home pose for 0.5 s, then a trot-like sinusoid ramped in over 0.5 s."""
    home = torch.tensor(b.info.home_qpos, dtype=torch.float32)[b.info.qpos_adr]
    t = torch.arange(steps)[:, None, None] * b.physics_dt * b.decimation
    phase = torch.tensor([0.0, math.pi, math.pi, 0.0]).repeat_interleave(3)  # FL+RR, FR+RL
    amp = torch.tensor([0.0, 0.15, 0.25]).repeat(4)  # hip, thigh, calf (rad)
    ramp = ((t - 0.5) / 0.5).clamp(0.0, 1.0)
    per_env = (1 + 0.05 * torch.arange(b.num_envs))[:, None]
    return home + ramp * amp * torch.sin(2 * math.pi * 2.0 * t + phase) * per_env


def _home(b) -> tuple[torch.Tensor, torch.Tensor]:
    n = b.num_envs
    return torch.tensor(b.info.home_qpos, dtype=torch.float32).expand(n, -1), torch.zeros(n, b.info.nv)


def _ref_go2(n: int):
    return make_backend("mujoco", "go2_flat.xml", n, **GO2)


# -- errors (no simulation needed) ------------------------------------------------------------------
def test_unknown_engine_lists_the_known_ones():
    with pytest.raises(SimConfigError, match=r"unknown sim engine 'bullet'.*mjwarp.*genesis") as e:
        make_backend("bullet", "go2_flat.xml", 1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(ENGINES))
def test_missing_package_names_the_pip_extra(monkeypatch, name):
    module, dist = OPTIONAL[name]
    real = sim_backend.importlib.util.find_spec
    monkeypatch.setattr(
        sim_backend.importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a)
    )
    assert name not in available_backends() and "mujoco" in available_backends()
    assert sim_backend.unavailable_reason(name).startswith(f"{name} needs `pip install -e .[{name}]`")
    with pytest.raises(SimConfigError, match=rf"{name} needs `pip install -e \.\[{name}\]` \({dist}\)"):
        make_backend(name, "go2_flat.xml", 1)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"num_envs": 0}, "num_envs must be >= 1, got 0"),
        ({"decimation": 0}, "decimation must be >= 1, got 0"),
        ({"nthread": 0}, "nthread must be >= 1, got 0"),
        ({"num_envs": 2.5}, "num_envs must be an integer >= 1, got 2.5"),
        ({"physics_dt": 0.0}, "physics_dt must be a positive number of seconds, got 0.0"),
        ({"physics_dt": float("nan")}, "physics_dt must be a positive number of seconds, got nan"),
        ({"device": "meta"}, "runs on cpu or cuda devices, got meta"),
    ],
)
@pytest.mark.parametrize("name", engine_params(engines=BACKENDS))
def test_every_engine_refuses_the_same_bad_arguments_in_one_line(name, bad, message):
    args = {"num_envs": 1, "device": "cpu", **bad}
    n, device = args.pop("num_envs"), args.pop("device")
    with pytest.raises(SimConfigError, match=message) as e:
        make_backend(name, "go2_flat.xml", n, device, **args)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(engine):
    with pytest.raises(SimConfigError, match="CUDA is not available") as e:
        make_backend(engine.name, "go2_flat.xml", 1, device="cuda")
    assert "\n" not in str(e.value)
    option, message = engine.cuda_option
    with pytest.raises(SimConfigError, match=message) as e:
        make_backend(engine.name, "go2_flat.xml", 1, options=option)
    assert "\n" not in str(e.value)


TENDON = '<tendon><fixed name="t"><joint joint="shoulder" coef="1"/></fixed></tendon><actuator>'


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        pytest.param(
            "mjwarp",
            ("<option ", '<option solver="PGS" '),
            r"mjwarp cannot simulate .*mjSOL_PGS",
            marks=engine_skip("mjwarp"),
        ),
        pytest.param(
            "genesis", ("<actuator>", TENDON), "does not support tendons", marks=engine_skip("genesis")
        ),
        pytest.param(
            "genesis",
            (ELBOW, '<cylinder name="elbow" joint="elbow"/>'),
            "does not support actuator dynamics mjDYN_FILTER",
            marks=engine_skip("genesis"),
        ),
        pytest.param(
            "genesis",
            (ELBOW, '<general name="elbow" joint="elbow" gaintype="affine"/>'),
            "does not support non-fixed actuator gains",
            marks=engine_skip("genesis"),
        ),
    ],
)
def test_model_feature_the_engine_lacks_is_a_one_line_error_naming_it(tmp_path, name, edit, message):
    xml = FREE_AND_ARM.format(gravity=-9.81).replace(*edit)
    assert xml != FREE_AND_ARM.format(gravity=-9.81)
    p = tmp_path / "m.xml"
    p.write_text(xml)
    with pytest.raises(SimConfigError, match=message) as e:
        make_backend(name, str(p), 1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        pytest.param(
            "mjwarp",
            {"nconmaxx": 10},
            r"unknown mjwarp option.*nconmaxx.*known: warp_device",
            marks=engine_skip("mjwarp"),
        ),
        pytest.param(
            "genesis",
            {"cache_dirr": "/tmp"},
            r"unknown genesis option.*cache_dirr.*known: backend",
            marks=engine_skip("genesis"),
        ),
        pytest.param(
            "genesis", {"precision": "16"}, "precision must be 32 or 64", marks=engine_skip("genesis")
        ),
        pytest.param("mujoco", {"warp_device": "cpu"}, r"unknown mujoco option.*known: none"),
    ],
)
def test_unknown_option_is_refused(name, options, message):
    with pytest.raises(SimConfigError, match=message) as e:
        make_backend(name, "go2_flat.xml", 1, options=options)
    assert "\n" not in str(e.value)


def test_kernel_cache_dir_comes_from_env_then_xdg(monkeypatch, tmp_path, engine):
    module, variable, subdir = engine.cache
    default_cache_dir = importlib.import_module(module).default_cache_dir
    monkeypatch.setenv(variable, str(tmp_path / "kc"))
    assert default_cache_dir() == tmp_path / "kc"
    monkeypatch.delenv(variable)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "embodied" / subdir


# -- contract -----------------------------------------------------------------------------------
def test_one_step_is_decimation_physics_steps_and_state_has_contract_shapes(free, engine):
    b = free
    b.reset(torch.ones(N, dtype=torch.bool), *_free_start(b, engine)[:2])
    unstable = b.step(torch.zeros(N, b.info.nu))
    st = b.state()
    assert unstable.shape == (N,) and unstable.dtype == torch.bool and not unstable.any()
    assert torch.allclose(st.time, torch.full((N,), DECIMATION * 0.005))
    assert st.qpos.shape == (N, 9) and st.qvel.shape == (N, 8) and st.sensordata.shape == (N, 19)
    assert all(x.dtype == torch.float32 and x.device == b.device for x in (st.qpos, st.qvel, st.sensordata))
    assert b.joint_names == ["free", "shoulder", "elbow"] and b.actuator_names == ["shoulder", "elbow"]


def test_sensors_match_cpu_mujoco_and_an_uncomputable_one_is_refused(free, engine, free_xml):
    ref = make_backend("mujoco", free_xml, N, decimation=DECIMATION)
    assert free.sensor_names == ref.sensor_names
    for name in ref.sensor_names:
        if name in engine.uncomputable:
            with pytest.raises(SimConfigError, match=rf"cannot compute sensor '{name}' \(") as e:
                free.sensor(name)
            assert engine.uncomputable[name] in str(e.value) and "\n" not in str(e.value)
        else:
            assert free.sensor(name) == ref.sensor(name)
    with pytest.raises(SimConfigError, match="no sensor named"):
        free.sensor("nope")
    qpos0, qvel0, ctrl = _free_start(ref, engine)
    everyone = torch.ones(N, dtype=torch.bool)
    for b in (ref, free):
        b.reset(everyone, qpos0, qvel0)
        for u in ctrl[:10]:
            b.step(u)
    g, r = free.state().sensordata, ref.state().sensordata
    for name in engine.uncomputable:
        adr = int(free.model.sensor_adr[free.sensor_names.index(name)])
        assert torch.isnan(g[:, adr]).all(), "never silent zeros"
    assert set(engine.sensor_tol) | set(engine.uncomputable) == set(ref.sensor_names) == set(SENSORS)
    for name, (atol, rtol) in engine.sensor_tol.items():
        sl = ref.sensor(name)
        assert (g[:, sl] - r[:, sl]).abs().max() < atol + rtol * r[:, sl].abs().max(), name
    # Sensors are evaluated around the last physics step: the joint sensor follows the joint.
    qpos = free.state().qpos
    assert torch.allclose(g[:, ref.sensor("elbow_pos")], qpos[:, 8:9], atol=0.05)
    assert torch.allclose(g[:, ref.sensor("tumbler_quat")].norm(dim=1), torch.ones(N), atol=1e-5)
    ref.close()


def test_masked_reset_writes_only_masked_rows_and_restarts_their_clock(free, engine):
    b = free
    qpos0, qvel0, _ = _free_start(b, engine)
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
    assert torch.allclose(after.qpos[mask], new[mask], rtol=0, atol=engine.reset_atol)
    assert (after.qvel[mask] == 0).all()
    assert (after.time[mask] == 0).all() and (after.time[~mask] > 0).all()
    computable = ~torch.isnan(after.sensordata[0])
    assert computable.sum() == 19 - len(engine.uncomputable)
    assert (after.sensordata[mask][:, computable] == 0).all(), (
        "a reset env's sensors are unknown until stepped"
    )
    assert torch.allclose(after.sensordata[~mask], before.sensordata[~mask], rtol=0, atol=0, equal_nan=True)


def test_state_is_a_snapshot_that_later_steps_do_not_change(free):
    st = free.state()
    qpos = st.qpos.clone()
    free.step(torch.full((N, 2), 0.1))
    assert torch.equal(st.qpos, qpos)
    assert not torch.equal(free.state().qpos, qpos)


@only("mjwarp")
def test_same_inputs_give_bitwise_identical_states(engine, free_xml):
    runs = []
    for _ in range(2):
        b = make_backend(engine.name, free_xml, N, decimation=DECIMATION)
        qpos0, qvel0, ctrl = _free_start(b, engine)
        b.reset(torch.ones(N, dtype=torch.bool), qpos0, qvel0)
        for u in ctrl[:20]:
            b.step(u)
        runs.append(b.state())
        b.close()
    assert torch.equal(runs[0].qpos, runs[1].qpos) and torch.equal(runs[0].sensordata, runs[1].sensordata)


@only("genesis")
def test_closed_backend_scene_is_reused_restored_to_the_initial_state(engine, free_xml, free):
    b = make_backend(engine.name, free_xml, 2, decimation=DECIMATION)  # its own size: its own scene
    q0 = b.state().qpos.clone()
    b.set_physics(torch.ones(2, dtype=torch.bool), PhysicsParams.nominal(2, b.info.nbody))
    for _ in range(5):
        b.step(torch.full((2, 2), 0.5))
    scene = b.scene
    b.close()
    again = make_backend(engine.name, free_xml, 2, decimation=DECIMATION)
    assert again.scene is scene, "the pooled scene, not a new build"
    assert torch.equal(again.state().qpos, q0) and (again.state().time == 0).all()
    again.close()


def test_blow_up_is_flagged_only_for_the_envs_that_blew_up(go2, engine):
    b = go2
    home, zeros = _home(b)
    qvel = zeros.clone()
    qvel[1] = float("nan")
    qvel[2] = 1e12
    everyone = torch.ones(go2.num_envs, dtype=torch.bool)
    b.reset(everyone, home, qvel)
    ctrl = home[:, b.info.qpos_adr]
    assert b.step(ctrl).tolist() == [False, True, True] + [False] * (b.num_envs - 3)
    if engine.restarts_blown_up:
        assert torch.isfinite(b.state().qpos).all(), "a blown-up env restarts from the initial state"
    b.reset(everyone, home, zeros)
    assert not b.step(ctrl).any(), "a reset clears the flag and the state"
    assert torch.isfinite(b.state().qpos).all()


def test_go2_sensors_see_feet_on_the_ground_and_match_cpu_mujoco(go2):
    ref = _ref_go2(go2.num_envs)
    home, zeros = _home(ref)
    ctrl = home[:, ref.info.qpos_adr]
    for b in (ref, go2):
        b.reset(torch.ones(go2.num_envs, dtype=torch.bool), home, zeros)
        for _ in range(25):
            b.step(ctrl)
    g, r = go2.state().sensordata, ref.state().sensordata
    feet = [go2.sensor(f"{leg}_foot_contact").start for leg in ("FL", "FR", "RL", "RR")]
    assert (g[:, feet] > 0).all() and (r[:, feet] > 0).all(), "standing: every foot touches the floor"
    assert (g[:, go2.sensor("trunk_contact")] == 0).all()
    pos = [c for leg in ("FL", "FR", "RL", "RR") for c in range(*go2.sensor(f"{leg}_foot_pos").indices(99))]
    assert torch.allclose(g[:, pos], r[:, pos], atol=0.01)
    torque = slice(go2.sensor("FL_hip_torque").start, go2.sensor("RR_calf_torque").stop)
    assert torch.allclose(g[:, torque], r[:, torque], atol=1.5), "standing torques within 1.5 N m"
    ref.close()


def test_render_gives_uint8_frames_of_chosen_envs(go2):
    frames = go2.render([0, 2], 64, 48, camera="track")
    assert frames.shape == (2, 3, 48, 64) and frames.dtype == torch.uint8
    assert frames.float().std() > 1.0, "an image, not a blank buffer"


# -- agreement with CPU MuJoCo ---------------------------------------------------------------------
def test_contact_free_motion_matches_cpu_mujoco_tightly(free, engine, free_xml):
    ref = make_backend("mujoco", free_xml, N, decimation=DECIMATION)
    qpos0, qvel0, ctrl = _free_start(ref, engine)
    d = compare(ref, free, ctrl, qpos0, qvel0)
    assert d.first_exceeded(engine.smooth_tol) is None, d.table([0.5, 1.0, 2.0])
    ref.close()


def test_changed_gravity_in_one_engine_is_detected_as_divergence(free, engine, tmp_path):
    # The same check must fail when the physics really differs: 2% weaker gravity in MuJoCo only.
    p = tmp_path / "weak_gravity.xml"
    p.write_text(FREE_AND_ARM.format(gravity=-9.6))
    ref = make_backend("mujoco", str(p), N, decimation=DECIMATION)
    qpos0, qvel0, ctrl = _free_start(ref, engine)
    d = compare(ref, free, ctrl[:25], qpos0, qvel0)
    hit = d.first_exceeded(engine.smooth_tol)
    assert hit is not None and hit[0] <= engine.gravity_caught_by_s, d.table([0.1, 0.5])
    assert d.worst()["base_pos"] > engine.gravity_excess * engine.smooth_tol["base_pos"]
    ref.close()


def test_go2_standing_then_stepping_matches_cpu_mujoco_within_contact_tolerance(go2, engine):
    ref = _ref_go2(go2.num_envs)
    d = compare(ref, go2, _go2_stand_then_step(ref), *_home(ref))
    report = d.table([0.5, 1.0, 1.5, 2.5])
    for until, tol in engine.go2_tol:
        worst = d.worst(until=until)
        assert all(worst[k] < v for k, v in tol.items()), (until, report)
    ref.close()


def _randomized(n: int, nbody: int) -> PhysicsParams:
    """Per-env factors for up to 6 envs: env 0 heavy and soft, env 1 nominal, the rest mixed."""
    p = PhysicsParams.nominal(n, nbody)
    # Friction stays >= 0.8: below that the feet slip while standing, and slipping contacts
    # amplify float32 rounding (at 0.4 the engines differ by 0.016 rad after 0.5 s).
    p.friction = torch.tensor([1.0, 1.0, 0.8, 1.3, 0.9, 1.0])[:n]
    p.mass_scale = p.mass_scale * torch.tensor([1.3, 1.0, 0.8, 1.0, 1.1, 1.0])[:n, None]
    com = [
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.03, 0.0, 0.0],
        [0.0, -0.02, 0.0],
        [-0.02, 0.01, 0.0],
        [0.0] * 3,
    ]
    p.com_offset = torch.tensor(com)[:n]
    p.kp_scale = torch.tensor([0.7, 1.0, 0.8, 1.2, 1.0, 1.0])[:n]
    p.kd_scale = torch.tensor([1.0, 1.0, 1.0, 0.7, 1.3, 1.0])[:n]
    p.motor_strength = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.6, 0.5])[:n]
    return p


def test_randomized_physics_changes_the_robot_and_nominal_restores_it(go2):
    b = go2
    everyone = torch.ones(go2.num_envs, dtype=torch.bool)
    b.set_physics(everyone, _randomized(go2.num_envs, b.info.nbody))
    home, zeros = _home(b)
    b.reset(everyone, home, zeros)
    for _ in range(25):
        b.step(home[:, b.info.qpos_adr])
    z = b.state().qpos[:, 2]
    assert z[0] < z[1] - 2e-3, "the heavy, soft env sits lower than the nominal one"
    b.set_physics(everyone, PhysicsParams.nominal(go2.num_envs, b.info.nbody))
    b.reset(everyone, home, zeros)
    for _ in range(25):
        b.step(home[:, b.info.qpos_adr])
    z = b.state().qpos[:, 2]
    assert torch.allclose(z, z[1].expand_as(z), atol=1e-5), "nominal again: the model as written"


@only(*(name for name, e in ENGINES.items() if e.randomized_tol is not None))
def test_randomized_physics_matches_cpu_mujoco(go2, engine):
    ref = _ref_go2(go2.num_envs)
    p = _randomized(go2.num_envs, ref.info.nbody)
    everyone = torch.ones(go2.num_envs, dtype=torch.bool)
    for b in (ref, go2):
        b.set_physics(everyone, p)
    d = compare(ref, go2, _go2_stand_then_step(ref, steps=25), *_home(ref))
    w = d.worst()
    assert all(w[k] < v for k, v in engine.randomized_tol.items()), d.table([0.25, 0.5])
    for b in (ref, go2):
        b.set_physics(everyone, PhysicsParams.nominal(go2.num_envs, ref.info.nbody))
    ref.close()
