"""A world model on disk: the ensemble, the layout of its state, and where its data came from.

``world_model/model.pt`` holds plain tensors and Python values only, so it loads with
``weights_only=True``; a corrupt, foreign or wrong-version file is a one-line WorldModelError.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from world_models.ensemble import OPTIONAL_BUFFERS, Ensemble
from world_models.errors import WorldModelError
from world_models.layout import StateLayout

VERSION = 1


@dataclass
class WorldModel:
    """An ensemble with the meaning of its state columns and its provenance."""

    ensemble: Ensemble
    layout: StateLayout
    task: str
    dt: float
    info: dict[str, Any] = field(default_factory=dict)  # training data, validation figures

    @property
    def state_dim(self) -> int:
        return self.ensemble.state_dim

    @property
    def action_dim(self) -> int:
        return self.ensemble.action_dim

    def to(self, device: str | torch.device) -> WorldModel:
        self.ensemble.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.ensemble.in_mean.device


def save_world_model(path: str | Path, model: WorldModel) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": VERSION,
        "kind": "ensemble",
        "config": model.ensemble.config(),
        "state": {k: v.detach().cpu() for k, v in model.ensemble.state_dict().items()},
        "layout": model.layout.to_list(),
        "task": model.task,
        "dt": float(model.dt),
        "info": model.info,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_world_model(
    path: str | Path, device: str | torch.device = "cpu", task: str | None = None
) -> WorldModel:
    """The world model in ``path``; with ``task``, a model of another task is refused."""
    path = Path(path)
    if not path.is_file():
        raise WorldModelError(f"no world model at {path} (train one with `embodied wm-train run=<dir>`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = (str(e).strip().splitlines() or ["unreadable"])[0]
        raise WorldModelError(f"world model {path} is corrupt ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("kind") != "ensemble":
        raise WorldModelError(f"{path} is not a world model file")
    if payload.get("version") != VERSION:
        raise WorldModelError(
            f"{path} has world-model version {payload.get('version')}; this version reads {VERSION}"
        )
    if task is not None and payload["task"] != task:
        raise WorldModelError(f"world model {path} was trained on task {payload['task']!r}, not {task!r}")
    try:
        ensemble = Ensemble(**payload["config"])
        state = dict(payload["state"])
        for key in OPTIONAL_BUFFERS:  # an older file: unbounded imagination, as it was written
            state.setdefault(key, ensemble.state_dict()[key])
        ensemble.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or ["mismatch"])[0]
        raise WorldModelError(
            f"world model {path} does not match its own architecture ({first[:160]})"
        ) from None
    ensemble.eval()
    model = WorldModel(
        ensemble,
        StateLayout.from_list(payload["layout"]),
        str(payload["task"]),
        float(payload["dt"]),
        dict(payload.get("info") or {}),
    )
    return model.to(device)
