"""``embodied vla-pretrain``: chunk targets, the episode split, augmentation, a run directory that eval and
``train train.init_from`` read, resuming, and bad datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")

from embodied.vla_pretrain import chunk_targets, random_shift, split_episodes
from tests.test_cli import assert_one_line_error, embodied

SMALL = ["task.episode_length_s=0.4", "task.rgb.width=40", "task.rgb.height=40", "threads.torch=1"]
TINY = [
    "policy.channels=8",
    "policy.visual_dim=32",
    "policy.lang_dim=8",
    "policy.hidden_dims=[32]",
    "policy.critic_hidden_dims=[16]",
    "policy.chunk=3",
    "policy.bins=8",
]


def test_chunk_targets_follow_each_episode_and_mask_past_its_end():
    actions = torch.arange(5, dtype=torch.float32).unsqueeze(1)  # episodes [0, 1, 2] and [3, 4]
    ends = torch.tensor([3, 3, 3, 5, 5])
    chunks, mask = chunk_targets(actions, ends, 3)
    assert chunks[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]
    assert mask.tolist() == [
        [True, True, True],
        [True, True, False],
        [True, False, False],
        [True, True, False],
        [True, False, False],
    ]


def test_split_is_by_episode_seeded_and_keeps_both_sides():
    train, val = split_episodes(10, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(split_episodes(10, 0.2, seed=3)[1], val)
    assert len(split_episodes(2, 0.01, seed=0)[1]) == 1  # at least one held-out episode
    assert len(split_episodes(5, 0.0, seed=0)[1]) == 0


def test_random_shift_moves_each_image_by_at_most_pad_pixels():
    img = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    img[:, :, 8, 8] = 255
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == img.shape
    pos = (out[:, 0] == 255).flatten(1).float().argmax(1)
    rows, cols = pos // 16, pos % 16
    assert ((rows - 8).abs() <= 2).all() and ((cols - 8).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # per-image offsets
    assert torch.equal(random_shift(img, 0, torch.Generator()), img)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vla_pretrain")
    run = root / "teacher"
    p = embodied(
        "train",
        "task=arm_multi",
        "num_envs=8",
        "train.max_iterations=1",
        "train.evaluate=false",
        "train.export=false",
        "threads.torch=1",
        f"run_dir={run}",
    )
    assert p.returncode == 0, p.stderr
    out = root / "demos"
    p = embodied("demos", f"run={run}", "episodes=6", "num_envs=3", f"out={out}", *SMALL[:3])
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def pretrained(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bc") / "run"
    p = embodied(
        "vla-pretrain", f"data={dataset}", "epochs=6", "batch_size=16", "lr=3e-3", "val_fraction=0.34",
        *SMALL, *TINY, "task.eval.num_envs=4", f"run_dir={run}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return run


def test_pretraining_fits_the_demos_and_writes_a_run_eval_reads(pretrained):
    summary = json.loads((pretrained / "pretrain.json").read_text())
    assert summary["episodes"] == {"train": 4, "val": 2, "success_only": False} and summary["frames"] == {
        "train": 40,
        "val": 20,
    }
    assert summary["action"] == "applied_action" and summary["camera"] == "observation.images.rgb"
    losses = [h["pretrain/train_loss"] for h in summary["history"]]
    assert losses[-1] < 0.8 * losses[0]  # it learns the demonstrations
    with (pretrained / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(float(r["pretrain/val_loss"]) > 0 for r in rows)
    assert 0.0 <= float(rows[-1]["pretrain/val_token_accuracy"]) <= 1.0
    assert sorted(p.name for p in (pretrained / "checkpoints").glob("*.pt"))[-1] == "model_6.pt"
    ev = json.loads((pretrained / "eval.json").read_text())
    assert ev["task"] == "arm_multi" and ev["iteration"] == 6 and ev["episodes"] == 4
    p = embodied("eval", f"run={pretrained}", "num_envs=2")
    assert p.returncode == 0, p.stderr


def test_resume_extends_the_epochs(pretrained, tmp_path):
    p = embodied("vla-pretrain", f"resume={pretrained}", "epochs=7", "evaluate=false")
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stderr and (pretrained / "checkpoints" / "model_7.pt").is_file()
    with (pretrained / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 7


def test_rl_fine_tuning_starts_from_the_pretrained_weights(pretrained, tmp_path):
    from embodied.checkpoint import latest_checkpoint, load_checkpoint

    run = tmp_path / "ft"
    p = embodied(
        "train", "task=arm_multi", "policy=vla", "task.rgb.enabled=true", *SMALL, *TINY, "num_envs=4", "train.max_iterations=1",
        "algo.num_steps_per_env=2", "algo.learning_rate=1e-10", "algo.schedule=fixed", "train.evaluate=false", "train.export=false",
        f"train.init_from={pretrained}", f"run_dir={run}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "policy initialized from" in p.stderr
    before = load_checkpoint(latest_checkpoint(pretrained))["policy"]["state"]
    after = load_checkpoint(latest_checkpoint(run))["policy"]["state"]
    w0, w1 = before["head.linear.weight"], after["head.linear.weight"]
    assert torch.allclose(w0, w1, atol=1e-6) and w0.abs().max() > 1e-3  # tiny step: the pretrained weights


def test_bad_datasets_are_one_line_errors(dataset, tmp_path):
    assert_one_line_error(embodied("vla-pretrain", f"data={tmp_path}"), "not a LeRobot dataset")
    assert_one_line_error(embodied("vla-pretrain"), "data=<LeRobot dataset directory> is required")
    p = embodied("vla-pretrain", f"data={dataset}", "task.rgb.width=48", f"run_dir={tmp_path / 'a'}")
    assert_one_line_error(p, "frames are 40x40")
    assert not (tmp_path / "a").exists()  # a rejected dataset leaves no run
    p = embodied("vla-pretrain", f"data={dataset}", *SMALL[:3], "policy.proprio_obs=policy")
    assert_one_line_error(p, "observation.state has 22 dims")
    p = embodied("vla-pretrain", f"data={dataset}", *SMALL[:3], "task.instructions.split=heldout")
    assert_one_line_error(p, "is not one of the task's")
    assert_one_line_error(embodied("vla-pretrain", f"data={dataset}", "epochs=x"), "epochs must be a int")
    for bad, needle in (("epochs=0", "epochs must be >= 1"), ("lr=nan", "lr must be a finite number > 0")):
        assert_one_line_error(embodied("vla-pretrain", f"data={dataset}", bad), needle)


def test_grpo_fine_tuning_under_the_filter_records_rollouts_and_counts_violations(pretrained, tmp_path):
    from embodied.data.lerobot_read import load_lerobot

    run = tmp_path / "grpo"
    p = embodied(
        "train", "task=arm_multi", "policy=vla", "algo=grpo", "task.rgb.enabled=true", *SMALL, *TINY,
        "num_envs=4", "task.group_size=2", "algo.group_size=2", "train.max_iterations=1", "safety.filters=[cbf]",
        "record.episodes=4", "train.evaluate=false", "train.export=false", f"train.init_from={pretrained}",
        f"run_dir={run}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rollouts = load_lerobot(run / "rollouts")
    assert rollouts.num_episodes == 4 and rollouts.frames("observation.images.rgb").shape == (40, 3, 40, 40)
    assert all(t in rollouts.tasks for t in rollouts.episode_tasks())
    barriers = json.loads((run / "safety" / "barriers.json").read_text())
    assert barriers["states"] == 40 and barriers["violating_states"] == 0
    with (run / "metrics.csv").open() as f:
        row = next(csv.DictReader(f))
    assert "env/safety/cbf/intervention_rate" in row and "grpo/success" in row
    p = embodied("play", f"run={run}", "seconds=0.2")  # one env: the training groups do not apply
    assert p.returncode == 0, p.stderr


def test_a_vla_checkpoint_on_a_task_without_rgb_or_instruction_is_a_one_line_error(pretrained, tmp_path):
    common = [*TINY, "train.max_iterations=1", f"train.init_from={pretrained}", f"run_dir={tmp_path / 'x'}"]
    p = embodied("train", "task=arm_reach", "policy=vla", "task.rgb.enabled=true", *common)
    assert_one_line_error(p, "needs the instruction observation group")
    p = embodied("train", "task=arm_multi", "policy=vla", *common)  # no camera frames
    assert_one_line_error(p, "needs the rgb observation group")
    p = embodied(
        "train", "task=arm_multi", "policy=mlp", f"train.init_from={pretrained}", f"run_dir={tmp_path / 'y'}"
    )
    assert_one_line_error(p, "was trained on observations")  # the mlp's env has no camera either
    p = embodied(
        "train", "task=arm_multi", "policy=mlp", "task.rgb.enabled=true", *SMALL[:3], f"train.init_from={pretrained}",
        f"run_dir={tmp_path / 'y'}",
    )  # fmt: skip
    assert_one_line_error(p, "holds policy=vla, this run policy=mlp")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
