"""Labelled frames for the sim-domain VLM: rollouts of mixed scripted controllers, frames and facets.

Each task has a controller family that reads the task's state (privileged: these make data, they are
not policies) and drives toward a per-env **aim** drawn at every reset, so that one batch holds
successes, near misses and failures:

- ``arm_push``: a push teacher (the hand goes behind the cube, lowers and pushes it toward an aim
  point: the goal for most envs, a point 6-20 cm off it for the rest) or random hand motion;
- ``arm_reach``: the hand driven to the target plus an aim offset (0 for most envs), or random;
- ``driving_lane_follow``: lane tracking at an aim offset from the lane centre (0, a drift over the
  lane line, or past the road's edge), or random steering.

``teacher_rollout`` runs the success-seeking controller alone and records the task's progress along
it (the ranking benchmark's Spearman figure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from embodied.errors import ConfigError
from embodied.rewards.captions import Facets, task_captions

Controller = Callable[[Any], torch.Tensor]  # env -> (N, A) action


@dataclass
class Aim:
    """Per-env controller settings, redrawn at each reset: mode 0 teacher, 1 off-target, 2 random."""

    mode: torch.Tensor  # (N,) long
    offset: torch.Tensor  # (N, 3) the aim's offset from the goal (m)


def _draw_aim(
    n: int, g: torch.Generator, weights: tuple[float, float, float], scale: tuple[float, float]
) -> Aim:
    mode = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=g)
    angle = torch.rand(n, generator=g) * 2 * torch.pi
    radius = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g)
    offset = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), torch.zeros(n)], -1)
    return Aim(mode, torch.where((mode == 1)[:, None], offset, 0.0))


def _toward(env: Any, target: torch.Tensor, speed: torch.Tensor | float) -> torch.Tensor:
    """ee_delta hand translation toward ``target`` (N, 3), at most ``speed`` (fraction of full action)."""
    step = float(env.ik_pos_scale)
    err = target - env.state.ee_pos
    return (err / step).clamp(-1.0, 1.0) * speed


def push_controller(env: Any, aim: Aim, g: torch.Generator) -> Controller:
    """Behind the cube (opposite the aim point), down to the table, then push it at a third of full speed."""
    s0 = env.state
    low, high = env.table_height + 0.02, env.table_height + 0.12
    back = env.object_half + 0.035

    def act(e: Any) -> torch.Tensor:
        s = e.state
        n, dev = s.num_envs, s.ee_pos.device
        goal = s.goal_pos + aim.offset.to(dev)
        u = goal[:, :2] - s.object_pos[:, :2]
        dist = u.norm(dim=-1, keepdim=True)
        u = u / dist.clamp_min(1e-6)
        pre = s.object_pos[:, :2] - back * u
        gap = (pre - s.ee_pos[:, :2]).norm(dim=-1, keepdim=True)
        lowered = s.ee_pos[:, 2:3] < low + 0.015
        push = (gap < 0.02) & lowered & (dist > 0.01)
        xy = torch.where(push, s.object_pos[:, :2] + 0.02 * u, pre)
        z = torch.where(gap > 0.03, high, low)
        done = dist <= 0.01  # at the aim: lift the hand away
        xy = torch.where(done, s.ee_pos[:, :2], xy)
        z = torch.where(done, torch.full_like(z, high), z)
        target = torch.cat([xy, z], -1)
        speed = torch.where(push, 0.35, 1.0)
        a = torch.zeros(n, e.action_dim, device=dev)
        a[:, :3] = _toward(e, target, speed)
        a[:, 3] = -1.0  # gripper closed: a compact pusher
        rand = torch.rand(n, e.action_dim, generator=g).to(dev) * 2 - 1
        return torch.where((aim.mode.to(dev) == 2)[:, None], rand, a)

    del s0
    return act


def reach_controller(env: Any, aim: Aim, g: torch.Generator) -> Controller:
    def act(e: Any) -> torch.Tensor:
        s = e.state
        dev = s.ee_pos.device
        a = _toward(e, s.goal_pos + aim.offset.to(dev), 0.6)
        rand = torch.rand(a.shape, generator=g).to(dev) * 2 - 1
        return torch.where((aim.mode.to(dev) == 2)[:, None], rand, a)

    return act


def drive_controller(
    env: Any, aim: Aim, g: torch.Generator, schedule: Callable[[Any], torch.Tensor] | None = None
) -> Controller:
    """Steer to a lateral aim (``aim.offset[:, 0]`` m from the lane centre, left positive), half speed."""

    def act(e: Any) -> torch.Tensor:
        s = e.state
        dev = s.lane_offset.device
        want = aim.offset[:, 0].to(dev) if schedule is None else schedule(e)
        steer = (0.4 * (want - s.lane_offset) - 1.2 * s.heading_error).clamp(-1.0, 1.0)
        a = torch.stack([steer, torch.full_like(steer, 0.15)], -1)
        rand = torch.rand(a.shape, generator=g).to(dev) * 2 - 1
        rand[:, 1] = rand[:, 1].abs() * 0.5 - 0.2
        return torch.where((aim.mode.to(dev) == 2)[:, None], rand, a)

    return act


def _drive_aim(n: int, g: torch.Generator, half_width: float, lane_center: torch.Tensor) -> Aim:
    """Lateral aims from the lane centre: centred (40 %), over a lane line (25 %), past the road's edge
    (25 %, ``lane_center`` (N,): the lane's offset from the road's centre line), random steering (10 %)."""
    kind = torch.multinomial(torch.tensor([0.4, 0.25, 0.25, 0.1]), n, replacement=True, generator=g)
    side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    jitter = torch.rand(n, generator=g)
    lateral = torch.where(kind == 0, (jitter - 0.5) * 0.3, side * (1.1 + 0.8 * jitter))
    lateral = torch.where(kind == 2, side * (half_width + 0.35) - lane_center.cpu(), lateral)
    mode = torch.where(kind == 3, 2, torch.where(kind == 0, 0, 1))
    return Aim(mode, torch.stack([lateral, torch.zeros(n), torch.zeros(n)], -1))


CONTROLLERS = {
    "arm_push": push_controller,
    "arm_reach": reach_controller,
    "driving_lane_follow": drive_controller,
}
AIMS = {  # mode weights (teacher, off-target, random), off-target radius range (m)
    "arm_push": ((0.55, 0.3, 0.15), (0.06, 0.2)),
    "arm_reach": ((0.45, 0.4, 0.15), (0.04, 0.3)),
}


def new_aim(task: str, env: Any, g: torch.Generator) -> Aim:
    if task == "driving_lane_follow":
        return _drive_aim(env.num_envs, g, float(env.road_half_width), env.lane_center)
    weights, scale = AIMS[task]
    return _draw_aim(env.num_envs, g, weights, scale)


def _merge(aim: Aim, fresh: Aim, mask: torch.Tensor) -> None:
    aim.mode = torch.where(mask, fresh.mode, aim.mode)
    aim.offset = torch.where(mask[:, None], fresh.offset, aim.offset)


def collect_frames(env: Any, task: str, steps: int, seed: int, every: int = 2) -> dict[str, Any]:
    """Frames (M, 3, H, W) uint8 and their facets {name: (M,)} along ``steps`` env steps of mixed
    controllers, keeping every ``every``-th step; also ``success`` (M,) bool, the task's metric."""
    if task not in CONTROLLERS:
        raise ConfigError(f"no frame controllers for task {task!r}; known: {', '.join(sorted(CONTROLLERS))}")
    facet_fn = task_captions(task).facets
    g = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    aim = new_aim(task, env, g)
    act = CONTROLLERS[task](env, aim, g)
    frames, success, facets = [], [], []
    for t in range(steps):
        out = env.step(act(env))
        done = (out.terminated | out.truncated).cpu()
        if t % every == 0:
            keep = ~done  # a finished env already shows its next episode
            frames.append(env.frames().cpu()[keep])
            success.append(out.info["metric/success"].bool().cpu()[keep])
            facets.append({k: v.cpu()[keep] for k, v in facet_fn(env).items()})
        if bool(done.any()):
            _merge(aim, new_aim(task, env, g), done)
    return {
        "frames": torch.cat(frames),
        "success": torch.cat(success),
        "facets": {k: torch.cat([f[k] for f in facets]) for k in facets[0]},
    }


def _progress(task: str, env: Any) -> torch.Tensor:
    """(N,) the task's progress now: minus the goal distance (arm tasks), minus |lane offset| (driving)."""
    s = env.state
    if task == "arm_push":
        return -(s.object_pos[:, :2] - s.goal_pos[:, :2]).norm(dim=-1)
    if task == "arm_reach":
        return -(s.ee_pos - s.goal_pos).norm(dim=-1)
    return -s.lane_offset.abs()


def teacher_rollout(env: Any, task: str, seed: int, steps: int | None = None) -> dict[str, Any]:
    """One episode of the success-seeking controller per env: frames (T, N, 3, H, W), progress (T, N),
    success (T, N). Driving's teacher drifts 2 m aside for its first quarter, then recovers; its
    progress is recorded from the recovery on (``start``)."""
    g = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    n = env.num_envs
    steps = int(steps or env.max_episode_length - 1)
    aim = Aim(torch.zeros(n, dtype=torch.long), torch.zeros(n, 3))
    start = 0
    if task == "driving_lane_follow":
        side = -2.0 * torch.sign(env.lane_center.cpu())  # toward the other lane, staying on the road
        start = steps // 4
        act = drive_controller(
            env, aim, g, lambda e: torch.where(e.episode_length < start, side.to(e.device), 0.0)
        )
    else:
        act = CONTROLLERS[task](env, aim, g)
    frames, progress, success = [], [], []
    for _ in range(steps):
        out = env.step(act(env))
        frames.append(env.frames().cpu())
        progress.append(_progress(task, env).cpu())
        success.append(out.info["metric/success"].bool().cpu())
    return {
        "frames": torch.stack(frames)[start:],
        "progress": torch.stack(progress)[start:],
        "success": torch.stack(success)[start:],
    }


def facet_summary(facets: Facets) -> dict[str, dict[int, int]]:
    """How many frames hold each value of each facet (-1: does not apply)."""
    return {k: {int(u): int((v == u).sum()) for u in v.unique()} for k, v in facets.items()}
