"""Learned safety-critic filter: Q_c(obs, action) predicts the discounted cost-to-go of an action.

An action whose predicted cost is at most ``threshold`` passes unchanged (bit for bit). Otherwise a
fixed set of K candidates is scored in one batched call of the critic, (B * K) rows: the proposed
action, the action shrunk toward zero, and the action plus perturbations drawn once at build time
from a seeded generator (stored as a buffer, so the set is the same in the env, the exported graph
and on the robot), all clamped to [-1, 1]. The filter returns the candidate nearest to the proposed
action (L2) whose predicted cost is at most ``threshold``; a row where no candidate is safe gets the
candidate with the lowest predicted cost and is flagged in ``info["infeasible"]``, never passed as
safe. No data-dependent control flow: the filter exports to ONNX and TorchScript.

The critic file is written by ``embodied.safety_critic.train_safety_critic``; this module reads it
with torch alone (``torch.load(weights_only=True)``). Its format (``FORMAT``)::

    {"format": "embodied-safety-critic-v1",
     "obs_layout": [{name, dim, scale, clip}, ...],   # env.obs_layout("policy") it was trained on
     "obs_dim": D, "action_dim": A, "hidden_dims": [..], "activation": "elu",
     "weights": MLP state dict ((D + A) -> 1), "normalizer": {"mean": (D,), "std": (D,)},
     "gamma": float, "figures": {final_loss, cost_fraction, steps, ...}, "config": {...}}
"""

import math
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from policies.mlp import MLP
from policies.safety.base import FilterError, Layout, SafetyFilter

FORMAT = "embodied-safety-critic-v1"
SHRINK = (0.5, 0.0)  # structured candidates after the proposed action: gain * action


class SafetyCritic(nn.Module):
    """Q_c: obs (B, D), action (B, A) in [-1, 1] -> (B,) predicted discounted cost-to-go.

    The observation is normalized with the buffers ``obs_mean``, ``obs_std`` (D,) (std already
    floored, so they travel with the weights); the action goes in as it is.
    """

    # Real (not postponed) annotations: TorchScript reads them when the filter is scripted for export.
    obs_mean: torch.Tensor
    obs_std: torch.Tensor

    def __init__(
        self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int] = (64, 64), activation: str = "elu"
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.hidden_dims, self.activation = [int(h) for h in hidden_dims], str(activation)
        self.net = MLP(self.obs_dim + self.action_dim, self.hidden_dims, 1, self.activation)
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.obs_dim))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(obs - self.obs_mean) / self.obs_std, action], dim=-1)
        return self.net(x).squeeze(-1)


def critic_payload(
    critic: SafetyCritic,
    layout: Layout,
    gamma: float,
    figures: Mapping[str, float] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict a critic file holds (see the module docstring), tensors on the CPU."""
    weights = {k: v.detach().cpu().clone() for k, v in critic.net.state_dict().items()}
    return {
        "format": FORMAT,
        "obs_layout": [_term(t) for t in layout],
        "obs_dim": critic.obs_dim,
        "action_dim": critic.action_dim,
        "hidden_dims": list(critic.hidden_dims),
        "activation": critic.activation,
        "weights": weights,
        "normalizer": {
            "mean": critic.obs_mean.detach().cpu().clone(),
            "std": critic.obs_std.detach().cpu().clone(),
        },
        "gamma": float(gamma),
        "figures": dict(figures or {}),
        "config": dict(config or {}),
    }


def load_critic(path: str | Path, layout: Layout, action_dim: int) -> tuple[SafetyCritic, dict[str, Any]]:
    """The critic in file ``path`` and the file's dict; FilterError unless it fits layout and action size."""
    path = Path(path)
    if not path.is_file():
        raise FilterError(
            f"critic.path: no safety-critic file at {path} (write one with train_safety_critic)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or ["unreadable"])[0]
        raise FilterError(f"critic.path: {path} is not a readable torch file ({first[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FilterError(f"critic.path: {path} has format {found!r}, this version reads {FORMAT}")
    if int(data["action_dim"]) != int(action_dim):
        raise FilterError(
            f"critic.path: {path} was trained for {data['action_dim']} actions, this env has {action_dim}"
        )
    mismatch = _layout_mismatch([_term(t) for t in data["obs_layout"]], [_term(t) for t in layout])
    if mismatch:
        raise FilterError(f"critic.path: {path} was trained on another policy observation: {mismatch}")
    critic = SafetyCritic(
        int(data["obs_dim"]), int(data["action_dim"]), data["hidden_dims"], data["activation"]
    )
    try:
        critic.net.load_state_dict(data["weights"])
        critic.obs_mean.copy_(data["normalizer"]["mean"])
        critic.obs_std.copy_(data["normalizer"]["std"])
    except (RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or ["mismatch"])[0]
        raise FilterError(
            f"critic.path: {path} holds weights that do not fit its own header ({first[:160]})"
        ) from None
    return critic, data


class CriticFilter(SafetyFilter):
    """Replace actions the learned safety critic predicts unsafe by the nearest safe candidate; exportable.

    Params (``safety.params.critic``): ``path`` (required: the critic file), ``threshold`` (largest
    predicted discounted cost-to-go that counts as safe), ``num_candidates`` (K, the proposed action
    included), ``radius`` (largest L2 size of the random perturbations), ``seed`` (of the
    perturbations). info: ``infeasible`` (B,) bool, ``q`` (B,) predicted cost of the proposed
    action, ``q_safe`` (B,) of the returned one.
    """

    exportable = True

    def __init__(
        self,
        layout: Layout,
        action_dim: int,
        path: str | None = None,
        threshold: float = 0.5,
        num_candidates: int = 64,
        radius: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__("critic")
        if path is None or str(path) == "":
            raise FilterError("critic.path is required: the file train_safety_critic wrote")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
        ):
            raise FilterError(f"critic.threshold must be a finite number, got {threshold!r}")
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise FilterError(f"critic.num_candidates must be an integer >= 1, got {num_candidates!r}")
        if (
            isinstance(radius, bool)
            or not isinstance(radius, int | float)
            or not (math.isfinite(radius) and radius >= 0)
        ):
            raise FilterError(f"critic.radius must be a finite number >= 0, got {radius!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FilterError(f"critic.seed must be an integer, got {seed!r}")
        critic, data = load_critic(path, layout, action_dim)
        self.critic = critic.eval().requires_grad_(False)
        self.gamma = float(data["gamma"])
        self.threshold, self.num_candidates = float(threshold), int(num_candidates)
        gain, offset = candidate_set(action_dim, self.num_candidates, float(radius), seed)
        self.register_buffer("gain", gain)
        self.register_buffer("offset", offset)

    def candidates(self, action: torch.Tensor) -> torch.Tensor:
        """(B, A) -> (B, K, A): gain_k * action + offset_k, clamped to [-1, 1]; candidate 0 is the action."""
        return (self.gain[:, None] * action[:, None, :] + self.offset).clamp(-1.0, 1.0)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        k = self.num_candidates
        cand = self.candidates(action)
        flat_obs = obs[:, None, :].expand(-1, k, -1).reshape(-1, obs.shape[-1])
        q = self.critic(flat_obs, cand.reshape(-1, cand.shape[-1])).reshape(-1, k)  # (B, K)
        ok = q <= self.threshold
        passes = ok[:, 0]
        feasible = ok.any(-1)
        dist = (cand - action[:, None, :]).square().sum(-1)
        nearest = dist.masked_fill(~ok, float("inf")).argmin(-1)
        idx = torch.where(feasible, nearest, q.argmin(-1))
        chosen = cand.gather(1, idx[:, None, None].expand(-1, 1, cand.shape[-1]))[:, 0]
        safe = torch.where(passes[:, None], action, chosen)
        q_safe = torch.where(passes, q[:, 0], q.gather(1, idx[:, None])[:, 0])
        return safe, ~passes, {"infeasible": ~feasible, "q": q[:, 0], "q_safe": q_safe}


def candidate_set(
    action_dim: int, num_candidates: int, radius: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain (K,), offset (K, A)): candidate k is ``gain_k * action + offset_k``.

    Row 0 is the action itself, then the ``SHRINK`` gains (as many as fit), then random directions
    at radii spread evenly over (0, radius], from a generator seeded with ``seed``.
    """
    gain = torch.ones(num_candidates)
    offset = torch.zeros(num_candidates, action_dim)
    shrink = min(len(SHRINK), num_candidates - 1)
    gain[1 : 1 + shrink] = torch.tensor(SHRINK[:shrink])
    m = num_candidates - 1 - shrink
    if m > 0:
        gen = torch.Generator().manual_seed(seed)
        direction = torch.randn(m, action_dim, generator=gen)
        direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp(min=1e-12)
        radii = radius * torch.arange(1, m + 1, dtype=torch.float32) / m
        offset[1 + shrink :] = radii[:, None] * direction
    return gain, offset


def _term(t: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an observation term that change what the critic sees."""
    clip = t.get("clip")
    return {
        "name": str(t["name"]),
        "dim": int(t["dim"]) * int(t.get("history", 1)),
        "scale": float(t.get("scale", 1.0)),
        "clip": None if clip is None else float(clip),
    }


def _layout_mismatch(trained: list[dict[str, Any]], here: list[dict[str, Any]]) -> str:
    """'' when the layouts agree, else the first difference in words."""
    for i, (a, b) in enumerate(zip(trained, here, strict=False)):
        if a != b:
            return f"term {i} is {_show(a)} in the file, {_show(b)} here"
    if len(trained) != len(here):
        return (
            f"the file has {len(trained)} terms ({', '.join(t['name'] for t in trained)}), here {len(here)}"
        )
    return ""


def _show(t: Mapping[str, Any]) -> str:
    return f"{t['name']}(dim={t['dim']}, scale={t['scale']}, clip={t['clip']})"
