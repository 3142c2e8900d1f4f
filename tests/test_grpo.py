"""GRPO: group-relative advantages, dynamic group filtering, asymmetric clipping, episode masks."""

import pytest
import torch

from embodied.algorithms import build_algorithm
from embodied.algorithms.grpo import GRPO, GRPOConfig, clipped_surrogate, group_advantages
from embodied.env import StepOut
from embodied.errors import ConfigError
from embodied.runner import Runner
from policies.actor_critic import ActorCritic
from policies.spec import TensorSpec


class SignEnv:
    """Groups share a hidden sign s = +-1 (shown in the observation); an episode of 4 steps succeeds
    when the mean action has the sign of s. An env whose first action is below -2 terminates early."""

    def __init__(self, num_envs: int = 32, group_size: int = 8, seed: int = 0) -> None:
        self.num_envs, self.group_size, self.action_dim = num_envs, group_size, 1
        self.device, self.dt, self.max_episode_length = torch.device("cpu"), 0.1, 4
        self.obs_spec = {"policy": TensorSpec((1,)), "critic": TensorSpec((1,))}
        self.g = torch.Generator().manual_seed(seed)
        self.resets = 0

    def _obs(self):
        return {"policy": self.sign[:, None].clone(), "critic": self.sign[:, None].clone()}

    def reset(self, mask=None, *, seed=None):
        self.resets += 1
        groups = self.num_envs // self.group_size
        s = torch.randint(0, 2, (groups,), generator=self.g).float() * 2 - 1
        self.sign = s.repeat_interleave(self.group_size)
        self.t = torch.zeros(self.num_envs, dtype=torch.long)
        self.sum = torch.zeros(self.num_envs)
        return self._obs()

    def step(self, action):
        a = action[:, 0]
        self.sum += a
        self.t += 1
        terminated = (self.t == 1) & (a < -2.0)
        truncated = (self.t >= self.max_episode_length) & ~terminated
        success = ((self.sum * self.sign) > 0).float() * truncated.float()
        done = terminated | truncated
        self.t = torch.where(done, 0, self.t)
        self.sum = torch.where(done, 0.0, self.sum)
        return StepOut(
            self._obs(),
            torch.zeros(self.num_envs),
            torch.zeros(self.num_envs),
            terminated,
            truncated,
            {"metric/success": success},
        )


def _policy(env):
    return ActorCritic(env.obs_spec, 1, actor_hidden_dims=(16,), critic_hidden_dims=(16,), init_noise_std=1.0)


def test_group_advantages_centre_each_group_and_flag_uniform_ones():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, informative = group_advantages(scores, 4, normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]))
    assert informative.tolist() == [True] * 4 + [False] * 4
    adv_std, _ = group_advantages(scores, 4)
    torch.testing.assert_close(adv_std[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))


def test_clip_range_is_asymmetric():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_surrogate(new, old, adv, 0.2, 0.28)
    # Positive advantage: the ratio's gain stops at 1.28; negative: its decrease stops at 0.8.
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, -0.5, 0.8]))
    assert clipped.tolist() == [True, True, True, True]


def test_only_each_envs_first_episode_is_scored_and_trained_on():
    env = SignEnv(num_envs=16, group_size=8)
    alg = GRPO(_policy(env), env, GRPOConfig(group_size=8, temperature=1.0, num_steps_per_env=6))
    obs = alg.begin_rollout(env, env.reset())
    for t in range(6):
        action = alg.act(obs)
        if t == 0:
            action[0] = -3.0  # env 0 fails at its first step
            alg.actions[0, 0] = -3.0
        out = env.step(action)
        alg.process_env_step(out)
        obs = out.obs
    assert alg.valid[:, 0].tolist() == [True] + [False] * 5
    assert alg.valid[:4, 1:].all() and not alg.valid[4:, 1:].any(), "steps after the first episode are masked"
    assert alg.success[0] == 0.0
    stats = alg.update()
    assert stats["grpo/steps_trained"] <= 1 + 4 * 15


def test_grpo_needs_matching_groups_and_a_temperature_policy():
    env = SignEnv(num_envs=16, group_size=4)
    with pytest.raises(ConfigError, match=r"task\.group_size=8"):
        GRPO(_policy(env), env, GRPOConfig(group_size=8, temperature=1.0))
    with pytest.raises(ConfigError, match="temperature"):
        GRPO(_policy(env), env, GRPOConfig(group_size=4, temperature=1.6))
    with pytest.raises(ConfigError, match="unknown algo key"):
        build_algorithm("grpo", {"kl_coef": 0.1}, _policy(env), env)
    with pytest.raises(ConfigError, match="clip_low"):
        build_algorithm("grpo", {"group_size": 4, "clip_low": 1.5}, _policy(env), env)
    with pytest.raises(ConfigError, match="multiple"):
        GRPO(_policy(SignEnv(12, 8)), SignEnv(12, 8), GRPOConfig(group_size=8, temperature=1.0))


def test_grpo_raises_success_through_the_runner(tmp_path):
    torch.manual_seed(0)
    env = SignEnv(num_envs=64, group_size=8, seed=1)
    cfg = {"group_size": 8, "temperature": 1.0, "learning_rate": 1e-3, "num_learning_epochs": 4}
    policy = _policy(env)
    last_layer = [m for m in policy.actor.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last_layer.weight)  # a zero-mean start: about half the episodes succeed
    alg = build_algorithm("grpo", cfg, policy, env)
    history = []
    runner = Runner(
        env,
        alg,
        None,
        tmp_path,
        checkpoint_meta={},
        save_interval=1000,
        on_iteration=lambda it, stats: history.append(stats["grpo/success"]),
    )
    runner.learn(40)
    assert env.resets >= 40, "every rollout starts from a reset"
    first, last = history[0], sum(history[-5:]) / 5  # a random policy succeeds about half the time
    assert first < 0.7 and last > 0.9, (first, last)
