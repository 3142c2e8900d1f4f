"""Deterministic evaluation: every env runs exactly one episode; metrics are aggregated per episode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from embodied.env import BatchedEnv, Obs
from embodied.video import CostVideo

Policy = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate(
    env: BatchedEnv,
    policy: Policy,
    *,
    seed: int = 0,
    warmup_s: float = 0.0,
    video_path: str | Path | None = None,
    video_size: tuple[int, int] = (320, 240),
    camera: str | int | None = None,
) -> dict[str, Any]:
    """Run one episode per env with ``policy(obs) -> action`` (obs: the env's observation dict).

    Returns episode-level figures: mean return and length, the fall rate (episodes ending in
    ``terminated``) and, for each ``info["metric/<name>"]`` the task reports, its mean over the
    steps after ``warmup_s`` of every episode (an episode that ended sooner counts its last step).
    Safety filters in the env's action pipeline are reported as ``safety/intervention_rate`` (any
    filter) and ``safety/<filter>/intervention_rate``: the fraction of each episode's steps changed.
    Cost terms (``metric/cost/<name>``) are averaged over whole episodes instead: the fraction of
    steps with that cost event. Env 0 is recorded to ``video_path`` when given, with its cost events
    drawn on the frames and listed in ``<video>.costs.csv``.
    """
    n, dev = env.num_envs, env.device
    obs: Obs = env.reset(seed=seed)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    ep_return = torch.zeros(n, device=dev)
    ep_cost = torch.zeros(n, device=dev)
    ep_len = torch.zeros(n, dtype=torch.long, device=dev)
    fell = torch.zeros(n, dtype=torch.bool, device=dev)
    metric_sum: dict[str, torch.Tensor] = {}
    metric_last: dict[str, torch.Tensor] = {}
    metric_count = torch.zeros(n, device=dev)
    safety_sum: dict[str, torch.Tensor] = {}
    warmup = round(warmup_s / env.dt)
    video = CostVideo(fps=round(1.0 / env.dt)) if video_path is not None else None
    info = None  # the info of the step that produced the current state (none after the reset)
    for _ in range(env.max_episode_length):
        if video is not None and bool(active[0]):
            video.add(env.render([0], *video_size, camera=camera)[0], info)
        out = env.step(policy(obs))
        info = out.info
        ep_return += out.reward * active
        ep_cost += out.cost * active
        ep_len += active.long()
        counted = active & (ep_len > warmup)
        metric_count += counted.float()
        for k, v in out.info.items():
            if k.startswith("safety/") and k.endswith("intervened"):  # filter interventions, per step
                name = k.removesuffix("intervened") + "intervention_rate"
                safety_sum[name] = safety_sum.get(name, torch.zeros(n, device=dev)) + v.float() * active
            if k.startswith("metric/"):
                mask = active if k.startswith("metric/cost/") else counted
                metric_sum[k] = metric_sum.get(k, torch.zeros(n, device=dev)) + v * mask
                metric_last[k] = torch.where(active, v, metric_last.get(k, v))
        fell |= active & out.terminated
        active &= ~(out.terminated | out.truncated)
        obs = out.obs
        if not bool(active.any()):
            break
    result: dict[str, Any] = {
        "episodes": n,
        "mean_return": ep_return.mean().item(),
        "mean_cost": ep_cost.mean().item(),
        "mean_length_s": (ep_len.float().mean() * env.dt).item(),
        "fall_rate": fell.float().mean().item(),
    }
    # An episode that ended before the warm-up (a fall) is scored by its last step, not dropped.
    for k, v in metric_sum.items():
        if k.startswith("metric/cost/"):
            per_episode = v / ep_len.clamp(min=1)
        else:
            per_episode = torch.where(metric_count > 0, v / metric_count.clamp(min=1), metric_last[k])
        result[k.split("/", 1)[1]] = per_episode.mean().item()
    for k, v in safety_sum.items():  # the fraction of each episode's steps a filter changed
        result[k] = (v / ep_len.clamp(min=1)).mean().item()
    if video is not None and video.frames:
        video.write(video_path)
    return result


def check_thresholds(result: Mapping[str, Any], eval_cfg: Mapping[str, Any]) -> dict[str, bool]:
    """Compare eval figures with the task's ``eval.max_<metric>`` thresholds."""
    verdict = {}
    for key, limit in eval_cfg.items():
        if key.startswith("max_") and key[4:] in result:
            verdict[key[4:]] = bool(result[key[4:]] <= float(limit))
    return verdict
