"""Transitions on disk: the Runner's step stream written to ``<run>/replay/`` and read back.

Layout: ``replay/meta.json`` (observation spec, num_envs, dt, groups) and ``replay/shard_<k>.pt``
files, each a flat dict of tensors (T, N, ...) for T consecutive env steps, written atomically and
loaded with ``weights_only=True``:

    obs/<group>        the observation the action was taken on
    next_obs/<group>   the observation after the step, before any reset (info["final_obs"])
    action             what the algorithm sampled (and stores)
    applied_action     what reached the actuators after sanitizing and safety filters
    reward, cost       (T, N) float32
    terminated, truncated   (T, N) bool

Steps are kept on the env's device until a shard is full, then moved to the CPU once.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from embodied.checkpoint import atomic_torch_save
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from policies.spec import TensorSpec, spec_from_dict, spec_to_dict

META = "meta.json"
VERSION = 1


class ReplayWriter:
    """A Runner observer that writes every transition to ``directory`` in shards of ``shard_steps``."""

    def __init__(
        self,
        directory: str | Path,
        obs_spec: Mapping[str, TensorSpec],
        num_envs: int,
        action_dim: int,
        dt: float,
        *,
        groups: Sequence[str] | None = None,
        shard_steps: int = 24,
        device: str | torch.device = "cpu",
    ) -> None:
        if shard_steps < 1:
            raise ConfigError(f"replay.shard_steps must be >= 1, got {shard_steps}")
        groups = list(obs_spec) if groups is None else list(groups)
        missing = [g for g in groups if g not in obs_spec]
        if missing:
            raise ConfigError(
                f"replay.groups {missing} are not observation groups; the env has {list(obs_spec)}"
            )
        self.dir = Path(directory)
        self.spec = {g: obs_spec[g] for g in groups}
        meta = {
            "version": VERSION,
            "obs_spec": spec_to_dict(self.spec),
            "num_envs": int(num_envs),
            "action_dim": int(action_dim),
            "dt": float(dt),
        }
        meta_path = self.dir / META
        if meta_path.exists():  # a resumed run appends to its replay, which must describe the same data
            old = json.loads(meta_path.read_text())
            if old != meta:
                raise ConfigError(f"{self.dir} holds replay of other data ({old}); move it away first")
        self._meta = meta  # written with the first shard: a rejected run leaves nothing behind
        self.shard_steps = shard_steps
        self.next_index = len(shard_paths(self.dir))
        t, n, dev = shard_steps, num_envs, torch.device(device)

        def buf(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(t, n, *shape, dtype=dtype, device=dev)

        self.buffers: dict[str, torch.Tensor] = {}
        for g, s in self.spec.items():
            self.buffers[f"obs/{g}"] = buf(*s.shape, dtype=s.dtype)
            self.buffers[f"next_obs/{g}"] = buf(*s.shape, dtype=s.dtype)
        self.buffers["action"] = buf(action_dim)
        self.buffers["applied_action"] = buf(action_dim)
        for k in ("reward", "cost"):
            self.buffers[k] = buf()
        for k in ("terminated", "truncated"):
            self.buffers[k] = buf(dtype=torch.bool)
        self.step = 0

    def on_step(self, obs: Obs, action: torch.Tensor, out: StepOut) -> None:
        """Record one env step of N envs: the obs acted on, the sampled action and what followed."""
        t, b = self.step, self.buffers
        final = out.info.get("final_obs", out.obs)
        for g in self.spec:
            b[f"obs/{g}"][t].copy_(obs[g])
            b[f"next_obs/{g}"][t].copy_(final[g])
        b["action"][t].copy_(action)
        b["applied_action"][t].copy_(out.info.get("applied_action", action))
        b["reward"][t].copy_(out.reward)
        b["cost"][t].copy_(out.cost)
        b["terminated"][t].copy_(out.terminated)
        b["truncated"][t].copy_(out.truncated)
        self.step += 1
        if self.step == self.shard_steps:
            self.flush()

    def flush(self) -> None:
        """Write the steps held so far as the next shard (nothing when none are held)."""
        if self.step == 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / META).exists():
            (self.dir / META).write_text(json.dumps(self._meta, indent=2))
        shard = {k: v[: self.step].cpu().clone() for k, v in self.buffers.items()}
        atomic_torch_save(self.dir / f"shard_{self.next_index:06d}.pt", shard)
        self.next_index += 1
        self.step = 0

    def close(self) -> None:
        self.flush()


def shard_paths(directory: str | Path) -> list[Path]:
    """The shard files of a replay directory in write order."""
    return sorted(Path(directory).glob("shard_*.pt"))


def replay_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a replay directory, with ``obs_spec`` as TensorSpecs."""
    path = Path(directory) / META
    if not path.is_file():
        raise ConfigError(f"{directory} is not a replay directory (no {META})")
    meta = json.loads(path.read_text())
    if meta.get("version") != VERSION:
        raise ConfigError(f"{path} has replay version {meta.get('version')}; this version reads {VERSION}")
    meta["obs_spec"] = spec_from_dict(meta["obs_spec"])
    return meta


def load_replay(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every shard of a replay directory concatenated along time: {key: (T, N, ...)}."""
    replay_meta(directory)
    paths = shard_paths(directory)
    if not paths:
        raise ConfigError(f"{directory} holds no replay shards")
    shards = []
    for p in paths:
        try:
            shards.append(torch.load(p, map_location="cpu", weights_only=True))
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            first = (str(e).strip().splitlines() or ["unreadable"])[0]
            raise ConfigError(f"replay shard {p} is corrupt ({first[:160]})") from None
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
