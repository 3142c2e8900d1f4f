"""Any registered task as rsl-rl-lib 5.x's ``VecEnv``, so rsl_rl's own runners and configs train it.

    from embodied.adapters.rsl_rl import RslRlVecEnv, default_train_cfg
    from rsl_rl.runners import OnPolicyRunner

    env = RslRlVecEnv.from_task("go2_velocity", ["num_envs=64"])
    OnPolicyRunner(env, default_train_cfg(), log_dir="runs/rsl_rl", device="cpu").learn(100)

Observations are a TensorDict of the env's vector groups ("policy", "critic", ...), which
``obs_groups`` in the train config maps to rsl_rl's sets (``{"actor": ["policy"], "critic":
["critic"]}``). ``extras["time_outs"]`` marks time limits that are not failures, so rsl_rl
bootstraps through them; ``extras["log"]`` carries each reward and cost term's batch mean.
Needs ``pip install embodied[rsl_rl]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rsl_rl.env import VecEnv
from tensordict import TensorDict

from embodied.env import BatchedEnv, Obs


class RslRlVecEnv(VecEnv):
    """rsl_rl's VecEnv over a BatchedEnv: (N, ...) tensors on the env's device, dones as long."""

    def __init__(
        self, env: BatchedEnv, cfg: dict[str, Any] | None = None, groups: Sequence[str] | None = None
    ):
        self.env = env
        self.num_envs = env.num_envs
        self.num_actions = env.action_dim
        self.device = env.device
        self.cfg = dict(cfg or {})
        vector = [g for g, s in env.obs_spec.items() if getattr(s, "kind", "vector") == "vector"]
        self.groups = list(groups) if groups is not None else vector
        self.max_episode_length = int(getattr(env, "max_episode_length", 1000))
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._obs = self._tensordict(env.reset())

    @classmethod
    def from_task(
        cls, task: str, overrides: Sequence[str] = (), groups: Sequence[str] | None = None
    ) -> RslRlVecEnv:
        """The task composed as ``embodied train task=<task> <overrides>`` would build it (filters too)."""
        from omegaconf import OmegaConf

        from embodied.cli import compose
        from embodied.workflow import build_env

        cfg = compose([f"task={task}", *overrides])
        return cls(build_env(cfg), OmegaConf.to_container(cfg.task, resolve=True), groups)

    def _tensordict(self, obs: Obs) -> TensorDict:
        return TensorDict({g: obs[g] for g in self.groups}, batch_size=[self.num_envs], device=self.device)

    def get_observations(self) -> TensorDict:
        """The observation groups of the last step (or reset)."""
        return self._obs

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        """actions: (N, A) -> obs TensorDict, rewards (N,), dones (N,) long, extras (time_outs, log)."""
        out = self.env.step(actions)
        done = out.terminated | out.truncated
        self.episode_length_buf = torch.where(done, 0, self.episode_length_buf + 1)
        log = {
            "/" + k.removeprefix("log/"): v.float().mean()
            for k, v in out.info.items()
            if k.startswith("log/")
        }
        log["/cost"] = out.cost.float().mean()
        extras = {"time_outs": out.truncated & ~out.terminated, "log": log}
        self._obs = self._tensordict(out.obs)
        return self._obs, out.reward, done.long(), extras

    def close(self) -> None:
        self.env.close()


def default_train_cfg(
    num_steps_per_env: int = 24, hidden_dims: Sequence[int] = (256, 128, 64), save_interval: int = 50
) -> dict[str, Any]:
    """An rsl-rl-lib 5.x ``OnPolicyRunner`` config with our PPO defaults (configs/algo/ppo.yaml)."""
    model = {"class_name": "rsl_rl.models.MLPModel", "hidden_dims": list(hidden_dims), "activation": "elu"}
    return {
        "num_steps_per_env": num_steps_per_env,
        "save_interval": save_interval,
        "obs_groups": {"actor": ["policy"], "critic": ["critic"]},
        "actor": {
            **model,
            "obs_normalization": True,
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 1.0},
        },
        "critic": {**model, "obs_normalization": True},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": 5,
            "num_mini_batches": 4,
            "clip_param": 0.2,
            "gamma": 0.99,
            "lam": 0.95,
            "value_loss_coef": 1.0,
            "entropy_coef": 0.01,
            "learning_rate": 1e-3,
            "max_grad_norm": 1.0,
            "schedule": "adaptive",
            "desired_kl": 0.01,
        },
    }
