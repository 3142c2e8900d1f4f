"""PPO-Lagrangian (OmniSafe's PPOLag / CPPOPID family): PPO plus a cost critic, cost GAE and a
multiplier that trades return against the expected episode cost ``cost_limit``.

The policy loss is PPO's clipped surrogate on the combined advantage
(A_r - lambda A_c) / (1 + lambda), with A_r standardized and A_c centred. The cost critic is a
training-only module (it never ships), so it is part of this algorithm's state, not the policy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from embodied.algorithms.config import parse_config
from embodied.algorithms.lagrange import LagrangeConfig, LagrangeMultiplier
from embodied.algorithms.ppo import PPO, PPOConfig, value_loss
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from embodied.rollout import compute_gae
from policies.mlp import MLP
from policies.normalizer import EmpiricalNormalizer
from policies.spec import TensorSpec

EPISODE_WINDOW = 100  # finished episodes whose mean cost is J_c


class PPOLagrangian(PPO):
    """PPO with a cost constraint; logs the multiplier, the episode cost and the cost value."""

    def __init__(
        self,
        actor_critic: nn.Module,
        num_envs: int,
        cfg: PPOConfig,
        lag: LagrangeConfig,
        device: str | torch.device = "cpu",
        obs_spec: Mapping[str, TensorSpec] | None = None,
        cost_critic_hidden_dims: tuple[int, ...] = (128, 64, 32),
        episode_steps: int | None = None,
    ):
        super().__init__(actor_critic, num_envs, cfg, device, obs_spec)
        if lag.cost_estimate == "rate" and not episode_steps:
            raise ConfigError("algo.cost_estimate=rate needs the env's episode length (max_episode_length)")
        self.episode_steps = episode_steps
        self.lag = lag
        self.multiplier = LagrangeMultiplier(lag)
        self.cost_group = str(getattr(actor_critic, "critic_obs", "critic"))
        dim = self.storage.obs[self.cost_group].shape[-1]
        self.cost_normalizer = EmpiricalNormalizer(dim).to(self.device)
        self.cost_critic = MLP(dim, cost_critic_hidden_dims, 1, "elu").to(self.device)
        self.cost_optimizer = torch.optim.Adam(self.cost_critic.parameters(), lr=cfg.learning_rate)
        t, dev = cfg.num_steps_per_env, self.device
        self.costs = torch.zeros(t, num_envs, device=dev)
        self.step_costs = torch.zeros(t, num_envs, device=dev)  # as paid, without bootstrap
        self.cost_values = torch.zeros(t, num_envs, device=dev)
        self.cost_returns = torch.zeros(t, num_envs, device=dev)
        self._running_cost = torch.zeros(num_envs, device=dev)
        self._finished_costs: list[torch.Tensor] = []
        self._pending_cost_value: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> PPOLagrangian:
        costs = getattr(env, "costs", None)  # a TaskEnv's cost terms; other envs say nothing
        if costs is not None and len(costs) == 0:
            task = getattr(env, "cfg", {}).get("name", "this task")
            raise ConfigError(
                f"algo=ppo_lagrangian needs cost terms, and task {task} has none (add costs: to its config)"
            )
        pcfg, lcfg = parse_config(
            "ppo_lagrangian", cfg, [PPOConfig, LagrangeConfig], ["cost_critic_hidden_dims"]
        )
        hidden = tuple(int(h) for h in cfg.get("cost_critic_hidden_dims", (128, 64, 32)))
        steps = getattr(env, "max_episode_length", None)
        return cls(policy, env.num_envs, pcfg, lcfg, env.device, env.obs_spec, hidden, steps)

    def cost_value(self, obs: Obs) -> torch.Tensor:
        """V_c (N,) of the observation's critic group."""
        return self.cost_critic(self.cost_normalizer(obs[self.cost_group])).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: Obs) -> torch.Tensor:
        actions = super().act(obs)
        self._pending_cost_value = self.cost_value(self._transition["obs"])
        return actions

    @torch.no_grad()
    def process_env_step(self, out: StepOut) -> None:
        """Store the cost with V_c bootstrapped through time limits, as PPO does for the reward."""
        if self._pending_cost_value is None:
            raise RuntimeError("process_env_step() called without a preceding act()")
        t = self.storage.step
        cost = out.cost.to(self.device, torch.float32).clone()
        time_outs = out.truncated & ~out.terminated
        final_obs = out.info.get("final_obs")
        if final_obs is not None:
            cost += self.cfg.gamma * torch.where(time_outs, self.cost_value(final_obs), 0.0)
        self.costs[t] = cost
        self.step_costs[t] = out.cost
        self.cost_values[t] = self._pending_cost_value
        done = out.terminated | out.truncated
        self._running_cost += out.cost
        self._finished_costs.append(self._running_cost[done])
        self._running_cost = torch.where(done, 0.0, self._running_cost)
        obs = self._transition["obs"]
        super().process_env_step(out)
        self.cost_normalizer.update(obs[self.cost_group])
        self._pending_cost_value = None

    def episode_cost(self) -> float | None:
        """Mean cost of the last ``EPISODE_WINDOW`` finished episodes (None before the first)."""
        done = torch.cat(self._finished_costs)[-EPISODE_WINDOW:]
        self._finished_costs = [done]
        return self.sync.pooled_mean(done)  # pooled over ranks, so every multiplier agrees

    @torch.no_grad()
    def compute_returns(self, obs: Obs) -> None:
        """Reward and cost GAE; the multiplier update; the combined advantage PPO then optimizes."""
        super().compute_returns(obs)
        s = self.storage
        cost_returns, cost_adv = compute_gae(
            self.costs, self.cost_values, s.dones, self.cost_value(obs), self.cfg.gamma, self.cfg.lam
        )
        self.cost_returns.copy_(cost_returns)
        cost_adv = cost_adv - self.sync.mean_std(cost_adv)[0]
        jc = self.episode_cost()
        self._cost_rate_estimate = None
        if self.lag.cost_estimate == "rate":
            rate = self.sync.pooled_mean(self.step_costs)
            self._cost_rate_estimate = None if rate is None else rate * self.episode_steps
            self.multiplier.update(self._cost_rate_estimate)
        elif jc is not None:
            self.multiplier.update(jc)
        lam = self.multiplier.value
        s.advantages.copy_((s.advantages - lam * cost_adv) / (1.0 + lam))
        self._last_episode_cost = jc

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        obs = self.storage.obs[self.cost_group].flatten(0, 1)
        returns, old = self.cost_returns.flatten(), self.cost_values.flatten()
        n = returns.shape[0]
        size = max(1, n // cfg.num_mini_batches)
        total, count = 0.0, 0
        for _ in range(cfg.num_learning_epochs):
            perm = torch.randperm(n, device=self.device)
            for i in range(cfg.num_mini_batches):
                idx = perm[i * size : (i + 1) * size]
                v = self.cost_critic(self.cost_normalizer(obs[idx])).squeeze(-1)
                loss = value_loss(v, old[idx], returns[idx], cfg.clip_param, cfg.use_clipped_value_loss)
                self.cost_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.sync.grads(self.cost_critic.parameters())
                nn.utils.clip_grad_norm_(self.cost_critic.parameters(), cfg.max_grad_norm)
                self.cost_optimizer.step()
                total, count = total + loss.item(), count + 1
        stats = super().update()
        stats["loss/cost_value"] = total / max(count, 1)
        stats["safety/lagrange_multiplier"] = self.multiplier.value
        stats["safety/cost_value"] = float(old.mean())
        stats["safety/cost_limit"] = self.lag.cost_limit
        jc = getattr(self, "_last_episode_cost", None)
        if jc is not None:
            stats["safety/episode_cost"] = jc
        estimate = getattr(self, "_cost_rate_estimate", None)
        if estimate is not None:
            stats["safety/episode_cost_estimate"] = estimate
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "cost_critic": self.cost_critic.state_dict(),
            "cost_normalizer": self.cost_normalizer.state_dict(),
            "cost_optimizer": self.cost_optimizer.state_dict(),
            "multiplier": self.multiplier.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = sorted({"cost_critic", "cost_normalizer", "cost_optimizer", "multiplier"} - set(state_dict))
        if missing:
            raise ValueError(f"PPO-Lagrangian state lacks {', '.join(missing)}")
        super().load_state_dict(state_dict)
        self.cost_critic.load_state_dict(state_dict["cost_critic"])
        self.cost_normalizer.load_state_dict(state_dict["cost_normalizer"])
        self.cost_optimizer.load_state_dict(state_dict["cost_optimizer"])
        self.multiplier.load_state_dict(state_dict["multiplier"])
