"""World models of a run: fit the ensemble on its ``replay/`` and load it back against the task's env.

``world_models`` knows nothing of runs or envs; this module ties them: the run's config says the
task and the world-model settings (``cfg.world_model``), a small env built from that config gives the
observation layout the state is made of, and the model lands in ``<run>/world_model/model.pt``
beside a ``metrics.json`` of how the fit went.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from embodied.errors import ConfigError
from embodied.registry import config_dirs
from embodied.workflow import build_env, load_run, set_threads
from world_models import (
    Ensemble,
    StateLayout,
    TransitionBuffer,
    Transitions,
    WorldModel,
    WorldModelError,
    load_world_model,
    save_world_model,
)
from world_models.train import fit

MODEL_FILE = "model.pt"
FIT_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "lr_end",
    "weight_decay",
    "patience",
    "max_updates_per_epoch",
    "rollout_steps",
    "input_noise",
    "noise_share",
)
NET_KEYS = ("members", "elites", "hidden", "min_logvar", "max_logvar", "linear_skip")


def world_model_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "world_model"


def _world_model_file(name: str, seen: tuple[str, ...] = ()) -> DictConfig | None:
    """configs/world_model/<name>.yaml with the files its ``defaults`` list names merged under it."""
    if name in seen:
        raise ConfigError(f"world_model config {name!r} lists itself among its defaults")
    for d in config_dirs():
        path = Path(d) / "world_model" / f"{name}.yaml"
        if path.is_file():
            own = OmegaConf.load(path)
            merged = OmegaConf.create()
            for entry in own.pop("defaults", []):
                if str(entry) != "_self_":
                    merged = OmegaConf.merge(merged, _world_model_file(str(entry), (*seen, name)) or {})
            return OmegaConf.merge(merged, own)
    return None


def with_current_defaults(cfg: DictConfig) -> DictConfig:
    """``cfg`` whose ``world_model`` also has the keys its config file gained after the run was made
    (a run's saved config.yaml keeps the keys of its day; the run's own values win)."""
    if cfg.get("world_model") is None:
        return cfg
    current = _world_model_file(str(cfg.world_model.get("name", "")))
    if current is not None:
        cfg = cfg.copy()
        cfg.world_model = OmegaConf.merge(current, cfg.world_model)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``cfg`` with ``world_model.<key>=<value>`` overrides (and ``seed=<int>``: the split, the initial
    weights and the minibatches) merged; any other key is a ConfigError."""
    cfg = with_current_defaults(cfg)
    known = set(OmegaConf.to_container(cfg.world_model)) if cfg.get("world_model") is not None else set()
    seed, dotlist = None, []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "seed":
            try:
                seed = int(value)
            except ValueError:
                raise ConfigError(f"wm-train: seed must be an integer, got {value!r}") from None
            continue
        if "=" not in o or not key.startswith("world_model."):
            raise ConfigError(f"wm-train: expected world_model.<key>=<value> or seed=<int>, got {o!r}")
        if key.removeprefix("world_model.") not in known:
            raise ConfigError(f"wm-train: unknown option {key!r}; valid: {', '.join(sorted(known))}")
        dotlist.append(o)
    cfg = cfg.copy()
    cfg.merge_with_dotlist(dotlist)
    if seed is not None:
        cfg.seed = seed
    return cfg


def state_layout(env: Any, groups: Sequence[str]) -> StateLayout:
    """The model state of ``groups`` of ``env``'s observations, in that order."""
    missing = [g for g in groups if g not in env.obs_spec]
    if missing:
        raise ConfigError(
            f"world_model.groups {missing} are not observation groups of the task; "
            f"it has {list(env.obs_spec)}"
        )
    return StateLayout.from_groups({g: env.obs_layout(g) for g in groups})


def check_layout(model: WorldModel, env: Any) -> None:
    """A one-line WorldModelError when ``model``'s state is not made of ``env``'s observation terms."""
    for group in model.layout.groups:
        mine = [(t["name"], t["dim"]) for t in model.layout.terms if t["group"] == group]
        theirs = (
            [(str(t["name"]), int(t["dim"])) for t in env.obs_layout(group)] if group in env.obs_spec else []
        )
        if mine != theirs:
            raise WorldModelError(
                f"the world model's {group!r} state ({sum(d for _, d in mine)} values) does not match "
                f"the task's observation ({sum(d for _, d in theirs)} values): a model of another task "
                "or observation layout; retrain it with `embodied wm-train`"
            )


def load_run_model(run_dir: Path, cfg: DictConfig, env: Any) -> WorldModel:
    """The run's world model, checked against the task and ``env``'s observation layout."""
    model = load_world_model(world_model_dir(run_dir) / MODEL_FILE, str(cfg.device), task=str(cfg.task.name))
    check_layout(model, env)
    return model


def run_transitions(run_dir: Path, groups: Sequence[str], layout: StateLayout) -> Transitions:
    """The run's replay as transitions whose state is ``groups``, its sizes checked against ``layout``."""
    from embodied.data.replay import load_replay

    replay = run_dir / "replay"
    if not (replay / "meta.json").is_file():
        raise ConfigError(f"{run_dir} has no replay/; train the run with replay.enabled=true")
    data = load_replay(replay)
    for g in groups:
        key = f"obs/{g}"
        want = sum(t["dim"] for t in layout.terms if t["group"] == g)
        if key in data and data[key].shape[-1] != want:
            raise ConfigError(
                f"the replay's {g!r} observations have {data[key].shape[-1]} values, the task's layout "
                f"{want}: the replay is of another observation layout"
            )
    try:
        return Transitions.from_replay(data, groups)
    except WorldModelError as e:
        raise ConfigError(str(e)) from None


@torch.no_grad()
def one_step_rmse(model: Ensemble, buffer: TransitionBuffer, split: str = "val") -> dict[str, float]:
    """RMSE of the elites' mean next state on ``split``: raw units, and per dimension divided by the
    training data's state std (dimensions that never vary are left out of the normalized figure)."""
    state, action, target, _ = buffer.flat(split)
    if state.shape[0] == 0:
        state, action, target, _ = buffer.flat("train")
    dev = model.in_mean.device
    state, action, target = state.to(dev), action.to(dev), target.to(dev)
    s = model.state_dim
    pred = model.predict(state, action)
    delta = pred.delta_mean[model.elite_idx].mean(0)
    err = (delta - target[:, :s]) ** 2
    std = buffer.flat("train")[0].to(dev).std(0)
    varies = std > 1e-6
    return {
        "state_rmse": float(err.mean().sqrt()),
        "state_rmse_normalized": float((err[:, varies] / std[varies] ** 2).mean().sqrt()),
        "reward_rmse": float(((pred.reward_mean[model.elite_idx].mean(0) - target[:, s]) ** 2).mean().sqrt()),
    }


def train_world_model(run_dir: str | Path, cfg_overrides: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """Fit the ensemble of ``cfg.world_model`` on the run's replay; returns (model path, figures)."""
    run_dir, cfg = load_run(str(run_dir))
    cfg = apply_overrides(cfg, cfg_overrides)
    wm = OmegaConf.to_container(cfg.world_model, resolve=True)
    set_threads(cfg)
    groups = [str(g) for g in wm["groups"]]
    env = build_env(cfg, num_envs=1, seed=int(cfg.seed))
    try:
        layout, dt = state_layout(env, groups), float(env.dt)
    finally:
        env.close()
    data = run_transitions(run_dir, groups, layout)
    seed = int(cfg.seed)
    try:
        buffer = TransitionBuffer(data, float(wm["val_fraction"]), seed=seed)
        with torch.random.fork_rng(devices=[]):  # the initial weights follow the seed, not the process
            torch.manual_seed(seed)
            ensemble = Ensemble(layout.dim, data.action.shape[-1], **{k: wm[k] for k in NET_KEYS if k in wm})
        ensemble = ensemble.to(str(cfg.device))
        result = fit(
            ensemble,
            buffer,
            **{k: wm[k] for k in FIT_KEYS if k in wm},
            generator=torch.Generator().manual_seed(seed),
        )
    except WorldModelError as e:
        raise ConfigError(str(e)) from None
    figures: dict[str, Any] = {
        "task": str(cfg.task.name),
        "groups": groups,
        "state_dim": layout.dim,
        "action_dim": int(data.action.shape[-1]),
        "transitions": int(data.reward.numel()),
        "train_transitions": int(buffer.train_mask.sum()),
        "val_transitions": int(buffer.val_mask.sum()),
        "episodes": int(data.episode_ids().max()) + 1,
        "split_seed": seed,
        "fit": result.as_dict(),
        "val": one_step_rmse(ensemble, buffer),
        "config": wm,
    }
    out = world_model_dir(run_dir)
    path = save_world_model(out / MODEL_FILE, WorldModel(ensemble, layout, str(cfg.task.name), dt, figures))
    (out / "metrics.json").write_text(json.dumps(figures, indent=2))
    return path, figures
