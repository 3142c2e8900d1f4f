"""The training loop: collect -> update -> log -> checkpoint. Parts are passed in, not reached for.

The Runner knows only the algorithm protocol (embodied/algorithms/base.py) and hands every env step
``(obs, action, out)`` to the observers it was given, before the algorithm sees (and may reshape)
the reward: that is the transition stream replay, world models and timing read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from embodied.algorithms.base import Algorithm, OnPolicy
from embodied.checkpoint import save_checkpoint
from embodied.env import BatchedEnv, Obs, StepOut
from embodied.logger import RunLogger


class StepObserver(Protocol):
    """Receives every env step of training; ``close()`` (optional) is called when training ends."""

    def on_step(self, obs: Obs, action: torch.Tensor, out: StepOut) -> None:
        """obs: what the action (N, A) was sampled on; out: the env's answer (final_obs in info)."""
        ...


class EpisodeTracker:
    """Running returns, costs and lengths per env; the last ``window`` finished episodes give the means.

    Each ``info["metric/<name>"]`` the task reports is also tracked per episode, as its mean over the
    episode (``episode/<name>``) and its value at the episode's last step (``episode/<name>_final``,
    e.g. whether a manipulation episode *ended* at its goal).
    """

    def __init__(self, num_envs: int, device: torch.device, window: int = 200) -> None:
        self.ret = torch.zeros(num_envs, device=device)
        self.cost = torch.zeros(num_envs, device=device)
        self.length = torch.zeros(num_envs, device=device)
        self.window = window
        self.finished_ret: list[torch.Tensor] = []
        self.finished_cost: list[torch.Tensor] = []
        self.finished_len: list[torch.Tensor] = []
        self.log_sums: dict[str, torch.Tensor] = {}
        self.metric_sum: dict[str, torch.Tensor] = {}
        self.finished_metric: dict[str, list[torch.Tensor]] = {}
        self.steps = 0

    def add(self, out: StepOut) -> None:
        self.ret += out.reward
        self.cost += out.cost
        self.length += 1
        done = out.terminated | out.truncated
        self.finished_ret.append(self.ret[done])
        self.finished_cost.append(self.cost[done])
        self.finished_len.append(self.length[done])
        for k, v in out.info.items():
            if k.startswith("log/"):
                self.log_sums[k] = self.log_sums.get(k, 0.0) + v
            elif k.startswith("metric/"):
                name = k.removeprefix("metric/")
                total = self.metric_sum.get(name, torch.zeros_like(self.ret)) + v
                done_rows = self.finished_metric.setdefault(name, [])
                done_rows.append(torch.stack([total[done] / self.length[done], v[done]], -1))
                self.metric_sum[name] = torch.where(done, 0.0, total)
        self.ret = torch.where(done, 0.0, self.ret)
        self.cost = torch.where(done, 0.0, self.cost)
        self.length = torch.where(done, 0.0, self.length)
        self.steps += 1

    def pop(self, dt: float) -> dict[str, float]:
        """Per-step means of this iteration's logs; episode means once some episode finished."""
        ret = torch.cat(self.finished_ret)[-self.window :]
        cost = torch.cat(self.finished_cost)[-self.window :]
        length = torch.cat(self.finished_len)[-self.window :]
        stats = {k.replace("log/", "env/", 1): float(v) / self.steps for k, v in self.log_sums.items()}
        if ret.numel():
            stats["train/mean_episode_reward"] = ret.mean().item()
            stats["train/mean_episode_cost"] = cost.mean().item()
            stats["train/mean_episode_length_s"] = length.mean().item() * dt
        for name, rows in self.finished_metric.items():
            last = torch.cat(rows)[-self.window :]
            self.finished_metric[name] = [last]
            if last.numel():
                stats[f"episode/{name}"] = last[:, 0].mean().item()
                stats[f"episode/{name}_final"] = last[:, 1].mean().item()
        self.finished_ret, self.finished_cost, self.finished_len = [ret], [cost], [length]
        self.log_sums, self.steps = {}, 0
        return stats


class Runner:
    """Trains ``alg`` on ``env`` and checkpoints into ``run_dir/checkpoints``."""

    def __init__(
        self,
        env: BatchedEnv,
        alg: Algorithm,
        logger: RunLogger | None,
        run_dir: str | Path,
        *,
        checkpoint_meta: dict[str, Any],
        save_interval: int = 50,
        collect_threads: int | None = None,
        on_iteration: Callable[[int, dict[str, float]], None] | None = None,
        observers: Sequence[StepObserver] = (),
        world_size: int = 1,
        is_main: bool = True,
        reduce_stats: Callable[[dict[str, float]], dict[str, float]] | None = None,
        random_episode_start: bool = False,
    ) -> None:
        self.env, self.alg, self.logger = env, alg, logger
        self.observers = list(observers)
        self.run_dir = Path(run_dir)
        self.meta = checkpoint_meta
        self.save_interval = save_interval
        # Torch threads while the simulator's pool steps (collection) and while PPO updates.
        self.collect_threads = collect_threads or torch.get_num_threads()
        self.update_threads = torch.get_num_threads()
        self.on_iteration = on_iteration
        # Data-parallel ranks (embodied/distributed.py): steps count every rank's envs, the logged
        # scalars are reduced over ranks, and only the main rank logs and checkpoints.
        self.world_size, self.is_main, self.reduce_stats = world_size, is_main, reduce_stats
        self.total_steps = 0
        # Desynchronize the envs' time limits once at the start (train.random_episode_start).
        self.random_episode_start = random_episode_start

    def learn(self, max_iterations: int, start_iteration: int = 0, start_steps: int = 0) -> None:
        env, alg = self.env, self.alg
        steps_per_iter = alg.num_steps_per_env * env.num_envs * self.world_size
        on_policy = isinstance(alg, OnPolicy)
        begin_rollout = getattr(alg, "begin_rollout", None)
        self.total_steps = start_steps
        tracker = EpisodeTracker(env.num_envs, env.device)
        obs = env.reset()
        if self.random_episode_start and hasattr(env, "randomize_episode_lengths"):
            env.randomize_episode_lengths()
        alg.train_mode()
        bar = tqdm(
            range(start_iteration, max_iterations),
            initial=start_iteration,
            total=max_iterations,
            unit="it",
            dynamic_ncols=True,
            disable=not self.is_main,
        )
        last_reward = float("nan")
        for it in bar:
            t0 = time.perf_counter()
            torch.set_num_threads(self.collect_threads)
            if begin_rollout is not None:  # episodic algorithms restart every env (algo=grpo)
                obs = begin_rollout(env, obs)
            for _ in range(alg.num_steps_per_env):
                action = alg.act(obs)
                out = env.step(action)
                for o in self.observers:
                    o.on_step(obs, action, out)
                alg.process_env_step(out)
                tracker.add(out)
                obs = out.obs
            if on_policy:
                alg.compute_returns(obs)
            t1 = time.perf_counter()
            torch.set_num_threads(self.update_threads)
            stats = alg.update()
            t2 = time.perf_counter()
            self.total_steps += steps_per_iter
            stats.update(tracker.pop(env.dt))
            stats["perf/samples_per_s"] = steps_per_iter / (t2 - t0)
            stats["perf/collection_samples_per_s"] = steps_per_iter / (t1 - t0)
            stats["perf/update_s"] = t2 - t1
            stats["perf/iteration"] = it + 1
            if self.reduce_stats is not None:
                stats = self.reduce_stats(stats)
            if not self.is_main:
                continue
            if self.logger is not None:
                self.logger.log(self.total_steps, stats)
            last_reward = stats.get("train/mean_episode_reward", last_reward)
            bar.set_postfix(
                fps=f"{stats['perf/samples_per_s']:.0f}", reward=f"{last_reward:.2f}", refresh=False
            )
            if self.on_iteration is not None:
                self.on_iteration(it + 1, stats)
            if (it + 1) % self.save_interval == 0 or it + 1 == max_iterations:
                self.save(it + 1)
        bar.close()
        for o in self.observers:
            close = getattr(o, "close", None)
            if close is not None:
                close()

    def save(self, iteration: int) -> Path:
        """Checkpoint ``model_<iteration>.pt``: the policy's and the algorithm's state kept apart."""
        payload = {
            **self.meta,
            "iteration": iteration,
            "total_steps": self.total_steps,
            "policy": {"name": self.meta.get("policy_name", ""), "state": self.alg.policy.state_dict()},
            "algo": {"name": self.meta.get("algo_name", ""), "state": self.alg.state_dict()},
        }
        return save_checkpoint(self.run_dir / "checkpoints" / f"model_{iteration}.pt", payload)
