"""Safety filters in the export: deploy.yaml lists them with their parameters, and a graph that
leaves out a filter the env ran (or adds one) is caught against the env's own applied actions."""

import pytest
import torch
import yaml

from embodied.cli import compose
from embodied.export import ExportedPolicy, ExportError, check_pipeline, export_from_env, record_signals
from embodied.export.observation_graph import ObservationGraph
from embodied.workflow import build_env, build_policy
from tests.test_train_e2e import TINY

FILTERED = [*TINY, "safety.filters=[box,cbf]", "+safety.params.box.high=0.05"]


def _push_actions(policy, value=0.8):
    """Set the actor's last layer to give ``value`` everywhere (actions the box filter must clamp)."""
    last = [m for m in policy.actor_module().modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, value)


@pytest.fixture(scope="module")
def filtered():
    cfg = compose(FILTERED)
    env = build_env(cfg, num_envs=4)
    policy = build_policy(cfg, env)
    _push_actions(policy)
    yield cfg, env, policy
    env.close()


def test_deploy_yaml_lists_the_filters_with_their_parameters(filtered, tmp_path):
    cfg, env, policy = filtered
    export_from_env(env, policy, cfg.task, tmp_path / "exported", steps=10)
    d = yaml.safe_load((tmp_path / "exported" / "deploy.yaml").read_text())
    assert d["safety_filters"] == ["box", "cbf"]
    assert d["safety_params"]["box"] == {"high": 0.05}
    assert set(d["safety_params"]["cbf"]["barriers"]) == {"joint_upper", "joint_lower"}


def test_a_filter_left_out_of_the_graph_is_detected(filtered):
    _, env, policy = filtered
    offset, scale = env.action_affine()
    rec = record_signals(env, policy, ObservationGraph.from_env(env), steps=5, seed=0)
    full = ExportedPolicy.from_policy(policy, offset, scale, env.filters)
    assert check_pipeline(full, rec.obs, rec.applied, env.filters.names) <= 1e-5
    bare = ExportedPolicy.from_policy(policy, offset, scale, None)
    with pytest.raises(ExportError, match=r"runs safety filters \['box', 'cbf'\]; the graph runs none") as e:
        check_pipeline(bare, rec.obs, rec.applied, env.filters.names)
    assert "\n" not in str(e.value)


def test_a_filter_added_to_the_graph_is_detected_too():
    cfg = compose(list(TINY))
    env = build_env(cfg, num_envs=4)
    try:
        policy = build_policy(cfg, env)
        _push_actions(policy)
        rec = record_signals(env, policy, ObservationGraph.from_env(env), steps=5, seed=0)
        other = build_env(compose(FILTERED), num_envs=4)
        offset, scale = env.action_affine()
        extra = ExportedPolicy.from_policy(policy, offset, scale, other.filters)
        other.close()
        with pytest.raises(ExportError, match="a filter is missing from the export or added to it"):
            check_pipeline(extra, rec.obs, rec.applied, env.filters.names)
    finally:
        env.close()
