"""ant_velocity: Safety-Gymnasium's velocity constraint on gymnasium's ant, as a variant of ant."""

import types

import torch

from embodied.registry import make_env, task_config
from embodied.terms.costs import base_speed_over_limit


def test_cost_is_one_exactly_above_the_planar_speed_limit():
    v = torch.tensor([[2.6, 0.0, 5.0], [2.0, 1.8, 0.0], [0.0, -2.7, 0.0]])  # vertical speed is not counted
    s = types.SimpleNamespace(base_lin_vel_world=v)
    assert base_speed_over_limit(s).tolist() == [0.0, 1.0, 1.0]
    assert base_speed_over_limit(s, limit=3.0).tolist() == [0.0, 0.0, 0.0]


def test_ant_velocity_is_ant_plus_the_cost_with_1000_step_episodes():
    ant, variant = task_config("ant"), task_config("ant_velocity")
    assert variant.rewards == ant.rewards and variant.observations == ant.observations
    assert dict(variant.costs) == {"base_speed_over_limit": {"weight": 1.0, "limit": 2.6222}}
    env = make_env("ant_velocity", num_envs=2)
    assert env.max_episode_length == 1000
    qvel = env.backend.state().qvel.clone()
    qvel[:, 0] = torch.tensor([3.0, 1.0])  # env 0 runs above the limit
    env.backend.set_state(torch.ones(2, dtype=torch.bool), env.backend.state().qpos.clone(), qvel)
    out = env.step(torch.zeros(2, env.action_dim))
    assert out.cost[0] == 1.0 and out.cost[1] == 0.0
    env.close()
