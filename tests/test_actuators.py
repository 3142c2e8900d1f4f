"""Actuator models (sim/actuators.py): ideal PD stays the native default, delay, DC motor, MLP, randomization."""

from __future__ import annotations

import pytest
import torch

from embodied.errors import ConfigError
from embodied.registry import _set_actuator, make_env, task_config
from sim.actuators import Actuator, MlpActuatorNet, parse_actuator, save_mlp_actuator
from sim.backend import SimConfigError
from sim.mujoco_backend import MujocoBackend
from sim.randomize import PhysicsParams, sample_physics
from tests.test_cli import assert_one_line_error, embodied

N = 8


def rollout(overrides: dict | None, steps: int = 30, task: str = "go2_velocity") -> torch.Tensor:
    """qpos of every step under fixed random actions, (steps, N, nq)."""
    cfg = task_config(task)
    if overrides is None:  # the task exactly as it was before actuator models existed
        cfg.pop("actuator", None)
        env = make_env(dict(cfg), num_envs=N, seed=0)
    else:
        env = make_env(task, num_envs=N, seed=0, overrides=overrides)
    gen = torch.Generator().manual_seed(0)
    env.reset(seed=0)
    out = []
    for _ in range(steps):
        env.step(torch.rand(N, env.action_dim, generator=gen) * 2 - 1)
        out.append(env.backend.state().qpos.clone())
    env.close()
    return torch.stack(out)


def actuator(cfg: dict, decimation: int = 4, n: int = 2, nu: int = 3) -> Actuator:
    return Actuator(
        cfg,
        num_envs=n,
        kp=torch.full((nu,), 35.0),
        kd=torch.full((nu,), 0.8),
        effort=torch.full((nu,), 20.0),
        ctrl_range=torch.tensor([[-10.0, 10.0]] * nu),
        physics_dt=0.005,
        decimation=decimation,
    )


def test_default_ideal_pd_is_the_native_servo_bit_identical():
    before = rollout(None)
    assert torch.equal(before, rollout({}))  # the config's placeholder: model ideal_pd
    assert torch.equal(before, rollout({"actuator": {"model": "ideal_pd"}}))
    env = make_env("go2_velocity", num_envs=2)
    assert env.backend.actuator is None  # nothing between the policy and the MJCF servos
    env.close()


def test_delay_hands_each_substep_the_target_of_delay_steps_earlier():
    act = actuator({"model": "delay", "delay_steps": 2})
    c1, c2 = torch.ones(2, 3), 2 * torch.ones(2, 3)
    first = act.targets(c1)
    assert torch.equal(first, c1[:, None].expand(-1, 4, -1).double())  # a fresh env holds its first target
    second = act.targets(c2)
    assert second[0, :, 0].tolist() == [1.0, 1.0, 2.0, 2.0]


def test_delay_longer_than_a_control_step_spans_steps():
    act = actuator({"model": "delay", "delay_steps": 6})
    for value in (1.0, 2.0):
        act.targets(torch.full((2, 3), value))
    third = act.targets(torch.full((2, 3), 3.0))
    # physics steps 8..11 see targets of steps 2..5: step 2, 3 from control step 0; 4, 5 from step 1
    assert third[0, :, 0].tolist() == [1.0, 1.0, 2.0, 2.0]


def test_delay_model_stays_in_the_native_step():
    sim = MujocoBackend("go2_flat.xml", 2, decimation=4)
    sim.set_actuator({"model": "delay", "delay_steps": 2})
    assert sim.actuator is not None and not sim.actuator.torque_mode
    assert sim.model.actuator_biasprm[0, 1] != 0  # still the MJCF position servo
    sim.step(torch.zeros(2, 12))
    sim.step(torch.ones(2, 12) * 0.1)
    assert sim._ctrl[0, :, 0].tolist() == pytest.approx([0.0, 0.0, 0.1, 0.1])
    sim.close()


def test_dc_motor_clips_torque_on_the_torque_speed_line():
    act = actuator({"model": "dc_motor", "tau_stall": 30.0, "w_free": 20.0})
    w = torch.tensor([[0.0, 5.0, -10.0], [15.0, 25.0, -2.0]], dtype=torch.float64)
    tau = act.torque(torch.full((2, 3), 5.0), torch.zeros(2, 3), w)  # 35 * 5 rad: saturated everywhere
    line = (30.0 * (1 - w.abs() / 20.0)).clamp(0.0, 20.0)  # clipped at the 20 N m effort limit
    assert torch.allclose(tau, line)
    small = act.torque(torch.full((2, 3), 0.1), torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.allclose(small, torch.full((2, 3), 3.5, dtype=torch.float64))  # the PD law below the limits


def test_dc_motor_without_saturation_tracks_the_ideal_servo():
    ideal = rollout({"actuator": {"model": "ideal_pd"}}, steps=1)
    motor = rollout({"actuator": {"model": "dc_motor", "tau_stall": [1e4] * 12, "w_free": 1e6}}, steps=1)
    # The same PD law, explicit in torch instead of implicit in the engine (implicitfast damps the
    # servo's kd inside the step): close over one control step, not bit-equal.
    assert (ideal - motor).abs().max() < 0.01


def test_dc_motor_saturation_slows_the_joints():
    ideal = rollout({"actuator": {"model": "ideal_pd"}}, steps=25)
    weak = rollout({"actuator": {"model": "dc_motor", "tau_stall": 5.0, "w_free": 3.0}}, steps=25)
    assert (ideal - weak).abs().max() > 0.05


def test_mlp_actuator_runs_from_its_file(tmp_path):
    net = MlpActuatorNet(history=3, hidden=(8,), num_joints=12)
    save_mlp_actuator(tmp_path / "a.pt", net, {"note": "test"})
    env = make_env(
        "go2_velocity", num_envs=2, overrides={"actuator": {"model": "mlp", "path": str(tmp_path / "a.pt")}}
    )
    assert env.backend.actuator.torque_mode
    out = env.step(torch.zeros(2, 12))
    assert torch.isfinite(out.obs["policy"]).all()
    env.close()


def test_mlp_actuator_fitted_on_other_joints_is_refused(tmp_path):
    save_mlp_actuator(tmp_path / "a.pt", MlpActuatorNet(3, (8,), num_joints=7), {})
    with pytest.raises(ConfigError, match="fitted on 7 joints"):
        make_env(
            "go2_velocity",
            num_envs=2,
            overrides={"actuator": {"model": "mlp", "path": str(tmp_path / "a.pt")}},
        )


def test_actuator_parameters_join_domain_randomization():
    r = {"tau_stall_scale": [0.5, 0.6], "w_free_scale": [2.0, 2.5], "actuator_delay": [1, 3]}
    over = {"actuator": {"model": "dc_motor", "tau_stall": 30.0, "w_free": 20.0}, "randomization": r}
    env = make_env("go2_velocity", num_envs=64, seed=0, overrides=over)
    act = env.backend.actuator
    assert (
        (act.stall >= 30.0 * 0.5 * 0.85 - 1e-9) & (act.stall <= 30.0 * 0.6 * 1.15 + 1e-9)
    ).all()  # x motor_strength
    assert ((act.wfree >= 40.0) & (act.wfree <= 50.0)).all()
    assert set(act.delay.tolist()) == {1, 2, 3}
    out = env.step(torch.zeros(64, 12))
    assert 1.0 <= float(out.info["log/dr/actuator_delay"]) <= 3.0
    env.close()


def test_randomization_without_actuator_keys_draws_the_same_numbers():
    base = dict(task_config("go2_velocity").randomization)
    for k in ("latency_steps", "push"):
        base.pop(k)
    a = sample_physics(base, 16, 5, torch.Generator().manual_seed(3), torch.device("cpu"))
    b = sample_physics({**base, "w_free_scale": [0.5, 1.5]}, 16, 5, torch.Generator().manual_seed(3), "cpu")
    for name in ("friction", "mass_scale", "com_offset", "motor_strength", "kp_scale", "kd_scale"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.w_free_scale, torch.ones(16)) and not torch.equal(b.w_free_scale, torch.ones(16))
    assert "w_free_scale" not in a.configured_means(base)
    assert PhysicsParams.nominal(4, 2).actuator_delay.tolist() == [0.0] * 4


def test_unknown_actuator_model_is_a_one_line_error():
    with pytest.raises(SimConfigError, match="unknown actuator model 'servo'"):
        parse_actuator({"model": "servo"})
    p = embodied("train", "task=go2_velocity", "task.actuator=servo", "num_envs=4", "train.max_iterations=1")
    assert_one_line_error(p, "unknown actuator model 'servo'", "ideal_pd")


def test_bad_actuator_keys_and_values_are_refused():
    with pytest.raises(SimConfigError, match="unknown dc_motor actuator key"):
        parse_actuator({"model": "dc_motor", "stall": 3})
    with pytest.raises(SimConfigError, match="needs path"):
        parse_actuator("mlp")
    with pytest.raises(SimConfigError, match="w_free must be finite and > 0"):
        actuator({"model": "dc_motor", "w_free": -1.0})
    with pytest.raises(SimConfigError, match="delay_steps >= 1"):
        actuator({"model": "delay"})


def test_engine_without_actuator_models_refuses_all_but_ideal_pd():
    class Plain:
        def close(self) -> None:
            pass

    _set_actuator(Plain(), "genesis", None)  # the default is fine everywhere
    with pytest.raises(SimConfigError, match="genesis engine runs only the ideal_pd"):
        _set_actuator(Plain(), "genesis", {"model": "dc_motor"})


def test_randomized_delay_alone_delays_the_ideal_servo():
    over = {"actuator": {"model": "ideal_pd"}, "randomization": {"actuator_delay": [2, 3]}}
    env = make_env("go2_velocity", num_envs=16, seed=0, overrides=over)
    act = env.backend.actuator
    assert act is not None and not act.torque_mode and set(act.delay.tolist()) == {2, 3}
    env.step(torch.zeros(16, 12))
    env.close()
