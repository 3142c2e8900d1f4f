"""``embodied demos``: a trained run's policy rendered into demonstrations in LeRobot's layout, and
``embodied dataset-info``: what a LeRobot dataset holds (see docs/datasets.md)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from embodied.data.lerobot import LeRobotWriter
from embodied.data.lerobot_read import load_lerobot
from embodied.data.lerobot_record import EpisodeRecorder, dataset_fps, task_texts
from embodied.errors import ConfigError
from embodied.registry import describe_tasks


def load_teacher(run_dir: Path, cfg: DictConfig, env: Any, checkpoint: str | None) -> nn.Module:
    """The run's policy on an env that may give more observation groups (camera frames) than it was
    trained on: built for the checkpoint's groups, each of which the env must give unchanged."""
    from embodied.checkpoint import latest_checkpoint, load_checkpoint
    from embodied.workflow import load_policy
    from policies.spec import spec_to_dict

    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in checkpoints/")
    trained = load_checkpoint(path, task=str(cfg.task.name)).get("obs_spec") or {}
    now = spec_to_dict(env.obs_spec)
    differ = [g for g in trained if now.get(g) != trained[g]]
    if differ:
        raise ConfigError(f"checkpoint {path}: observation groups {differ} differ in this env ({now})")
    view = SimpleNamespace(
        obs_spec={g: env.obs_spec[g] for g in trained}, action_dim=env.action_dim, device=env.device
    )
    policy, _ = load_policy(run_dir, cfg, view, str(path))
    return policy


@torch.no_grad()
def record_demos(
    env: Any,
    policy: nn.Module,
    writer: LeRobotWriter,
    episodes: int,
    *,
    state_group: str,
    task: str,
    seed: int,
) -> None:
    """Roll ``policy(obs)`` on all envs from ``env.reset(seed)`` until ``episodes`` whole episodes are
    written (episodes after a reset follow on in the same envs)."""
    obs = env.reset(seed=seed)
    rec = EpisodeRecorder(
        writer, env, state_group=state_group, task=task_texts(env, task), fresh=True, max_episodes=episodes
    )
    limit = (episodes // env.num_envs + 2) * env.max_episode_length
    for _ in range(limit):
        action = policy(obs)
        out = env.step(action)
        rec.on_step(obs, action, out)
        obs = out.obs
        if int(rec.completed) >= episodes:
            break
    rec.close()
    if writer.num_episodes < episodes:
        raise ConfigError(
            f"only {writer.num_episodes} whole episodes in {limit} steps of {env.num_envs} envs"
        )


def cmd_demos(args: list[str]) -> int:
    from embodied.cli import _kv
    from embodied.workflow import build_env, load_run, set_threads

    overrides = [a for a in args if a.startswith(("task.", "sim.", "threads.", "safety."))]
    allowed = {"run": "", "episodes": 16, "out": "", "num_envs": 0, "seed": 0, "checkpoint": ""}
    allowed.update({"state": "", "overwrite": False})
    try:
        o = _kv([a for a in args if a not in overrides], allowed, "demos")
    except ValueError:
        raise ConfigError("demos: episodes, num_envs and seed must be integers") from None
    if o["episodes"] < 1 or o["num_envs"] < 0:
        raise ConfigError(
            f"demos: episodes must be >= 1 and num_envs >= 0, got {o['episodes']}, {o['num_envs']}"
        )
    run_dir, cfg = load_run(o["run"])
    cfg.merge_with_dotlist(["task.rgb.enabled=true", *overrides])
    set_threads(cfg)
    out = Path(o["out"]) if o["out"] else run_dir / "demos"
    if out.exists() and not o["overwrite"]:
        raise ConfigError(f"{out} already exists; choose a new dataset path (or overwrite=true)")
    n = o["num_envs"] or min(o["episodes"], 32)
    start = time.perf_counter()
    env = build_env(cfg, num_envs=n, seed=o["seed"])
    try:
        state = o["state"] or ("proprio" if "proprio" in env.obs_spec else "policy")
        policy = load_teacher(run_dir, cfg, env, o["checkpoint"] or None)
        desc = {name: d for name, _, d in describe_tasks()}.get(str(cfg.task.name), str(cfg.task.name))
        actions = [f"a{i}" for i in range(env.action_dim)]
        names = {"observation.state": _state_names(env, state), "action": actions, "applied_action": actions}
        extra = {
            "embodied": {
                "task": str(cfg.task.name),
                "run": str(run_dir),
                "state_group": state,
                "seed": o["seed"],
            }
        }
        writer = LeRobotWriter(
            out,
            dataset_fps(env.dt),
            names=names,
            robot_type=str(cfg.task.name),
            overwrite=o["overwrite"],
            info_extra=extra,
        )
        try:
            record_demos(env, policy, writer, o["episodes"], state_group=state, task=desc, seed=o["seed"])
        except BaseException:
            writer.abort()
            raise
        root = writer.close()
    finally:
        env.close()
    wall = time.perf_counter() - start
    print(summary(root) + f" in {wall:.1f} s")
    print(f"wrote {root}")
    return 0


def _state_names(env: Any, group: str) -> list[str]:
    try:
        layout = env.obs_layout(group)
    except (AttributeError, KeyError, ValueError):
        return [f"s{i}" for i in range(env.obs_spec[group].dim)]
    names = []
    for t in layout:
        h, d = int(t.get("history", 1)), int(t["dim"])
        own = [t["name"]] if d == 1 else [f"{t['name']}.{i}" for i in range(d)]
        names += own if h == 1 else [f"{n}@t-{h - 1 - k}" for k in range(h) for n in own]  # oldest first
    return names


def summary(root: str | Path) -> str:
    """One line: episodes, frames, fps, cameras, tasks, and success / return where recorded."""
    d = load_lerobot(root)
    ep = d.episodes
    line = (
        f"{d.num_episodes} episodes, {int(d.info['total_frames'])} frames at {d.fps} fps, "
        f"cameras {d.video_keys or 'none'}, {len(d.tasks)} task(s)"
    )
    if "success" in ep:
        line += f", success {sum(ep['success']) / max(len(ep['success']), 1):.0%}"
    if "return" in ep:
        line += f", mean return {sum(ep['return']) / max(len(ep['return']), 1):.2f}"
    return line


def cmd_dataset_info(args: list[str]) -> int:
    from embodied.cli import _kv

    o = _kv(args, {"data": ""}, "dataset-info")
    if not o["data"]:
        raise ConfigError("dataset-info: data=<dataset directory> is required")
    print(summary(o["data"]))
    for t in load_lerobot(o["data"]).tasks[:10]:
        print(f"  task: {t}")
    return 0
