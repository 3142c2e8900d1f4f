"""Cross-engine consistency: two backends, one model, one initial state, one control sequence;
how far apart their trajectories drift over time.

Any pair of ``SimBackend`` s works (MuJoCo vs MuJoCo Warp, vs Genesis, or one engine against a
perturbed copy of itself). Errors are the worst over envs at each control step:

- ``base_pos``: distance between the floating bases (m); 0 for a fixed-base model.
- ``base_rot``: angle between the base orientations (rad).
- ``joint_pos``: largest difference of the remaining qpos columns (rad or m). Quaternions of other
  free or ball joints are compared component-wise, which is close to half their angle when small.
- ``qvel``: largest difference of the generalized velocities (rad/s or m/s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from sim.backend import SimBackend

METRICS = ("base_pos", "base_rot", "joint_pos", "qvel")


@dataclass
class Trajectory:
    """States before the first and after every control step, float64 on the CPU.

    Attributes:
        time: (T+1,) seconds since the start.
        qpos: (T+1, N, nq).
        qvel: (T+1, N, nv).
        unstable: (T,) envs the engine flagged as blown up at each step.
    """

    time: torch.Tensor
    qpos: torch.Tensor
    qvel: torch.Tensor
    unstable: torch.Tensor


@dataclass
class Divergence:
    """Per-step worst-over-envs errors between two trajectories, each (T+1,)."""

    time: torch.Tensor
    base_pos: torch.Tensor
    base_rot: torch.Tensor
    joint_pos: torch.Tensor
    qvel: torch.Tensor

    def worst(self, until: float | None = None) -> dict[str, float]:
        """Largest error of each metric over the run (or up to time ``until``, seconds)."""
        keep = (
            self.time <= until + 1e-9 if until is not None else torch.ones_like(self.time, dtype=torch.bool)
        )
        return {k: float(getattr(self, k)[keep].max()) for k in METRICS}

    def first_exceeded(self, tolerance: Mapping[str, float]) -> tuple[float, str] | None:
        """(time, metric) where an error first exceeded its tolerance, or None if none did."""
        unknown = sorted(set(tolerance) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown divergence metric(s) {unknown}; known: {', '.join(METRICS)}")
        hits = [
            (float(self.time[over.nonzero()[0, 0]]), k)
            for k, tol in tolerance.items()
            if (over := getattr(self, k) > tol).any()
        ]
        return min(hits) if hits else None

    def table(self, times: list[float]) -> str:
        """A markdown table of the worst errors up to each of ``times`` (seconds)."""
        rows = ["| until (s) | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for t in times:
            w = self.worst(t)
            rows.append(f"| {t:g} | " + " | ".join(f"{w[k]:.2e}" for k in METRICS) + " |")
        return "\n".join(rows)


def record(
    backend: SimBackend,
    ctrl: torch.Tensor,
    qpos0: torch.Tensor | None = None,
    qvel0: torch.Tensor | None = None,
) -> Trajectory:
    """Reset every env to (qpos0 (N, nq), qvel0 (N, nv)) (default: the current state) and apply
    ctrl (T, N, nu), one control step per row."""
    n = backend.num_envs
    st = backend.state()
    qpos0 = st.qpos if qpos0 is None else qpos0
    qvel0 = st.qvel if qvel0 is None else qvel0
    everyone = torch.ones(n, dtype=torch.bool, device=backend.device)
    backend.reset(everyone, qpos0.to(backend.device), qvel0.to(backend.device))
    f64 = dict(device="cpu", dtype=torch.float64)
    qpos, qvel, unstable = [backend.state().qpos.to(**f64)], [backend.state().qvel.to(**f64)], []
    for u in ctrl:
        unstable.append(backend.step(u.to(backend.device)).cpu())
        st = backend.state()
        qpos.append(st.qpos.to(**f64))
        qvel.append(st.qvel.to(**f64))
    dt = backend.physics_dt * backend.decimation
    t = torch.arange(len(qpos), dtype=torch.float64) * dt
    return Trajectory(t, torch.stack(qpos), torch.stack(qvel), torch.stack(unstable))


def _quat_angle(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Rotation angle between unit quaternions (..., 4), sign-insensitive."""
    q1 = q1 / q1.norm(dim=-1, keepdim=True)
    q2 = q2 / q2.norm(dim=-1, keepdim=True)
    return 2 * torch.acos((q1 * q2).sum(-1).abs().clamp(max=1.0))


def divergence(a: Trajectory, b: Trajectory, floating_base: bool) -> Divergence:
    """Per-step errors between two trajectories of the same model and controls."""
    if a.qpos.shape != b.qpos.shape or a.qvel.shape != b.qvel.shape:
        raise ValueError(f"trajectories differ in shape: {tuple(a.qpos.shape)} vs {tuple(b.qpos.shape)}")
    dq = (a.qpos - b.qpos).abs()
    zeros = torch.zeros(a.qpos.shape[0], dtype=torch.float64)
    if floating_base:
        base_pos = (a.qpos[..., :3] - b.qpos[..., :3]).norm(dim=-1).amax(-1)
        base_rot = _quat_angle(a.qpos[..., 3:7], b.qpos[..., 3:7]).amax(-1)
        joints = dq[..., 7:]
    else:
        base_pos, base_rot, joints = zeros, zeros, dq
    joint_pos = joints.flatten(1).amax(-1) if joints.shape[-1] else zeros
    qvel = (a.qvel - b.qvel).abs().flatten(1).amax(-1)
    # A NaN anywhere is as far apart as two trajectories get.
    out = [torch.nan_to_num(x, nan=float("inf")) for x in (base_pos, base_rot, joint_pos, qvel)]
    return Divergence(a.time, *out)


def compare(
    a: SimBackend,
    b: SimBackend,
    ctrl: torch.Tensor,
    qpos0: torch.Tensor | None = None,
    qvel0: torch.Tensor | None = None,
) -> Divergence:
    """Run both backends from the same state under ctrl (T, N, nu) and measure their divergence.

    The initial state defaults to engine ``a``'s current state.
    """
    if (a.num_envs, a.info.nq, a.info.nv, a.info.nu) != (b.num_envs, b.info.nq, b.info.nv, b.info.nu):
        raise ValueError("the two backends must hold the same model with the same number of envs")
    if abs(a.physics_dt * a.decimation - b.physics_dt * b.decimation) > 1e-12:
        raise ValueError("the two backends must have the same control step (physics_dt * decimation)")
    st = a.state()
    qpos0 = st.qpos.clone() if qpos0 is None else qpos0
    qvel0 = st.qvel.clone() if qvel0 is None else qvel0
    return divergence(record(a, ctrl, qpos0, qvel0), record(b, ctrl, qpos0, qvel0), a.info.floating_base)
