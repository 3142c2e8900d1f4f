"""Model-based RL by planning: record every transition, refit the ensemble, act with MPPI over it.

    actions = alg.act(obs)        # uniform random before the first fit, then the planner's
    out = env.step(actions)
    alg.process_env_step(out)     # (state, applied action, next state, reward, cost, done) kept
    ... x num_steps_per_env
    stats = alg.update()          # refit on all data so far (warm-started, about `updates` steps)

The policy is a ``PlannerPolicy`` (policy=planner, selected by configs/algo/mppi.yaml): it holds
the ensemble, so the run's checkpoints carry the model, and ``embodied eval``/``play`` plan with it.
The algorithm's own state is the data, so a resumed run refits on everything it had collected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from world_models.buffer import TransitionBuffer, Transitions
from world_models.errors import WorldModelError
from world_models.layout import StateLayout
from world_models.planner_policy import PlannerPolicy
from world_models.reward_head import fit_reward_head
from world_models.train import fit

POLICY_KEYS = (
    "groups",
    "model",
    "planner",
    "reward_head",
)  # read by policy=planner (configs/policy/planner.yaml)
FIELDS = ("state", "action", "next_state", "reward", "cost", "terminated", "truncated")


@dataclass
class MPPIConfig:
    """The MBRL loop's own settings; invalid values raise ValueError naming the field."""

    num_steps_per_env: int = 125
    updates: int = 2000  # gradient steps per refit (as epochs of the data; early stopping may end it sooner)
    max_epochs: int = 200
    patience: int = 5  # epochs without a 1 % gain, at least a fifth of the refit's epochs
    batch_size: int = 256
    max_updates_per_epoch: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.2  # held-out share of whole episodes
    capacity: int = 2_000_000  # transitions kept (oldest dropped)
    reward_updates: int = 1000  # MSE steps of the policy's reward head per refit (when it has one)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            allowed = (int, float) if kind is float else (kind,)
            if not isinstance(value, allowed) or isinstance(value, bool):
                raise ValueError(f"MPPIConfig.{f.name} must be {kind.__name__}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"MPPIConfig.{f.name} must be finite, got {value}")
        positive = (
            "num_steps_per_env",
            "updates",
            "max_epochs",
            "patience",
            "batch_size",
            "max_updates_per_epoch",
        )
        bad = [k for k in positive if getattr(self, k) < 1]
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.val_fraction < 1 or self.capacity < 1:
            bad.append("lr/weight_decay/val_fraction/capacity")
        if bad:
            raise ValueError(f"MPPIConfig: {bad[0]} out of range")


class MPPI:
    """The MBRL loop over a ``PlannerPolicy``; all tensors on the env's device."""

    def __init__(self, policy: PlannerPolicy, env: Any, cfg: MPPIConfig) -> None:
        self.cfg, self.device, self.num_envs = cfg, env.device, env.num_envs
        self._policy = policy
        self.layout = StateLayout.from_groups({g: env.obs_layout(g) for g in policy.obs_groups})
        if self.layout.dim != policy.state_dim:
            raise ConfigError(
                f"groups {list(policy.obs_groups)} give {self.layout.dim} state columns, "
                f"the planner's model takes {policy.state_dim}"
            )
        self.chunks: list[tuple[torch.Tensor, ...]] = []  # (T_i, N, ...) per update, time order
        self.steps: list[tuple[torch.Tensor, ...]] = []  # this iteration's steps
        self.plan_stats: list[dict[str, float]] = []
        self.updates = 0
        self._state: torch.Tensor | None = None
        self._action: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> MPPI:
        """From an ``algo`` block (MPPIConfig's keys, plus groups/model/planner for the policy)."""
        if not isinstance(policy, PlannerPolicy):
            raise ConfigError(f"algo=mppi needs policy=planner, got {type(policy).__name__}")
        own = {k: v for k, v in cfg.items() if k not in POLICY_KEYS}
        known = {f.name for f in fields(MPPIConfig)}
        unknown = sorted(set(own) - known)
        if unknown:
            raise ConfigError(
                f"unknown algo key(s) {', '.join(unknown)}; "
                f"mppi takes: {', '.join(sorted(known | set(POLICY_KEYS)))}"
            )
        groups = list(cfg.get("groups") or policy.obs_groups)
        if groups != list(policy.obs_groups):
            raise ConfigError(
                f"algo.groups {groups} differ from the planner policy's {list(policy.obs_groups)}"
            )
        try:
            return cls(policy, env, MPPIConfig(**own))
        except (ValueError, WorldModelError) as e:
            raise ConfigError(str(e)) from None

    @property
    def policy(self) -> PlannerPolicy:
        return self._policy

    @property
    def num_steps_per_env(self) -> int:
        return self.cfg.num_steps_per_env

    def train_mode(self) -> None:
        self._policy.train()

    def eval_mode(self) -> None:
        self._policy.eval()

    def act(self, obs: Obs) -> torch.Tensor:
        """Actions (N, A): random before the first fit, then planned with exploration noise."""
        self._state = self._policy.state(obs)
        self._action = self._policy.act(obs)
        if self._policy.last_plan is not None and bool(self._policy.fitted):
            self.plan_stats.append(self._policy.last_plan.stats())
        return self._action

    def process_env_step(self, out: StepOut) -> None:
        if self._state is None or self._action is None:
            raise RuntimeError("process_env_step before act")
        final = out.info.get("final_obs", out.obs)
        applied = out.info.get("applied_action", self._action)
        self.steps.append(
            (
                self._state,
                applied.float(),
                self._policy.state(final),
                out.reward.float(),
                out.cost.float(),
                out.terminated.bool(),
                out.truncated.bool(),
            )
        )
        self._policy.reset(out.terminated | out.truncated)

    def transitions(self) -> Transitions:
        """Everything recorded so far, (T, N, ...) in time order."""
        if self.steps:
            self.chunks.append(tuple(torch.stack(parts) for parts in zip(*self.steps, strict=True)))
            self.steps = []
        if not self.chunks:
            raise WorldModelError("no transitions recorded yet")
        if len(self.chunks) > 1:
            self.chunks = [tuple(torch.cat(parts) for parts in zip(*self.chunks, strict=True))]
        whole = self.chunks[0]
        if whole[0].shape[0] > self.cfg.capacity:
            whole = tuple(t[-self.cfg.capacity :] for t in whole)
            self.chunks = [whole]
        return Transitions(*whole)

    def update(self) -> dict[str, float]:
        """Refit the ensemble on all data so far; returns model and planner figures."""
        c = self.cfg
        data = self.transitions()
        several = int(data.episode_ids().max()) >= 1
        buffer = TransitionBuffer(data, c.val_fraction if several else 0.0, seed=self.updates)
        model = self._policy.model
        per_epoch = max(1, min(c.max_updates_per_epoch, int(buffer.train_mask.sum()) // c.batch_size))
        epochs = max(1, min(c.max_epochs, -(-c.updates // per_epoch)))
        res = fit(
            model,
            buffer,
            epochs=epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            weight_decay=c.weight_decay,
            patience=max(c.patience, epochs // 5),
            max_updates_per_epoch=c.max_updates_per_epoch,
        )
        head = self._policy.reward_head
        reward_mse = None
        if head is not None:
            st, ac, tg, _ = buffer.flat("train")
            reward_mse = fit_reward_head(
                head, st, ac, st + tg[:, :-2], tg[:, -2], tg[:, -1], updates=c.reward_updates
            )
        self._policy.fitted.fill_(True)
        self._policy.reset()
        self.updates += 1
        elite_mse = [res.val_mse[i] for i in res.elites]
        stats = {
            "wm/val_mse": sum(elite_mse) / len(elite_mse),
            "wm/train_nll": res.train_nll,
            "wm/epochs": float(res.epochs),
            "wm/fit_s": res.seconds,
            "wm/transitions": float(data.reward.numel()),
        }
        if reward_mse is not None:
            stats["wm/reward_head_mse"] = reward_mse
        if self.plan_stats:
            for k in self.plan_stats[0]:
                stats[k] = sum(s[k] for s in self.plan_stats) / len(self.plan_stats)
            self.plan_stats = []
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The recorded data (the model's weights are the policy's) and the update count."""
        data = None
        if self.steps or self.chunks:
            data = dict(
                zip(FIELDS, (t.detach().cpu() for t in self.transitions().__dict__.values()), strict=True)
            )
        return {"data": data, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        data = state.get("data")
        self.steps, self.chunks = [], []
        if data is not None:
            if set(data) != set(FIELDS):
                raise ValueError(f"mppi data has fields {sorted(data)}, expected {sorted(FIELDS)}")
            if data["state"].shape[1] != self.num_envs or data["state"].shape[-1] != self._policy.state_dim:
                raise ValueError(
                    f"mppi data is {tuple(data['state'].shape)}, this run has {self.num_envs} envs "
                    f"and {self._policy.state_dim} state columns"
                )
            self.chunks = [tuple(data[k].to(self.device) for k in FIELDS)]
        self.updates = int(state.get("updates", 0))
