"""GAE by hand, and the time-limit bootstrap in PPO.process_env_step."""

import pytest
import torch

from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.env import StepOut
from embodied.rollout import compute_gae
from policies import ActorCritic
from policies.spec import TensorSpec

torch.set_num_threads(1)

REWARDS = torch.tensor([[1.0], [2.0], [3.0]])  # (T=3, N=1)
VALUES = torch.tensor([[0.5], [1.0], [1.5]])
LAST_VALUES = torch.tensor([2.0])
GAMMA, LAM = 0.9, 0.5
SPEC = {"policy": TensorSpec((2,)), "critic": TensorSpec((3,))}


def test_gae_matches_hand_computation():
    dones = torch.zeros(3, 1, dtype=torch.bool)
    returns, advantages = compute_gae(REWARDS, VALUES, dones, LAST_VALUES, GAMMA, LAM)
    # delta2 = 3 + 0.9*2.0 - 1.5 = 3.3                      A2 = 3.3
    # delta1 = 2 + 0.9*1.5 - 1.0 = 2.35   A1 = 2.35 + 0.45*3.3   = 3.835
    # delta0 = 1 + 0.9*1.0 - 0.5 = 1.4    A0 = 1.4  + 0.45*3.835 = 3.12575
    torch.testing.assert_close(advantages, torch.tensor([[3.12575], [3.835], [3.3]]))
    torch.testing.assert_close(returns, torch.tensor([[3.62575], [4.835], [4.8]]))


def test_gae_cuts_bootstrap_at_terminal():
    dones = torch.tensor([[False], [True], [False]])
    returns, advantages = compute_gae(REWARDS, VALUES, dones, LAST_VALUES, GAMMA, LAM)
    # The episode ends at t=1: delta1 = 2 - 1.0 = 1.0 and A1 = 1.0, nothing of t=2 flows back.
    # delta0 = 1 + 0.9*1.0 - 0.5 = 1.4, A0 = 1.4 + 0.45*1.0 = 1.85. t=2 starts a new episode: A2 = 3.3.
    torch.testing.assert_close(advantages, torch.tensor([[1.85], [1.0], [3.3]]))
    torch.testing.assert_close(returns, torch.tensor([[2.35], [2.0], [4.8]]))

    # Done on the last step: last_values must not be used at all (A2 = 3 - 1.5).
    dones_last = torch.tensor([[False], [False], [True]])
    _, adv_a = compute_gae(REWARDS, VALUES, dones_last, torch.tensor([2.0]), GAMMA, LAM)
    _, adv_b = compute_gae(REWARDS, VALUES, dones_last, torch.tensor([-50.0]), GAMMA, LAM)
    torch.testing.assert_close(adv_a, adv_b)
    assert adv_a[2, 0].item() == pytest.approx(1.5)


def _linear_critic_ppo(gamma: float) -> PPO:
    """PPO whose critic is exactly V(c) = c[0] + 5 (no hidden layers, no normalization)."""
    ac = ActorCritic(SPEC, 1, actor_hidden_dims=(8,), critic_hidden_dims=(), normalize_obs=False)
    with torch.no_grad():
        ac.critic[-1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        ac.critic[-1].bias.fill_(5.0)
    return PPO(ac, num_envs=4, cfg=PPOConfig(num_steps_per_env=2, gamma=gamma))


def test_timeout_bootstraps_value():
    ppo = _linear_critic_ppo(gamma=0.9)
    ppo.act({"policy": torch.zeros(4, 2), "critic": torch.zeros(4, 3)})
    # rows: 0 time limit, 1 terminal (and time limit), 2 running, 3 terminal
    terminated = torch.tensor([False, True, False, True])
    truncated = torch.tensor([True, True, False, False])
    reset_obs = torch.full((4, 3), -100.0)  # what V must NOT be evaluated on
    final_critic = torch.tensor([[2.0, 0, 0], [3.0, 0, 0], [9.0, 9, 9], [4.0, 0, 0]])
    out = StepOut(
        obs={"policy": torch.zeros(4, 2), "critic": reset_obs},
        reward=torch.ones(4),
        cost=torch.zeros(4),
        terminated=terminated,
        truncated=truncated,
        info={"final_obs": {"policy": torch.zeros(4, 2), "critic": final_critic}},
    )
    ppo.process_env_step(out)
    # Row 0: 1 + 0.9 * V(final) = 1 + 0.9 * (2 + 5) = 7.3; every other row keeps its raw reward.
    torch.testing.assert_close(ppo.storage.rewards[0], torch.tensor([7.3, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(ppo.storage.dones[0], torch.tensor([True, True, False, True]))


def test_timeout_without_final_obs_is_an_error():
    ppo = _linear_critic_ppo(gamma=0.9)
    ppo.act({"policy": torch.zeros(4, 2), "critic": torch.zeros(4, 3)})
    out = StepOut(
        obs={"policy": torch.zeros(4, 2), "critic": torch.zeros(4, 3)},
        reward=torch.ones(4),
        cost=torch.zeros(4),
        terminated=torch.zeros(4, dtype=torch.bool),
        truncated=torch.tensor([True, False, False, False]),
    )
    with pytest.raises(KeyError, match="final_obs"):
        ppo.process_env_step(out)
