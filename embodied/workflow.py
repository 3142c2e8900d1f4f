"""Builds the parts of a run (env with its filter stage, policy, algorithm) from a resolved config.

Every part is chosen by name from a registry: ``algo.name`` (embodied.algorithms), ``policy.name``
(policies.registry), ``safety.filters`` (policies.safety). Nothing here names one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from embodied.algorithms import Algorithm, build_algorithm
from embodied.algorithms.teacher import parse_teacher
from embodied.env import BatchedEnv
from embodied.errors import ConfigError
from embodied.registry import make_env
from policies.registry import build_policy as build_registered_policy
from policies.safety import FilterChain, FilterError, build_chain
from policies.spec import spec_to_dict
from world_models import planner_policy  # noqa: F401  (registers policy=planner, algo=mppi's)
from world_models.filter import bind_policy  # also registers the predictive filter


def set_threads(cfg: DictConfig) -> None:
    """Torch intra-op threads from config; one inter-op thread (the sim pool has its own threads)."""
    torch.set_num_threads(int(cfg.threads.torch))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by an earlier parallel op in this process; harmless


def silence_policy_noise(cfg: DictConfig) -> None:
    """Zero the noise of every policy observation term in place (a term set to false has none)."""
    for term in cfg.task.observations.policy.values():
        if isinstance(term, DictConfig) and "noise" in term:
            term.noise = 0.0


def build_filters(cfg: DictConfig, env: BatchedEnv) -> FilterChain:
    """The safety-filter chain ``safety.filters`` (empty when the config has none)."""
    node = cfg.get("safety")
    safety = {} if node is None else OmegaConf.to_container(node, resolve=True)
    known = ("filters", "params", "cost_limit", "intervention_penalty")
    unknown = sorted(set(safety) - set(known))
    if unknown:
        raise ConfigError(f"unknown safety key(s) {unknown}; known: {', '.join(known)}")
    limit = safety.get("cost_limit", 0.0)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit >= 0:
        raise ConfigError(f"safety.cost_limit must be a number >= 0 (cost per episode), got {limit!r}")
    names = list(safety.get("filters") or [])
    if not names:
        return FilterChain()
    try:
        task = OmegaConf.to_container(cfg.task, resolve=True)
        chain = build_chain(
            names, safety.get("params") or {}, env.obs_layout("policy"), env.action_dim, task=task
        )
        return chain.to(env.device)
    except FilterError as e:
        raise ConfigError(str(e)) from None


def build_env(
    cfg: DictConfig, num_envs: int | None = None, seed: int | None = None, *, groups: bool = False
) -> BatchedEnv:
    """The task's env on the configured engine, with the configured safety filters installed.

    ``groups``: keep the task's ``group_size`` (identical resets of G envs, for GRPO training);
    every other use (eval, play, export, demos, ...) gets independent envs, any number of them.
    """
    task = OmegaConf.to_container(cfg.task, resolve=True)
    if not groups and task.get("group_size") is not None:
        task["group_size"] = 1
    sim = OmegaConf.to_container(cfg.sim, resolve=True)
    n = next(v for v in (num_envs, cfg.get("num_envs"), task["num_envs"]) if v is not None)
    env = make_env(
        task,
        num_envs=int(n),
        engine=str(sim.pop("engine")),
        device=str(cfg.device),
        nthread=int(sim.pop("nthread", 1)),
        seed=int(cfg.seed if seed is None else seed),
        sim_options=sim,
    )
    reward = cfg.get("reward")
    if reward is not None and str(reward.get("name", "none")) != "none":
        from embodied.rewards.vlm import add_vlm_reward

        if str(reward.name) != "vlm":
            raise ConfigError(f"unknown reward {reward.name!r}; known: none, vlm")
        add_vlm_reward(env, OmegaConf.to_container(reward, resolve=True))
    chain = build_filters(cfg, env)
    if len(chain):
        penalty = cfg.safety.get("intervention_penalty", 0.0)
        if isinstance(penalty, bool) or not isinstance(penalty, int | float):
            raise ConfigError(f"safety.intervention_penalty must be a number >= 0, got {penalty!r}")
        env.set_filters(chain, intervention_penalty=float(penalty))
    return env


def build_policy(cfg: DictConfig, env: BatchedEnv) -> nn.Module:
    """The registered policy ``policy.name`` for the env's observation spec and action size."""
    p: dict[str, Any] = OmegaConf.to_container(cfg.policy, resolve=True)
    name = str(p.pop("name", "mlp"))
    if "instructions" in p and p["instructions"] is None:  # a policy that reads the task's text
        p["instructions"] = [str(t) for t in getattr(env, "instructions", None) or []]
    try:
        return build_registered_policy(name, env.obs_spec, env.action_dim, p).to(env.device)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_algo(cfg: DictConfig, env: BatchedEnv, policy: nn.Module) -> Algorithm:
    """The registered algorithm ``algo.name`` training ``policy`` on ``env``."""
    a: dict[str, Any] = OmegaConf.to_container(cfg.algo, resolve=True)
    bind_policy(getattr(env, "filters", None), policy)  # filters that imagine the policy's next steps
    name = str(a.pop("name", "ppo"))
    alg = build_algorithm(name, a, policy, env)
    teacher = parse_teacher(cfg.task.get("teacher"))
    if teacher is not None:  # the task's imitation term (embodied/algorithms/teacher.py)
        if not hasattr(alg, "set_teacher"):
            raise ConfigError(f"algo {name} takes no teacher; train with ppo, or set task.teacher=null")
        alg.set_teacher(teacher)
    return alg


def checkpoint_meta(cfg: DictConfig, env: BatchedEnv) -> dict[str, Any]:
    """What every checkpoint of the run carries beside the weights."""
    return {
        "task": str(cfg.task.name),
        "obs_spec": spec_to_dict(env.obs_spec),
        "action_dim": env.action_dim,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "policy_name": str(cfg.policy.get("name", "mlp")),
        "algo_name": str(cfg.algo.get("name", "ppo")),
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
) -> tuple[nn.Module, dict[str, Any]]:
    """The run's newest (or the given) checkpoint loaded into a fresh policy, in eval mode."""
    from embodied.checkpoint import latest_checkpoint, load_checkpoint

    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in checkpoints/")
    ckpt = load_checkpoint(path, task=str(cfg.task.name), obs_spec=env.obs_spec)
    policy = build_policy(cfg, env)
    load_policy_state(policy, ckpt["policy"]["state"], f"checkpoint {path}")
    policy.eval()
    bind_policy(getattr(env, "filters", None), policy)  # eval and play imagine with the policy too
    return policy, ckpt


def load_policy_state(policy: nn.Module, state: dict[str, Any], what: str) -> None:
    """A checkpoint's policy state into ``policy``, adapted where the policy adapts it (the VLA maps
    its instruction table onto this task's strings); a mismatch is a one-line ConfigError."""
    from embodied.checkpoint import load_module_state

    adapt = getattr(policy, "adapt_checkpoint_state", None)
    state = adapt(state) if adapt is not None else state
    try:
        load_module_state(policy, state, what)
    except ValueError as e:  # a policy's own state check (the VLA's instruction list)
        raise ConfigError(str(e).splitlines()[0]) from None


def init_policy(policy: nn.Module, source: Path, cfg: DictConfig, env: BatchedEnv) -> Path:
    """Load the weights of ``source`` (a run directory: its newest checkpoint; or a checkpoint file)
    into ``policy``, which must be the same policy on the same task; returns the checkpoint used."""
    from embodied.checkpoint import latest_checkpoint, load_checkpoint

    path = latest_checkpoint(source) if source.is_dir() else source
    if path is None:
        raise ConfigError(f"train.init_from: {source} has no checkpoint in checkpoints/")
    ckpt = load_checkpoint(path, task=str(cfg.task.name), obs_spec=env.obs_spec)
    name = str(cfg.policy.get("name", "mlp"))
    if ckpt.get("policy_name", name) != name:
        raise ConfigError(
            f"train.init_from: {path} holds policy={ckpt['policy_name']}, this run policy={name}"
        )
    load_policy_state(policy, ckpt["policy"]["state"], f"train.init_from: {path}")
    return path
