"""Dyna-PPO: imagined branches join PPO's updates once the model is fitted; it resumes; bad config is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from embodied.checkpoint import latest_checkpoint
from embodied.cli import compose, main
from embodied.workflow import build_algo, build_env, build_policy

TINY = [
    "task=arm_reach",
    "algo=dyna_ppo",
    "num_envs=16",
    "algo.num_steps_per_env=8",
    "algo.warmup_iterations=1",
    "algo.buffer_steps=64",
    "algo.hidden=[32,32]",
    "algo.model_epochs=2",
    "algo.model_updates_per_epoch=10",
    "task.episode_length_s=1.0",
    "train.evaluate=false",
    "train.export=false",
    "train.video=false",
    "threads.torch=1",
    "policy.actor_hidden_dims=[16,16]",
    "policy.critic_hidden_dims=[16,16]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dyna") / "run"
    assert main(["train", *TINY, "train.max_iterations=4", "train.save_interval=2", f"run_dir={path}"]) == 0
    return path


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_imagined_branches_join_updates_after_the_first_fit(run: Path) -> None:
    rows = _rows(run)
    imagined = [float(r["dyna/imagined_transitions"] or 0) for r in rows if "dyna/imagined_transitions" in r]
    # Iteration 1 fits the model; from iteration 2 on each update has 16 x 8 imagined transitions
    # (imagined_ratio 1), minus steps after a predicted termination.
    assert len(rows) == 4
    assert rows[0].get("dyna/imagined_transitions", "") in ("", None)
    assert all(0 < v <= 128 for v in imagined[1:]), imagined
    val = [float(r["dyna/model_val_mse"]) for r in rows if r.get("dyna/model_val_mse")]
    assert val and all(torch.isfinite(torch.tensor(val)))


def test_checkpoint_keeps_the_model_and_a_resumed_run_continues(run: Path) -> None:
    ckpt = torch.load(latest_checkpoint(run), map_location="cpu", weights_only=True)
    state = ckpt["algo"]["state"]
    assert state["model_fitted"] is True and any(k.startswith("weights") for k in state["model"])
    assert main(["train", "train.max_iterations=5", f"resume={run}"]) == 0
    assert len(_rows(run)) == 5


def test_model_groups_that_lack_the_policy_terms_are_refused(capsys) -> None:
    assert main(["train", *TINY, "algo.model_groups=[draw]", "train.max_iterations=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dyna_ppo: observation term") and "\n" not in err


def test_an_unknown_imagination_precision_is_refused(capsys) -> None:
    assert main(["train", *TINY, "algo.precision=fp8", "train.max_iterations=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dyna_ppo precision must be one of ['bfloat16', 'float32']" in err and "\n" not in err


def test_imagined_steps_after_a_predicted_termination_carry_no_advantage() -> None:
    cfg = compose([*TINY, "algo.imagined_ratio=0.5"])
    env = build_env(cfg)
    policy = build_policy(cfg, env)
    alg = build_algo(cfg, env, policy)
    obs = env.reset()
    for _ in range(alg.num_steps_per_env):
        out = env.step(alg.act(obs))
        alg.process_env_step(out)
        obs = out.obs
    alg.compute_returns(obs)
    with torch.no_grad():  # a model that always predicts termination (logit bias +20)
        alg.model.biases[-1][..., -1] = 20.0
    alg.model_fitted = True
    stats = alg._imagine()
    store = alg.imagined
    assert stats["dyna/imagined_termination"] == 1.0
    assert bool(store.dones.all())
    # Only the first step of each branch is live: the rest sits after its termination.
    assert bool((store.advantages[1:] == 0).all()) and bool((store.returns[1:] == store.values[1:]).all())
    assert stats["dyna/imagined_transitions"] == store.num_envs
