"""Checkpoints: written atomically (tmp file + fsync + rename), loaded with weights_only=True.

Format v2 keeps the policy and the algorithm apart:
``{"format", "task", "obs_spec", "action_dim", "config", "iteration", "total_steps",
"policy": {"name", "state"}, "algo": {"name", "state"}, "world_size"}`` (world_size: the
number of data-parallel processes that trained it; absent means 1). Evaluation and export read only
``policy``; resuming reads both. A file of another format is refused with one line.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from embodied.errors import ConfigError
from policies.spec import spec_to_dict

FORMAT = "embodied-checkpoint-v2"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` so that ``path`` is either the old file or the complete new one, never partial."""
    return atomic_torch_save(path, {"format": FORMAT, **payload})


def atomic_torch_save(path: str | Path, obj: dict[str, Any]) -> Path:
    """``torch.save`` through a temporary file, fsync and rename: ``path`` is never left partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | Path, *, task: str | None = None, obs_spec: dict | None = None
) -> dict[str, Any]:
    """Load a checkpoint; a corrupt file or one from another task is a ConfigError with one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or ["unreadable"])[0]
        raise ConfigError(f"checkpoint {path} is corrupt or not a checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith("embodied-checkpoint-"):
        raise ConfigError(f"checkpoint {path} is not an embodied checkpoint")
    if ckpt["format"] != FORMAT:
        raise ConfigError(
            f"checkpoint {path} has format {ckpt['format']}; this version reads {FORMAT} (retrain the run)"
        )
    if task is not None and ckpt.get("task") != task:
        raise ConfigError(f"checkpoint {path} belongs to task {ckpt.get('task')!r}, not {task!r}")
    if obs_spec is not None:
        want = spec_to_dict(obs_spec)
        if ckpt.get("obs_spec") != want:
            raise ConfigError(
                f"checkpoint {path} was trained on observations {_short(ckpt.get('obs_spec'))}, "
                f"this env gives {_short(want)}"
            )
    return ckpt


def _short(spec: Any) -> str:
    if not isinstance(spec, dict):
        return repr(spec)
    return "{" + ", ".join(f"{g}: {tuple(s['shape'])} {s['dtype']}" for g, s in spec.items()) + "}"


def load_module_state(module: torch.nn.Module, state: dict[str, Any], what: str) -> None:
    """Load weights into ``module``; missing, unexpected or misshapen tensors are one ConfigError line."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}")
        for k in bad[:4]:
            parts.append(f"{k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}")
        raise ConfigError(f"{what} does not match this policy: {'; '.join(parts)}")
    module.load_state_dict(state)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/model_<iteration>.pt`` of a run, or None."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("model_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return ckpts[-1] if ckpts else None
