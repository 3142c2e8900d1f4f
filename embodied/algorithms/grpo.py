"""Group relative policy optimization for episodic tasks with a success signal (SimpleVLA-RL's recipe).

    obs = alg.begin_rollout(env, obs)  # every env starts a new episode; groups share initial states
    actions = alg.act(obs)             # sampled at ``temperature``
    out = env.step(actions)
    alg.process_env_step(out)
    ... x num_steps_per_env (one episode per env)
    stats = alg.update()

The envs are ``num_envs / group_size`` groups of ``group_size`` rollouts of the same task from the
same initial state and instruction (the env's ``group_size``, e.g. ``task.group_size=8``). Each
env's first episode in the rollout is scored once: ``reward: success`` (the task's own
``metric/success`` at the episode's last step, 0 or 1) or ``reward: return`` (the sum of the env's
reward over the episode, e.g. a VLM term alone). The advantage of every step of an episode is its
score minus its group's mean, over the group's std (``normalize_std``). Groups whose episodes all
scored the same carry no signal and are dropped (dynamic sampling). The loss is PPO's clipped
surrogate with an asymmetric range ``[1 - clip_low, 1 + clip_high]``, averaged over the kept steps,
without a value function or a KL term.

Steps after an env's first episode ended (the env auto-resets) are masked out. The policy samples
with ``temperature`` when it has a ``temperature`` attribute, and the log-probabilities of the update
use the same temperature, so the ratio compares the distribution the actions were drawn from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embodied.algorithms.base import LocalSync
from embodied.algorithms.config import check_types, parse_config
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError

REWARDS = ("success", "return")


@dataclass
class GRPOConfig:
    """GRPO hyperparameters; invalid values raise ValueError naming the field."""

    group_size: int = 8
    num_steps_per_env: int = 0  # 0: the env's episode length (one whole episode per env)
    reward: str = "success"  # success | return
    temperature: float = 1.6
    clip_low: float = 0.2
    clip_high: float = 0.28
    num_learning_epochs: int = 1
    num_mini_batches: int = 4
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    entropy_coef: float = 0.0
    normalize_std: bool = True
    drop_uniform_groups: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        if self.reward not in REWARDS:
            raise ValueError(f"GRPOConfig.reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        checks = {
            "group_size": self.group_size >= 2,
            "num_steps_per_env": self.num_steps_per_env >= 0,
            "temperature": self.temperature > 0,
            "clip_low": 0 < self.clip_low < 1,
            "clip_high": self.clip_high > 0,
            "num_learning_epochs": self.num_learning_epochs >= 1,
            "num_mini_batches": self.num_mini_batches >= 1,
            "learning_rate": self.learning_rate > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "entropy_coef": self.entropy_coef >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"GRPOConfig.{bad[0]} out of range: {getattr(self, bad[0])!r}")


def group_advantages(
    scores: torch.Tensor, group_size: int, normalize_std: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) episode scores -> (N,) advantages (score - group mean [/ group std]) and (N,) bool:
    the env's group has scores that differ (a group whose scores are all equal gives no signal)."""
    g = scores.view(-1, group_size)
    mean = g.mean(1, keepdim=True)
    adv = g - mean
    spread = (g.max(1).values - g.min(1).values) > 1e-8
    if normalize_std:
        adv = adv / (g.std(1, keepdim=True) + 1e-6)
    return adv.flatten(), spread.repeat_interleave(group_size)


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row PPO surrogate loss with ratio range [1 - low, 1 + high], and whether each row clipped."""
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = ratio.clamp(1.0 - low, 1.0 + high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    return loss, (ratio - clipped).abs() > 1e-8


class GRPO:
    """GRPO over whole episodes of env groups; the policy is any registered stochastic policy."""

    def __init__(self, policy: nn.Module, env: Any, cfg: GRPOConfig) -> None:
        self.cfg, self.actor_critic, self.env = cfg, policy, env
        self.device = torch.device(env.device)
        n = int(env.num_envs)
        env_group = int(getattr(env, "group_size", 1))
        if n % cfg.group_size != 0:
            raise ConfigError(f"num_envs={n} is not a multiple of algo.group_size={cfg.group_size}")
        if env_group != cfg.group_size:
            raise ConfigError(
                f"algo=grpo compares rollouts from identical initial states: set task.group_size="
                f"{cfg.group_size} (the task resets groups of {env_group})"
            )
        if cfg.temperature != 1.0 and not hasattr(policy, "temperature"):
            raise ConfigError(
                f"policy {type(policy).__name__} samples without a temperature; set algo.temperature=1.0"
            )
        self.steps = cfg.num_steps_per_env or int(env.max_episode_length)
        self.obs_groups = tuple(policy.obs_groups)
        spec = env.obs_spec
        missing = [g for g in self.obs_groups if g not in spec]
        if missing:
            raise ConfigError(f"the policy reads observation groups {missing} the env does not give")
        T, dev = self.steps, self.device
        self.obs = {
            g: torch.zeros(T, n, *spec[g].shape, dtype=spec[g].dtype, device=dev) for g in self.obs_groups
        }
        self.actions = torch.zeros(T, n, policy.num_actions, device=dev)
        self.log_prob = torch.zeros(T, n, device=dev)
        self.valid = torch.zeros(T, n, dtype=torch.bool, device=dev)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
        self.sync: LocalSync = LocalSync()
        self.iteration = 0
        self._reset_episode_state()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> GRPO:
        """GRPO from an ``algo`` config block (its keys are GRPOConfig's); unknown keys are errors."""
        (gcfg,) = parse_config("grpo", cfg, [GRPOConfig])
        return cls(policy, env, gcfg)

    @property
    def policy(self) -> nn.Module:
        return self.actor_critic

    @property
    def num_steps_per_env(self) -> int:
        return self.steps

    def train_mode(self) -> None:
        self.actor_critic.train()

    def eval_mode(self) -> None:
        self.actor_critic.eval()

    def _reset_episode_state(self) -> None:
        n, dev = int(self.env.num_envs), self.device
        self.t = 0
        self.alive = torch.ones(n, dtype=torch.bool, device=dev)  # still in its first episode
        self.score = torch.zeros(n, device=dev)
        self.success = torch.zeros(n, device=dev)
        self.length = torch.zeros(n, device=dev)

    def _set_temperature(self) -> None:
        if hasattr(self.actor_critic, "temperature"):
            self.actor_critic.temperature = self.cfg.temperature

    def begin_rollout(self, env: Any, obs: Obs) -> Obs:
        """Start every env on a new episode (groups share initial states) before the rollout."""
        self._reset_episode_state()
        return env.reset()

    @torch.no_grad()
    def act(self, obs: Obs) -> torch.Tensor:
        if self.t >= self.steps:
            raise RuntimeError(f"GRPO rollout is full ({self.steps} steps); call update() first")
        self._set_temperature()
        kept = {g: obs[g] for g in self.obs_groups}
        actions = self.actor_critic.act(kept)
        for g in self.obs_groups:
            self.obs[g][self.t].copy_(kept[g])
        self.actions[self.t].copy_(actions)
        self.log_prob[self.t].copy_(self.actor_critic.get_actions_log_prob(actions))
        self.valid[self.t].copy_(self.alive)
        update_norm = getattr(self.actor_critic, "update_normalization", None)
        if update_norm is not None:
            update_norm(kept)
        return actions.clone()

    @torch.no_grad()
    def process_env_step(self, out: StepOut) -> None:
        alive = self.alive
        reward = out.reward.to(self.device, torch.float32)
        self.score += torch.where(alive, reward, 0.0) if self.cfg.reward == "return" else 0.0
        self.length += alive.float()
        done = out.terminated | out.truncated
        success = out.info.get("metric/success")
        if self.cfg.reward == "success" and success is None:
            raise ConfigError("algo.reward=success needs a task that reports metric/success")
        last = alive if self.t == self.steps - 1 else alive & done  # the episode's scored step
        if success is not None:
            # Success counts only where the episode ended on the goal (a terminal failure scores 0).
            ok = success.to(self.device).float() * (~out.terminated).float()
            self.success = torch.where(last, ok, self.success)
        self.alive = alive & ~done
        self.t += 1

    def update(self) -> dict[str, float]:
        cfg, ac = self.cfg, self.actor_critic
        scores = self.success if cfg.reward == "success" else self.score
        adv, informative = group_advantages(scores, cfg.group_size, cfg.normalize_std)
        keep_env = informative if cfg.drop_uniform_groups else torch.ones_like(informative)
        mask = self.valid[: self.t] & keep_env[None]
        rows = mask.flatten().nonzero().flatten()
        stats = {
            "grpo/success": float(self.success.mean()),
            "grpo/score": float(scores.mean()),
            "grpo/groups_kept": float(informative.float().mean()),
            "grpo/episode_length": float(self.length.mean()),
            "loss/surrogate": 0.0,
            "loss/entropy": 0.0,
            "policy/clip_fraction": 0.0,
            "policy/approx_kl": 0.0,
        }
        if rows.numel() > 0:
            self._set_temperature()
            obs = {g: b[: self.t].flatten(0, 1) for g, b in self.obs.items()}
            actions = self.actions[: self.t].flatten(0, 1)
            old = self.log_prob[: self.t].flatten()
            adv_rows = adv[None].expand(self.t, -1).flatten()
            n_mb = min(cfg.num_mini_batches, rows.numel())
            updates = 0
            for _ in range(cfg.num_learning_epochs):
                perm = rows[torch.randperm(rows.numel(), device=rows.device)]
                for idx in perm.chunk(n_mb):
                    ac.update_distribution({g: b[idx] for g, b in obs.items()})
                    log_prob = ac.get_actions_log_prob(actions[idx])
                    loss_rows, clipped = clipped_surrogate(
                        log_prob, old[idx], adv_rows[idx], cfg.clip_low, cfg.clip_high
                    )
                    entropy = ac.entropy.mean()
                    loss = loss_rows.mean() - cfg.entropy_coef * entropy
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.sync.grads(ac.parameters())
                    nn.utils.clip_grad_norm_(ac.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    with torch.no_grad():
                        stats["loss/surrogate"] += float(loss_rows.mean())
                        stats["loss/entropy"] += float(entropy)
                        stats["policy/clip_fraction"] += float(clipped.float().mean())
                        stats["policy/approx_kl"] += float((old[idx] - log_prob).mean())
                    updates += 1
            for k in ("loss/surrogate", "loss/entropy", "policy/clip_fraction", "policy/approx_kl"):
                stats[k] /= updates
        stats["grpo/steps_trained"] = float(rows.numel())
        self.iteration += 1
        self._reset_episode_state()
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted({"optimizer", "iteration"} - set(state))
        if missing:
            raise ConfigError(f"GRPO checkpoint state lacks {missing}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
