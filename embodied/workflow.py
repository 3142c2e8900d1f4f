"""Builds the parts of a run (env, policy, algorithm) from a resolved config."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.env import BatchedEnv
from embodied.errors import ConfigError
from embodied.registry import make_env
from policies.actor_critic import ActorCritic


def set_threads(cfg: DictConfig) -> None:
    """Torch intra-op threads from config; one inter-op thread (the sim pool has its own threads)."""
    torch.set_num_threads(int(cfg.threads.torch))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by an earlier parallel op in this process; harmless


def build_env(cfg: DictConfig, num_envs: int | None = None, seed: int | None = None) -> BatchedEnv:
    task = OmegaConf.to_container(cfg.task, resolve=True)
    sim = OmegaConf.to_container(cfg.sim, resolve=True)
    n = next(v for v in (num_envs, cfg.get("num_envs"), task["num_envs"]) if v is not None)
    return make_env(
        task,
        num_envs=int(n),
        engine=str(sim.pop("engine")),
        device=str(cfg.device),
        nthread=int(sim.pop("nthread", 1)),
        seed=int(cfg.seed if seed is None else seed),
        sim_options=sim,
    )


def build_policy(cfg: DictConfig, env: BatchedEnv) -> ActorCritic:
    p = OmegaConf.to_container(cfg.policy, resolve=True)
    if "critic" not in env.obs_dims:
        raise ConfigError("the task must define an observations.critic group")
    return ActorCritic(env.obs_dims["policy"], env.obs_dims["critic"], env.action_dim, **p).to(env.device)


def build_algo(cfg: DictConfig, env: BatchedEnv, policy: ActorCritic) -> PPO:
    a: dict[str, Any] = OmegaConf.to_container(cfg.algo, resolve=True)
    if a.pop("name", "ppo") != "ppo":
        raise ConfigError(f"unknown algo {cfg.algo.name!r}; available: ppo")
    known = {f.name for f in fields(PPOConfig)}
    unknown = sorted(set(a) - known)
    if unknown:
        raise ConfigError(f"unknown algo key(s) {', '.join(unknown)}; PPO takes: {', '.join(sorted(known))}")
    return PPO(policy, env.num_envs, PPOConfig(**a), env.device)


def checkpoint_meta(cfg: DictConfig, env: BatchedEnv) -> dict[str, Any]:
    return {
        "task": str(cfg.task.name),
        "obs_dims": dict(env.obs_dims),
        "action_dim": env.action_dim,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
    }


def load_run(run: str | None) -> tuple[Path, DictConfig]:
    """A run directory and its resolved config; a one-line ConfigError when it is not one."""
    if not run:
        raise ConfigError("run=<run directory> is required")
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    return run_dir, OmegaConf.load(run_dir / "config.yaml")


def load_policy(
    run_dir: Path, cfg: DictConfig, env: BatchedEnv, checkpoint: str | None
) -> tuple[ActorCritic, dict[str, Any]]:
    """The run's newest (or the given) checkpoint loaded into a fresh policy, in eval mode."""
    from embodied.checkpoint import latest_checkpoint, load_checkpoint

    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in checkpoints/")
    ckpt = load_checkpoint(path, task=str(cfg.task.name), obs_dims=env.obs_dims)
    policy = build_policy(cfg, env)
    try:
        policy.load_state_dict(ckpt["algo"]["model"])
    except (RuntimeError, KeyError) as e:
        raise ConfigError(
            f"checkpoint {path} does not fit this policy ({str(e).splitlines()[0][:160]})"
        ) from None
    policy.eval()
    return policy, ckpt
