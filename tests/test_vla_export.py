"""VLA export: policy.onnx + text_encoder.onnx match torch, the filters sit inside, and the
deploy runner runs both graphs without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from embodied.deploy.manifest import DeployError
from embodied.deploy.vla_runner import VLARunner
from embodied.export.graph import ExportError
from embodied.export.vla import (
    PARITY_TOL,
    VLAExportGraph,
    check_applied,
    check_policy_parity,
    export_vla,
    proprio_filters,
    record_vla_inputs,
    write_policy_onnx,
)
from embodied.workflow import build_policy
from policies.safety import build_chain
from tests.vla_env import INSTRUCTIONS, instructed_env, vla_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of a (randomly initialized) VLA policy on the instructed arm env, and a fresh
    recording of graph inputs (another seed) with the torch graph's outputs on them."""
    out = tmp_path_factory.mktemp("vla") / "exported"
    cfg = vla_cfg()
    env = instructed_env(cfg)
    try:
        torch.manual_seed(0)
        policy = build_policy(cfg, env).eval()
        diffs = export_vla(env, policy, cfg.task, out, steps=5, seed=0)
        inputs = record_vla_inputs(env, policy, steps=3, seed=7)
        graph = VLAExportGraph(policy, torch.zeros(3), torch.full((3,), 0.03))
        with torch.inference_mode():
            command, actions, chunk = graph(inputs["rgb"], inputs["instruction_embedding"], inputs["proprio"])
            greedy = policy.chunk_from_embedding(
                inputs["rgb"], inputs["instruction_embedding"], inputs["proprio"]
            )
        record = out.parent / "recorded.npz"
        np.savez(
            record,
            **{k: v.numpy() for k, v in inputs.items()},
            command=command.numpy(),
            actions=actions.numpy(),
            chunk=chunk.numpy(),
        )
        yield {"dir": out, "diffs": diffs, "record": record, "policy": policy, "greedy": greedy, "env": env}
    finally:
        env.close()


def test_export_writes_both_graphs_and_a_manifest_describing_them(exported):
    d = exported["dir"]
    assert {p.name for p in d.iterdir()} == {
        "policy.onnx",
        "text_encoder.onnx",
        "tokenizer.json",
        "deploy.yaml",
    }
    m = yaml.safe_load((d / "deploy.yaml").read_text())
    assert m["kind"] == "vla" and m["instructions"] == INSTRUCTIONS
    assert m["policy"]["inputs"]["rgb"] == {"dtype": "uint8", "shape": [3, 48, 48], "group": "rgb"}
    assert m["policy"]["inputs"]["instruction_embedding"]["dim"] == 384
    assert m["policy"]["inputs"]["proprio"]["dim"] == 23
    assert m["policy"]["chunk"] == {"length": 3, "execute": "first", "filtered": "first"}
    assert m["policy"]["outputs"]["chunk"]["shape"] == [3, 3]
    assert m["text_encoder"]["dim"] == 384 and m["text_encoder"]["tokenizer"] == "tokenizer.json"
    assert [t["name"] for t in m["proprio_terms"]][-1] == "last_action"


def test_onnx_matches_torch_on_recorded_observations(exported):
    diffs = exported["diffs"]
    assert diffs["policy/recorded"] <= PARITY_TOL and diffs["policy/random"] <= PARITY_TOL
    assert diffs["text_encoder"] <= PARITY_TOL
    rec = np.load(exported["record"])
    runner = VLARunner(exported["dir"])
    command, actions, chunk = runner.act(rec["rgb"], rec["instruction_embedding"], rec["proprio"])
    np.testing.assert_allclose(chunk, exported["greedy"].numpy(), atol=PARITY_TOL)
    np.testing.assert_allclose(actions, rec["actions"], atol=PARITY_TOL)
    np.testing.assert_allclose(command, rec["command"], atol=PARITY_TOL)


def test_text_encoder_onnx_gives_the_policys_instruction_table(exported):
    runner = VLARunner(exported["dir"])
    table = exported["policy"].instruction_table.numpy()
    for i, text in enumerate(INSTRUCTIONS):
        np.testing.assert_allclose(runner.embed(text), table[i], atol=PARITY_TOL)
    rec = np.load(exported["record"])
    by_text = runner.act(rec["rgb"][0], INSTRUCTIONS[0], rec["proprio"][0])
    by_emb = runner.act(rec["rgb"][0], table[0], rec["proprio"][0])
    for a, b in zip(by_text, by_emb, strict=True):
        np.testing.assert_allclose(a, b, atol=PARITY_TOL)
    assert by_text[2].shape == (3, 3) and by_text[1].shape == (3,)


def test_deploy_runner_runs_both_graphs_without_torch(exported):
    script = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed on this robot")
                return None

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from embodied.deploy import VLARunner

        rec = np.load({str(exported["record"])!r})
        runner = VLARunner({str(exported["dir"])!r})
        for i in range(4):
            text = {INSTRUCTIONS!r}[i % 2]
            command, actions, chunk = runner.act(rec["rgb"][i], text, rec["proprio"][i])
            assert np.allclose(actions, rec["actions"][i], atol=1e-4), (actions, rec["actions"][i])
            assert np.allclose(command, rec["command"][i], atol=1e-4)
            assert chunk.shape == (3, 3)
        heavy = [m for m in ("torch", "sim", "policies", "transformers") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_filters_act_on_the_first_action_inside_the_graph(exported, tmp_path):
    env, policy = exported["env"], exported["policy"]
    chain = build_chain(["box"], {"box": {"high": 0.05}}, env.obs_layout("policy"), env.action_dim)
    graph = VLAExportGraph(policy, torch.zeros(3), torch.ones(3), chain)
    inputs = record_vla_inputs(env, policy, steps=2, seed=3)
    with torch.inference_mode():
        _, actions, chunk = graph(*(inputs[k] for k in ("rgb", "instruction_embedding", "proprio")))
        free = VLAExportGraph(policy, torch.zeros(3), torch.ones(3))(
            *(inputs[k] for k in ("rgb", "instruction_embedding", "proprio"))
        )[1]
    assert float(actions.max()) <= 0.05 + 1e-6
    assert torch.equal(actions, free.clamp(max=0.05)), "the box filter runs on the first action"
    with torch.inference_mode():
        greedy = policy.chunk_from_embedding(
            inputs["rgb"], inputs["instruction_embedding"], inputs["proprio"]
        )
    assert torch.equal(chunk, greedy.clamp(-1, 1)), "the chunk itself is not filtered"
    path = tmp_path / "policy.onnx"
    write_policy_onnx(graph, path, "ee_delta")
    assert check_policy_parity(graph, path, {"recorded": inputs})["policy/recorded"] <= PARITY_TOL


def test_gaussian_head_graph_matches_torch_on_continuous_outputs(exported, tmp_path):
    cfg = vla_cfg("policy.head=gaussian", "policy.conditioning=cross_attention")
    env = exported["env"]
    policy = build_policy(cfg, env).eval()
    policy.set_instruction_embeddings(exported["policy"].instruction_table)
    inputs = record_vla_inputs(env, policy, steps=2, seed=5)
    graph = VLAExportGraph(policy, torch.zeros(3), torch.full((3,), 0.03))
    path = tmp_path / "policy.onnx"
    write_policy_onnx(graph, path, "ee_delta")
    diff = check_policy_parity(graph, path, {"recorded": inputs})["policy/recorded"]
    assert diff <= PARITY_TOL
    with torch.inference_mode():
        chunk = graph(*(inputs[k] for k in ("rgb", "instruction_embedding", "proprio")))[2]
    assert len(torch.unique(chunk)) > 10, "continuous outputs, not bins"


def test_filters_are_rebound_to_the_proprio_group_and_checked_against_the_env():
    cfg = vla_cfg("policy.proprio_obs=critic", "safety.filters=[box,cbf]", "+safety.params.box.high=0.05")
    env = instructed_env(cfg)
    try:
        policy = build_policy(cfg, env).eval()
        chain = proprio_filters(env.filters, env, "critic")
        assert chain is not env.filters and chain.names == ["box", "cbf"]
        recorded = record_vla_inputs(env, policy, steps=3, seed=1)
        graph = VLAExportGraph(policy, torch.zeros(3), torch.ones(3), chain)
        assert check_applied(graph, recorded) <= 1e-5
        assert float(recorded["applied"].max()) <= 0.05 + 1e-6
        with pytest.raises(ExportError, match="not the env's"):
            check_applied(VLAExportGraph(policy, torch.zeros(3), torch.ones(3)), recorded)
        with pytest.raises(ExportError, match="cannot read"):
            proprio_filters(env.filters, env, "draw")  # cbf reads ee_pos, which draw lacks
    finally:
        env.close()


def test_runner_refuses_a_changed_graph_and_bad_inputs(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported["dir"], copy)
    runner = VLARunner(copy)
    with pytest.raises(DeployError, match="uint8"):
        runner.act(np.zeros((3, 48, 48), np.float32), INSTRUCTIONS[0], np.zeros(23, np.float32))
    with pytest.raises(DeployError, match="proprio"):
        runner.act(np.zeros((3, 48, 48), np.uint8), INSTRUCTIONS[0], np.zeros(5, np.float32))
    with open(copy / "policy.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DeployError, match="sha256"):
        VLARunner(copy)
    (copy / "deploy.yaml").write_text("kind: mlp\n")
    with pytest.raises(DeployError, match="kind: vla"):
        VLARunner(copy)
