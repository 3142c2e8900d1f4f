"""Transitions for world models: from a run's ``replay/`` tensors or the live step stream.

Data stays (T, N, ...) in time order per env, so held-out *episodes* (not shuffled steps) form the
validation split and multi-step windows can be cut for H-step evaluation. The state is the
concatenation of the chosen observation groups (``StateLayout``); the action is what reached the
actuators (``applied_action``), since that is what the dynamics responded to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from world_models.errors import WorldModelError


@dataclass
class Transitions:
    """(T, N, ...) tensors of N env columns over T consecutive steps."""

    state: torch.Tensor  # (T, N, S)
    action: torch.Tensor  # (T, N, A)
    next_state: torch.Tensor  # (T, N, S) after the step, before any reset
    reward: torch.Tensor  # (T, N)
    cost: torch.Tensor  # (T, N)
    terminated: torch.Tensor  # (T, N) bool
    truncated: torch.Tensor  # (T, N) bool

    @classmethod
    def from_replay(cls, data: Mapping[str, torch.Tensor], groups: Sequence[str]) -> Transitions:
        """Replay tensors (embodied.data.replay.load_replay) with the state made of ``groups``."""
        missing = [g for g in groups if f"obs/{g}" not in data]
        if missing:
            have = sorted(k.removeprefix("obs/") for k in data if k.startswith("obs/"))
            raise WorldModelError(
                f"the replay has no observation group(s) {missing}; it recorded {have} "
                "(train with replay.enabled=true and those groups)"
            )

        def cat(prefix: str) -> torch.Tensor:
            return torch.cat([data[f"{prefix}/{g}"].float() for g in groups], -1)

        action = data["applied_action"] if "applied_action" in data else data["action"]
        return cls(
            cat("obs"),
            action.float(),
            cat("next_obs"),
            data["reward"].float(),
            data["cost"].float(),
            data["terminated"].bool(),
            data["truncated"].bool(),
        )

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated

    def episode_ids(self) -> torch.Tensor:
        """(T, N) long: a distinct id per (env column, episode) in this data."""
        _t, n = self.reward.shape
        started = torch.cat(
            [torch.zeros(1, n, dtype=torch.long, device=self.reward.device), self.done[:-1].long()]
        ).cumsum(0)  # episode index within each column
        per_col = started.max(0).values + 1
        offset = torch.cumsum(per_col, 0) - per_col
        return started + offset

    def targets(self) -> torch.Tensor:
        """(T, N, S + 2): the state change, reward and cost the ensemble learns."""
        return torch.cat([self.next_state - self.state, self.reward[..., None], self.cost[..., None]], -1)


class TransitionBuffer:
    """Transitions split into train and validation by whole episodes."""

    def __init__(self, data: Transitions, val_fraction: float = 0.2, seed: int = 0) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise WorldModelError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if data.reward.numel() == 0:
            raise WorldModelError("no transitions to train a world model on")
        finite = torch.isfinite(data.state).all(-1) & torch.isfinite(data.next_state).all(-1)
        finite &= torch.isfinite(data.action).all(-1)
        self.data = data
        ids = data.episode_ids()
        num = int(ids.max()) + 1
        g = torch.Generator().manual_seed(seed)
        val_episode = torch.rand(num, generator=g) < val_fraction
        if val_fraction > 0 and not val_episode.any():
            val_episode[torch.randint(num, (1,), generator=g)] = True
        self.val_mask = val_episode.to(ids.device)[ids] & finite
        self.train_mask = ~val_episode.to(ids.device)[ids] & finite
        if not self.train_mask.any():
            raise WorldModelError(f"only {num} episode(s) in the data: none left to train on")

    def flat(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(state (B, S), action (B, A), target (B, S + 2), terminated (B,)) of one split."""
        mask = {"train": self.train_mask, "val": self.val_mask}[split]
        d = self.data
        return d.state[mask], d.action[mask], d.targets()[mask], d.terminated[mask]

    def window_starts(self, horizon: int, split: str = "val") -> torch.Tensor:
        """(M, 2) long (step, env column) of every window of H consecutive steps of one episode in
        ``split``. A window may end on the episode's last step, but no step before it ends one."""
        if horizon < 1:
            raise WorldModelError(f"horizon must be >= 1, got {horizon}")
        d = self.data
        t, n = d.reward.shape
        if horizon > t:
            raise WorldModelError(f"horizon {horizon} is longer than the {t} recorded steps")
        mask = {"train": self.train_mask, "val": self.val_mask}[split]
        ids = d.episode_ids()
        span = t - horizon + 1
        ok = torch.ones(span, n, dtype=torch.bool, device=ids.device)
        for k in range(horizon):  # H shifted comparisons of (T, N) masks; no per-env loop
            ok &= (ids[k : k + span] == ids[:span]) & mask[k : k + span]
        starts = ok.nonzero()
        if starts.shape[0] == 0:
            raise WorldModelError(f"no {split} episode has {horizon} consecutive steps")
        return starts

    def gather(self, starts: torch.Tensor, horizon: int) -> Transitions:
        """The windows of H steps from ``starts`` (..., 2): every field (H, ..., ...)."""
        d = self.data
        steps = starts[..., 0][None] + torch.arange(horizon, device=starts.device).view(
            -1, *[1] * (starts.dim() - 1)
        )
        cols = starts[..., 1][None].expand_as(steps)
        return Transitions(
            d.state[steps, cols],
            d.action[steps, cols],
            d.next_state[steps, cols],
            d.reward[steps, cols],
            d.cost[steps, cols],
            d.terminated[steps, cols],
            d.truncated[steps, cols],
        )

    def windows(
        self, horizon: int, split: str = "val", max_windows: int | None = None, seed: int = 0
    ) -> Transitions:
        """(H, M, ...) windows of H consecutive steps of one episode each, from ``split``."""
        starts = self.window_starts(horizon, split)
        if max_windows is not None and starts.shape[0] > max_windows:
            g = torch.Generator().manual_seed(seed)
            starts = starts[torch.randperm(starts.shape[0], generator=g)[:max_windows].to(starts.device)]
        return self.gather(starts, horizon)


class StreamRecorder:
    """A Runner observer keeping the live step stream (what replay would write) in memory.

    ``state_fn(obs) -> (N, S)`` builds the model state from an observation dict; ``capacity`` steps
    are kept (oldest dropped), on the env's device.
    """

    def __init__(self, state_fn, capacity: int = 100_000) -> None:
        self.state_fn, self.capacity = state_fn, int(capacity)
        self.steps: list[tuple[torch.Tensor, ...]] = []

    def on_step(self, obs, action: torch.Tensor, out) -> None:
        final = out.info.get("final_obs", out.obs)
        applied = out.info.get("applied_action", action)
        self.steps.append(
            (
                self.state_fn(obs),
                applied.float(),
                self.state_fn(final),
                out.reward.float(),
                out.cost.float(),
                out.terminated.bool(),
                out.truncated.bool(),
            )
        )
        if len(self.steps) > self.capacity:
            del self.steps[0]

    def __len__(self) -> int:
        return len(self.steps)

    def transitions(self) -> Transitions:
        if not self.steps:
            raise WorldModelError("no transitions recorded yet")
        return Transitions(*(torch.stack(parts) for parts in zip(*self.steps, strict=True)))
