"""The cbf filter: barriers declared in config, the minimal correction, flags, export and the env."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from embodied.export.graph import ExportedPolicy
from embodied.registry import make_env, task_config, task_names
from policies.safety import FilterError, build_chain
from policies.safety.barriers import Barriers
from policies.safety.cbf import CBFFilter

LAYOUT = [
    {"name": "speed", "dim": 1, "scale": 0.5},
    {"name": "rays", "dim": 3, "scale": 1.0},
    {"name": "last_action", "dim": 2, "scale": 1.0},
]


def _obs(speed, rays=(1.0, 1.0, 1.0), last=(0.0, 0.0)):
    return torch.tensor([[0.5 * speed, *rays, *last]])


def test_barrier_polynomials_read_raw_terms_by_name():
    spec = {
        "gap": {
            "h": {"rays[1:3]": [10.0, 20.0], "speed": -1.0, "const": -1.0},
            "drift": {"speed*rays[0]": 2.0},
            "gain": [0.0, {"speed*speed": -0.1}],
            "rate": 0.5,
        }
    }
    b = Barriers(spec, LAYOUT, 2, 6)
    obs = _obs(4.0, rays=(0.5, 0.2, 0.3))  # the raw speed is obs / scale = 4 m/s
    g, rhs, h = b(obs)
    assert b.names == ["gap"] and b.num_rows == 2
    torch.testing.assert_close(h, torch.tensor([[10 * 0.2 - 4 - 1, 20 * 0.3 - 4 - 1]]))
    torch.testing.assert_close(g, torch.tensor([[[0.0, -1.6], [0.0, -1.6]]]))
    torch.testing.assert_close(rhs, -0.5 * h - 2.0 * 4 * 0.5)


def test_an_action_that_keeps_every_barrier_passes_unchanged():
    f = _speed_filter()
    obs, a = _obs(2.0), torch.tensor([[0.3, 0.2]])
    safe, hit, info = f(obs, a)
    assert torch.equal(safe, a) and not bool(hit[0]) and not bool(info["infeasible"][0])


def _speed_filter(**kw):
    # h = 10 - v; one step: v' = v + 2 a1, so h' - h = -2 a1 and the condition is -2 a1 >= -0.5 (10 - v)
    spec = {"speed": {"h": {"speed": -1.0, "const": 10.0}, "gain": [0.0, -2.0], "rate": 0.5}}
    return CBFFilter(LAYOUT, 2, barriers=spec, **kw)


def test_one_active_constraint_is_the_closed_form_projection():
    f = _speed_filter()
    safe, hit, info = f(_obs(8.0), torch.tensor([[0.3, 0.9]]))
    # -2 a1 >= -1  ->  a1 <= 0.5; the closest such action keeps a0
    torch.testing.assert_close(safe, torch.tensor([[0.3, 0.5]]))
    assert bool(hit[0]) and not bool(info["infeasible"][0]) and info["active"][0] == 1


def test_several_constraints_meet_at_the_exact_projection():
    spec = {
        "a": {"h": {"const": 1.0}, "gain": [-1.0, -1.0], "rate": 1.0},  # a0 + a1 <= 1
        "b": {"h": {"const": 0.2}, "gain": [-1.0, 0.0], "rate": 1.0},  # a0 <= 0.2
    }
    f = CBFFilter(LAYOUT, 2, barriers=spec, iterations=50)
    safe, hit, info = f(_obs(0.0), torch.tensor([[0.9, 0.9]]))
    # the QP's answer: a0 = 0.2 and a1 = 0.8 (the projection of (0.9, 0.9) onto both half-planes)
    torch.testing.assert_close(safe, torch.tensor([[0.2, 0.8]]), atol=1e-5, rtol=0)
    assert bool(hit[0]) and not bool(info["infeasible"][0])


def test_an_impossible_row_is_flagged_and_others_are_not():
    # h = 10 - v must fall no faster than 0.5 h per step, but the action can only slow v by 2 per step
    f = _speed_filter()
    obs = torch.cat([_obs(30.0), _obs(8.0)])
    safe, hit, info = f(obs, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert hit.tolist() == [True, True]
    assert info["infeasible"].tolist() == [True, False]
    assert safe[0, 1] == -1.0  # the least bad action: full brake, within the box
    g, b, _ = f.constraints(obs)
    assert bool(((b - (g @ safe[..., None])[..., 0]) <= 1e-4 * (1 + b.abs()))[1].all())


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"x": {"h": {"nope": 1.0}, "gain": [0.0, 1.0]}}, "no term 'nope'"),
        ({"x": {"h": {"speed": 1.0}, "gain": [1.0]}}, "one entry per action dimension"),
        ({"x": {"h": {"speed": 1.0}, "gain": [0.0, 1.0], "rate": 0.0}}, "rate must be"),
        ({"x": {"h": {"rays[2:5]": 1.0}, "gain": [0.0, 1.0]}}, "out of range"),
        ({"x": {"h": {"speed": 1.0}}}, "needs h and gain"),
        ({"x": {"h": {"rays": [1.0, 2.0]}, "gain": [0.0, 1.0]}}, "different lengths"),
        ({}, "declares none"),
        ({"x": None}, "declares none"),  # every barrier switched off
    ],
)
def test_bad_barriers_are_one_line_errors(spec, match):
    with pytest.raises(FilterError, match=match):
        CBFFilter(LAYOUT, 2, barriers=spec)


def test_a_null_barrier_is_switched_off():
    """A variant drops an inherited barrier with `<name>: null` (or task.barriers.<name>=null)."""
    speed = {"h": {"speed": -1.0, "const": 2.0}, "gain": [0.0, -0.5]}
    on = CBFFilter(LAYOUT, 2, barriers={"speed": speed, "gone": speed})
    off = CBFFilter(LAYOUT, 2, barriers={"speed": speed, "gone": None})
    assert off.barriers.names == ["speed"] and on.barriers.num_rows == 2 * off.barriers.num_rows
    with pytest.raises(FilterError, match=r"cbf\.use names barrier"):
        CBFFilter(LAYOUT, 2, barriers={"speed": speed, "gone": None}, use=["gone"])


@pytest.mark.parametrize("task", [t for t in task_names() if "barriers" in task_config(t)])
def test_every_declared_barrier_set_builds_on_its_task_and_scripts(task):
    env = make_env(task, num_envs=4)
    cfg = OmegaConf.to_container(task_config(task), resolve=True)
    chain = build_chain(["cbf"], {}, env.obs_layout("policy"), env.action_dim, task=cfg)
    obs = env.reset(seed=0)["policy"]
    a = torch.rand(4, env.action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = chain(obs, a)
    got = torch.jit.script(chain)(obs, a)
    torch.testing.assert_close(got[0], expected[0])
    env.close()


def test_the_env_runs_cbf_and_logs_its_infeasible_rows():
    env = make_env("driving_traffic", num_envs=8)
    cfg = OmegaConf.to_container(task_config("driving_traffic"), resolve=True)
    env.set_filters(build_chain(["cbf"], {}, env.obs_layout("policy"), env.action_dim, task=cfg))
    env.reset(seed=0)
    hits = 0.0
    for _ in range(30):  # full throttle: the speed barrier must hold the car back
        out = env.step(torch.tensor([[0.0, 1.0]]).expand(8, 2))
        hits += float(out.info["log/safety/cbf/intervention_rate"])
        assert "log/safety/cbf/infeasible" in out.info and "safety/cbf/min_h" in out.info
        assert bool((out.info["applied_action"][:, 1] <= 1.0).all())
    assert hits > 0
    v = out.obs["policy"][:, 0] / 0.2
    assert bool((v < 10.0 * 1.05).all())
    env.close()


def test_intervention_penalty_is_paid_and_logged():
    env = make_env("arm_reach", num_envs=4)
    box = build_chain(["box"], {"box": {"high": 0.1}}, env.obs_layout("policy"), env.action_dim)
    env.set_filters(box, intervention_penalty=2.0)
    env.reset(seed=0)
    out = env.step(torch.ones(4, env.action_dim))
    expected = -2.0 * env.dt * torch.linalg.vector_norm(torch.full((env.action_dim,), 0.9))
    torch.testing.assert_close(out.info["log/reward/safety_intervention"], expected)
    with pytest.raises(Exception, match="intervention_penalty must be >= 0"):
        env.set_filters(box, intervention_penalty=-1.0)
    env.close()


@pytest.mark.parametrize("task", ["driving_traffic", "driving_dense"])  # polynomial / corridor barriers
def test_cbf_exports_into_onnx_with_parity_where_it_is_active(tmp_path, task):
    env = make_env(task, num_envs=4)
    cfg = OmegaConf.to_container(task_config(task), resolve=True)
    layout, dim = env.obs_layout("policy"), env.obs_spec["policy"].shape[0]
    chain = build_chain(["box", "cbf"], {"box": {"low": -0.8}}, layout, env.action_dim, task=cfg)
    actor = torch.nn.Sequential(torch.nn.Linear(dim, 2), torch.nn.Tanh())
    torch.nn.init.constant_(actor[0].bias, 3.0)  # full throttle everywhere: the barriers must act
    exported = ExportedPolicy(actor, torch.zeros(2), torch.ones(2), obs_dim=dim, filters=chain)
    path = tmp_path / "p.onnx"
    torch.onnx.export(
        exported,
        (torch.zeros(1, dim),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["obs"],
        output_names=["joint_targets", "actions"],
        dynamic_axes={"obs": {0: "b"}, "joint_targets": {0: "b"}, "actions": {0: "b"}},
    )
    sess = ort.InferenceSession(str(path))
    rec = [env.reset(seed=0)["policy"]]
    for _ in range(20):
        rec.append(env.step(torch.tensor([[0.0, 1.0]]).expand(4, 2)).obs["policy"])
    sets = {
        "random": torch.randn(256, dim, generator=torch.Generator().manual_seed(0)),
        "rollout": torch.cat(rec),
    }
    for name, obs in sets.items():
        with torch.no_grad():
            ref = exported(obs)[1]
            _, hit, _ = chain(obs, actor(obs).clamp(-1, 1))
        got = sess.run(None, {"obs": obs.numpy()})[1]
        assert float(hit.float().mean()) > 0.2, name  # the filters are active on these rows
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=0)
    env.close()
