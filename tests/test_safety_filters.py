"""The built-in box and rate filters: exact corrections, layout lookup by name, export, the env stage."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from embodied.export.graph import ExportedPolicy
from embodied.registry import make_env
from policies.safety import FilterChain, FilterError, build_chain
from policies.safety.box import BoxFilter, RateFilter

LAYOUT = [
    {"name": "joint_vel", "dim": 2, "scale": 0.05, "clip": None},
    {"name": "last_action", "dim": 3, "scale": 2.0, "clip": None},
]


def test_box_clamps_per_dimension_and_flags_the_rows_it_changed():
    f = BoxFilter(LAYOUT, 3, low=[-0.5, -1.0, 0.0], high=[0.5, 1.0, 0.2])
    a = torch.tensor([[0.1, 0.2, 0.1], [0.9, -2.0, 0.5], [-0.6, 0.0, 0.0]])
    safe, hit, _ = f(torch.zeros(3, 5), a)
    torch.testing.assert_close(safe, torch.tensor([[0.1, 0.2, 0.1], [0.5, -1.0, 0.2], [-0.5, 0.0, 0.0]]))
    assert hit.tolist() == [False, True, True]


def test_rate_reads_the_last_action_term_by_name_and_unscales_it():
    f = RateFilter(LAYOUT, 3, max_delta=0.1)
    obs = torch.zeros(2, 5)
    obs[:, 2:5] = 2.0 * torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])  # last actions, scaled by 2
    a = torch.tensor([[0.55, 0.9, 0.0], [0.05, -0.05, 0.1]])
    safe, hit, _ = f(obs, a)
    torch.testing.assert_close(safe, torch.tensor([[0.55, 0.6, 0.4], [0.05, -0.05, 0.1]]))
    assert hit.tolist() == [True, False]


@pytest.mark.parametrize(
    ("builder", "kwargs", "match"),
    [
        (BoxFilter, {"low": 0.5, "high": 0.1}, "low must be <= box.high"),
        (BoxFilter, {"low": [0.0, 0.0]}, "needs 1 or 3 values"),
        (RateFilter, {"max_delta": 0.0}, "max_delta must be > 0"),
    ],
)
def test_bad_parameters_are_one_line_errors(builder, kwargs, match):
    with pytest.raises(FilterError, match=match):
        builder(LAYOUT, 3, **kwargs)


def test_rate_refuses_an_observation_without_last_action():
    with pytest.raises(FilterError, match="no term 'last_action'"):
        RateFilter(LAYOUT[:1], 3)
    with pytest.raises(FilterError, match="unknown safety filter 'nope'"):
        build_chain(["nope"], {}, LAYOUT, 3)
    with pytest.raises(FilterError, match="safety filter 'box'"):
        build_chain(["box"], {"box": {"bogus": 1}}, LAYOUT, 3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_box_and_rate_export_into_onnx_and_torchscript(tmp_path):
    torch.manual_seed(0)
    chain = FilterChain([BoxFilter(LAYOUT, 3, low=-0.4, high=0.4), RateFilter(LAYOUT, 3, max_delta=0.1)])
    actor = torch.nn.Linear(5, 3)
    policy = ExportedPolicy(actor, torch.zeros(3), torch.ones(3), obs_dim=5, filters=chain)
    obs = torch.randn(64, 5)
    obs[:, 2:5] = 2.0 * (torch.rand(64, 3) * 0.8 - 0.4)  # last actions inside the box, scaled by 2
    expected = policy(obs)
    scripted = torch.jit.script(policy)
    torch.testing.assert_close(scripted(obs), expected)
    path = tmp_path / "p.onnx"
    torch.onnx.export(
        policy, (obs[:1],), str(path), dynamo=False, input_names=["obs"], dynamic_axes={"obs": {0: "b"}}
    )
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"obs": obs.numpy()})
    np.testing.assert_allclose(got[1], expected[1].numpy(), atol=1e-6)
    last = obs[:, 2:5] / 2.0
    a = torch.from_numpy(got[1])
    assert bool(((a - last).abs() <= 0.1 + 1e-5).all()) and bool((a.abs() <= 0.4 + 1e-5).all())
    assert bool((expected[1] != actor(obs).clamp(-1, 1)).any())  # the filters changed something


def test_the_env_applies_box_and_rate_in_order():
    env = make_env("go2_velocity", num_envs=4, overrides={"randomization": {}})
    layout = env.obs_layout("policy")
    env.set_filters(
        build_chain(
            ["box", "rate"],
            {"box": {"low": -0.3, "high": 0.3}, "rate": {"max_delta": 0.05}},
            layout,
            env.action_dim,
        )
    )
    env.reset()
    applied = []
    for _ in range(3):
        out = env.step(torch.ones(4, env.action_dim))
        applied.append(out.info["applied_action"].clone())
    assert torch.allclose(applied[0], torch.full_like(applied[0], 0.05))  # the last action starts at 0
    assert torch.allclose(applied[2], torch.full_like(applied[2], 0.15))
    assert bool(out.info["safety/box/intervened"].all()) and bool(out.info["safety/rate/intervened"].all())
    env.close()
