"""Dyna-PPO: PPO on real rollouts plus short imagined branches from real states (MBPO-style).

Every real transition is also kept in a ring buffer; from iteration ``warmup_iterations`` on, an
ensemble (world_models) is refitted on it after each update (warm-started, a bounded number of
gradient steps). Each update then trains on the real rollout plus ``imagined_ratio`` times as many
imagined transitions: branches of ``branch_length`` steps started from states of the rollout just
collected, with the current policy acting on observations cut out of the predicted state and one
ensemble member per branch. Branches are bootstrapped with the critic at their last state; steps
after a predicted termination carry no advantage. Real and imagined data are standardized apart
and mixed in every minibatch at the configured ratio.

The model state is the concatenation of ``model_groups`` (the privileged critic group by default),
which must contain every term of the groups the policy reads, with the same scale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from embodied.algorithms.config import parse_config
from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from embodied.rollout import MiniBatch, RolloutStorage, compute_gae
from policies.spec import TensorSpec
from world_models import Ensemble, StateLayout, TransitionBuffer, Transitions, WorldModelError, imagine
from world_models.imagine import PRECISIONS
from world_models.train import fit


@dataclass
class DynaConfig:
    """The model-based part of Dyna-PPO; invalid values raise ValueError naming the field."""

    model_groups: list = field(default_factory=lambda: ["critic"])
    members: int = 5
    elites: int = 3
    hidden: list = field(default_factory=lambda: [200, 200, 200])
    branch_length: int = 5  # MBPO: 1 to 15
    imagined_ratio: float = 1.0  # imagined transitions per real transition in each update
    warmup_iterations: int = 2  # real-only iterations before the first model fit
    buffer_steps: int = 240  # env steps (times num_envs transitions) the model is fitted on
    model_epochs: int = 4  # per refit (warm-started); early stopping as in world_models.train
    model_updates_per_epoch: int = 100
    model_batch_size: int = 256
    model_lr: float = 1.0e-3
    val_fraction: float = 0.1
    precision: str = "float32"  # of the ensemble's layers in the imagined branches (or bfloat16)

    def __post_init__(self) -> None:
        ints = (
            "members",
            "elites",
            "branch_length",
            "warmup_iterations",
            "buffer_steps",
            "model_epochs",
            "model_updates_per_epoch",
            "model_batch_size",
        )
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "warmup_iterations" else 1):
                raise ValueError(f"dyna_ppo {name} must be an integer >= 1, got {v!r}")
        if not 1 <= self.elites <= self.members:
            raise ValueError(f"dyna_ppo needs 1 <= elites <= members, got {self.elites} and {self.members}")
        for name, lo in (("imagined_ratio", 0.0), ("model_lr", 1e-12)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < lo:
                raise ValueError(f"dyna_ppo {name} must be a number >= {lo:g}, got {v!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"dyna_ppo val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not self.model_groups:
            raise ValueError("dyna_ppo model_groups must name at least one observation group")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"dyna_ppo precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}"
            )


class DynaPPO(PPO):
    """PPO whose every update also trains on model-imagined branches (see the module docstring)."""

    def __init__(
        self,
        actor_critic: nn.Module,
        env: Any,
        cfg: PPOConfig,
        dyna: DynaConfig,
    ) -> None:
        super().__init__(actor_critic, env.num_envs, cfg, env.device, env.obs_spec)
        self.dyna = dyna
        missing = [g for g in dyna.model_groups if g not in env.obs_spec]
        if missing:
            raise ConfigError(
                f"dyna_ppo model_groups {missing} are not observation groups of {sorted(env.obs_spec)}"
            )
        self.layout = StateLayout.from_groups({g: env.obs_layout(g) for g in dyna.model_groups})
        try:
            self.views = {
                g: self.layout.index_for(env.obs_layout(g)).to(self.device) for g in self.obs_groups
            }
        except WorldModelError as e:
            raise ConfigError(f"dyna_ppo: {e}") from None
        s, a, n = self.layout.dim, actor_critic.num_actions, env.num_envs
        self.model = Ensemble(s, a, members=dyna.members, elites=dyna.elites, hidden=dyna.hidden).to(
            self.device
        )
        self.model_fitted = False
        t = dyna.buffer_steps
        dev = self.device
        self.ring = {
            "state": torch.zeros(t, n, s, device=dev),
            "action": torch.zeros(t, n, a, device=dev),
            "next_state": torch.zeros(t, n, s, device=dev),
            "reward": torch.zeros(t, n, device=dev),
            "cost": torch.zeros(t, n, device=dev),
            "terminated": torch.zeros(t, n, dtype=torch.bool, device=dev),
            "truncated": torch.zeros(t, n, dtype=torch.bool, device=dev),
        }
        self.ring_pos, self.ring_full = 0, False
        real = cfg.num_steps_per_env * n
        self.branches = (
            max(1, round(dyna.imagined_ratio * real / dyna.branch_length)) if dyna.imagined_ratio else 0
        )
        specs = {g: TensorSpec((int(self.views[g].numel()),)) for g in self.obs_groups}
        self.imagined = (
            RolloutStorage(dyna.branch_length, self.branches, specs, a, dev) if self.branches else None
        )
        self._imagined_ready = False
        self._state: torch.Tensor | None = None
        self._generator = torch.Generator(device="cpu").manual_seed(0)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], policy: nn.Module, env: Any) -> DynaPPO:
        pcfg, dcfg = parse_config("dyna_ppo", cfg, [PPOConfig, DynaConfig])
        return cls(policy, env, pcfg, dcfg)

    # -- collection ------------------------------------------------------------------------------
    def _state_of(self, obs: Obs) -> torch.Tensor:
        return torch.cat([obs[g].float() for g in self.dyna.model_groups], -1)

    @torch.no_grad()
    def act(self, obs: Obs) -> torch.Tensor:
        self._state = self._state_of(obs)
        return super().act(obs)

    @torch.no_grad()
    def process_env_step(self, out: StepOut) -> None:
        actions = self._transition.get("actions")
        super().process_env_step(out)
        final = out.info.get("final_obs", out.obs)
        applied = out.info.get("applied_action")
        applied = actions.clamp(-1.0, 1.0) if applied is None else applied
        t, r = self.ring_pos, self.ring
        r["state"][t].copy_(self._state)
        r["action"][t].copy_(applied)
        r["next_state"][t].copy_(self._state_of(final))
        r["reward"][t].copy_(out.reward)
        r["cost"][t].copy_(out.cost)
        r["terminated"][t].copy_(out.terminated)
        r["truncated"][t].copy_(out.truncated)
        self.ring_pos = (t + 1) % self.dyna.buffer_steps
        self.ring_full |= self.ring_pos == 0

    def _transitions(self) -> Transitions:
        """The ring buffer in time order."""
        if self.ring_full:
            order = (
                torch.arange(self.ring_pos, self.ring_pos + self.dyna.buffer_steps) % self.dyna.buffer_steps
            )
        else:
            order = torch.arange(self.ring_pos)
        order = order.to(self.device)
        r = {k: v.index_select(0, order) for k, v in self.ring.items()}
        return Transitions(**r)

    # -- imagination -----------------------------------------------------------------------------
    @torch.no_grad()
    def _imagine(self) -> dict[str, float]:
        """Fill the imagined storage with branches from the rollout just collected."""
        store, ac, cfg = self.imagined, self.actor_critic, self.cfg
        steps = self.storage.num_steps
        recent = (torch.arange(steps, device=self.device) + self.ring_pos - steps) % self.dyna.buffer_steps
        starts = self.ring["state"].index_select(0, recent).flatten(0, 1)
        pick = torch.randint(starts.shape[0], (self.branches,), generator=self._generator).to(self.device)
        start = starts[pick]
        store.clear()
        record: list[dict[str, torch.Tensor]] = []

        def actor(state: torch.Tensor) -> torch.Tensor:
            obs = {g: state.index_select(-1, idx) for g, idx in self.views.items()}
            actions = ac.act(obs)
            record.append(
                {
                    "obs": obs,
                    "actions": actions,
                    "values": ac.evaluate(obs),
                    "actions_log_prob": ac.get_actions_log_prob(actions),
                    "mu": ac.action_mean,
                    "sigma": ac.action_std,
                }
            )
            return actions

        futures = imagine(
            self.model,
            start,
            actor,
            horizon=self.dyna.branch_length,
            futures=1,
            spread=False,
            generator=self._generator,
            precision=self.dyna.precision,
        )
        reward = futures.reward[:, :, 0]
        ended = futures.terminated[:, :, 0] > 0.5
        for h, step in enumerate(record):
            store.add(**step, rewards=reward[h], dones=ended[h])
        final = futures.state[-1, :, 0]
        last_values = ac.evaluate({g: final.index_select(-1, idx) for g, idx in self.views.items()})
        returns, adv = compute_gae(store.rewards, store.values, store.dones, last_values, cfg.gamma, cfg.lam)
        # Steps after a predicted termination start from a state the model never saw: no signal there.
        after_end = torch.cumsum(ended.long(), 0) - ended.long() > 0
        live = ~after_end
        mean, std = adv[live].mean(), adv[live].std().clamp_min(1e-8)
        store.advantages.copy_(torch.where(live, (adv - mean) / std, 0.0))
        store.returns.copy_(torch.where(live, returns, store.values))
        self._imagined_ready = True
        return {
            "dyna/imagined_transitions": float(live.sum()),
            "dyna/imagined_reward": float(reward[live].mean()),
            "dyna/real_reward": float(self.storage.rewards.mean()),
            "dyna/imagined_termination": float(ended.float().mean()),
        }

    def set_teacher(self, teacher: Any) -> None:
        raise ConfigError(
            "dyna_ppo trains on imagined branches that have no teacher labels; set task.teacher=null"
        )

    def mini_batches(self) -> Iterator[MiniBatch]:
        real = super().mini_batches()
        if not self._imagined_ready:
            yield from real
            return
        imag = self.imagined.mini_batch_generator(self.cfg.num_mini_batches, self.cfg.num_learning_epochs)
        for r, i in zip(real, imag, strict=True):
            yield MiniBatch(
                obs={g: torch.cat([r.obs[g], i.obs[g]]) for g in r.obs},
                **{
                    f.name: torch.cat([getattr(r, f.name), getattr(i, f.name)])
                    for f in fields(MiniBatch)
                    if f.name != "obs"
                },
            )

    # -- update ----------------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.model_fitted and self.imagined is not None:
            stats.update(self._imagine())
        stats["dyna/imagine_s"] = time.perf_counter() - t0
        stats.update(super().update())
        self._imagined_ready = False
        if self.iteration >= self.dyna.warmup_iterations:
            t1 = time.perf_counter()
            stats.update(self._fit())
            stats["dyna/fit_s"] = time.perf_counter() - t1
        return stats

    def _fit(self) -> dict[str, float]:
        d = self.dyna
        try:
            buffer = TransitionBuffer(self._transitions(), val_fraction=d.val_fraction, seed=self.iteration)
        except WorldModelError:
            return {}  # not a single whole episode for training yet: keep collecting
        with torch.enable_grad():
            result = fit(
                self.model,
                buffer,
                epochs=d.model_epochs,
                batch_size=d.model_batch_size,
                lr=d.model_lr,
                max_updates_per_epoch=d.model_updates_per_epoch,
                patience=2,
                renormalize=not self.model_fitted,
                generator=self._generator,
            )
        self.model_fitted = True
        val = torch.tensor(result.val_mse)[result.elites]
        return {"dyna/model_val_mse": float(val.mean()), "dyna/model_epochs": float(result.epochs)}

    def state_dict(self) -> dict[str, Any]:
        """PPO's state plus the model's weights (the transition ring refills after a resume)."""
        return {**super().state_dict(), "model": self.model.state_dict(), "model_fitted": self.model_fitted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = sorted({"model", "model_fitted"} - set(state_dict))
        if missing:
            raise ValueError(f"dyna_ppo state lacks {', '.join(missing)}")
        super().load_state_dict(state_dict)
        self.model.load_state_dict(state_dict["model"])
        self.model_fitted = bool(state_dict["model_fitted"])
