"""Whole episodes cut out of a batched rollout and written as a LeRobot dataset.

``EpisodeRecorder`` is a Runner observer (``on_step(obs, action, out)``), so the same code records a
teacher's demonstrations and the rollouts of RL training. Steps are kept in a rolling (H, N, ...)
buffer on the env's device (H = ``window`` + the longest episode), so an episode that straddles a
flush is still whole; only episodes seen from their first step to their last are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from embodied.data.lerobot import EpisodeBatch, LeRobotWriter
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError

TaskFn = Callable[[torch.Tensor | None, int], list[str]]


def dataset_fps(dt: float) -> int:
    """LeRobot's integer fps for a control step ``dt`` s; a step with no whole rate is refused."""
    fps = round(1.0 / dt)
    if fps < 1 or abs(fps * dt - 1.0) > 1e-6:
        raise ConfigError(f"control step {dt} s is not a whole number of frames per second")
    return fps


def whole_episodes(
    first: torch.Tensor, done: torch.Tensor, min_end: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole episodes in a (L, N) window of steps, ordered by their last step (then env).

    first: (L, N) bool, step t is an episode's first step; done: (L, N) bool, its last. An episode is
    whole when both its first and last step are in the window; only those ending at t >= min_end.
    Returns (rows, lengths, env, start): rows (F,) indices into the env-major flattening
    ``x.transpose(0, 1).reshape(N * L, ...)`` of the episodes' steps back to back; lengths, env and
    start step (E,) per episode.
    """
    length, n = first.shape
    f, d = first.T.reshape(-1), done.T.reshape(-1)
    bound = f.clone().reshape(n, length)
    bound[:, 0] = True  # every env's row starts a (possibly partial) segment
    starts = bound.reshape(-1).nonzero().squeeze(1)
    ends = torch.cat([starts[1:] - 1, torch.tensor([n * length - 1], device=starts.device)])
    ok = f[starts] & d[ends] & (ends % length >= min_end)
    starts, ends = starts[ok], ends[ok]
    order = torch.argsort((ends % length) * n + ends // length)
    starts, ends = starts[order], ends[order]
    lengths = ends - starts + 1
    offset = torch.cumsum(lengths, 0) - lengths
    rows = torch.repeat_interleave(starts - offset, lengths) + torch.arange(
        int(lengths.sum()), device=f.device
    )
    return rows, lengths, starts // length, starts % length


def task_texts(env: Any, default: str) -> TaskFn:
    """Episode task strings: the env's instruction texts when it has ``instructions``, else ``default``."""
    if getattr(env, "instructions", None):

        def texts(idx: torch.Tensor | None, n: int) -> list[str]:
            if idx is None:
                raise ConfigError("the env has instructions but its observation has no 'instruction' group")
            idx = idx.reshape(-1)
            if hasattr(env, "instruction_texts"):
                return list(env.instruction_texts(idx))
            return [env.instructions[i] for i in idx.tolist()]

        return texts
    return lambda idx, n: [default] * n


class EpisodeRecorder:
    """Runner observer writing the whole episodes of envs ``env_ids`` (all when None) to ``writer``.

    Columns: observation.state (the ``state_group`` observation), observation.images.<g> for each
    uint8 image group, action (what the policy gave), applied_action (when the env reports one: after
    the safety filters), next.reward, next.done, next.success (``metric/success`` > 0.5 when the task
    reports it), cost. ``fresh``: the envs' current episodes start at the next step (just reset);
    None reads ``env.episode_length == 0`` where the env has it. Where the env has
    ``episode_length``, a reset from outside (an episodic algorithm restarting every env) is seen
    too: a step after which an env's episode is 1 step long began an episode. ``own_writer``:
    ``close`` also closes the writer (the dataset moves into place).
    """

    def __init__(
        self,
        writer: LeRobotWriter,
        env: Any,
        *,
        state_group: str,
        task: TaskFn,
        image_groups: Sequence[str] = ("rgb",),
        env_ids: torch.Tensor | None = None,
        fresh: bool | None = None,
        window: int | None = None,
        max_episodes: int | None = None,
        own_writer: bool = False,
    ) -> None:
        if state_group not in env.obs_spec:
            raise ConfigError(
                f"state group {state_group!r} is not an observation group: {list(env.obs_spec)}"
            )
        self.writer, self.task, self.state_group, self.env = writer, task, state_group, env
        self.own_writer = own_writer
        self.image_groups = [g for g in image_groups if g in env.obs_spec]
        self.ids = None if env_ids is None else env_ids.to(env.device)
        self.n = env.num_envs if env_ids is None else len(env_ids)
        self.keep = int(env.max_episode_length)
        self.capacity = self.keep + int(window or env.max_episode_length)
        self.max_episodes = max_episodes
        self.device = env.device
        if fresh is None:
            ep_len = getattr(env, "episode_length", None)
            started = ep_len == 0 if ep_len is not None else torch.zeros(env.num_envs, dtype=torch.bool)
            started = started.to(env.device)
        else:
            started = torch.full((env.num_envs,), bool(fresh), device=env.device)
        self.next_first = self._pick(started)
        self.seen_start = self.next_first.clone()
        self.completed = torch.zeros((), dtype=torch.long, device=env.device)  # whole episodes seen
        self.buffers: dict[str, torch.Tensor] = {}
        self.filled = 0
        self.min_end = 0

    def _pick(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.ids is None else x[self.ids]

    def _step_columns(self, obs: Obs, action: torch.Tensor, out: StepOut) -> dict[str, torch.Tensor]:
        done = out.terminated | out.truncated
        cols = {"observation.state": obs[self.state_group].float()}
        cols.update({f"observation.images.{g}": obs[g] for g in self.image_groups})
        cols["action"] = action.float()
        if "applied_action" in out.info:
            cols["applied_action"] = out.info["applied_action"].float()
        cols["next.reward"] = out.reward.float()
        cols["next.done"] = done
        if "metric/success" in out.info:
            cols["next.success"] = out.info["metric/success"] > 0.5
        cols["cost"] = out.cost.float()
        if "instruction" in obs:
            cols["_instruction"] = obs["instruction"].long()
        return {k: self._pick(v) for k, v in cols.items()}

    def on_step(self, obs: Obs, action: torch.Tensor, out: StepOut) -> None:
        """Record one env step of N envs: the obs acted on, the action and what followed."""
        cols = self._step_columns(obs, action, out)
        done = cols["next.done"]
        first = self.next_first
        ep_len = getattr(self.env, "episode_length", None)
        if ep_len is not None:  # the env was reset from outside before this step
            first = first | (self._pick(ep_len) == 1) & ~done
        self.seen_start |= first
        cols["_first"] = first
        if not self.buffers:
            self.buffers = {
                k: torch.zeros(self.capacity, *v.shape, dtype=v.dtype, device=self.device)
                for k, v in cols.items()
            }
        if self.filled == self.capacity:
            self.flush()
        t = self.filled
        for k, b in self.buffers.items():
            b[t].copy_(cols[k])
        self.filled += 1
        self.completed += (done & self.seen_start).sum()
        self.next_first = done

    def flush(self) -> int:
        """Write the whole episodes that ended since the last flush; returns how many were written."""
        if self.filled == 0:
            return 0
        b, length = self.buffers, self.filled
        rows, lengths, env, start = whole_episodes(
            b["_first"][:length], b["next.done"][:length], self.min_end
        )
        if self.max_episodes is not None:
            room = max(self.max_episodes - self.writer.num_episodes, 0)
            lengths, env, start = lengths[:room], env[:room], start[:room]
            rows = rows[: int(lengths.sum())]
        written = len(lengths)
        if written:
            flat = {
                k: v[:length].transpose(0, 1).reshape(self.n * length, *v.shape[2:]) for k, v in b.items()
            }
            idx = flat["_instruction"][env * length + start] if "_instruction" in flat else None
            cols = {k: v[rows].cpu() for k, v in flat.items() if not k.startswith("_")}
            self.writer.add(EpisodeBatch(cols, lengths.cpu(), self.task(idx, written)))
        shift = max(length - self.keep, 0)  # keep the last longest-episode's worth of steps
        if shift:
            for v in b.values():
                v[: length - shift] = v[shift:length].clone()
        self.filled, self.min_end = length - shift, length - shift
        return written

    def close(self) -> None:
        self.flush()
        if self.own_writer:
            self.writer.close()


def rollout_recorder(
    root: str | Path,
    env: Any,
    *,
    task: str,
    state_group: str | None = None,
    env_ids: torch.Tensor | None = None,
    max_episodes: int | None = None,
    **writer_options: Any,
) -> EpisodeRecorder:
    """A Runner observer writing the whole episodes of training rollouts as a LeRobot dataset at
    ``root``; closing it (the Runner does when training ends) moves the dataset into place. ``task``:
    the task string of envs without instructions; ``state_group``: ``proprio`` where the env has it,
    else ``policy``; ``writer_options``: LeRobotWriter's keywords."""
    group = state_group or ("proprio" if "proprio" in env.obs_spec else "policy")
    writer = LeRobotWriter(root, dataset_fps(env.dt), **writer_options)
    return EpisodeRecorder(
        writer,
        env,
        state_group=group,
        task=task_texts(env, task),
        env_ids=env_ids,
        max_episodes=max_episodes,
        own_writer=True,
    )
