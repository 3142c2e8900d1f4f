"""Deterministic evaluation: every env runs exactly one episode; metrics are aggregated per episode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embodied.env import BatchedEnv, Obs
from embodied.video import CostVideo

Policy = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Episodes:
    """Per-episode tensors of one evaluation batch: one episode per env, each (N,) on the env's device.

    ``metrics``: every ``metric/<name>`` the task reports, scored as ``evaluate`` scores it (cost
    terms ``metric/cost/<name>``: mean over the episode's steps; the others: mean over the steps
    after the warm-up, or the last step of an episode that ended sooner). ``cost_events``: per cost
    term, the steps with an event (value > 0).
    ``interventions``: per ``safety/...intervened`` key of the info (``safety/intervened``: any
    filter), the steps intervened on. ``magnitude``: per ``safety/<filter>/magnitude`` key and
    ``safety/correction`` (the whole chain: |applied - proposed action|), the sum over the episode's
    steps; ``magnitude_intervened``: the same sum over the steps that filter (the chain) intervened.
    """

    dt: float
    ret: torch.Tensor
    cost: torch.Tensor
    length: torch.Tensor  # steps, long
    fell: torch.Tensor  # bool: the episode ended in ``terminated``
    metrics: dict[str, torch.Tensor]
    cost_events: dict[str, torch.Tensor]
    interventions: dict[str, torch.Tensor]
    magnitude: dict[str, torch.Tensor]
    magnitude_intervened: dict[str, torch.Tensor]


@torch.no_grad()
def run_episodes(
    env: BatchedEnv,
    policy: Policy,
    *,
    seed: int = 0,
    warmup_s: float = 0.0,
    video_path: str | Path | None = None,
    video_size: tuple[int, int] = (320, 240),
    camera: str | int | None = None,
    video_env: int = 0,
) -> Episodes:
    """Run one episode per env with ``policy(obs) -> action`` from ``env.reset(seed=seed)``.

    Env ``video_env`` is recorded to ``video_path`` when given (cost events and filter interventions
    drawn on the frames, see ``embodied.video.CostVideo``).
    """
    n, dev = env.num_envs, env.device
    obs: Obs = env.reset(seed=seed)
    zeros = torch.zeros(n, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    ep_return, ep_cost = zeros.clone(), zeros.clone()
    ep_len = torch.zeros(n, dtype=torch.long, device=dev)
    fell = torch.zeros(n, dtype=torch.bool, device=dev)
    metric_sum: dict[str, torch.Tensor] = {}
    metric_last: dict[str, torch.Tensor] = {}
    metric_count = zeros.clone()
    events: dict[str, torch.Tensor] = {}
    hits: dict[str, torch.Tensor] = {}
    mag: dict[str, torch.Tensor] = {}
    mag_hit: dict[str, torch.Tensor] = {}
    warmup = round(warmup_s / env.dt)
    video = CostVideo(fps=round(1.0 / env.dt)) if video_path is not None else None
    info = None  # the info of the step that produced the current state (none after the reset)
    for _ in range(env.max_episode_length):
        if video is not None and bool(active[video_env]):
            video.add(env.render([video_env], *video_size, camera=camera)[0], info, env_id=video_env)
        action = policy(obs)
        out = env.step(action)
        info = out.info
        ep_return += out.reward * active
        ep_cost += out.cost * active
        ep_len += active.long()
        counted = active & (ep_len > warmup)
        metric_count += counted.float()
        for k, v in info.items():
            if k.startswith("safety/") and k.endswith("intervened"):  # filter interventions, per step
                hits[k] = hits.get(k, zeros) + v.float() * active
            if k.startswith("safety/") and k.endswith("/magnitude"):
                hit = info.get(k.removesuffix("magnitude") + "intervened", torch.ones_like(active))
                mag[k] = mag.get(k, zeros) + v * active
                mag_hit[k] = mag_hit.get(k, zeros) + v * (active & hit)
            if k.startswith("metric/"):
                mask = active if k.startswith("metric/cost/") else counted
                metric_sum[k] = metric_sum.get(k, zeros) + v * mask
                metric_last[k] = torch.where(active, v, metric_last.get(k, v))
            if k.startswith("metric/cost/"):
                name = k.removeprefix("metric/cost/")
                events[name] = events.get(name, zeros) + ((v > 0) & active).float()
        if "safety/intervened" in info and "applied_action" in info:
            # The chain's whole correction, against the action as the env sanitizes it (NaN -> 0, clamp).
            proposed = torch.nan_to_num(action.to(dev, torch.float32), 0.0, 0.0, 0.0).clamp(-1.0, 1.0)
            corr = torch.linalg.vector_norm(info["applied_action"] - proposed, dim=-1)
            mag["safety/correction"] = mag.get("safety/correction", zeros) + corr * active
            hit = active & info["safety/intervened"]
            mag_hit["safety/correction"] = mag_hit.get("safety/correction", zeros) + corr * hit
        fell |= active & out.terminated
        active &= ~(out.terminated | out.truncated)
        obs = out.obs
        if not bool(active.any()):
            break
    # An episode that ended before the warm-up (a fall) is scored by its last step, not dropped.
    metrics = {}
    for k, v in metric_sum.items():
        if k.startswith("metric/cost/"):
            metrics[k] = v / ep_len.clamp(min=1)
        else:
            metrics[k] = torch.where(metric_count > 0, v / metric_count.clamp(min=1), metric_last[k])
    if video is not None and video.frames:
        video.write(video_path)
    return Episodes(env.dt, ep_return, ep_cost, ep_len, fell, metrics, events, hits, mag, mag_hit)


def evaluate(
    env: BatchedEnv,
    policy: Policy,
    *,
    seed: int = 0,
    warmup_s: float = 0.0,
    video_path: str | Path | None = None,
    video_size: tuple[int, int] = (320, 240),
    camera: str | int | None = None,
    video_env: int = 0,
) -> dict[str, Any]:
    """Run one episode per env with ``policy(obs) -> action`` (obs: the env's observation dict).

    Returns episode-level figures: mean return and length, the fall rate (episodes ending in
    ``terminated``) and, for each ``info["metric/<name>"]`` the task reports, its mean over the
    steps after ``warmup_s`` of every episode (an episode that ended sooner counts its last step).
    Safety filters in the env's action pipeline are reported as ``safety/intervention_rate`` (any
    filter) and ``safety/<filter>/intervention_rate``: the fraction of each episode's steps changed.
    Cost terms (``metric/cost/<name>``) are averaged over whole episodes instead: the fraction of
    steps with that cost event. Env ``video_env`` (0) is recorded to ``video_path`` when given, with
    its cost events drawn on the frames and listed in ``<video>.costs.csv``. ``run_episodes`` gives
    the same figures per episode.
    """
    ep = run_episodes(
        env,
        policy,
        seed=seed,
        warmup_s=warmup_s,
        video_path=video_path,
        video_size=video_size,
        camera=camera,
        video_env=video_env,
    )
    steps = ep.length.clamp(min=1)
    result: dict[str, Any] = {
        "episodes": env.num_envs,
        "mean_return": ep.ret.mean().item(),
        "mean_cost": ep.cost.mean().item(),
        "mean_length_s": (ep.length.float().mean() * env.dt).item(),
        "fall_rate": ep.fell.float().mean().item(),
    }
    for k, v in ep.metrics.items():
        result[k.split("/", 1)[1]] = v.mean().item()
    for k, v in ep.interventions.items():  # the fraction of each episode's steps a filter changed
        result[k.removesuffix("intervened") + "intervention_rate"] = (v / steps).mean().item()
    return result


def check_thresholds(result: Mapping[str, Any], eval_cfg: Mapping[str, Any]) -> dict[str, bool]:
    """Compare eval figures with the task's ``eval.max_<metric>`` thresholds."""
    verdict = {}
    for key, limit in eval_cfg.items():
        if key.startswith("max_") and key[4:] in result:
            verdict[key[4:]] = bool(result[key[4:]] <= float(limit))
    return verdict
