"""The gymnasium and stable-baselines3 adapters work for every registered task."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from embodied.adapters.gymnasium import GymnasiumEnv, gymnasium_id, register_gymnasium_envs
from embodied.adapters.sb3 import SB3VecEnv, make_sb3_vec_env
from embodied.env import StepOut
from embodied.registry import make_env, task_names

torch.set_num_threads(1)

TASKS = task_names()
SHORT = {"episode_length_s": 0.1}  # a few control steps, so the time limit comes quickly
TINY_NET = {"net_arch": [32, 32]}


@contextmanager
def no_checker_warnings() -> Iterator[None]:
    """Fail on any warning raised by gymnasium's or SB3's own code (the checkers warn, not raise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [w for w in caught if "gymnasium" in w.filename or "stable_baselines3" in w.filename]
    assert not ours, [str(w.message) for w in ours]


def record_steps(env: GymnasiumEnv) -> list[StepOut]:
    """Keep every StepOut the batched env inside a gymnasium adapter returns."""
    outs: list[StepOut] = []
    step: Callable[[torch.Tensor], StepOut] = env.env.step

    def recording_step(action: torch.Tensor) -> StepOut:
        outs.append(step(action))
        return outs[-1]

    env.env.step = recording_step
    return outs


@pytest.mark.parametrize("task", TASKS)
def test_gymnasium_check_env_passes(task: str) -> None:
    register_gymnasium_envs()
    env = gym.make(gymnasium_id(task), render_mode="rgb_array")
    with no_checker_warnings():
        gym_check_env(env.unwrapped)  # with a spec, so render modes and close are checked too
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert env.metadata["render_fps"] == pytest.approx(1.0 / env.unwrapped.env.dt)
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_sb3_check_env_passes(task: str) -> None:
    env = GymnasiumEnv(task)
    with no_checker_warnings():
        sb3_check_env(env, warn=True)
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_gymnasium_reset_with_same_seed_gives_same_obs(task: str) -> None:
    env = GymnasiumEnv(task, seed=0)
    obs_a, _ = env.reset(seed=7)
    env.step(env.action_space.sample())
    obs_b, _ = env.reset(seed=7)
    assert obs_a.dtype == np.float32 and obs_a.shape == env.observation_space.shape
    np.testing.assert_array_equal(obs_a, obs_b)
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_gymnasium_step_returns_final_obs_when_episode_ends(task: str) -> None:
    env = GymnasiumEnv(task, overrides=SHORT)
    env.reset(seed=0)
    outs = record_steps(env)
    zero = np.zeros(env.action_space.shape, np.float32)
    for _ in range(env.env.max_episode_length):
        obs, reward, terminated, truncated, info = env.step(zero)
        assert isinstance(reward, float) and isinstance(info["cost"], float)
        if terminated or truncated:
            break
    assert truncated and not terminated
    np.testing.assert_array_equal(obs, outs[-1].info["final_obs"]["policy"][0].numpy())
    assert not np.array_equal(obs, outs[-1].obs["policy"][0].numpy())  # not the auto-reset obs
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_sb3_vec_env_shapes_and_dtypes(task: str) -> None:
    venv = make_sb3_vec_env(task, num_envs=4, seed=0)
    n, d = 4, venv.observation_space.shape[0]
    venv.seed(3)
    obs = venv.reset()
    venv.seed(3)
    np.testing.assert_array_equal(obs, venv.reset())
    assert obs.shape == (n, d) and obs.dtype == np.float32
    obs, reward, done, infos = venv.step(np.stack([venv.action_space.sample() for _ in range(n)]))
    assert obs.shape == (n, d) and obs.dtype == np.float32
    assert reward.shape == (n,) and reward.dtype == np.float32
    assert done.shape == (n,) and done.dtype == np.bool_
    assert len(infos) == n and all(isinstance(i["cost"], float) for i in infos)
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    venv.close()


@pytest.mark.parametrize("task", TASKS)
def test_sb3_vec_env_reports_time_limit(task: str) -> None:
    venv = make_sb3_vec_env(task, num_envs=3, seed=0, overrides=SHORT)
    venv.reset()
    zero = np.zeros((3, venv.action_space.shape[0]), np.float32)
    for _ in range(venv.env.max_episode_length - 1):
        *_, done, infos = venv.step(zero)
        assert all(("terminal_observation" in i) == d for i, d in zip(infos, done, strict=True))
    obs, _, done, infos = venv.step(zero)
    assert done.all()
    for i in infos:
        assert i["TimeLimit.truncated"] is True
        term = i["terminal_observation"]
        assert term.shape == venv.observation_space.shape and term.dtype == np.float32
    assert not np.array_equal(np.stack([i["terminal_observation"] for i in infos]), obs)
    venv.close()


def test_sb3_vec_env_renders_and_shares_attributes() -> None:
    venv = SB3VecEnv(make_env("go2_velocity", num_envs=2), render_mode="rgb_array", render_size=(32, 24))
    venv.reset()
    assert venv.render().shape == (48, 32, 3)  # two frames tiled
    assert venv.get_attr("dt") == [venv.env.dt] * 2
    assert venv.env_is_wrapped(gym.Wrapper) == [False, False]
    with pytest.raises(ValueError, match="whole batch"):
        venv.set_attr("dt", 1.0, indices=[0])
    venv.close()


def _weights(model: PPO | SAC) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.policy.parameters()])


def test_sb3_ppo_collects_through_adapter_and_updates_its_weights() -> None:
    # A smoke test of the SB3 loop on our batched env, not a learning test: 128 steps teach nothing.
    venv = make_sb3_vec_env("go2_velocity", num_envs=4, seed=0)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, policy_kwargs=TINY_NET, seed=0)
    before = _weights(model)
    model.learn(total_timesteps=128)
    assert model.num_timesteps == 128, "two rollouts of 16 steps x 4 envs"
    assert not torch.equal(_weights(model), before), "the updates changed the policy"
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (4, venv.action_space.shape[0]) and np.isfinite(action).all()
    venv.close()


def test_sb3_sac_collects_through_adapter_and_updates_its_weights() -> None:
    venv = make_sb3_vec_env("go2_velocity", num_envs=2, seed=0)
    model = SAC(
        "MlpPolicy",
        venv,
        learning_starts=0,
        batch_size=16,
        buffer_size=1000,
        policy_kwargs=TINY_NET,
        seed=0,
    )
    before = _weights(model)
    model.learn(total_timesteps=48)
    assert model.num_timesteps == 48 and model.replay_buffer.size() == 24, "24 steps x 2 envs stored"
    assert np.isfinite(model.replay_buffer.rewards[:24]).all()
    assert not torch.equal(_weights(model), before), "the updates changed the policy"
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (2, venv.action_space.shape[0]) and np.isfinite(action).all()
    venv.close()
