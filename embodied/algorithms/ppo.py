"""Proximal policy optimization with GAE, clipped losses and an adaptive-KL learning rate."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embodied.algorithms.base import LocalSync
from embodied.algorithms.config import check_types, parse_config
from embodied.algorithms.teacher import TeacherConfig, imitation_loss
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from embodied.rollout import MiniBatch, RolloutStorage, compute_gae
from policies.distributions import gaussian_kl
from policies.spec import TensorSpec


@dataclass
class PPOConfig:
    """PPO hyperparameters; invalid values raise ValueError naming the field."""

    num_steps_per_env: int = 24
    num_learning_epochs: int = 5
    num_mini_batches: int = 4
    clip_param: float = 0.2
    gamma: float = 0.99
    lam: float = 0.95
    value_loss_coef: float = 1.0
    entropy_coef: float = 0.01
    learning_rate: float = 1e-3
    max_grad_norm: float = 1.0
    use_clipped_value_loss: bool = True
    schedule: str = "adaptive"  # "adaptive" | "fixed"
    desired_kl: float = 0.01
    min_learning_rate: float = 1e-5
    max_learning_rate: float = 1e-2

    def __post_init__(self) -> None:
        check_types(self)
        checks = {
            "num_steps_per_env": self.num_steps_per_env >= 1,
            "num_learning_epochs": self.num_learning_epochs >= 1,
            "num_mini_batches": self.num_mini_batches >= 1,
            "clip_param": self.clip_param > 0,
            "gamma": 0 < self.gamma <= 1,
            "lam": 0 <= self.lam <= 1,
            "value_loss_coef": self.value_loss_coef >= 0,
            "entropy_coef": self.entropy_coef >= 0,
            "learning_rate": self.learning_rate > 0,
            "max_grad_norm": self.max_grad_norm > 0,
            "schedule": self.schedule in ("adaptive", "fixed"),
            "desired_kl": self.desired_kl > 0,
            "min_learning_rate": 0 < self.min_learning_rate <= self.max_learning_rate,
            "max_learning_rate": self.max_learning_rate > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"PPOConfig.{name} is invalid: {getattr(self, name)!r}")


def surrogate_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_param: float
) -> torch.Tensor:
    """Clipped PPO policy loss (to minimize) from (B,) log-probs and advantages; a scalar."""
    ratio = torch.exp(log_prob - old_log_prob)
    clipped = ratio.clamp(1.0 - clip_param, 1.0 + clip_param)
    return torch.max(-advantages * ratio, -advantages * clipped).mean()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_param: float, clipped: bool
) -> torch.Tensor:
    """Squared value error from (B,) tensors; when clipped, values may not move more than clip_param
    from old_values without paying the larger of the two errors. A scalar."""
    error = (values - returns).square()
    if not clipped:
        return error.mean()
    values_clipped = old_values + (values - old_values).clamp(-clip_param, clip_param)
    return torch.max(error, (values_clipped - returns).square()).mean()


def adapt_learning_rate(lr: float, kl: float, desired_kl: float, min_lr: float, max_lr: float) -> float:
    """Shrink lr by 1.5 when kl > 2 * desired_kl, grow it by 1.5 when kl < desired_kl / 2, clamped."""
    if kl > 2.0 * desired_kl:
        lr = lr / 1.5
    elif kl < desired_kl / 2.0:
        lr = lr * 1.5
    return min(max(lr, min_lr), max_lr)


class PPO:
    """PPO with rsl_rl's surface: act -> process_env_step (x T) -> compute_returns -> update.

    ``actor_critic`` is any registered policy (policies/registry.py); the observation groups it
    reads (``obs_groups``) are stored with the shapes and dtypes of ``obs_spec``.
    """

    def __init__(
        self,
        actor_critic: nn.Module,
        num_envs: int,
        cfg: PPOConfig,
        device: str | torch.device = "cpu",
        obs_spec: Mapping[str, TensorSpec] | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        self.actor_critic = actor_critic.to(self.device)
        self.learning_rate = cfg.learning_rate
        self.iteration = 0
        self.sync: LocalSync = LocalSync()  # replaced by embodied.distributed with several processes
        self.optimizer = torch.optim.Adam(self.actor_critic.parameters(), lr=self.learning_rate)
        groups = tuple(actor_critic.obs_groups)
        if obs_spec is None:  # the policy's own groups as flat float vectors
            dims = {actor_critic.actor_obs: actor_critic.num_actor_obs}
            dims[actor_critic.critic_obs] = actor_critic.num_critic_obs
            obs_spec = {g: TensorSpec((d,)) for g, d in dims.items()}
        missing = [g for g in groups if g not in obs_spec]
        if missing:
            raise ConfigError(f"the policy reads observation groups {missing} the env does not give")
        self.obs_groups = groups
        self.obs_spec = dict(obs_spec)
        self.num_envs = num_envs
        self.teacher: TeacherConfig | None = None
        self.storage = self._new_storage()
        self._transition: dict[str, Any] = {}

    def _new_storage(self) -> RolloutStorage:
        return RolloutStorage(
            self.cfg.num_steps_per_env,
            self.num_envs,
            {g: self.obs_spec[g] for g in self.obs_groups},
            self.actor_critic.num_actions,
            self.device,
        )

    def set_teacher(self, teacher: TeacherConfig) -> None:
        """Add the imitation term toward the env's ``teacher.group`` (embodied/algorithms/teacher.py).

        The group is stored with the rollout; its width must be the action size.
        """
        spec = self.obs_spec.get(teacher.group)
        if spec is None:
            raise ConfigError(
                f"task.teacher.group {teacher.group!r} is not an observation group of this task; "
                f"groups: {', '.join(sorted(self.obs_spec))}"
            )
        if tuple(spec.shape) != (self.actor_critic.num_actions,):
            raise ConfigError(
                f"teacher group {teacher.group!r} has shape {tuple(spec.shape)}, but the policy acts "
                f"with {self.actor_critic.num_actions} dims"
            )
        self.teacher = teacher
        if teacher.group not in self.obs_groups:
            self.obs_groups = (*self.obs_groups, teacher.group)
            self.storage = self._new_storage()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> PPO:
        """PPO from an ``algo`` config block (its keys are PPOConfig's); unknown keys are errors."""
        (pcfg,) = parse_config("ppo", cfg, [PPOConfig])
        return cls(policy, env.num_envs, pcfg, env.device, env.obs_spec)

    @property
    def policy(self) -> nn.Module:
        return self.actor_critic

    @property
    def num_steps_per_env(self) -> int:
        return self.cfg.num_steps_per_env

    def train_mode(self) -> None:
        """Training mode: normalizers update during collection."""
        self.actor_critic.train()

    def eval_mode(self) -> None:
        """Evaluation mode: normalizer statistics are frozen."""
        self.actor_critic.eval()

    @torch.no_grad()
    def act(self, obs: Obs) -> torch.Tensor:
        """Sample actions (N, A) for the observation groups the policy reads; remember the step."""
        # Cloned because envs may overwrite their observation buffers in place on the next step.
        kept = {g: obs[g].clone() for g in self.obs_groups}
        ac = self.actor_critic
        actions = ac.act(kept)
        self._transition = {
            "obs": kept,
            "actions": actions,
            "values": ac.evaluate(kept),
            "actions_log_prob": ac.get_actions_log_prob(actions),
            "mu": ac.action_mean,
            "sigma": ac.action_std,
        }
        # The caller gets its own copy, so an env clamping it in place cannot alter what is stored.
        return actions.clone()

    @torch.no_grad()
    def process_env_step(self, out: StepOut) -> None:
        """Store reward and done = terminated | truncated for the step taken by the last ``act``.

        Time limits are not failures: where truncated and not terminated, the reward is credited with
        gamma * V(final observation), the value the episode would have gone on to earn.
        """
        if not self._transition:
            raise RuntimeError("process_env_step() called without a preceding act()")
        rewards = out.reward.to(self.device, torch.float32).clone()
        time_outs = out.truncated & ~out.terminated
        final_obs = out.info.get("final_obs")
        if final_obs is not None:
            # Evaluated for every row (cheaper than a device sync to test for any timeouts);
            # torch.where drops whatever the critic made of rows whose final obs is not valid.
            final_values = self.actor_critic.evaluate(final_obs)
            rewards += self.cfg.gamma * torch.where(time_outs, final_values, torch.zeros_like(final_values))
        elif bool(time_outs.any()):
            raise KeyError("truncated envs need info['final_obs'] to bootstrap their value")
        t = self._transition
        self.storage.add(**t, rewards=rewards, dones=out.terminated | out.truncated)
        # After the bootstrap so the critic saw the same normalization as at act time.
        self.actor_critic.update_normalization(t["obs"])
        self._transition = {}

    @torch.no_grad()
    def compute_returns(self, obs: Obs) -> None:
        """Bootstrap the rollout with V(obs) (N,) and fill returns and advantages."""
        last_values = self.actor_critic.evaluate(obs)
        if self.sync.world_size == 1:
            self.storage.compute_returns(last_values, self.cfg.gamma, self.cfg.lam)
            return
        # Several processes: advantages are standardized with the mean and std of every rank's rollout.
        s = self.storage
        returns, advantages = compute_gae(
            s.rewards, s.values, s.dones, last_values, self.cfg.gamma, self.cfg.lam
        )
        mean, std = self.sync.mean_std(advantages)
        s.returns.copy_(returns)
        s.advantages.copy_((advantages - mean) / (std + 1e-8))

    def _set_learning_rate(self, lr: float) -> None:
        self.learning_rate = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def mini_batches(self) -> Iterator[MiniBatch]:
        """The minibatches one update trains on: epochs x minibatches of the stored rollout."""
        return self.storage.mini_batch_generator(self.cfg.num_mini_batches, self.cfg.num_learning_epochs)

    def update(self) -> dict[str, float]:
        """Run the epochs x minibatches of gradient steps on the stored rollout, then clear it.

        Returns means over minibatches of "loss/value", "loss/surrogate", "loss/entropy", "policy/kl",
        and the learning rate and mean action std after the update.
        """
        cfg, ac = self.cfg, self.actor_critic
        sums = {"loss/value": 0.0, "loss/surrogate": 0.0, "loss/entropy": 0.0, "policy/kl": 0.0}
        num_updates = 0
        teacher_coef = 0.0 if self.teacher is None else self.teacher.coefficient(self.iteration)
        for batch in self.mini_batches():
            ac.update_distribution(batch.obs)
            log_prob = ac.get_actions_log_prob(batch.actions)
            values = ac.evaluate(batch.obs)
            entropy = ac.entropy.mean()

            with torch.no_grad():
                kl = gaussian_kl(batch.mu, batch.sigma, ac.action_mean, ac.action_std).mean().item()
            kl = self.sync.mean(kl)  # every rank's schedule reads the same KL (rsl_rl all-reduces it)
            if cfg.schedule == "adaptive":
                lr = adapt_learning_rate(
                    self.learning_rate, kl, cfg.desired_kl, cfg.min_learning_rate, cfg.max_learning_rate
                )
                self._set_learning_rate(lr)

            surrogate = surrogate_loss(log_prob, batch.actions_log_prob, batch.advantages, cfg.clip_param)
            v_loss = value_loss(
                values, batch.values, batch.returns, cfg.clip_param, cfg.use_clipped_value_loss
            )
            loss = surrogate + cfg.value_loss_coef * v_loss - cfg.entropy_coef * entropy
            if self.teacher is not None:  # logged even once its weight has decayed to 0
                target = batch.obs[self.teacher.group]
                imitation = imitation_loss(self.teacher.loss, ac.action_mean, ac.action_std, target)
                loss = loss + teacher_coef * imitation
                sums["loss/teacher"] = sums.get("loss/teacher", 0.0) + imitation.item()
                mse = (ac.action_mean.detach() - target).square().mean().item()
                sums["teacher/action_mse"] = sums.get("teacher/action_mse", 0.0) + mse

            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.sync.grads(ac.parameters())
            nn.utils.clip_grad_norm_(ac.parameters(), cfg.max_grad_norm)
            self.optimizer.step()

            sums["loss/value"] += v_loss.item()
            sums["loss/surrogate"] += surrogate.item()
            sums["loss/entropy"] += entropy.item()
            sums["policy/kl"] += kl
            num_updates += 1

        self.storage.clear()
        self.iteration += 1
        stats = {k: v / num_updates for k, v in sums.items()}
        stats["policy/learning_rate"] = self.learning_rate
        if self.teacher is not None:
            stats["teacher/coef"] = teacher_coef
        stats["policy/action_std"] = ac.action_std.mean().item()  # of the last minibatch's distribution
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, current learning rate and iteration counter (the policy is saved apart)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "learning_rate": self.learning_rate,
            "iteration": self.iteration,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; load the policy's weights first (they are kept apart)."""
        missing = sorted({"optimizer", "learning_rate", "iteration"} - set(state_dict))
        if missing:
            raise ValueError(f"PPO state lacks {', '.join(missing)}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._set_learning_rate(float(state_dict["learning_rate"]))
        self.iteration = int(state_dict["iteration"])
