"""The VLM reward: tiny CLIP and SigLIP saved and reloaded by path score frames inside training with the
numbers direct transformers calls give; the modes' formulas; bad input is one line and exit 2."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from embodied.cli import compose, main  # noqa: E402
from embodied.rewards.backends import DEFAULT_STATS, TransformersVLM  # noqa: E402
from embodied.rewards.check import ranks, roc_auc, spearman  # noqa: E402
from embodied.rewards.vlm import goal_baseline_reward  # noqa: E402
from embodied.workflow import build_env  # noqa: E402

WORDS = "the a cube is on green target red far from robot arm above table car lane drifts out of its".split()
SIZE = 32  # the tiny models' image size; the env renders at it, so no resize enters the comparison


def _save_tiny(kind: str, path: Path) -> Path:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": SIZE,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    if kind == "clip":
        text.update(pad_token_id=0, bos_token_id=0, eos_token_id=1)
        model = transformers.CLIPModel(
            transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        )
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    return {k: _save_tiny(k, root / k) for k in ("clip", "siglip")}


def _direct_cosine(path: Path, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Cosine similarities (N, P) from the model's own forward (logits undone by its scale/bias)."""
    cls = transformers.CLIPModel if "clip" in path.name else transformers.SiglipModel
    model = cls.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = tok(prompts, padding="max_length", max_length=16, return_tensors="pt")
    mean, std = DEFAULT_STATS["clip" if "clip" in path.name else "siglip"]
    pixels = (frames.float() / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    kwargs = {"input_ids": enc["input_ids"], "pixel_values": pixels}
    if "clip" in path.name:
        kwargs["attention_mask"] = enc["attention_mask"]
    with torch.no_grad():
        out = model(**kwargs)
    logits = out.logits_per_image
    bias = getattr(model, "logit_bias", None)
    if bias is not None:
        logits = logits - bias
    return logits / model.logit_scale.exp()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_backend_scores_equal_direct_transformers_calls(tiny, kind: str) -> None:
    frames = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    prompts = ["the cube is on the green target", "the car drifts out of its lane"]
    vlm = TransformersVLM(tiny[kind])
    ours = vlm.encode_images(frames) @ vlm.encode_text(prompts).T
    torch.testing.assert_close(ours, _direct_cosine(tiny[kind], frames, prompts), rtol=1e-4, atol=1e-5)


RGB = ["task.rgb.enabled=true", f"task.rgb.width={SIZE}", f"task.rgb.height={SIZE}"]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_the_term_inside_the_env_scores_its_frames_like_transformers(tiny, kind: str) -> None:
    goal = ["the cube is on the green target", "the cube is on green target"]
    cfg = compose(
        [
            "task=arm_reach",
            "num_envs=3",
            *RGB,
            "reward=vlm",
            f"reward.model={tiny[kind]}",
            "reward.every=2",
            f"reward.prompts.goal=[{','.join(repr(g) for g in goal)}]",
        ]
    )
    env = build_env(cfg)
    term = next(t for t in env.rewards if t.name == "vlm")
    env.reset()
    out = env.step(torch.zeros(3, env.action_dim))
    cos = _direct_cosine(tiny[kind], env.frames(), goal)
    # The goal embedding is the normalized mean of the prompts' embeddings: recompute it directly.
    vlm = TransformersVLM(tiny[kind])
    g = F.normalize(vlm.encode_text(goal).mean(0), dim=-1)
    expected = vlm.encode_images(env.frames()) @ g
    torch.testing.assert_close(term.fn.score, expected, rtol=1e-4, atol=1e-5)
    assert cos.shape == (3, 2)
    torch.testing.assert_close(out.info["log/reward/vlm"], (expected * env.dt).mean(), rtol=1e-4, atol=1e-6)
    held = term.fn.score.clone()
    env.step(torch.zeros(3, env.action_dim))  # every=2: the score is held on the second step
    assert torch.equal(term.fn.score, held)
    assert "log/vlm/goal" in out.info


def test_training_with_the_vlm_reward_logs_it(tiny, tmp_path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "task=arm_reach",
        "num_envs=4",
        *RGB,
        "reward=vlm",
        f"reward.model={tiny['clip']}",
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
    assert not any(k.startswith("env/reward/ee_goal") for k in row)  # the VLM term alone


def test_goal_baseline_formula() -> None:
    x = F.normalize(torch.randn(5, 8), dim=-1)
    g, b = F.normalize(torch.randn(8), dim=0), F.normalize(torch.randn(8), dim=0)
    # alpha = 0: 1 - 0.5 |x - g|^2, which for unit vectors is cos(x, g).
    torch.testing.assert_close(goal_baseline_reward(x, g, b, 0.0), x @ g)
    # alpha = 1: only the component of x - g along d = g - b counts.
    d = (g - b) / (g - b).norm()
    torch.testing.assert_close(goal_baseline_reward(x, g, b, 1.0), 1 - 0.5 * ((x - g) @ d) ** 2)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["reward.mode=nearest"], "unknown reward.mode 'nearest'"),
        (["reward.prompts.goal=[]"], "reward.prompts.goal must be a non-empty list"),
        (["reward.model=/nonexistent/clip"], "reward.model /nonexistent/clip does not exist"),
        (["EMPTY"], "holds no model"),
        (["task.rgb.enabled=false"], "enable them with task.rgb.enabled=true"),
    ],
)
def test_bad_vlm_config_is_one_line_and_exit_2(
    tiny, tmp_path, capsys, extra: list[str], message: str
) -> None:
    if extra == ["EMPTY"]:
        (tmp_path / "empty").mkdir()
        extra = [f"reward.model={tmp_path / 'empty'}"]
    args = [
        "train",
        "task=arm_reach",
        "num_envs=2",
        *RGB,
        "reward=vlm",
        f"reward.model={tiny['clip']}",
        *extra,
        "train.max_iterations=1",
        f"run_dir={tmp_path / 'run'}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_gate_metrics_by_hand() -> None:
    assert ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    labels = torch.tensor([True, False, True, False])
    assert roc_auc(torch.tensor([0.9, 0.1, 0.8, 0.3]), labels) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.9, 0.2, 0.8]), labels) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels) == 0.5  # ties count half
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 90.0])) == pytest.approx(1.0)


def test_training_refuses_a_reward_that_fails_the_sanity_gate(tiny, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "task=arm_reach",
        "num_envs=2",
        *RGB,
        "reward=vlm",
        f"reward.model={tiny['clip']}",
        "reward.check_envs=4",
        "reward.check_steps=40",
        "reward.min_auc=0.99",
        "train.max_iterations=1",
        f"run_dir={run}",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "failed its sanity gate on arm_reach: ROC AUC" in err and "\n" not in err
    assert not run.exists()
    assert main(["vlm-check", *args[1:-2]]) == 2  # the gate alone says the same
