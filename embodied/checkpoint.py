"""Checkpoints: written atomically (tmp file + fsync + rename), loaded with weights_only=True."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from embodied.errors import ConfigError

FORMAT = "embodied-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` so that ``path`` is either the old file or the complete new one, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
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
    path: str | Path, *, task: str | None = None, obs_dims: dict | None = None
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {path} is not an {FORMAT} file")
    if task is not None and ckpt.get("task") != task:
        raise ConfigError(f"checkpoint {path} belongs to task {ckpt.get('task')!r}, not {task!r}")
    if obs_dims is not None and dict(ckpt.get("obs_dims", {})) != dict(obs_dims):
        raise ConfigError(
            f"checkpoint {path} was trained on observations {ckpt.get('obs_dims')}, this env gives {obs_dims}"
        )
    return ckpt


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/model_<iteration>.pt`` of a run, or None."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("model_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return ckpts[-1] if ckpts else None
