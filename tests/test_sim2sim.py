"""sim2sim: the verdict passes a sound export and fails a broken one; bad input is refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from embodied.errors import ConfigError
from embodied.export import export_from_env
from embodied.sim2sim import episode_perturbations, sim2sim
from embodied.workflow import build_env, load_policy
from sim.backend import unavailable_reason
from tests.test_cli import embodied
from tests.test_train_e2e import TINY

QUICK = {
    "episodes": 2,
    "episode_s": 2.0,
    "warmup_s": 0.5,
    "commands": {"lin_vel_x": [0.0, 0.0], "lin_vel_y": [0.0, 0.0], "ang_vel_yaw": [0.0, 0.0]},
    "fall": {"max_tilt": 1.0, "min_height": 0.15},
    # standing still: the verdict turns on falls, the error ratio of two near-zero errors is noise
    "thresholds": {"max_falls": 0, "max_tracking_ratio": 1000.0},
    "video": False,
    "presets": {"nominal": {}, "heavy": {"mass_scale": [1.2, 1.2]}},
}


@pytest.fixture(scope="module")
def standing_run(tmp_path_factory) -> Path:
    """A tiny run whose exported policy outputs action 0: targets = the home pose, so it stands."""
    run = tmp_path_factory.mktemp("s2s") / "run"
    p = embodied(
        "train", *TINY, "train.max_iterations=1", "train.evaluate=false", f"run_dir={run}", timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = OmegaConf.load(run / "config.yaml")
    env = build_env(cfg, num_envs=2)
    ac, _ = load_policy(run, cfg, env, None)
    with torch.no_grad():
        ac.actor[-1].weight.zero_()
        ac.actor[-1].bias.zero_()
    export_from_env(env, ac, cfg.task, run / "exported", steps=5)
    env.close()
    return run


@pytest.fixture
def quick_config(tmp_path) -> Path:
    path = tmp_path / "sim2sim.yaml"
    path.write_text(yaml.safe_dump(QUICK))
    return path


def test_sound_export_passes(standing_run, quick_config):
    r = sim2sim(standing_run, target="mujoco", preset_name="heavy", config_path=quick_config)
    assert r["verdict"] == "PASS" and r["falls"] == 0
    out = Path(r["out_dir"])
    assert (out / "report.json").is_file() and (out / "tracking.png").stat().st_size > 1000


@contextmanager
def reversed_joint_order(run: Path) -> Iterator[None]:
    """The run's deploy.yaml with the same joints in the wrong order (restored afterwards)."""
    deploy = run / "exported" / "deploy.yaml"
    original = deploy.read_text()
    m = yaml.safe_load(original)
    m["joints"]["names"] = list(reversed(m["joints"]["names"]))
    deploy.write_text(yaml.safe_dump(m))
    try:
        yield
    finally:
        deploy.write_text(original)


def test_shuffled_joint_order_in_deploy_yaml_fails(standing_run, quick_config, tmp_path):
    with reversed_joint_order(standing_run):
        r = sim2sim(standing_run, target="mujoco", preset_name="nominal", config_path=quick_config)
    assert r["verdict"] == "FAIL" and r["falls"] > 0


def test_cli_exits_0_on_pass(standing_run):
    # Two episodes command vx = 0 and 1 m/s (configs/sim2sim.yaml). The policy stands still in both
    # engines, so each engine's error is ~0.5 m/s on average: a tracking ratio of ~1, no fall.
    p = embodied("sim2sim", f"run={standing_run}", "perturb=nominal", "episodes=2", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert "falls 0 " in p.stdout and p.stdout.splitlines()[-1].startswith("PASS")


def test_cli_exits_1_on_fail(standing_run):
    with reversed_joint_order(standing_run):
        p = embodied("sim2sim", f"run={standing_run}", "perturb=nominal", "episodes=1", timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr[-2000:]
    assert "falls 1 " in p.stdout and p.stdout.splitlines()[-1].startswith("FAIL")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "bullet", "preset_name": "nominal"}, "unknown sim2sim target 'bullet'"),
        ({"target": "mujoco", "preset_name": "hurricane"}, "unknown perturbation preset 'hurricane'"),
    ],
)
def test_bad_target_or_preset_is_refused(standing_run, quick_config, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sim2sim(standing_run, config_path=quick_config, **kwargs)


def test_run_without_export_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="no exported policy"):
        sim2sim(tmp_path, target="mujoco", preset_name="nominal")


def test_unknown_preset_via_cli_is_one_line(standing_run):
    p = embodied("sim2sim", f"run={standing_run}", "perturb=typhoon")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown perturbation preset" in p.stderr


def test_presets_cover_their_corners_first():
    perts = episode_perturbations(
        {"mass_scale": [0.8, 1.2], "friction_scale": [0.5, 1.25], "latency_s": 0.02}, 6, 0
    )
    corners = {(p["mass_scale"], p["friction_scale"]) for p in perts[:4]}
    assert corners == {(0.8, 0.5), (0.8, 1.25), (1.2, 0.5), (1.2, 1.25)}
    assert all(p["latency_s"] == 0.02 for p in perts)
    assert all(0.8 <= p["mass_scale"] <= 1.2 for p in perts[4:])


def test_backend_robot_on_mujoco_follows_the_mujoco_robot():
    """The same targets through the batched MuJoCo backend and through one MjData: the same motion."""
    import numpy as np

    from embodied.deploy import MujocoRobot, Perturbation
    from embodied.deploy.backend_robot import BackendRobot
    from sim.assets import resolve_model_path

    model = resolve_model_path("go2_flat.xml")
    pert = Perturbation(mass_scale=1.1, latency_s=0.01)
    a = MujocoRobot(model, physics_dt=0.005, decimation=4, perturb=pert)
    b = BackendRobot("mujoco", model, physics_dt=0.005, decimation=4, perturb=pert)
    assert a.joint_names == b.joint_names and b.latency_steps == 2
    q0 = a.read().joint_pos
    kp, kd = np.full(12, 20.0), np.full(12, 0.5)
    for t in range(25):
        q = q0 + 0.2 * np.sin(0.3 * t)
        for r in (a, b):
            r.write_targets(q, kp, kd)
            r.advance()
    ra, rb = a.read(), b.read()
    np.testing.assert_allclose(ra.joint_pos, rb.joint_pos, atol=2e-3)
    np.testing.assert_allclose(a.base_state().pos, b.base_state().pos, atol=2e-3)
    with pytest.raises(Exception, match="one factor"):
        b.write_targets(q0, np.linspace(10, 30, 12), kd)
    a.close()
    b.close()


@pytest.mark.skipif(unavailable_reason("genesis") is not None, reason="genesis-world is not installed")
def test_sim2sim_into_genesis_runs_the_exported_files(standing_run, quick_config):
    r = sim2sim(standing_run, target="genesis", preset_name="nominal", config_path=quick_config)
    assert r["target_engine"] == "genesis" and r["verdict"] == "PASS" and r["falls"] == 0
    assert r["target"]["steps"] == [100, 100] and "diverged" in r["limit_hits"]


def test_arm_and_car_runs_refuse_a_non_mujoco_target(tmp_path):
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "deploy.yaml").write_text("{}")
    (tmp_path / "config.yaml").write_text("task: {family: manipulation}\n")
    with pytest.raises(ConfigError, match="checked in mujoco"):
        sim2sim(tmp_path, target="genesis", preset_name="nominal")


def test_a_preset_may_give_the_robot_its_own_actuator():
    """``actuator:`` in a preset puts a sim/actuators.py model on the target robot (here a weak DC
    motor): its torques stay under the stall torque and the joints follow less; it is not a
    perturbation, and a bad one is a one-line error."""
    import numpy as np

    from embodied.deploy import DeployError
    from embodied.deploy.backend_robot import BackendRobot
    from embodied.sim2sim import episode_perturbations
    from sim.assets import resolve_model_path

    model = resolve_model_path("go2_flat.xml")
    weak = {"model": "dc_motor", "tau_stall": 2.0, "w_free": 20.0}
    robots = [BackendRobot("mujoco", model, physics_dt=0.005, decimation=4, actuator=a) for a in (None, weak)]
    q0 = robots[0].read().joint_pos
    kp, kd = robots[0]._kp0.copy(), robots[0]._kd0.copy()
    moved = []
    for r in robots:
        for _ in range(10):
            r.write_targets(q0 + 0.4, kp, kd)
            r.advance()
        moved.append(float(np.abs(r.read().joint_pos - q0).mean()))
    assert robots[0].backend.actuator is None and robots[1].backend.actuator.model == "dc_motor"
    assert float(robots[1].backend.actuator.last_torque.abs().max()) <= 2.0 + 1e-9
    assert abs(moved[1] - moved[0]) > 0.05, moved  # 2 N m cannot hold the trunk up: the legs give way
    for r in robots:
        r.close()
    assert episode_perturbations({"actuator": weak, "latency_s": 0.01}, 2, 0) == [{"latency_s": 0.01}] * 2
    with pytest.raises(DeployError, match="robot actuator") as e:
        BackendRobot("mujoco", model, physics_dt=0.005, decimation=4, actuator={"model": "warp_drive"})
    assert "\n" not in str(e.value)
