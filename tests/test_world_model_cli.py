"""``embodied wm-train`` and ``embodied imagine`` on a tiny arm_reach run with replay; bad input -> one
line on stderr, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli import assert_one_line_error, embodied
from world_models import Ensemble, StateLayout, WorldModel, load_world_model, save_world_model

HORIZON, FUTURES = 6, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 3-iteration arm_reach run with replay and a quickly fitted world model."""
    run_dir = tmp_path_factory.mktemp("wm") / "run"
    p = embodied(
        "train",
        "task=arm_reach",
        "num_envs=32",
        "train.max_iterations=3",
        "replay.enabled=true",
        "train.evaluate=false",
        "train.export=false",
        "threads.torch=1",
        f"run_dir={run_dir}",
    )
    assert p.returncode == 0, p.stderr
    p = embodied(
        "wm-train",
        f"run={run_dir}",
        "world_model.epochs=3",
        "world_model.max_updates_per_epoch=20",
        "world_model.hidden=[64,64]",
    )
    assert p.returncode == 0, p.stderr
    return run_dir


def copy_without_replay(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("replay"))
    return dest


def test_wm_train_writes_a_loadable_model_of_the_task(run):
    model = load_world_model(run / "world_model" / "model.pt", task="arm_reach")
    assert model.layout.groups == ["critic", "draw"]
    assert model.state_dim == model.layout.dim
    assert model.info["transitions"] == 3 * 24 * 32
    metrics = json.loads((run / "world_model" / "metrics.json").read_text())
    assert metrics["fit"]["epochs"] >= 1 and len(metrics["fit"]["elites"]) == model.ensemble.num_elites
    assert metrics["val"]["state_rmse"] > 0


def test_imagine_writes_ghost_video_and_plot(run):
    import imageio.v2 as imageio

    p = embodied("imagine", f"run={run}", f"futures={FUTURES}", f"horizon={HORIZON}", "num_envs=2")
    assert p.returncode == 0, p.stderr
    video, png = run / "world_model" / "futures.mp4", run / "world_model" / "futures.png"
    assert video.stat().st_size > 0 and png.stat().st_size > 0
    reader = imageio.get_reader(video)
    assert reader.count_frames() == HORIZON + 1  # the start frame and one per step
    frame = reader.get_data(HORIZON)
    assert frame.shape == (240, 640, 3)  # the real rollout beside the ghosts
    reader.close()


def test_wm_train_on_a_run_without_replay_says_how_to_record_one(run, tmp_path):
    bare = copy_without_replay(run, tmp_path / "bare")
    assert_one_line_error(embodied("wm-train", f"run={bare}"), "replay.enabled=true")


@pytest.mark.parametrize("arg", ["horizon=0", "futures=0"])
def test_imagine_refuses_empty_horizon_or_futures(run, arg):
    assert_one_line_error(embodied("imagine", f"run={run}", arg), ">= 1")


def test_imagine_refuses_a_corrupt_model_file(run, tmp_path):
    bad = copy_without_replay(run, tmp_path / "bad")
    (bad / "world_model" / "model.pt").write_bytes(b"not a model")
    assert_one_line_error(embodied("imagine", f"run={bad}"), "corrupt")


def test_imagine_refuses_a_model_of_another_task(run, tmp_path):
    other = copy_without_replay(run, tmp_path / "other")
    layout = StateLayout.from_groups({"critic": [{"name": "joint_pos", "dim": 5}]})
    save_world_model(
        other / "world_model" / "model.pt",
        WorldModel(Ensemble(5, 12, hidden=(8,)), layout, "go2_velocity", 0.02),
    )
    assert_one_line_error(embodied("imagine", f"run={other}"), "go2_velocity")


def test_imagine_refuses_a_model_of_another_observation_layout(run, tmp_path):
    other = copy_without_replay(run, tmp_path / "layout")
    layout = StateLayout.from_groups({"critic": [{"name": "joint_pos", "dim": 5}]})
    save_world_model(
        other / "world_model" / "model.pt", WorldModel(Ensemble(5, 3, hidden=(8,)), layout, "arm_reach", 0.04)
    )
    assert_one_line_error(embodied("imagine", f"run={other}"), "another task or observation layout")


def test_ghosts_blend_only_where_they_differ_from_the_real_frame():
    import torch

    from embodied.wm_video import TINTS, blend_ghosts

    real = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    ghost = real.clone()[:, None]
    ghost[0, 0, :, 1, 2] = 200  # the ghost robot covers one pixel
    out = blend_ghosts(real, ghost)
    assert torch.equal(out[0, :, 0], real[0, :, 0])  # elsewhere the real frame is untouched
    assert (out[0, :, 1, 2].float() > 100).all()  # covered: moved towards the ghost ...
    opaque = 0.6 * 200 + 0.4 * TINTS[0]  # the tinted ghost drawn fully
    assert (out[0, :, 1, 2].float() < opaque).all()  # ... but translucent


def test_wm_train_is_repeatable_from_the_seed(run, tmp_path):
    import torch

    from embodied.world_model import train_world_model

    dest = tmp_path / "copy"
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("world_model"))
    tiny = ["world_model.epochs=1", "world_model.max_updates_per_epoch=5", "world_model.hidden=[16]"]
    weights = []
    for _ in range(2):
        torch.manual_seed(len(weights))  # the process's global state must not matter
        path, _ = train_world_model(dest, tiny)
        weights.append(load_world_model(path).ensemble.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    path, fig = train_world_model(dest, [*tiny, "seed=7"])  # another seed: another split and init
    other = load_world_model(path).ensemble.state_dict()
    assert fig["split_seed"] == 7
    assert not all(torch.equal(weights[0][k], other[k]) for k in other)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("seed=x", "seed must be an integer"),
        ("seed=--3", "seed must be an integer"),
        ("epochs=3", "seed=<int>"),
    ],
)
def test_wm_train_refuses_a_bad_seed_or_a_bare_key(run, arg, message):
    assert_one_line_error(embodied("wm-train", f"run={run}", arg), message)
