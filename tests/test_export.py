"""Export of a trained run: ONNX / TorchScript / torch parity, the parity check itself, deploy.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from embodied.export import (
    OPSET,
    ExportedPolicy,
    ExportError,
    check_parity,
    export_policy,
    export_run,
    onnx_runner,
    record_observations,
    sha256,
    torch_runner,
    torchscript_runner,
)
from embodied.workflow import build_env, load_policy
from tests.test_cli import embodied
from tests.test_train_e2e import TINY

torch.set_num_threads(1)

SCHEMA_KEYS = {
    "": {
        "schema_version",
        "task",
        "policy",
        "joints",
        "control",
        "action",
        "observations",
        "commands",
        "obs_clip",
    },
    "policy": {"onnx", "onnx_sha256", "torchscript", "input", "outputs"},
    "joints": {"names", "default_positions", "kp", "kd", "torque_limits", "position_limits"},
    "control": {"dt", "physics_dt", "decimation"},
    "action": {"offset", "scale"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-iteration run, exported. Its normalizer is far from identity (checked in ``loaded``)."""
    run = tmp_path_factory.mktemp("export") / "run"
    p = embodied(
        "train", *TINY, "train.max_iterations=2", "train.evaluate=false", f"run_dir={run}", timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert export_run(run) == run / "exported"
    return run


@pytest.fixture(scope="module")
def loaded(run) -> dict[str, Any]:
    """The run's torch policy as ExportedPolicy, its env facts and 50 steps x 4 envs of its observations."""
    cfg = OmegaConf.load(run / "config.yaml")
    env = build_env(cfg, num_envs=4)
    ac, _ = load_policy(run, cfg, env, None)
    offset, scale = env.action_affine()
    norm = ac.actor_normalizer
    # 2 iterations already give per-dim std from 0.001 (gravity z) to 0.66: the normalizer matters.
    assert float(norm.std.min()) < 0.1 and float(norm.mean.abs().max()) > 0.5, "normalizer is near identity"
    out = {
        "ac": ac,
        "policy": ExportedPolicy.from_actor_critic(ac, offset, scale),
        "offset": offset,
        "scale": scale,
        "joints": list(env.backend.info.actuated_joints),
        "recorded": record_observations(env, ac, steps=50, seed=3),
    }
    env.close()
    return out


def _runners(run: Path) -> dict:
    return {
        "onnxruntime": onnx_runner(run / "exported" / "policy.onnx"),
        "torchscript": torchscript_runner(run / "exported" / "policy.ts"),
    }


def test_onnx_torchscript_and_torch_agree_on_random_obs(run, loaded):
    gen = torch.Generator().manual_seed(7)
    sets = {  # batch 1 and a large batch: the batch axis is dynamic
        "single": torch.randn(1, 48, generator=gen),
        "wide": 3.0 * torch.randn(513, 48, generator=gen),
    }
    diffs = check_parity(loaded["policy"], _runners(run), sets, tol=1e-5)
    assert len(diffs) == 4 and max(diffs.values()) <= 1e-5, diffs


def test_onnx_torchscript_and_torch_agree_on_recorded_obs(run, loaded):
    assert loaded["recorded"].shape == (200, 48)
    diffs = check_parity(loaded["policy"], _runners(run), {"recorded": loaded["recorded"]}, tol=1e-5)
    assert max(diffs.values()) <= 1e-5, diffs


def test_exported_graph_matches_the_env_action_path(loaded):
    obs = loaded["recorded"]
    with torch.no_grad():
        targets, actions = loaded["policy"](obs)
        expected = loaded["ac"](obs).clamp(-1.0, 1.0)
    torch.testing.assert_close(actions, expected)
    torch.testing.assert_close(targets, loaded["offset"] + loaded["scale"] * expected)


def test_parity_fails_if_normalizer_is_left_out(tmp_path, loaded):
    broken = ExportedPolicy(nn.Identity(), loaded["ac"].actor, loaded["offset"], loaded["scale"])
    obs = {"recorded": loaded["recorded"]}
    export_policy(broken, tmp_path / "broken", {"policy": {}}, obs)  # consistent with itself: passes
    runners = {"onnxruntime": onnx_runner(tmp_path / "broken" / "policy.onnx"), "torch": torch_runner(broken)}
    diffs = check_parity(loaded["policy"], runners, obs, tol=float("inf"))
    assert min(diffs.values()) > 1e-3, diffs
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(loaded["policy"], runners, obs)


def test_refused_export_leaves_existing_files_untouched(tmp_path, loaded):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "policy.onnx").write_bytes(b"old")
    with pytest.raises(ExportError):
        export_policy(loaded["policy"], out, {"policy": {}}, {"recorded": loaded["recorded"]}, tol=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"], "no staging folder left behind"
    assert [p.name for p in out.iterdir()] == ["policy.onnx"] and (out / "policy.onnx").read_bytes() == b"old"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_deploy_yaml_matches_schema_and_hash(run, loaded):
    out = run / "exported"
    text = (out / "deploy.yaml").read_text()
    d = yaml.safe_load(text)
    for section, keys in SCHEMA_KEYS.items():
        assert set(d[section] if section else d) == keys, section
    assert d["schema_version"] == 1 and d["task"] == "go2_velocity" and d["obs_clip"] == 100.0
    assert d["policy"]["input"] == {"name": "obs", "dim": 48}
    assert d["policy"]["outputs"] == {"joint_targets": {"dim": 12}, "actions": {"dim": 12}}
    assert d["policy"]["onnx_sha256"] == sha256(out / d["policy"]["onnx"])
    assert (out / d["policy"]["torchscript"]).is_file()

    j = d["joints"]
    assert j["names"] == loaded["joints"]
    assert all(len(j[k]) == 12 for k in j) and all(len(r) == 2 for r in j["position_limits"])
    assert j["kp"][0] > 0 and j["kd"][0] > 0
    assert d["control"]["decimation"] == 4
    assert d["control"]["dt"] == pytest.approx(d["control"]["physics_dt"] * 4)
    assert np.array_equal(np.float32(d["action"]["offset"]), loaded["offset"].numpy())
    assert np.array_equal(np.float32(d["action"]["scale"]), loaded["scale"].numpy())
    assert d["action"]["offset"] == j["default_positions"]  # joint_position mode: around the home pose
    assert [t["name"] for t in d["observations"]][:3] == ["base_lin_vel", "base_ang_vel", "projected_gravity"]
    assert sum(t["dim"] * t["history"] for t in d["observations"]) == 48
    assert set(d["commands"]) == {"lin_vel_x", "lin_vel_y", "ang_vel_yaw"}, "zero_prob stays out"

    meta = {p.key: p.value for p in onnx.load(str(out / "policy.onnx")).metadata_props}
    embedded = yaml.safe_load(meta["deploy_yaml"])
    assert embedded["policy"].pop("onnx_sha256") is None, "a file cannot hold its own hash"
    d["policy"].pop("onnx_sha256")
    assert embedded == d
    files = {"deploy.yaml": ""}
    torch.jit.load(str(out / "policy.ts"), _extra_files=files)
    assert files["deploy.yaml"].decode() == meta["deploy_yaml"]


def test_opset_at_least_17(run):
    model = onnx.load(str(run / "exported" / "policy.onnx"))
    onnx.checker.check_model(model)
    opset = {o.domain: o.version for o in model.opset_import}
    assert opset.get("", opset.get("ai.onnx", 0)) >= 17 and OPSET >= 17
    assert [i.name for i in model.graph.input] == ["obs"]
    assert [o.name for o in model.graph.output] == ["joint_targets", "actions"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "dynamic batch axis"
