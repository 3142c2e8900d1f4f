"""Actuator models evaluated batched at the physics rate: ideal PD, DC motor, delay, learned MLP.

A task picks one with ``actuator: {model: ..., ...}`` (or ``actuator: <model>``); without the key
the model's own position servos run as written (``ideal_pd``), which is the default.

- ``ideal_pd``: the MJCF position servo, tau = kp (target - q) - kd qdot clipped at the effort
  limit, inside the engine's native step.
- ``delay``: the same servo receiving each target ``delay_steps`` physics steps late; the backend
  hands the engine a per-substep control sequence, so it stays in the native step.
- ``dc_motor``: the PD torque clipped by the torque-speed line
  tau_max(w) = tau_stall (1 - |w| / w_free), itself clipped to [0, effort limit]; computed in torch
  between physics substeps (the engine's actuators become plain torque motors).
- ``mlp``: a learned actuator (``embodied fit-actuator model=mlp``) mapping each joint's history of
  position errors and velocities at the physics rate to its torque, computed in torch between
  substeps.

Every model may add ``delay_steps`` (physics steps) or ``delay_s`` (seconds, rounded to steps).
Per-env factors from domain randomization (sim/randomize.py) scale kp, kd, effort and stall
torque, the free-running speed, and add delay steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sim.backend import SimConfigError

MODELS = ("ideal_pd", "dc_motor", "delay", "mlp")
TORQUE_MODELS = ("dc_motor", "mlp")
_KEYS = {
    "ideal_pd": ("delay_steps", "delay_s"),
    "delay": ("delay_steps", "delay_s"),
    "dc_motor": ("delay_steps", "delay_s", "tau_stall", "w_free", "kp", "kd", "effort_limit", "path"),
    "mlp": ("delay_steps", "delay_s", "path", "effort_limit"),
}
MLP_KIND = "embodied-mlp-actuator"


def parse_actuator(cfg: Any) -> dict[str, Any]:
    """A task's ``actuator`` entry as {model: ..., ...}; one-line SimConfigError when it is wrong.

    A ``dc_motor`` entry naming ``path`` (a YAML written by ``embodied fit-actuator``) takes its
    constants from that file; keys given beside ``path`` win.
    """
    if cfg is None:
        return {"model": "ideal_pd"}
    if isinstance(cfg, str):
        cfg = {"model": cfg}
    if not isinstance(cfg, Mapping):
        raise SimConfigError(f"actuator must be a model name or a mapping, got {cfg!r}")
    out = {k: v for k, v in cfg.items() if v is not None}  # null keys are unset (config placeholders)
    model = out.setdefault("model", "ideal_pd")
    if model not in MODELS:
        raise SimConfigError(f"unknown actuator model {model!r}; choose one of {', '.join(MODELS)}")
    if model == "dc_motor" and out.get("path"):
        out = {**_load_yaml_constants(str(out["path"])), **{k: v for k, v in out.items() if k != "path"}}
    unknown = sorted(set(out) - {"model", *_KEYS[model]})
    if unknown:
        raise SimConfigError(
            f"unknown {model} actuator key(s) {', '.join(unknown)}; known: {', '.join(_KEYS[model])}"
        )
    if model == "mlp" and not out.get("path"):
        raise SimConfigError("actuator model mlp needs path=<file written by embodied fit-actuator>")
    if "delay_steps" in out and "delay_s" in out:
        raise SimConfigError("give actuator delay_steps or delay_s, not both")
    return out


def _load_yaml_constants(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SimConfigError(f"actuator file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SimConfigError(f"actuator file {p} is not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, Mapping) or data.get("model") != "dc_motor":
        raise SimConfigError(f"actuator file {p} holds no dc_motor model")
    return {k: v for k, v in data.items() if k not in ("fit",)}


def _per_joint(value: Any, nu: int, name: str, default: torch.Tensor) -> torch.Tensor:
    if value is None:
        return default.clone()
    t = torch.as_tensor(value, dtype=default.dtype)
    if t.dim() == 0:
        t = t.expand(nu).clone()
    if t.shape != (nu,):
        raise SimConfigError(
            f"actuator {name} needs one value or {nu} (one per actuator), got {list(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise SimConfigError(f"actuator {name} must be finite and > 0, got {t.tolist()}")
    return t


class MlpActuatorNet(nn.Module):
    """Per-joint torque from (pos_error history, velocity history, joint): (B, 2 H + J) -> (B,).

    One network shared by the joints, told which joint it evaluates by a one-hot input (motors of
    one robot differ). Inputs are scaled by ``pos_scale`` / ``vel_scale``; the output by
    ``torque_scale`` (after Hwangbo et al. 2019 and legged_gym's actuator net; ReLU hidden layers
    here, whose kinks fit the torque limits' clipping better than softsign's).
    """

    def __init__(self, history: int, hidden: Sequence[int] = (64, 32), num_joints: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * history + num_joints
        self.num_joints = int(num_joints)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.history = int(history)
        self.hidden = [int(h) for h in hidden]
        self.register_buffer("pos_scale", torch.ones(self.num_joints))  # per joint, 1 / rad
        self.register_buffer("vel_scale", torch.ones(self.num_joints))  # per joint, s / rad
        self.register_buffer("torque_scale", torch.ones(self.num_joints))  # per joint, N m

    def forward(self, pos_err: torch.Tensor, vel: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        """pos_err, vel: (B, H) newest first; joint: (B,) long index -> torque (B,)."""
        hot = nn.functional.one_hot(joint, self.num_joints).to(pos_err.dtype)
        x = torch.cat([pos_err * self.pos_scale[joint, None], vel * self.vel_scale[joint, None], hot], dim=-1)
        return self.net(x).squeeze(-1) * self.torque_scale[joint]


def save_mlp_actuator(path: str | Path, net: MlpActuatorNet, info: Mapping[str, Any]) -> None:
    """Write the net atomically (torch.save of plain tensors and numbers: loadable weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    blob = {
        "kind": MLP_KIND,
        "history": net.history,
        "hidden": net.hidden,
        "num_joints": net.num_joints,
        "state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "info": dict(info),
    }
    torch.save(blob, tmp)
    tmp.replace(path)


def load_mlp_actuator(path: str | Path) -> MlpActuatorNet:
    """The net saved by ``save_mlp_actuator``; one-line SimConfigError on a missing or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise SimConfigError(f"actuator file {p} does not exist")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on a corrupt file
        raise SimConfigError(f"actuator file {p} cannot be read ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("kind") != MLP_KIND:
        raise SimConfigError(f"actuator file {p} is not an MLP actuator written by embodied fit-actuator")
    net = MlpActuatorNet(int(blob["history"]), blob["hidden"], int(blob.get("num_joints", 1)))
    net.load_state_dict(blob["state"])
    net.eval().requires_grad_(False)
    return net


class Actuator:
    """Batched actuator state for N envs and nu actuators, in the dtype and device of the backend.

    ``targets(ctrl)`` gives the (N, decimation, nu) targets each physics substep sees (delay
    applied); for the torque models ``torque(target, q, qd)`` gives (N, nu) joint torques.
    """

    def __init__(
        self,
        cfg: Mapping[str, Any],
        *,
        num_envs: int,
        kp: torch.Tensor,
        kd: torch.Tensor,
        effort: torch.Tensor,
        ctrl_range: torch.Tensor,
        physics_dt: float,
        decimation: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        cfg = parse_actuator(cfg)
        self.model = str(cfg["model"])
        self.torque_mode = self.model in TORQUE_MODELS
        n, nu = num_envs, int(kp.shape[0])
        f = dict(device=device, dtype=dtype)
        self.num_envs, self.nu, self.decimation, self.physics_dt = n, nu, int(decimation), float(physics_dt)
        self.f = f
        delay = cfg.get("delay_steps")
        if cfg.get("delay_s") is not None:
            delay = round(float(cfg["delay_s"]) / self.physics_dt)
        delay = 0 if delay is None else delay
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0 or delay != int(delay):
            raise SimConfigError(f"actuator delay_steps must be an integer >= 0, got {delay!r}")
        if self.model == "delay" and delay == 0:
            raise SimConfigError("actuator model delay needs delay_steps >= 1 (or delay_s)")
        self.base_delay = int(delay)
        inf_effort = torch.where(torch.isfinite(effort), effort, torch.full_like(effort, 1e9))
        self.nom_kp = _per_joint(cfg.get("kp"), nu, "kp", kp.to(dtype)).to(device) if (kp > 0).all() else None
        if self.torque_mode and self.nom_kp is None:
            raise SimConfigError(f"actuator model {self.model} needs position servos on every actuator")
        self.nom_kd = (
            _per_joint(cfg.get("kd"), nu, "kd", kd.to(dtype).clamp_min(1e-12)).to(device)
            if self.nom_kp is not None
            else None
        )
        self.nom_effort = _per_joint(cfg.get("effort_limit"), nu, "effort_limit", inf_effort.to(dtype)).to(
            device
        )
        self.nom_stall = _per_joint(cfg.get("tau_stall"), nu, "tau_stall", self.nom_effort.cpu()).to(device)
        self.nom_wfree = _per_joint(cfg.get("w_free"), nu, "w_free", torch.full((nu,), 30.0, dtype=dtype)).to(
            device
        )
        self.ctrl_lo, self.ctrl_hi = ctrl_range[:, 0].to(**f), ctrl_range[:, 1].to(**f)
        self.net = load_mlp_actuator(cfg["path"]).to(**f) if self.model == "mlp" else None
        if self.net is not None and self.net.num_joints != nu:
            raise SimConfigError(
                f"actuator file {cfg['path']} was fitted on {self.net.num_joints} joints, model has {nu}"
            )
        self._joint_id = torch.arange(nu, device=device).repeat(n)
        # Per-env parameters (randomize() rescales them for the envs being reset).
        self.kp = None if self.nom_kp is None else self.nom_kp.expand(n, nu).clone()
        self.kd = None if self.nom_kd is None else self.nom_kd.expand(n, nu).clone()
        self.effort = self.nom_effort.expand(n, nu).clone()
        self.stall = self.nom_stall.expand(n, nu).clone()
        self.wfree = self.nom_wfree.expand(n, nu).clone()
        self.delay = torch.full((n,), self.base_delay, dtype=torch.long, device=device)
        self._buf = torch.zeros(n, self.base_delay + self.decimation, nu, **f)  # oldest first
        self._fresh = torch.ones(n, dtype=torch.bool, device=device)
        h = 1 if self.net is None else self.net.history
        self._err_hist = torch.zeros(n, nu, h, **f)  # newest first
        self._vel_hist = torch.zeros(n, nu, h, **f)
        self.last_torque = torch.zeros(n, nu, **f)

    @property
    def delayed(self) -> bool:
        return self._buf.shape[1] > self.decimation or bool((self.delay > 0).any())

    def reset(self, mask: torch.Tensor) -> None:
        """Envs where mask (N,) is true start fresh: no stale targets, an empty MLP history."""
        m = mask.to(self._fresh.device).bool()
        self._fresh |= m
        self._err_hist[m] = 0.0
        self._vel_hist[m] = 0.0

    def targets(self, ctrl: torch.Tensor) -> torch.Tensor:
        """ctrl (N, nu) -> (N, decimation, nu): the target each physics substep of this step sees."""
        ctrl = ctrl.to(**self.f)
        dec, length = self.decimation, self._buf.shape[1]
        # A freshly reset env has no past targets: it holds its first target (no start-up jump).
        self._buf = torch.where(self._fresh[:, None, None], ctrl[:, None], self._buf)
        self._fresh.zero_()
        self._buf = torch.cat([self._buf[:, dec:], ctrl[:, None].expand(-1, dec, -1)], dim=1)
        idx = (length - dec + torch.arange(dec, device=ctrl.device))[None] - self.delay[:, None]
        return self._buf.gather(1, idx[..., None].expand(-1, -1, self.nu))

    def torque(self, target: torch.Tensor, q: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
        """Joint torques (N, nu) for targets (N, nu) at joint positions and velocities (N, nu)."""
        target = torch.minimum(torch.maximum(target, self.ctrl_lo), self.ctrl_hi)
        err = target - q
        if self.net is not None:
            self._err_hist = torch.cat([err[..., None], self._err_hist[..., :-1]], dim=-1)
            self._vel_hist = torch.cat([qd[..., None], self._vel_hist[..., :-1]], dim=-1)
            h = self.net.history
            tau = self.net(self._err_hist.reshape(-1, h), self._vel_hist.reshape(-1, h), self._joint_id)
            tau = tau.view_as(err)
            limit = self.effort
        else:
            tau = self.kp * err - self.kd * qd
            limit = (self.stall * (1.0 - qd.abs() / self.wfree)).clamp_min(0.0)
            limit = torch.minimum(limit, self.effort)
        tau = torch.maximum(torch.minimum(tau, limit), -limit)
        self.last_torque = tau
        return tau

    def randomize(self, mask: torch.Tensor, params: Any) -> None:
        """Per-env factors of ``PhysicsParams`` for the envs where mask is true."""
        m = mask.to(self._fresh.device).bool()[:, None]

        def col(name: str) -> torch.Tensor:
            return getattr(params, name).to(**self.f)[:, None]

        if self.kp is not None:
            self.kp = torch.where(m, self.nom_kp * col("kp_scale"), self.kp)
            self.kd = torch.where(m, self.nom_kd * col("kd_scale"), self.kd)
        strength = col("motor_strength")
        self.effort = torch.where(m, self.nom_effort * strength, self.effort)
        self.stall = torch.where(m, self.nom_stall * strength * col("tau_stall_scale"), self.stall)
        self.wfree = torch.where(m, self.nom_wfree * col("w_free_scale"), self.wfree)
        extra = params.actuator_delay.to(self.delay.device).round().long()
        self.delay = torch.where(m[:, 0], self.base_delay + extra, self.delay)
        need = int(self.delay.max()) + self.decimation
        if need > self._buf.shape[1]:  # grows only at a reset that draws a longer delay
            pad = self._buf[:, :1].expand(-1, need - self._buf.shape[1], -1)
            self._buf = torch.cat([pad, self._buf], dim=1)


def describe(cfg: Mapping[str, Any]) -> str:
    """One line naming the model and its constants, for logs."""
    c = parse_actuator(cfg)
    rest = ", ".join(f"{k}={v}" for k, v in c.items() if k != "model")
    return f"{c['model']}({rest})" if rest else str(c["model"])


__all__ = [
    "MODELS",
    "Actuator",
    "MlpActuatorNet",
    "describe",
    "load_mlp_actuator",
    "parse_actuator",
    "save_mlp_actuator",
]
