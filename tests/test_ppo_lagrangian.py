"""PPO-Lagrangian: the multiplier updates by hand, the combined advantage, state, and a constraint kept."""

import pytest
import torch

from embodied.algorithms import build_algorithm
from embodied.algorithms.lagrange import LagrangeConfig, LagrangeMultiplier
from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.algorithms.ppo_lagrangian import PPOLagrangian
from embodied.env import StepOut
from embodied.errors import ConfigError
from embodied.rollout import compute_gae
from policies import ActorCritic
from tests.test_ppo import SPEC, PointMass1D


class CostlyPointMass(PointMass1D):
    """The reward pulls the point to x = 1; a cost of 1 is paid on every step with x > 0.5."""

    def step(self, action: torch.Tensor) -> StepOut:
        out = super().step(action)
        x = out.info["final_obs"]["policy"][:, 0]
        out.reward = 1.0 - (x - 1.0).square()
        out.cost = (x > 0.5).float()
        return out


def test_gradient_multiplier_ascends_on_the_constraint_violation_and_stays_non_negative():
    m = LagrangeMultiplier(LagrangeConfig(cost_limit=25.0, multiplier="gradient", lambda_lr=0.1))
    assert m.update(30.0) == pytest.approx(0.5)
    assert m.update(30.0) == pytest.approx(1.0)
    assert m.update(0.0) == 0.0  # 1.0 + 0.1 * (0 - 25) < 0


def test_pid_multiplier_by_hand():
    raw = {"p_ema": 0.0, "d_ema": 0.0, "d_delay": 1}  # the textbook PID on the raw episode cost
    m = LagrangeMultiplier(LagrangeConfig(cost_limit=10.0, multiplier="pid", kp=0.1, ki=0.01, kd=0.5, **raw))
    assert m.update(20.0) == pytest.approx(0.1 * 10 + 0.01 * 10)  # no rise on the first update
    assert m.update(30.0) == pytest.approx(0.1 * 20 + 0.01 * 30 + 0.5 * 10)
    assert m.update(0.0) == pytest.approx(max(0.0, 0.1 * -10 + max(0.0, 0.01 * 20)))


def test_cost_margin_moves_the_target_under_the_limit():
    m = LagrangeMultiplier(
        LagrangeConfig(cost_limit=25.0, cost_margin=0.2, multiplier="gradient", lambda_lr=0.1)
    )
    assert m.update(22.0) == pytest.approx(0.1 * (22.0 - 20.0))  # above 20 = 0.8 x 25, below the limit
    with pytest.raises(ValueError, match=r"cost_margin must be a number in \[0, 1\)"):
        LagrangeConfig(cost_margin=1.0)


def test_averaged_pid_multiplier_by_hand():
    """OmniSafe's CPPOPID: P on an EMA of the violation, D on the rise of an EMA of J_c over d_delay."""
    cfg = LagrangeConfig(cost_limit=10.0, kp=0.1, ki=0.01, kd=0.5, p_ema=0.5, d_ema=0.5, d_delay=2)
    m = LagrangeMultiplier(cfg)
    assert m.update(20.0) == pytest.approx(0.1 * 10 + 0.01 * 10)  # the averages start at the first value
    # P: 0.5 * 10 + 0.5 * 20 = 15; D: cost average 25, 5 above the one of 1 update ago (20)
    assert m.update(30.0) == pytest.approx(0.1 * 15 + 0.01 * 30 + 0.5 * 5)
    # P: 0.5 * 15 + 0.5 * -10 = 2.5; D: cost average 12.5, below the one of 2 updates ago (20)
    assert m.update(0.0) == pytest.approx(0.1 * 2.5 + 0.01 * 20)
    restored = LagrangeMultiplier(cfg)
    restored.load_state_dict(m.state_dict())
    assert restored.update(40.0) == pytest.approx(m.update(40.0))


def test_bad_config_is_refused_in_one_line():
    with pytest.raises(ValueError, match="multiplier must be 'gradient' or 'pid'"):
        LagrangeConfig(multiplier="p")
    with pytest.raises(ValueError, match="cost_limit must be a finite number >= 0"):
        LagrangeConfig(cost_limit=-1.0)
    with pytest.raises(ValueError, match="d_delay must be an integer >= 1"):
        LagrangeConfig(d_delay=0.5)
    with pytest.raises(ValueError, match=r"p_ema must be a number in \[0, 1\)"):
        LagrangeConfig(p_ema=1.0)
    env = CostlyPointMass(4)
    with pytest.raises(ConfigError, match="unknown algo key"):
        build_algorithm("ppo_lagrangian", {"bogus": 1}, ActorCritic(SPEC, 1), _Env(env))


class _Env:
    """What an algorithm builder reads of an env."""

    def __init__(self, env):
        self.num_envs, self.device, self.obs_spec = env.num_envs, env.device, SPEC


def _lag(num_envs=8, steps=6, **lag):
    ac = ActorCritic(SPEC, 1, actor_hidden_dims=(16,), critic_hidden_dims=(16,))
    return PPOLagrangian(ac, num_envs, PPOConfig(num_steps_per_env=steps), LagrangeConfig(**lag), "cpu", SPEC)


def _collect(alg, env, obs):
    for _ in range(alg.num_steps_per_env):
        out = env.step(alg.act(obs))
        alg.process_env_step(out)
        obs = out.obs
    alg.compute_returns(obs)
    return obs


def test_the_policy_optimizes_the_combined_advantage():
    torch.manual_seed(0)
    alg = _lag(multiplier="gradient", lambda_init=1.5, lambda_lr=0.0)
    env = CostlyPointMass(8, max_episode_length=4)
    reward_adv = {}
    original = alg.storage.compute_returns

    def spy(last_values, gamma, lam):
        original(last_values, gamma, lam)
        reward_adv["a"] = alg.storage.advantages.clone()

    alg.storage.compute_returns = spy
    obs = env.reset()
    last = _collect(alg, env, obs)
    with torch.no_grad():
        _, cost_adv = compute_gae(
            alg.costs, alg.cost_values, alg.storage.dones, alg.cost_value(last), 0.99, 0.95
        )
    expected = (reward_adv["a"] - 1.5 * (cost_adv - cost_adv.mean())) / 2.5
    torch.testing.assert_close(alg.storage.advantages, expected)
    assert alg.costs.sum() > 0  # the data has costs to trade against
    stats = alg.update()
    assert stats["safety/lagrange_multiplier"] == 1.5 and "safety/episode_cost" in stats


def test_state_round_trip_keeps_the_multiplier_and_cost_critic():
    alg = _lag(multiplier="pid")
    alg.multiplier.update(40.0)
    alg.cost_critic[0].weight.data.fill_(0.3)
    state = alg.state_dict()
    fresh = _lag(multiplier="pid")
    fresh.load_state_dict(state)
    assert fresh.multiplier.state_dict() == alg.multiplier.state_dict()
    assert torch.equal(fresh.cost_critic[0].weight, alg.cost_critic[0].weight)
    with pytest.raises(ValueError, match="lacks cost_critic"):
        _lag().load_state_dict(PPO(ActorCritic(SPEC, 1), 8, PPOConfig()).state_dict())


def _train(alg, env, iterations=40):
    obs = env.reset()
    for _ in range(iterations):
        obs = _collect(alg, env, obs)
        alg.update()


@torch.no_grad()
def _episode_cost(ac, n=128):
    env = CostlyPointMass(n, seed=5)
    obs, cost = env.reset(seed=5), torch.zeros(n)
    for _ in range(env.max_episode_length):
        out = env.step(ac.act_inference(obs))
        cost += out.cost
        obs = out.obs
    return cost.mean().item()


def test_the_constraint_is_kept_where_ppo_breaks_it():
    torch.manual_seed(0)
    ppo = PPO(ActorCritic(SPEC, 1, (32, 32), (32, 32)), 64, PPOConfig(num_steps_per_env=24))
    _train(ppo, CostlyPointMass(64, seed=0))
    torch.manual_seed(0)
    ac = ActorCritic(SPEC, 1, (32, 32), (32, 32))
    lag = PPOLagrangian(ac, 64, PPOConfig(num_steps_per_env=24), LagrangeConfig(cost_limit=2.0), "cpu", SPEC)
    _train(lag, CostlyPointMass(64, seed=0))
    unconstrained, constrained = _episode_cost(ppo.actor_critic), _episode_cost(ac)
    assert unconstrained > 20.0, unconstrained  # PPO parks the point at x = 1, inside the cost region
    assert constrained < 0.5 * unconstrained, (constrained, unconstrained, lag.multiplier.value)


def test_rate_estimate_feeds_the_multiplier_the_cost_per_step_times_the_episode_steps():
    """cost_estimate=rate: J_c is this rollout's mean cost per step x the episode's steps, so the
    multiplier answers the current policy, not episodes that started many updates ago."""
    torch.manual_seed(0)
    ac = ActorCritic(SPEC, 1, actor_hidden_dims=(16,), critic_hidden_dims=(16,))
    lag = LagrangeConfig(cost_limit=1.0, multiplier="gradient", lambda_lr=0.1, cost_estimate="rate")
    alg = PPOLagrangian(ac, 8, PPOConfig(num_steps_per_env=6), lag, "cpu", SPEC, episode_steps=50)
    env = CostlyPointMass(8, max_episode_length=100)  # no episode ends in this rollout
    env.step = _with_cost(env.step, torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]))
    _collect(alg, env, env.reset())
    assert alg._finished_costs[0].numel() == 0  # the episode window has nothing yet
    assert alg._cost_rate_estimate == pytest.approx(50 / 8)  # 1/8 cost per step x 50 steps
    assert alg.multiplier.value == pytest.approx(0.1 * (50 / 8 - 1.0))
    assert alg.update()["safety/episode_cost_estimate"] == pytest.approx(50 / 8)
    with pytest.raises(ConfigError, match="needs the env's episode length"):
        PPOLagrangian(ac, 8, PPOConfig(num_steps_per_env=6), lag, "cpu", SPEC)
    with pytest.raises(ValueError, match="cost_estimate must be 'episodes' or 'rate'"):
        LagrangeConfig(cost_estimate="window")


def _with_cost(step, cost):
    def stepped(action):
        out = step(action)
        out.cost = cost.clone()
        return out

    return stepped
