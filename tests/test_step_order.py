"""Reading the state has no side effects; trackers advance once per step, only for envs that stepped."""

import dataclasses

import pytest
import torch

from embodied.registry import make_env


@pytest.fixture(scope="module")
def go2():
    env = make_env(
        "go2_velocity",
        num_envs=3,
        seed=0,
        overrides={"randomization": {}, "reset": {"joint_pos_noise": 0.0, "base_vel_noise": 0.0}},
    )
    yield env
    env.close()


def _scripted_contacts(env):
    """Replace the foot-contact sensor readings by a tensor the test writes: (N, 4) of 0/1."""
    cols = env._sensor_cols["foot_contact"]
    contact = torch.ones(env.num_envs, len(cols))
    real = type(env.backend).state.__get__(env.backend)

    def state():
        st = real()
        data = st.sensordata.clone()
        data[:, cols] = contact
        return dataclasses.replace(st, sensordata=data)

    env.backend.state = state
    return contact


def test_air_time_is_the_true_airborne_duration_while_other_envs_reset(go2):
    env = go2
    contact = _scripted_contacts(env)
    try:
        env.reset()
        zero = torch.zeros(env.num_envs, env.action_dim)
        airborne = 7
        others = torch.tensor([False, True, True])
        env.step(zero)  # every foot on the ground
        contact[0, 0] = 0.0  # env 0 lifts foot 0 for `airborne` steps
        for _ in range(airborne):
            env.step(zero)
            env.reset(others)  # envs 1 and 2 reset on every one of those steps
        contact[0, 0] = 1.0
        env.step(zero)  # touchdown
        s = env.state
        assert bool(s.first_contact[0, 0]) and not bool(s.first_contact[0, 1:].any())
        # airborne through `airborne` steps and landing on the next one: that many + 1 dt of flight
        assert float(s.last_air_time[0, 0]) == pytest.approx((airborne + 1) * env.dt, abs=1e-6)
        assert float(env.air_time[0, 0]) == 0.0
    finally:
        del env.backend.state


def test_contact_and_air_time_count_the_current_phase(go2):
    env = go2
    contact = _scripted_contacts(env)
    try:
        env.reset()
        zero = torch.zeros(env.num_envs, env.action_dim)
        contact.fill_(1.0)
        for _ in range(3):
            env.step(zero)
        s = env.state
        assert torch.allclose(s.contact_time, torch.full_like(s.contact_time, 3 * env.dt))
        assert bool((s.air_time == 0).all())
        contact[:, 1] = 0.0  # foot 1 lifts off: its stance ends, its swing starts this step
        env.step(zero)
        env.step(zero)
        s = env.state
        assert torch.allclose(s.air_time[:, 1], torch.full((env.num_envs,), 2 * env.dt))
        assert bool((s.contact_time[:, 1] == 0).all())
        assert torch.allclose(s.contact_time[:, 0], torch.full((env.num_envs,), 5 * env.dt))
        env.reset(torch.tensor([True, False, False]))
        assert bool((env.contact_time[0] == 0).all()) and float(env.contact_time[1, 0]) > 0
    finally:
        del env.backend.state


def test_reading_the_state_twice_advances_nothing(go2):
    env = go2
    env.reset()
    env.step(torch.zeros(env.num_envs, env.action_dim))
    trackers = (env.air_time.clone(), env.last_action.clone(), env.last_joint_vel.clone())
    a, b = env._read_state(env.state.action), env._read_state(env.state.action)
    for before, after in zip(trackers, (env.air_time, env.last_action, env.last_joint_vel), strict=True):
        assert torch.equal(before, after)
    assert torch.equal(a.last_air_time, b.last_air_time) and torch.equal(a.first_contact, b.first_contact)


def test_last_action_advances_only_for_envs_that_stepped(go2):
    env = go2
    env.reset()
    act = torch.full((env.num_envs, env.action_dim), 0.3)
    env.step(act)
    env.reset(torch.tensor([False, True, False]))
    assert torch.allclose(env.last_action[[0, 2]], act[[0, 2]])
    assert torch.equal(env.last_action[1], torch.zeros(env.action_dim))
