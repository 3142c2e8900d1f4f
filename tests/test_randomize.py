"""Domain randomization: per-env physics factors, latency, pushes and observation noise."""

from __future__ import annotations

import pytest
import torch

from embodied.errors import ConfigError
from embodied.registry import make_env

N = 8
DR = {
    "friction": [0.5, 1.25],
    "mass_scale": [0.8, 1.2],
    "com_offset": 0.03,
    "motor_strength": [0.8, 1.2],
    "kp_scale": [0.9, 1.1],
    "kd_scale": [0.9, 1.1],
}


def _env(randomization, seed=0, **task):
    return make_env("go2_velocity", num_envs=N, seed=seed, overrides={"randomization": randomization, **task})


def test_physics_factors_reach_each_envs_model():
    env = _env(DR)
    backend, p = env.backend, env.physics
    nominal = backend.model
    for i in range(N):
        m = backend._models[i]
        assert m is not nominal
        assert torch.allclose(
            torch.as_tensor(m.geom_friction[:, 0]),
            torch.as_tensor(nominal.geom_friction[:, 0]) * p.friction[i].double(),
        )
        assert abs(m.body_mass[1] - nominal.body_mass[1] * p.mass_scale[i, 1].item()) < 1e-5
        assert (
            abs(m.actuator_forcerange[0, 1] - nominal.actuator_forcerange[0, 1] * p.motor_strength[i].item())
            < 1e-5
        )
    assert p.friction.min() >= 0.5 and p.friction.max() <= 1.25
    assert p.friction.std() > 0, "each env draws its own factors"


def test_randomization_is_resampled_only_for_reset_envs():
    env = _env(DR)
    before = env.physics.friction.clone()
    mask = torch.zeros(N, dtype=torch.bool)
    mask[:3] = True
    env.reset(mask)
    assert torch.equal(env.physics.friction[3:], before[3:])
    assert not torch.equal(env.physics.friction[:3], before[:3])


def test_randomized_physics_changes_the_dynamics():
    def height_after(randomization):
        env = _env(
            randomization, seed=1, reset={"joint_pos_noise": 0.0, "base_vel_noise": 0.0, "yaw_range": 0.0}
        )
        for _ in range(50):
            env.step(torch.zeros(N, env.action_dim))
        return env.state.base_pos[:, 2]

    weak = height_after({"kp_scale": [0.3, 0.3]})
    nominal = height_after({})
    assert (weak < nominal - 0.01).all(), "softer servos sag more under the same load"


def test_latency_delays_actions_by_the_sampled_steps():
    env = _env({"latency_steps": [2, 2]})
    a = [torch.full((N, env.action_dim), v) for v in (0.1, 0.2, 0.3, 0.4)]
    applied = [env._delay(x) for x in a]
    assert torch.equal(applied[0], torch.zeros_like(a[0]))  # nothing sent yet: the home pose
    assert torch.equal(applied[2], a[0]) and torch.equal(applied[3], a[1])


def test_push_kicks_the_base_at_its_interval():
    env = _env({"push": {"interval_s": 0.1, "max_vel": 1.0}}, reset={"base_vel_noise": 0.0})
    speeds = []
    for _ in range(6):
        env.step(torch.zeros(N, env.action_dim))
        speeds.append(env.state.base_lin_vel_world[:, :2].norm(dim=-1).mean().item())
    assert max(speeds) > 0.2, speeds


def test_observation_noise_is_seeded_and_configurable():
    # go2_velocity's config: joint_vel (columns 24:36 of both groups) is noisy for the policy only
    a = make_env("go2_velocity", num_envs=N, seed=2)
    b = make_env("go2_velocity", num_envs=N, seed=2)
    oa, ob = a.step(torch.zeros(N, 12)).obs, b.step(torch.zeros(N, 12)).obs
    assert torch.equal(oa["policy"], ob["policy"]), "noise comes from the env's seeded generator"
    diff = (oa["policy"][:, 24:36] - oa["critic"][:, 24:36]).abs()
    assert diff.max() > 0.01 and diff.max() <= 1.5 * 0.05 + 1e-6, (
        "policy view noisy within bounds, critic clean"
    )
    quiet = make_env(
        "go2_velocity",
        num_envs=N,
        seed=2,
        overrides={"observations": {"policy": {"joint_vel": {"noise": 0.0}}}},
    )
    oq = quiet.step(torch.zeros(N, 12)).obs
    assert torch.allclose(oq["policy"][:, 24:36], oq["critic"][:, 24:36])


@pytest.mark.parametrize(
    ("randomization", "message"),
    [
        ({"frictoin": [0.5, 1.0]}, "unknown randomization key 'frictoin'"),
        ({"friction": [1.5, 0.5]}, "0 < lo <= hi"),
        ({"latency_steps": [2, 1]}, "latency_steps"),
    ],
)
def test_bad_randomization_config_is_a_clear_error(randomization, message):
    with pytest.raises(ConfigError, match=message):
        _env(randomization).step(torch.zeros(N, 12))
