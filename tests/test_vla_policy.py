"""The VLA policy: shapes, exact token log-probs, temperature, FiLM, checkpoints, PPO, backbones, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.errors import ConfigError
from embodied.workflow import build_policy
from policies.action_tokens import bin_centers, sample_tokens, token_entropy, tokenize
from policies.registry import build_policy as build_registered
from policies.spec import TensorSpec
from policies.vla import VLAError, VLAPolicy
from tests.vla_env import VLA_TINY, instructed_env, vla_cfg

ROOT = Path(__file__).resolve().parents[1]
N, P, A = 6, 10, 4
SPEC = {
    "rgb": TensorSpec((3, 48, 48), torch.uint8, "rgb"),
    "proprio": TensorSpec((P,)),
    "instruction": TensorSpec((1,), torch.int64, "instruction"),
    "critic": TensorSpec((P + 3,)),
}
TEXTS = ["push the red cube onto the blue pad", "push the blue cube onto the red pad", "open the gripper"]
SMALL = {"channels": 8, "visual_dim": 32, "lang_dim": 8, "hidden_dims": [32], "critic_hidden_dims": [16]}


def make(**cfg) -> VLAPolicy:
    """A small VLA policy with a random (unit-norm) instruction table in place of MiniLM's."""
    policy = build_registered("vla", SPEC, A, {"instructions": TEXTS, **SMALL, **cfg})
    gen = torch.Generator().manual_seed(0)
    policy.set_instruction_embeddings(F.normalize(torch.randn(len(TEXTS), 384, generator=gen), dim=-1))
    return policy


def observation(seed: int = 0, index: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    instr = torch.randint(0, len(TEXTS), (N, 1), generator=g) if index is None else torch.full((N, 1), index)
    return {
        "rgb": torch.randint(0, 256, (N, 3, 48, 48), dtype=torch.uint8, generator=g),
        "proprio": torch.randn(N, P, generator=g),
        "instruction": instr,
        "critic": torch.randn(N, P + 3, generator=g),
    }


def test_shapes_of_actions_chunks_values_and_distribution():
    policy, obs = make(chunk=5, bins=11), observation()
    actions = policy.act(obs)
    assert actions.shape == (N, A) and policy.act_chunk_inference(obs).shape == (N, 5, A)
    assert policy(obs).shape == (N, A) and policy.evaluate(obs).shape == (N,)
    assert policy.get_actions_log_prob(actions).shape == (N,) and policy.entropy.shape == (N,)
    assert policy.action_mean.shape == (N, A) and policy.action_std.shape == (N, A)
    assert set(policy.obs_groups) == {"rgb", "proprio", "instruction", "critic"}
    centers = bin_centers(11)
    assert torch.isin(actions, centers).all(), "sampled actions are bin centres"
    assert torch.equal(policy(obs), policy.act_chunk_inference(obs)[:, 0]), "greedy = first of the chunk"


def test_token_log_prob_is_the_sum_of_tempered_log_softmax_entries():
    policy, obs = make(temperature=1.6, bins=9), observation(1)
    actions = policy.act(obs)
    logits = policy.head(policy.features(obs))[:, 0]  # (N, A, K): the executed first action
    tokens = tokenize(actions, 9)
    expected = torch.stack(
        [sum(F.log_softmax(logits[i, d] / 1.6, -1)[tokens[i, d]] for d in range(A)) for i in range(N)]
    )
    torch.testing.assert_close(policy.get_actions_log_prob(actions), expected, atol=1e-6, rtol=0)
    chunk = policy.act_chunk_inference(obs)
    per_step = policy.chunk_log_prob(obs, chunk)  # (N, C)
    all_logits = policy.head(policy.features(obs))
    manual = F.log_softmax(all_logits / 1.6, -1).gather(-1, tokenize(chunk, 9)[..., None])[..., 0].sum(-1)
    torch.testing.assert_close(per_step, manual, atol=1e-6, rtol=0)


def test_sampling_at_temperature_follows_the_tempered_softmax():
    logits = torch.tensor([2.0, 0.5, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 1.6):
        draws = sample_tokens(logits.expand(40000, 4), temperature, gen)
        freq = torch.bincount(draws, minlength=4).float() / draws.numel()
        want = F.softmax(logits / temperature, -1)
        assert (freq - want).abs().max() < 0.01, (temperature, freq, want)
    hot, cold = token_entropy(logits, 1.6), token_entropy(logits, 0.5)
    assert hot > token_entropy(logits, 1.0) > cold


def test_entropy_and_moments_are_of_the_tempered_bins():
    policy, obs = make(temperature=1.3, bins=7), observation(2)
    policy.update_distribution(obs)
    logits = policy.head(policy.features(obs))[:, 0]
    p = F.softmax(logits / 1.3, -1)
    torch.testing.assert_close(policy.entropy, -(p * p.log()).sum((-1, -2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(policy.action_mean, (p * bin_centers(7)).sum(-1), atol=1e-6, rtol=0)


def test_film_makes_the_output_depend_on_the_instruction():
    policy = make()
    obs = observation(3, index=0)
    other = {**obs, "instruction": torch.full((N, 1), 1)}
    emb = policy.instruction_embeddings()
    v0 = policy.visual_features(obs["rgb"], emb[[0] * N])
    v1 = policy.visual_features(obs["rgb"], emb[[1] * N])
    assert (v0 - v1).abs().max() > 1e-4, "FiLM must change the visual features"
    policy.update_distribution(obs)
    l0 = policy._last()[0]
    policy.update_distribution(other)
    assert (policy._last()[0] - l0).abs().max() > 1e-4
    # With FiLM's weights zeroed the visual features no longer see the instruction.
    torch.nn.init.zeros_(policy.condition.linear.weight)
    torch.nn.init.zeros_(policy.condition.linear.bias)
    v0 = policy.visual_features(obs["rgb"], emb[[0] * N])
    assert torch.equal(v0, policy.visual_features(obs["rgb"], emb[[1] * N]))


def test_cross_attention_and_gaussian_head_options():
    policy, obs = make(conditioning="cross_attention", head="gaussian", chunk=2), observation(4)
    actions = policy.act(obs)
    mu, sigma = policy.action_mean, policy.action_std
    want = torch.distributions.Normal(mu, sigma).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.get_actions_log_prob(actions), want, atol=1e-5, rtol=0)
    emb = policy.instruction_embeddings()
    assert (
        policy.visual_features(obs["rgb"], emb[[0] * N]) - policy.visual_features(obs["rgb"], emb[[2] * N])
    ).abs().max() > 1e-5
    assert policy.act_chunk_inference(obs).shape == (N, 2, A)


def test_bc_loss_learns_a_fixed_chunk():
    torch.manual_seed(0)
    policy, obs = make(chunk=3, bins=5), observation(5)
    target = torch.tensor([-1.0, -0.5, 0.0, 1.0]).expand(N, 3, A)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = float(policy.bc_loss(obs, target).detach())
    for _ in range(60):
        loss = policy.bc_loss(obs, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * first
    assert torch.equal(policy.act_chunk_inference(obs), target)


def test_instruction_table_comes_from_minilm_and_survives_a_weights_only_round_trip(tmp_path, monkeypatch):
    from policies.text_encoder import TextEncoder

    policy = build_registered("vla", SPEC, A, {"instructions": TEXTS, **SMALL})
    assert not bool(policy.instruction_ready)
    table = policy.instruction_embeddings()
    torch.testing.assert_close(table, TextEncoder().embed(TEXTS), atol=1e-6, rtol=0)
    obs = observation(6)
    path = tmp_path / "vla.pt"
    torch.save(policy.state_dict(), path)
    state = torch.load(path, weights_only=True)

    def no_minilm(*_a, **_k):
        raise AssertionError("a loaded policy must not need MiniLM for its known instructions")

    monkeypatch.setattr("policies.text_encoder.TextEncoder.__init__", no_minilm)
    loaded = build_registered("vla", SPEC, A, {"instructions": TEXTS, **SMALL})
    loaded.load_state_dict(state)
    loaded.eval()
    policy.eval()
    assert torch.equal(loaded(obs), policy(obs))
    assert torch.equal(loaded.evaluate(obs), policy.evaluate(obs))
    reordered = build_registered("vla", SPEC, A, {"instructions": TEXTS[::-1], **SMALL})
    with pytest.raises(VLAError, match="instruction strings"):
        reordered.load_state_dict(state)


def test_ppo_runs_two_iterations_with_policy_vla_on_a_camera_env():
    cfg = vla_cfg("algo.num_steps_per_env=6", "algo.num_mini_batches=2", "algo.num_learning_epochs=2")
    env = instructed_env(cfg)
    try:
        policy = build_policy(cfg, env)
        assert policy.instructions == env.instructions
        algo = PPO(
            policy,
            env.num_envs,
            PPOConfig(num_steps_per_env=6, num_mini_batches=2, num_learning_epochs=2),
            env.device,
            env.obs_spec,
        )
        before = [p.detach().clone() for p in policy.parameters() if p.requires_grad]
        obs = env.reset(seed=0)
        for _ in range(2):
            for _ in range(6):
                out = env.step(algo.act(obs))
                algo.process_env_step(out)
                obs = out.obs
            algo.compute_returns(obs)
            stats = algo.update()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
        after = [p for p in policy.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert algo.storage.obs["rgb"].dtype == torch.uint8
    finally:
        env.close()


def test_efficientnet_trunk_is_frozen_channels_last_and_stays_in_eval():
    policy, obs = make(encoder="efficientnet", channels=16), observation(7)
    trunk = policy.encoder.trunk
    policy.train()
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    assert policy.encoder.adapter.weight.requires_grad
    policy.bc_loss(obs, torch.zeros(N, policy.chunk, A)).backward()
    assert policy.encoder.adapter.weight.grad is not None
    assert all(p.grad is None for p in trunk.parameters())
    assert trunk._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_transformers_backbone_loads_by_local_path(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip", safe_serialization=True)
    assert (tmp_path / "clip" / "model.safetensors").is_file()
    policy, obs = make(backbone=str(tmp_path / "clip"), channels=8), observation(8)
    assert policy.encoder.num_tokens == 17  # 4 x 4 patches + the class token
    assert not any(p.requires_grad for p in policy.encoder.model.parameters())
    assert policy.act(obs).shape == (N, A)
    with pytest.raises(ValueError, match="holds no model"):
        make(backbone=str(tmp_path))


def test_tasks_without_frames_or_instructions_are_one_line_config_errors(tmp_path):
    from embodied.cli import compose
    from embodied.workflow import build_env

    cfg = compose(["task=arm_reach", "num_envs=2", *VLA_TINY])
    env = build_env(cfg)
    try:
        with pytest.raises(ConfigError) as e:
            build_policy(cfg, env)
        assert "rgb" in str(e.value) and "\n" not in str(e.value)
    finally:
        env.close()
    with pytest.raises(VLAError, match="'instruction'"):
        build_registered(
            "vla", {k: v for k, v in SPEC.items() if k != "instruction"}, A, {"instructions": TEXTS}
        )
    with pytest.raises(VLAError, match="instruction strings"):
        build_registered("vla", SPEC, A, {"instructions": []})
    with pytest.raises(VLAError, match=r"policy\.head"):
        build_registered("vla", SPEC, A, {"instructions": TEXTS, "head": "beta"})
    args = [
        "train",
        "task=arm_reach",
        "num_envs=2",
        "task.rgb.enabled=true",
        *VLA_TINY,
        f"run_dir={tmp_path}/r",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "embodied", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "instruction" in lines[0], proc.stderr[-2000:]
    cfg = compose(
        [
            "task=arm_reach",
            "num_envs=2",
            "task.rgb.enabled=true",
            "task.rgb.width=48",
            "task.rgb.height=48",
            *VLA_TINY,
            "policy.backbone=/nonexistent/model",
        ]
    )
    env = instructed_env(cfg)
    try:
        with pytest.raises(ConfigError, match="holds no model"):
            build_policy(cfg, env)
    finally:
        env.close()


def test_a_vla_checkpoint_evaluated_on_a_task_without_instructions_exits_2_with_one_line(tmp_path):
    from omegaconf import OmegaConf

    from embodied.checkpoint import save_checkpoint
    from embodied.workflow import checkpoint_meta

    cfg = vla_cfg()
    env = instructed_env(cfg)
    try:
        policy = build_policy(cfg, env)
        policy.instruction_embeddings()
        meta = checkpoint_meta(cfg, env)  # the instructed env's observation spec
    finally:
        env.close()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # arm_reach: no instructions
    save_checkpoint(run / "checkpoints" / "model_1.pt", {**meta, "policy": {"state": policy.state_dict()}})
    proc = subprocess.run(
        [sys.executable, "-m", "embodied", "eval", f"run={run}", "num_envs=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "instruction" in lines[0], proc.stderr[-2000:]


def test_a_checkpoint_maps_its_table_onto_another_instruction_list():
    from policies.text_encoder import TextEncoder

    policy = make()
    state = policy.state_dict()
    heldout = [TEXTS[2], "shove the red cube over to the blue pad", TEXTS[0]]
    loaded = build_registered("vla", SPEC, A, {"instructions": heldout, **SMALL})
    loaded.load_state_dict(loaded.adapt_checkpoint_state(state))
    table = loaded.instruction_embeddings()
    assert torch.equal(table[0], policy.instruction_table[2]) and torch.equal(
        table[2], policy.instruction_table[0]
    )
    torch.testing.assert_close(table[1], TextEncoder().embed([heldout[1]])[0], atol=1e-6, rtol=0)
    same = build_registered("vla", SPEC, A, {"instructions": TEXTS, **SMALL})
    assert same.adapt_checkpoint_state(state) is state


def test_policy_vla_runs_on_arm_multi_with_its_default_groups():
    from embodied.cli import compose
    from embodied.workflow import build_env

    overrides = ["task.rgb.enabled=true", "task.rgb.width=48", "task.rgb.height=48", "threads.torch=1"]
    cfg = compose(["task=arm_multi", "num_envs=2", "policy=vla", "policy.channels=8", *overrides])
    env = build_env(cfg)
    try:
        policy = build_policy(cfg, env)
        assert policy.proprio_obs == "proprio" and policy.instructions == list(env.instructions)
        obs = env.reset(seed=0)
        actions = policy.act(obs)
        assert actions.shape == (2, env.action_dim) and policy.get_actions_log_prob(actions).shape == (2,)
        out = env.step(actions)
        assert policy.evaluate(out.obs).shape == (2,)
    finally:
        env.close()
