"""train.random_episode_start: the envs' first time limits are spread over the episode."""

import torch

from embodied.registry import make_env
from embodied.runner import Runner


class Idle:
    """An algorithm that does nothing but zero actions (the Runner's protocol, no learning)."""

    num_steps_per_env = 10

    def __init__(self, env):
        self.env, self.policy = env, torch.nn.Linear(1, 1)

    def train_mode(self):
        pass

    def eval_mode(self):
        pass

    def act(self, obs):
        return torch.zeros(self.env.num_envs, self.env.action_dim)

    def process_env_step(self, out):
        self.env.truncations.append(out.truncated.clone())

    def update(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _first_truncation_steps(random_start: bool, tmp_path) -> torch.Tensor:
    env = make_env("arm_reach", num_envs=16, overrides={"episode_length_s": 2.0})
    env.truncations = []
    runner = Runner(
        env,
        Idle(env),
        None,
        tmp_path,
        checkpoint_meta={},
        save_interval=10**6,
        random_episode_start=random_start,
    )
    runner.learn(env.max_episode_length // 10 + 1)
    trunc = torch.stack(env.truncations)  # (T, N)
    env.close()
    assert trunc.any(0).all(), "every env reached its time limit once"
    return trunc.float().argmax(0)


def test_random_start_spreads_the_first_time_limits(tmp_path):
    together = _first_truncation_steps(False, tmp_path)
    spread = _first_truncation_steps(True, tmp_path)
    assert together.unique().numel() == 1, "without it every env times out on the same step"
    assert spread.unique().numel() >= 8, spread.tolist()
