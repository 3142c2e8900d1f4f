"""A registered task trained by rsl_rl's own OnPolicyRunner through embodied.adapters.rsl_rl."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("rsl_rl", reason="rsl-rl-lib is not installed (pip install embodied[rsl_rl])")
pytest.importorskip("tensordict", reason="tensordict is not installed (pip install embodied[rsl_rl])")

from rsl_rl.runners import OnPolicyRunner

from embodied.adapters.rsl_rl import RslRlVecEnv, default_train_cfg

TINY = ["num_envs=8", "task.episode_length_s=0.2", "threads.torch=1"]


def test_vec_env_gives_tensordict_groups_and_time_outs():
    env = RslRlVecEnv.from_task("go2_velocity", TINY)
    obs = env.get_observations()
    assert set(obs.keys()) >= {"policy", "critic"} and obs.batch_size == torch.Size([8])
    saw_timeout = False
    for _ in range(env.max_episode_length):
        obs, rew, dones, extras = env.step(torch.zeros(8, env.num_actions))
        assert rew.shape == (8,) and dones.dtype == torch.long
        assert extras["time_outs"].shape == (8,) and "/cost" in extras["log"]
        saw_timeout |= bool(extras["time_outs"].any())
    assert saw_timeout, "the time limit shows up as time_outs, not as a failure"
    env.close()


def test_rsl_rl_on_policy_runner_trains_two_iterations(tmp_path):
    torch.manual_seed(0)
    env = RslRlVecEnv.from_task("go2_velocity", TINY)
    cfg = default_train_cfg(num_steps_per_env=8, hidden_dims=(32, 32), save_interval=1)
    runner = OnPolicyRunner(env, cfg, log_dir=str(tmp_path), device="cpu")
    before = [p.detach().clone() for p in runner.alg.actor.parameters()]
    runner.learn(num_learning_iterations=2)
    after = list(runner.alg.actor.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True)), "the actor was updated"
    assert list(tmp_path.glob("model_*.pt")), "rsl_rl saved its checkpoint"
    env.close()
