"""``embodied imagine``: a run's real rollout beside K futures its world model imagines from the same start.

The real rollout is the run's policy on a fresh env; the futures come from the same start states
under the same policy, reading its observation out of each predicted state. Both are written to
``<run>/world_model/``:

- ``futures.mp4``: left the real rollout of env 0, right the same frames with each future's robot
  drawn over them as a translucent ghost. A ghost is the env's own scene rendered with the robot's
  qpos columns (``env.robot_qpos_columns()``) set to the future's predicted ``draw`` values; the
  pixels where it differs from the real frame are blended in, tinted per future. With a camera that
  moves with the robot (a chase or tracking camera) the scene moves with each ghost too, so the
  ghosts carry a shifted background; a fixed camera (``camera=``) shows the robot alone.
- ``futures.png``: predicted against real trajectories of the state dimensions that moved most,
  with the futures' 5-95 % band.

Frames are rendered and the env's state restored after each ghost, so the real rollout is never
touched by the drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from world_models import Futures, StateLayout, WorldModel, imagine
from world_models.imagine import state_actor

GHOST_ALPHA = 0.45
DIFF_THRESHOLD = 12  # 8-bit levels: a pixel where a ghost differs from the real frame by more is drawn
TINTS = torch.tensor(
    [(255, 80, 80), (80, 200, 255), (120, 255, 120), (255, 200, 60), (220, 120, 255), (255, 140, 200)],
    dtype=torch.float32,
)


@dataclass
class RealRollout:
    """H steps of the real env from the start state; index 0 is the start."""

    state: torch.Tensor  # (H + 1, N, S) model state (the pre-reset observation at an episode end)
    alive: torch.Tensor  # (H + 1, N) bool: no episode end before this step
    qpos: torch.Tensor  # (H + 1, nq) env 0's full qpos, to draw ghosts in its scene
    qvel: torch.Tensor  # (H + 1, nv)
    frames: torch.Tensor  # (H + 1, 3, h, w) uint8 of env 0


def model_state(obs: dict[str, torch.Tensor], layout: StateLayout) -> torch.Tensor:
    """(N, S): the observation groups of ``layout`` concatenated in its order."""
    return torch.cat([obs[g].float() for g in layout.groups], -1)


@torch.no_grad()
def real_rollout(
    env: Any, policy: torch.nn.Module, obs: dict[str, torch.Tensor], layout: StateLayout, horizon: int, size
) -> RealRollout:
    """The policy's deterministic rollout of ``horizon`` steps from ``obs``, env 0 rendered each step."""
    w, h = size
    sim = env.backend.state()
    states, alive = (
        [model_state(obs, layout)],
        [torch.ones(env.num_envs, dtype=torch.bool, device=env.device)],
    )
    qpos, qvel = [sim.qpos[0].clone()], [sim.qvel[0].clone()]
    frames = [env.render([0], w, h)[0]]
    for _ in range(horizon):
        out = env.step(policy(obs))
        states.append(model_state(out.info.get("final_obs", out.obs), layout))
        alive.append(alive[-1] & ~(out.terminated | out.truncated))
        sim = env.backend.state()
        qpos.append(sim.qpos[0].clone())
        qvel.append(sim.qvel[0].clone())
        frames.append(env.render([0], w, h)[0])
        obs = out.obs
    return RealRollout(
        torch.stack(states), torch.stack(alive), torch.stack(qpos), torch.stack(qvel), torch.stack(frames)
    )


@torch.no_grad()
def ghost_frames(env: Any, real: RealRollout, draw: torch.Tensor, size) -> torch.Tensor:
    """(H + 1, K, 3, h, w) frames of env 0's scene with the robot at each future's ``draw`` qpos.

    draw: (H + 1, K, q) values of the ``robot_qpos_columns()`` of env 0 per step and future.
    """
    w, h = size
    backend = env.backend
    cols = env.robot_qpos_columns().to(real.qpos.device)
    mask = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    mask[0] = True
    now = backend.state()
    keep_qpos, keep_qvel = now.qpos.clone(), now.qvel.clone()
    qpos_all, qvel_all = keep_qpos.clone(), keep_qvel.clone()
    out = []
    try:
        for t in range(draw.shape[0]):
            row = []
            for k in range(draw.shape[1]):
                q = real.qpos[t].clone()
                q[cols] = draw[t, k].to(q)
                qpos_all[0], qvel_all[0] = q, real.qvel[t]
                backend.set_state(mask, qpos_all, qvel_all)
                row.append(env.render([0], w, h)[0])
            out.append(torch.stack(row))
    finally:
        backend.set_state(mask, keep_qpos, keep_qvel)
    return torch.stack(out)


def blend_ghosts(real: torch.Tensor, ghosts: torch.Tensor, alpha: float = GHOST_ALPHA) -> torch.Tensor:
    """real (T, 3, h, w) uint8 and ghosts (T, K, 3, h, w) -> (T, 3, h, w) uint8 with each ghost's
    differing pixels blended over the real frame, tinted by future."""
    base = real.float()
    out = base.clone()
    for k in range(ghosts.shape[1]):
        g = ghosts[:, k].float()
        differs = ((g - base).abs().amax(1, keepdim=True) > DIFF_THRESHOLD).float()  # (T, 1, h, w)
        tint = TINTS[k % len(TINTS)].to(g.device)[None, :, None, None]
        colored = 0.6 * g + 0.4 * tint
        out = out + differs * alpha * (colored - out)
    return out.round().clamp(0, 255).to(torch.uint8)


def side_by_side(left: torch.Tensor, right: torch.Tensor, labels: tuple[str, str]) -> torch.Tensor:
    """(T, 3, h, w) twice -> (T, 3, h, 2w) with a caption on each half."""
    import numpy as np
    from PIL import Image, ImageDraw

    frames = torch.cat([left, right], -1)
    w = left.shape[-1]
    out = []
    for f in frames:
        img = Image.fromarray(f.permute(1, 2, 0).cpu().numpy())
        draw = ImageDraw.Draw(img)
        draw.text((6, 4), labels[0], fill=(255, 255, 255))
        draw.text((w + 6, 4), labels[1], fill=(255, 255, 255))
        out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
    return torch.stack(out)


def dimension_names(layout: StateLayout) -> list[str]:
    """One label per state column: ``group/term[i]``."""
    names = []
    for t, s in layout.slices():
        for i in range(s.stop - s.start):
            names.append(f"{t['group']}/{t['name']}" + (f"[{i}]" if t["dim"] > 1 else ""))
    return names


def plot_futures(
    path: Path,
    real: RealRollout,
    futures: Futures,
    layout: StateLayout,
    dt: float,
    scale: torch.Tensor,
    max_dims: int = 4,
) -> Path:
    """``futures.png``: env 0's real state against the K futures and their 5-95 % band, for the
    ``max_dims`` dimensions whose real trajectory moved most in units of ``scale`` (S,)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real_s = real.state[:, 0].cpu()  # (H + 1, S)
    alive = real.alive[:, 0].cpu()
    k = futures.state.shape[2]
    fut = torch.cat([real_s[0].expand(1, k, -1), futures.state[:, 0].cpu()])  # (H + 1, K, S)
    moved = (real_s[alive] - real_s[0]).abs().amax(0) / scale.cpu().clamp_min(1e-6)
    dims = torch.argsort(moved, descending=True)[:max_dims].tolist()
    names = dimension_names(layout)
    t = torch.arange(real_s.shape[0]) * dt
    lo, hi = torch.quantile(fut, 0.05, dim=1), torch.quantile(fut, 0.95, dim=1)
    fig, axes = plt.subplots(len(dims), 1, figsize=(7, 2.4 * len(dims)), squeeze=False, sharex=True)
    for ax, d in zip(axes[:, 0], dims, strict=True):
        ax.fill_between(t, lo[:, d], hi[:, d], color="tab:orange", alpha=0.25, label="futures 5-95 %")
        for k in range(fut.shape[1]):
            ax.plot(t, fut[:, k, d], color="tab:orange", lw=0.6, alpha=0.6)
        ax.plot(t[alive], real_s[alive, d], color="black", lw=1.6, label="real")
        ax.set_ylabel(names[d], fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"{fut.shape[1]} imagined futures vs the real rollout (env 0)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def imagine_run(
    env: Any,
    policy: torch.nn.Module,
    model: WorldModel,
    out_dir: Path,
    *,
    futures: int,
    horizon: int,
    seed: int,
    size: tuple[int, int] = (320, 240),
) -> dict[str, Any]:
    """Real rollout and K imagined futures from the same reset; writes futures.mp4 and futures.png."""
    from embodied.video import write_video

    obs = env.reset(seed=seed)
    start = model_state(obs, model.layout)
    index = model.layout.index_for(env.obs_layout("policy"))
    gen = torch.Generator().manual_seed(seed)
    fut = imagine(model, start, state_actor(policy, index), horizon, futures, generator=gen)
    real = real_rollout(env, policy, obs, model.layout, horizon, size)
    draw_sl = model.layout.draw_slice()
    draw = torch.cat([start[0, draw_sl].expand(futures, -1)[None], fut.state[:, 0, :, draw_sl]])
    ghosts = ghost_frames(env, real, draw, size)
    frames = side_by_side(
        real.frames, blend_ghosts(real.frames, ghosts), ("real", f"real + {futures} imagined futures")
    )
    video = write_video(out_dir / "futures.mp4", frames, fps=max(1, round(1.0 / env.dt)))
    state_std = model.ensemble.in_std[: model.state_dim]  # the training data's spread of each dimension
    png = plot_futures(out_dir / "futures.png", real, fut, model.layout, env.dt, state_std)
    err = (fut.state - real.state[1:, :, None]).pow(2).mean(-1).sqrt()  # (H, N, K)
    alive = real.alive[1:, :, None].expand_as(err)
    return {
        "video": video,
        "plot": png,
        "frames": int(frames.shape[0]),
        "state_rmse_final": float(err[-1][alive[-1]].mean()) if alive[-1].any() else float("nan"),
    }
