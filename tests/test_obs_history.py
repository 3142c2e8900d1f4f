"""Observation history: stacking in the env, refills at resets, and the deploy runner's same stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from embodied.deploy import ObservationBuilder, load_manifest
from embodied.errors import ConfigError
from embodied.export import ObservationGraph, export_run
from embodied.export.observation_graph import training_signals
from embodied.registry import make_env
from embodied.workflow import build_env, load_policy, silence_policy_noise
from tests.test_cli import embodied
from tests.test_train_e2e import TINY

torch.set_num_threads(1)

HISTORY = {"observations.policy.base_ang_vel": {"scale": 0.25, "noise": 0.0, "history": 3}}


def _env(n: int = 4, **extra):
    over = OmegaConf.create({})
    for k, v in {**HISTORY, **extra}.items():
        OmegaConf.update(over, k, v)
    return make_env("go2_velocity", num_envs=n, nthread=1, seed=0, overrides=over)


def _gyro(obs: torch.Tensor) -> torch.Tensor:
    """The base_ang_vel block of go2's policy observation (its first term after base_lin_vel): (N, 3, 3)."""
    return obs[:, 3:12].reshape(-1, 3, 3)


def test_history_stacks_oldest_first_and_refills_at_reset():
    env = _env()
    plain = make_env("go2_velocity", num_envs=4, nthread=1)
    assert env.obs_spec["policy"].dim == plain.obs_spec["policy"].dim + 6
    layout = {t["name"]: t for t in env.obs_layout("policy")}
    assert layout["base_ang_vel"]["dim"] == 3 and layout["base_ang_vel"]["history"] == 3
    assert layout["joint_vel"]["history"] == 1
    obs = env.reset()["policy"]
    block = _gyro(obs)
    assert torch.equal(block[:, 0], block[:, 2]) and torch.equal(block[:, 1], block[:, 2])  # filled
    gen = torch.Generator().manual_seed(1)
    seen = [block[:, 2]] * 3  # the fill
    for _ in range(4):
        out = env.step(torch.rand(4, 12, generator=gen) * 2 - 1)
        seen.append(0.25 * env.state.base_ang_vel)
        block = _gyro(out.obs["policy"])
        torch.testing.assert_close(block[:, 2], seen[-1])
        torch.testing.assert_close(block[:, 1], seen[-2])
        torch.testing.assert_close(block[:, 0], seen[-3])
    # A reset env starts over from its first sample; the others keep their history.
    mask = torch.tensor([True, False, False, False])
    block = _gyro(env.reset(mask)["policy"])
    assert torch.equal(block[0, 0], block[0, 2]) and not torch.equal(block[1, 0], block[1, 2])
    torch.testing.assert_close(block[1:, 2], seen[-1][1:])


def test_final_obs_keeps_the_ended_episode_history():
    env = _env(2, **{"episode_length_s": 0.06})  # 3 control steps
    env.reset()
    zero = torch.zeros(2, 12)
    for _ in range(2):
        env.step(zero)
    before = _gyro(env._obs["policy"])
    out = env.step(zero)
    assert bool(out.truncated.all())
    final = _gyro(out.info["final_obs"]["policy"])
    torch.testing.assert_close(final[:, :2], before[:, 1:])
    fresh = _gyro(out.obs["policy"])
    assert torch.equal(fresh[:, 0], fresh[:, 2])


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True])
def test_bad_history_is_a_one_line_error(bad):
    with pytest.raises(ConfigError, match=r"observations\.policy\.base_ang_vel\.history must be an integer"):
        _env(**{"observations.policy.base_ang_vel.history": bad})


def test_world_models_refuse_a_stacked_term():
    from world_models import StateLayout, WorldModelError

    with pytest.raises(WorldModelError, match="stacks 3 samples"):
        StateLayout.from_groups({"policy": _env().obs_layout("policy")})


def exported_pair(run: Path, *train_args: str):
    """Train a tiny go2 run with ``train_args``, export it, and return (manifest, env, policy, graph,
    builder, obs): the training env (one env, no observation noise, no reset for 20 s) and its first
    observation, beside the deploy runner's ObservationBuilder for the same run, both reset."""
    p = embodied(
        "train", *TINY, *train_args, "train.max_iterations=1", "train.evaluate=false", f"run_dir={run}",
        timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    export_run(run)
    manifest = load_manifest(run / "exported" / "deploy.yaml")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.task.episode_length_s = 20.0  # no reset within the comparison (the runner's would be its own)
    silence_policy_noise(cfg)
    env = build_env(cfg, num_envs=1)
    ac, _ = load_policy(run, cfg, env, None)
    builder = ObservationBuilder(manifest)
    obs = env.reset(seed=3)
    builder.reset()
    return manifest, env, ac, ObservationGraph.from_env(env), builder, obs


def test_deploy_runner_stacks_the_history_training_saw(tmp_path: Path):
    args = ["observations.policy.base_ang_vel.history=3", "observations.policy.projected_gravity.history=2"]
    manifest, env, ac, graph, builder, obs = exported_pair(tmp_path / "run", *[f"+task.{a}" for a in args])
    assert {t.name: t.history for t in manifest.observations}["base_ang_vel"] == 3
    for _ in range(6):
        x = {k: v.numpy() for k, v in training_signals(graph, env.state).items()}
        np.testing.assert_allclose(builder.stack(x), obs["policy"][0].numpy(), atol=1e-5)
        with torch.no_grad():
            obs = env.step(ac.act_inference(obs)).obs
