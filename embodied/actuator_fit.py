"""Fit an actuator model (sim/actuators.py) to a robot log (embodied/actuator_log.py).

``dc_motor``: per joint, for every candidate delay d (ticks) the PD law tau = kp (target[t-d] - q)
- kd qdot is fitted by least squares on the samples it explains (iteratively trimmed: saturated
samples are outliers of the linear law); the delay with the smallest median residual wins. The
samples the PD law over-predicts are saturated; those below the effort limit lie on the
torque-speed line |tau| = tau_stall - (tau_stall / w_free) |qdot|, fitted by least squares.

``mlp``: one ReLU network shared by the joints (a one-hot joint index among its inputs) on each
joint's history of position errors and velocities, trained with Adam on the first 80 % of the
log; the last 20 % is held out for the reported error.

Both report the held-out normalized RMSE: RMSE of the predicted torque / std of the measured
torque, per joint, averaged over the joints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from embodied.actuator_log import ActuatorLog
from embodied.errors import ConfigError
from sim.actuators import MlpActuatorNet

HOLDOUT = 0.2  # the last fifth of the log is never fitted on
MIN_LINE_SAMPLES = 20


@dataclass
class FitResult:
    model: str
    constants: dict[str, Any]  # what a task's ``actuator`` entry takes
    nrmse: float  # held-out, averaged over joints
    nrmse_per_joint: list[float]
    rows_used: int
    rows_dropped: int
    notes: list[str] = field(default_factory=list)
    net: MlpActuatorNet | None = None


def _split(log: ActuatorLog, lags: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows) as index tensors of rows usable with ``lags`` past ticks."""
    ok = log.usable(lags)
    cut = int((1.0 - HOLDOUT) * ok.shape[0])
    idx = torch.arange(ok.shape[0])
    return idx[ok & (idx < cut)], idx[ok & (idx >= cut)]


def _nrmse(pred: torch.Tensor, meas: torch.Tensor) -> list[float]:
    """Per joint: RMSE / std of the measurement, for (T, J) tensors."""
    rmse = (pred - meas).pow(2).mean(dim=0).sqrt()
    return (rmse / meas.std(dim=0).clamp_min(1e-9)).tolist()


def _robust_pd(e: torch.Tensor, w: torch.Tensor, tau: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """kp, kd of tau = kp e - kd w on the samples the line explains; returns them and |residual|."""
    x = torch.stack([e, -w], dim=1)
    # Start where no motor saturates: small torques at low speed; then grow the set by trimming.
    keep = (tau.abs() <= 0.3 * tau.abs().max()) & (w.abs() <= 0.3 * w.abs().max())
    coef = torch.zeros(2, dtype=tau.dtype)
    for _ in range(12):
        if int(keep.sum()) < 4:
            break
        coef = torch.linalg.lstsq(x[keep], tau[keep, None]).solution[:, 0]
        res = (x @ coef - tau).abs()
        keep = res <= 4.0 * 1.4826 * res[keep].median() + 1e-6 * tau.abs().max()
    return float(coef[0]), float(coef[1]), (x @ coef - tau).abs()


def dc_motor_torque(
    e: torch.Tensor, w: torch.Tensor, kp: Any, kd: Any, stall: Any, wfree: Any, effort: Any
) -> torch.Tensor:
    """The DC motor law of sim/actuators.py on logged errors e and velocities w, (T, J)."""
    t = lambda v: torch.as_tensor(v, dtype=e.dtype)  # noqa: E731
    tau = t(kp) * e - t(kd) * w
    limit = torch.minimum((t(stall) * (1.0 - w.abs() / t(wfree))).clamp_min(0.0), t(effort))
    return torch.maximum(torch.minimum(tau, limit), -limit)


def fit_dc_motor(log: ActuatorLog, max_delay: int = 10) -> FitResult:
    """DC motor constants per joint and one delay (ticks) for the robot, from ``log``."""
    notes: list[str] = []
    # The delay: the one under which the PD law explains the most samples (targets are held for
    # several ticks, so only the samples right after a target changes tell delays apart).
    rows, _ = _split(log, max_delay)
    if rows.numel() < 50:
        raise ConfigError("actuator log has too few usable rows to fit a dc_motor")
    nj = len(log.joints)
    res = torch.stack(
        [
            torch.stack(
                [
                    _robust_pd(
                        log.target[rows - d, j] - log.pos[rows, j], log.vel[rows, j], log.torque[rows, j]
                    )[2]
                    for j in range(nj)
                ]
            )
            for d in range(max_delay + 1)
        ]
    )  # (D, J, R)
    tol = 4.0 * 1.4826 * res.median(dim=2).values.min(dim=0).values  # (J,): the noise level
    explained = (res <= tol[None, :, None]).double().mean(dim=(1, 2))  # (D,)
    d = int(explained.argmax())
    rows, held = _split(log, d)
    kp, kd, stall, wfree, effort = [], [], [], [], []
    for j, name in enumerate(log.joints):
        e, w, tau = log.target[rows - d, j] - log.pos[rows, j], log.vel[rows, j], log.torque[rows, j]
        kpj, kdj, _ = _robust_pd(e, w, tau)
        pd = kpj * e - kdj * w
        eff = float(tau.abs().quantile(0.999))
        margin = 0.02 * eff
        sat = (pd.abs() > tau.abs() + margin) & (pd * tau >= 0)
        # On the line: saturated, below the effort limit and above zero (past w_free it gives 0).
        line = sat & (tau.abs() < eff - margin) & (tau.abs() > margin)
        if int(line.sum()) >= MIN_LINE_SAMPLES:
            x = torch.stack([torch.ones_like(w[line]), w[line].abs()], dim=1)
            a, b = torch.linalg.lstsq(x, tau[line].abs()[:, None]).solution[:, 0].tolist()
            if a > 0 and b < 0:
                stall.append(a)
                wfree.append(-a / b)
            else:
                stall.append(eff)
                wfree.append(1e6)
                notes.append(f"{name}: torque-speed line not identified (slope {b:.3g})")
        else:
            stall.append(eff)
            wfree.append(1e6)
            notes.append(f"{name}: {int(line.sum())} samples on the torque-speed line; it is not identified")
        kp.append(kpj)
        kd.append(kdj)
        effort.append(eff)
    e_h = log.target[held - d] - log.pos[held]
    pred = dc_motor_torque(e_h, log.vel[held], kp, kd, stall, wfree, effort)
    per = _nrmse(pred, log.torque[held])
    consts = {
        "model": "dc_motor",
        "kp": kp,
        "kd": kd,
        "tau_stall": stall,
        "w_free": wfree,
        "effort_limit": effort,
        "delay_s": d * log.dt,
    }
    return FitResult("dc_motor", consts, sum(per) / len(per), per, int(rows.numel()), log.dropped, notes)


def _mlp_inputs(log: ActuatorLog, rows: torch.Tensor, history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, joint): pos-error and velocity histories (newest first), (R * J, H) each."""
    lag = torch.arange(history)
    r = rows[:, None] - lag[None]  # (R, H)
    err = (log.target[r] - log.pos[r]).permute(0, 2, 1)  # (R, J, H)
    vel = log.vel[r].permute(0, 2, 1)
    return err.reshape(-1, history), vel.reshape(-1, history)


def fit_mlp(
    log: ActuatorLog,
    history: int = 4,
    hidden: tuple[int, ...] = (64, 32),
    iterations: int = 2000,
    seed: int = 0,
) -> FitResult:
    """A shared per-joint MLP actuator (joint one-hot input) on ``history`` ticks of errors and velocities."""
    torch.manual_seed(seed)
    rows, held = _split(log, history - 1)
    if rows.numel() < 100:
        raise ConfigError("actuator log has too few usable rows to fit an mlp")
    nj = len(log.joints)
    net = MlpActuatorNet(history, hidden, num_joints=nj).double()
    err, vel = _mlp_inputs(log, rows, history)
    tau = log.torque[rows].reshape(-1)
    with torch.no_grad():
        net.pos_scale.copy_(1.0 / err.view(-1, nj, history).std(dim=(0, 2)).clamp_min(1e-9))
        net.vel_scale.copy_(1.0 / vel.view(-1, nj, history).std(dim=(0, 2)).clamp_min(1e-9))
        net.torque_scale.copy_(log.torque[rows].std(dim=0).clamp_min(1e-9))
    jid = torch.arange(nj).repeat(rows.numel())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    gen = torch.Generator().manual_seed(seed)
    batch = min(4096, tau.numel())
    for _ in range(iterations):
        i = torch.randint(0, tau.numel(), (batch,), generator=gen)
        loss = ((net(err[i], vel[i], jid[i]) - tau[i]) / net.torque_scale[jid[i]]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval().requires_grad_(False)
    e_h, v_h = _mlp_inputs(log, held, history)
    with torch.no_grad():
        pred = net(e_h, v_h, torch.arange(nj).repeat(held.numel())).view(-1, nj)
    per = _nrmse(pred, log.torque[held])
    consts = {"model": "mlp", "history": history, "hidden": list(hidden), "joints": list(log.joints)}
    return FitResult("mlp", consts, sum(per) / len(per), per, int(rows.numel()), log.dropped, net=net.float())


def relative_error(fitted: Any, hidden: Any) -> float:
    """max |fitted / hidden - 1| over joints (inf where hidden is 0)."""
    f, h = torch.as_tensor(fitted, dtype=torch.float64), torch.as_tensor(hidden, dtype=torch.float64)
    return float(((f / h) - 1.0).abs().max()) if bool((h != 0).all()) else math.inf
