"""Task reward terms evaluated on an observation vector reproduce the env's reward where computable."""

from __future__ import annotations

import pytest
import torch

from embodied.cli import compose
from embodied.wm_terms import rewards_on_prediction
from embodied.workflow import build_env


def _steps(task: str, n: int = 8, steps: int = 12):
    env = build_env(compose([f"task={task}", f"num_envs={n}"]))
    g = torch.Generator().manual_seed(0)
    obs = env.reset()
    for _ in range(steps):
        action = torch.rand(n, env.action_dim, generator=g) * 2 - 1
        out = env.step(action)
        yield env, obs, out, out.info.get("applied_action", action)
        obs = out.obs


@pytest.mark.parametrize("task", ["arm_reach", "arm_push"])
def test_arm_rewards_recomputed_from_critic_observations_equal_the_env_reward(task: str) -> None:
    for env, obs, out, applied in _steps(task):
        reward, used, skipped = rewards_on_prediction(
            env, "critic", obs["critic"], out.info["final_obs"]["critic"], applied
        )
        assert skipped == [] and len(used) == len(env.rewards)
        torch.testing.assert_close(reward, out.reward, rtol=1e-5, atol=1e-6)


def test_terms_needing_what_the_observation_lacks_are_reported_not_guessed() -> None:
    env, obs, out, applied = next(iter(_steps("go2_velocity", steps=1)))
    _, used, skipped = rewards_on_prediction(
        env, "critic", obs["critic"], out.info["final_obs"]["critic"], applied
    )
    assert {"feet_air_time", "undesired_contacts", "joint_torques_l2"} <= set(skipped)
    assert "track_lin_vel_xy_exp" in used
    env, obs, out, applied = next(iter(_steps("driving_lane_follow", steps=1)))
    reward, used, skipped = rewards_on_prediction(
        env, "critic", obs["critic"], out.info["final_obs"]["critic"], applied
    )
    assert used == [] and "route_progress" in skipped and bool((reward == 0).all())
