"""Export of a trained run: ONNX / TorchScript / torch parity, the observation graph, safety filters, deploy.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from embodied.cli import compose
from embodied.cli import main as cli_main
from embodied.deploy import ObservationBuilder, load_manifest
from embodied.export import (
    ExportedPolicy,
    ExportError,
    ObservationExport,
    ObservationGraph,
    check_observation_parity,
    check_parity,
    export_from_env,
    export_policy,
    export_run,
    observation_runner,
    onnx_runner,
    record_observations,
    record_signals,
    sha256,
    torch_runner,
    torchscript_runner,
)
from embodied.math import quat_rotate_inverse
from embodied.workflow import build_env, build_policy, load_policy, silence_policy_noise
from policies.safety import SafetyFilter, register_filter
from tests.test_cli import embodied
from tests.test_train_e2e import TINY

torch.set_num_threads(1)

FILTER, FILTER_DIM, FILTER_BOUND = "test_clamp_one", 2, 0.2
SIGNALS = {
    "base_lin_vel": 3,
    "imu_gyro": 3,
    "imu_quat": 4,
    "command": 3,
    "joint_pos": 12,
    "joint_vel": 12,
    "last_action": 12,
}


class ClampOne(SafetyFilter):
    """Test filter: action[:, dim] clamped to [-bound, bound]; intervened where that changed it."""

    def __init__(self, action_dim: int, dim: int, bound: float):
        super().__init__(FILTER)
        mask = torch.zeros(action_dim)
        mask[dim] = 1.0
        self.register_buffer("mask", mask)
        self.bound = float(bound)

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        safe = action + self.mask * (action.clamp(-self.bound, self.bound) - action)
        info: dict[str, torch.Tensor] = {}
        return safe, (safe != action).any(dim=-1), info


def _clamp_one(layout, action_dim: int, dim: int = FILTER_DIM, bound: float = FILTER_BOUND) -> ClampOne:
    return ClampOne(action_dim, dim, bound)


register_filter(FILTER, _clamp_one)

SCHEMA_KEYS = {
    "": {
        "schema_version",
        "task",
        "policy",
        "observation",
        "joints",
        "control",
        "action",
        "observations",
        "safety_filters",
        "safety_params",
        "commands",
        "obs_clip",
    },
    "policy": {"onnx", "onnx_sha256", "torchscript", "input", "outputs"},
    "observation": {"onnx", "onnx_sha256", "inputs"},
    "joints": {"names", "default_positions", "kp", "kd", "torque_limits", "position_limits"},
    "control": {"dt", "physics_dt", "decimation"},
    "action": {"mode", "offset", "scale"},
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
        "policy": ExportedPolicy.from_policy(ac, offset, scale, env.filters),
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
        expected = loaded["ac"]({"policy": obs}).clamp(-1.0, 1.0)
    torch.testing.assert_close(actions, expected)
    torch.testing.assert_close(targets, loaded["offset"] + loaded["scale"] * expected)


def test_parity_fails_if_normalizer_is_left_out(tmp_path, loaded):
    broken = ExportedPolicy(loaded["ac"].actor, loaded["offset"], loaded["scale"], obs_dim=48)
    obs = {"recorded": loaded["recorded"]}
    export_policy(broken, tmp_path / "broken", {"policy": {}}, obs)  # consistent with itself: passes
    runners = {"onnxruntime": onnx_runner(tmp_path / "broken" / "policy.onnx"), "torch": torch_runner(broken)}
    diffs = check_parity(loaded["policy"], runners, obs, tol=float("inf"))
    assert min(diffs.values()) > 1e-3, diffs
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(loaded["policy"], runners, obs)


def test_parity_is_measured_in_action_units():
    """A joint target scaled 6x per unit of action may differ by 6x the tolerance; the actions may not,
    and a scale under 1 does not loosen the bound."""
    actor = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    policy = ExportedPolicy(actor, torch.zeros(2), torch.tensor([0.3, 6.0]), obs_dim=3)
    obs = {"random": torch.randn(8, 3, generator=torch.Generator().manual_seed(0))}
    ref = torch_runner(policy)

    def shifted(target_shift: tuple[float, float], action_shift: float):
        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t, a = ref(x)
            return t + np.float32(target_shift), a + np.float32(action_shift)

        return run

    diffs = check_parity(policy, {"wheel": shifted((0.0, 5e-5), 0.0)}, obs, tol=1e-5)
    assert diffs["wheel/random"] == pytest.approx(5e-5 / 6.0, rel=0.02)  # float32 rounding of t + 5e-5
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(policy, {"steer": shifted((2e-5, 0.0), 0.0)}, obs, tol=1e-5)
    with pytest.raises(ExportError, match="disagrees with torch"):
        check_parity(policy, {"actions": shifted((0.0, 0.0), 2e-5)}, obs, tol=1e-5)


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
    assert d["schema_version"] == 2 and d["task"] == "go2_velocity" and d["obs_clip"] == 100.0
    assert d["policy"]["input"] == {"name": "obs", "group": "policy", "dtype": "float32", "dim": 48}
    assert d["observation"]["onnx_sha256"] == sha256(out / d["observation"]["onnx"])
    assert d["observation"]["inputs"] == SIGNALS
    assert d["safety_filters"] == []
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


@pytest.mark.parametrize("name", ["policy.onnx", "observation.onnx"])
def test_written_files_record_opset_17_or_later(run, name):
    model = onnx.load(str(run / "exported" / name))
    onnx.checker.check_model(model)
    opset = {o.domain: o.version for o in model.opset_import}
    assert opset.get("", opset.get("ai.onnx", 0)) >= 17, opset
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "dynamic batch axis"


def test_graph_names(run):
    policy = onnx.load(str(run / "exported" / "policy.onnx"))
    assert [i.name for i in policy.graph.input] == ["obs"]
    assert [o.name for o in policy.graph.output] == ["joint_targets", "actions"]
    obs = onnx.load(str(run / "exported" / "observation.onnx"))
    assert [i.name for i in obs.graph.input] == list(SIGNALS)
    names = (
        "base_lin_vel base_ang_vel projected_gravity velocity_commands joint_pos_rel joint_vel last_action"
    )
    assert [o.name for o in obs.graph.output] == [f"obs/{n}" for n in names.split()]


# -- the observation graph -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def quiet_env(run):
    """The run's env without observation noise (so its obs is a pure function of its state), its policy."""
    cfg = OmegaConf.load(run / "config.yaml")
    silence_policy_noise(cfg)
    env = build_env(cfg, num_envs=4)
    ac, _ = load_policy(run, cfg, env, None)
    yield env, ac
    env.close()


def test_observation_graph_matches_the_torch_terms_on_recorded_states(run, quiet_env):
    env, ac = quiet_env
    graph = ObservationGraph.from_env(env)
    rec = record_signals(env, ac, graph, steps=40, seed=5)
    assert rec.obs.shape == (160, 48) and set(rec.signals) == set(SIGNALS)
    assert float(rec.signals["joint_vel"].abs().max()) > 0.5, "the robot moved: the states are not all alike"
    runners = {"onnxruntime": observation_runner(run / "exported" / "observation.onnx")}
    diffs = check_observation_parity(graph, runners, {"recorded": (rec.signals, rec.terms)}, tol=1e-5)
    assert set(diffs) == {"onnxruntime/recorded", "torch/recorded"} and max(diffs.values()) <= 1e-5, diffs
    # Through the deploy runner's builder: the exported graph's terms, concatenated and clipped,
    # are the env's own policy observation.
    builder = ObservationBuilder(load_manifest(run / "exported" / "deploy.yaml"))
    x = {k: v.numpy() for k, v in rec.signals.items()}
    built = np.clip(np.concatenate(builder.terms_of(x), axis=1), -100.0, 100.0)
    np.testing.assert_allclose(built, rec.obs.numpy(), atol=1e-5)


def test_observation_graph_that_disagrees_with_training_is_refused(tmp_path, run, loaded, quiet_env):
    env, ac = quiet_env
    good = ObservationGraph.from_env(env)
    rec = record_signals(env, ac, good, steps=5, seed=2)
    layout = env.obs_layout("policy")
    layout[5] = {**layout[5], "scale": 0.5}  # joint_vel scaled 10x too much
    wrong = ObservationGraph(
        good.terms, layout, num_joints=12, constants={"default_joint_pos": good.default_joint_pos}
    )
    manifest = yaml.safe_load((run / "exported" / "deploy.yaml").read_text())
    del manifest["observation"]
    out = tmp_path / "exported"
    with pytest.raises(
        ExportError, match=r"observation graph disagrees with the torch terms .*'joint_vel'"
    ) as e:
        export_policy(
            loaded["policy"],
            out,
            manifest,
            {"recorded": loaded["recorded"]},
            observation=ObservationExport(wrong, {"recorded": (rec.signals, rec.terms)}),
        )
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == [], "a refused export writes nothing"


def test_observation_graph_does_not_normalize_the_quaternion(run):
    """Pinned: the graph rotates by the quaternion as given (training's formula); the runner
    refuses readings off unit norm instead (tests/test_deploy.py)."""
    gen = torch.Generator().manual_seed(4)
    unit = torch.nn.functional.normalize(torch.randn(64, 4, generator=gen), dim=-1)
    down = torch.tensor([[0.0, 0.0, -1.0]]).expand(64, 3)
    run_graph = observation_runner(run / "exported" / "observation.onnx")
    base = {k: np.zeros((64, w), np.float32) for k, w in SIGNALS.items()}
    for k in (1.0, 1.5, 0.5):
        got = run_graph({**base, "imu_quat": (k * unit).numpy()})["projected_gravity"]
        np.testing.assert_allclose(got, quat_rotate_inverse(k * unit, down).numpy(), atol=1e-5)
    normalized = quat_rotate_inverse(unit, down).numpy()
    assert np.abs(got - normalized).max() > 0.1, "a non-unit quaternion gives a different vector"


def test_observation_graph_refuses_a_term_robots_cannot_observe(tmp_path):
    cfg = compose(["num_envs=2", "+task.observations.policy.foot_contact={}", *TINY[3:]])
    env = build_env(cfg, num_envs=2)
    try:
        with pytest.raises(ExportError, match=r"term 'foot_contact' reads 'foot_contact'") as e:
            export_from_env(env, build_policy(cfg, env), cfg.task, tmp_path / "exported")
    finally:
        env.close()
    assert "\n" not in str(e.value)
    assert not (tmp_path / "exported").exists() and list(tmp_path.iterdir()) == [], "nothing written"


# -- safety filters inside the exported graph ----------------------------------------------------
@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory) -> Path:
    """A 2-iteration run trained with the test filter (registered in this process), exported."""
    run = tmp_path_factory.mktemp("filtered") / "run"
    rc = cli_main(
        [
            "train",
            *TINY,
            "train.max_iterations=2",
            "train.evaluate=false",
            "train.video=false",
            f"run_dir={run}",
            f"safety.filters=[{FILTER}]",
        ]
    )
    torch.set_num_threads(1)
    assert rc == 0 and (run / "exported" / "deploy.yaml").is_file()
    return run


def test_registered_safety_filter_is_inside_the_exported_graph(filtered_run):
    out = filtered_run / "exported"
    assert yaml.safe_load((out / "deploy.yaml").read_text())["safety_filters"] == [FILTER]
    cfg = OmegaConf.load(filtered_run / "config.yaml")
    env = build_env(cfg, num_envs=4)
    try:
        ac, _ = load_policy(filtered_run, cfg, env, None)
        assert env.filters.names == [FILTER]
        offset, scale = env.action_affine()
        policy = ExportedPolicy.from_policy(ac, offset, scale, env.filters)
        recorded = record_observations(env, ac, steps=20, seed=1)
    finally:
        env.close()
    gen = torch.Generator().manual_seed(11)
    obs = torch.cat([recorded, 3.0 * torch.randn(512, 48, generator=gen)])
    with torch.no_grad():
        raw = ac({"policy": obs}).clamp(-1.0, 1.0).numpy()  # the actor without the filter
    over = np.abs(raw[:, FILTER_DIM]) > FILTER_BOUND + 0.01
    assert int(over.sum()) >= 20, "the actor must exceed the bound somewhere for the test to bite"
    diffs = check_parity(policy, _runners(filtered_run), {"mixed": obs}, tol=1e-5)
    assert len(diffs) == 2 and max(diffs.values()) <= 1e-5, diffs
    targets, actions = onnx_runner(out / "policy.onnx")(obs.numpy())
    assert np.abs(actions[:, FILTER_DIM]).max() <= FILTER_BOUND + 1e-6
    np.testing.assert_allclose(actions[over, FILTER_DIM], FILTER_BOUND * np.sign(raw[over, FILTER_DIM]))
    others = [i for i in range(12) if i != FILTER_DIM]
    np.testing.assert_allclose(actions[:, others], raw[:, others], atol=1e-5)
    np.testing.assert_allclose(targets, offset.numpy() + scale.numpy() * actions, atol=1e-5)
