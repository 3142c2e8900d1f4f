"""The learned safety-critic filter: nearest safe candidate, flagged infeasible rows, export, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from embodied.export.graph import ExportedPolicy
from embodied.export.onnx import OPSET
from embodied.registry import make_env
from embodied.safety_critic import train_safety_critic
from policies.registry import build_policy
from policies.safety import FILTERS, FilterChain, FilterError, build_chain
from policies.safety.box import BoxFilter
from policies.safety.critic import FORMAT, CriticFilter, SafetyCritic, critic_payload

LAYOUT = [
    {"name": "joint_vel", "dim": 2, "scale": 0.05, "clip": None},
    {"name": "last_action", "dim": 3, "scale": 2.0, "clip": None},
]
OBS_DIM, ACTION_DIM = 5, 3
# driving_lane_follow with a 6 m/s limit and speeding as its only cost: full throttle (12 m/s) speeds,
# the untrained policy's ~0 throttle (6 m/s) does not.
DRIVE = {
    "speed_limit": [6.0, 6.0],
    "costs": {
        "collision": {"weight": 0.0},
        "lane_departure": {"weight": 0.0},
        "speed_over_limit": {"tolerance": 0.05},
    },
}


def _write(path: Path, critic: SafetyCritic, layout=LAYOUT, gamma: float = 0.9) -> Path:
    torch.save(critic_payload(critic, layout, gamma), path)
    return path


def _known_critic() -> SafetyCritic:
    """Q = 10 (a0 - 0.5 + x0): with threshold 0, safe iff a0 <= 0.5 - x0 (x0 = obs[:, 0])."""
    c = SafetyCritic(OBS_DIM, ACTION_DIM, hidden_dims=[])
    with torch.no_grad():
        c.net[0].weight.zero_()
        c.net[0].weight[0, 0] = 10.0
        c.net[0].weight[0, OBS_DIM] = 10.0
        c.net[0].bias.fill_(-5.0)
    return c


def _known_q(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return 10.0 * (action[..., 0] - 0.5 + obs[..., 0])


def _random_critic(seed: int) -> SafetyCritic:
    torch.manual_seed(seed)
    c = SafetyCritic(OBS_DIM, ACTION_DIM, hidden_dims=[16], activation="tanh")
    with torch.no_grad():
        c.obs_mean.copy_(torch.randn(OBS_DIM))
        c.obs_std.copy_(torch.rand(OBS_DIM) + 0.5)
    return c


def test_safe_actions_pass_unchanged_and_unsafe_ones_get_the_nearest_safe_candidate(tmp_path):
    f = CriticFilter(
        LAYOUT,
        ACTION_DIM,
        path=str(_write(tmp_path / "q.pt", _known_critic())),
        threshold=0.0,
        num_candidates=32,
    )
    gen = torch.Generator().manual_seed(1)
    action = 2.0 * torch.rand(300, ACTION_DIM, generator=gen) - 1.0
    obs = torch.randn(300, OBS_DIM, generator=gen)
    obs[:200, 0] = 0.0  # safe iff a0 <= 0.5
    obs[200:, 0] = 2.0  # no action in [-1, 1] is safe
    safe, hit, info = f(obs, action)

    passing = action[:, 0] <= 0.5 - obs[:, 0]
    assert 50 < int(passing.sum()) < 190 and not bool(passing[200:].any())
    assert torch.equal(safe[passing], action[passing]) and not bool(hit[passing].any())
    assert bool(hit[~passing].all())
    cand = f.candidates(action)  # (B, K, A)
    q = _known_q(obs[:, None, :], cand)
    dist = (cand - action[:, None, :]).square().sum(-1)
    for i in (~passing).nonzero().flatten().tolist():
        ok = q[i] <= 0.0
        if i < 200:  # the shrunk-to-zero candidate is always safe here
            expected = cand[i, torch.where(ok, dist[i], torch.inf).argmin()]
            assert not bool(info["infeasible"][i]) and float(_known_q(obs[i], safe[i])) <= 0.0
        else:
            expected = cand[i, q[i].argmin()]
            assert bool(info["infeasible"][i]) and not bool(ok.any())
        torch.testing.assert_close(safe[i], expected, atol=1e-6, rtol=0.0)
    torch.testing.assert_close(info["q"], _known_q(obs, action), atol=1e-5, rtol=1e-5)
    assert not bool(info["infeasible"][:200].any())


def test_a_single_candidate_flags_every_unsafe_row(tmp_path):
    path = _write(tmp_path / "q.pt", _known_critic())
    f = CriticFilter(LAYOUT, ACTION_DIM, path=str(path), threshold=0.0, num_candidates=1)
    action = torch.tensor([[0.2, 0.0, 0.0], [0.9, 0.1, -0.3]])
    safe, hit, info = f(torch.zeros(2, OBS_DIM), action)
    assert (
        torch.equal(safe, action)
        and hit.tolist() == [False, True]
        and info["infeasible"].tolist() == [False, True]
    )


def _assert_never_unsafe_unflagged(f: CriticFilter, obs: torch.Tensor, action: torch.Tensor) -> None:
    safe, hit, info = f(obs, action)
    with torch.no_grad():
        q_safe = f.critic(obs, safe)
        q_all = f.critic(obs[:, None].expand(-1, f.num_candidates, -1), f.candidates(action))
    unsafe = q_safe > f.threshold + 1e-5
    assert int((unsafe & ~info["infeasible"]).sum()) == 0
    assert torch.equal(safe[~hit], action[~hit]) and bool((q_all[~hit, 0] <= f.threshold).all())
    assert bool(
        (q_all[info["infeasible"]] > f.threshold - 1e-5).all()
    )  # flagged only when no candidate is safe
    assert bool((safe.abs() <= 1.0).all())


def test_no_row_of_10000_random_pairs_is_returned_unsafe_and_unflagged(tmp_path):
    path = _write(tmp_path / "q.pt", _random_critic(0))
    gen = torch.Generator().manual_seed(2)
    obs = 3.0 * torch.randn(10_000, OBS_DIM, generator=gen)
    action = 2.0 * torch.rand(10_000, ACTION_DIM, generator=gen) - 1.0
    f = CriticFilter(LAYOUT, ACTION_DIM, path=str(path), threshold=0.0, num_candidates=16, radius=0.3)
    _assert_never_unsafe_unflagged(f, obs, action)
    _, hit, info = f(obs, action)
    assert 0.1 < hit.float().mean() < 0.9 and bool(info["infeasible"].any())  # the test has teeth


def test_hypothesis_no_row_is_returned_unsafe_and_unflagged(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    path = str(_write(tmp_path / "q.pt", _random_critic(1)))
    filters: dict[tuple[float, int, float], CriticFilter] = {}

    @hypothesis.settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @hypothesis.given(
        seed=st.integers(0, 2**31 - 1),
        obs_scale=st.floats(0.0, 10.0),
        threshold=st.floats(-1.0, 1.0),
        k=st.integers(1, 24),
        radius=st.floats(0.0, 2.0),
    )
    def check(seed: int, obs_scale: float, threshold: float, k: int, radius: float) -> None:
        key = (threshold, k, radius)
        if key not in filters:
            filters[key] = CriticFilter(
                LAYOUT, ACTION_DIM, path=path, threshold=threshold, num_candidates=k, radius=radius
            )
        gen = torch.Generator().manual_seed(seed)
        obs = obs_scale * torch.randn(100, OBS_DIM, generator=gen)
        action = 2.0 * torch.rand(100, ACTION_DIM, generator=gen) - 1.0
        _assert_never_unsafe_unflagged(filters[key], obs, action)

    check()  # 100 examples x 100 rows


class _FilterOnly(nn.Module):
    def __init__(self, f: CriticFilter) -> None:
        super().__init__()
        self.f = f

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        safe, hit, info = self.f(obs, action)
        return safe, hit, info["infeasible"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_critic_filter_exports_into_onnx_and_torchscript(tmp_path):
    f = CriticFilter(
        LAYOUT,
        ACTION_DIM,
        path=str(_write(tmp_path / "q.pt", _random_critic(3))),
        threshold=0.0,
        num_candidates=24,
    )
    assert f.exportable and FilterChain([f]).exportable
    gen = torch.Generator().manual_seed(4)
    obs = 2.0 * torch.randn(512, OBS_DIM, generator=gen)
    action = 2.0 * torch.rand(512, ACTION_DIM, generator=gen) - 1.0
    module = _FilterOnly(f).eval()
    safe, hit, infeasible = module(obs, action)
    assert 50 < int(hit.sum()) < 500 and bool(
        infeasible.any()
    )  # it intervenes, on feasible and infeasible rows

    scripted = torch.jit.script(module)
    for got, want in zip(scripted(obs, action), (safe, hit, infeasible), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0.0)
    path = tmp_path / "filter.onnx"
    torch.onnx.export(
        module,
        (obs[:1], action[:1]),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["obs", "action"],
        output_names=["safe", "intervened", "infeasible"],
        dynamic_axes={k: {0: "b"} for k in ("obs", "action", "safe", "intervened", "infeasible")},
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"obs": obs.numpy(), "action": action.numpy()})
    np.testing.assert_allclose(got[0], safe.numpy(), atol=1e-5, rtol=0.0)
    np.testing.assert_array_equal(got[1], hit.numpy())
    np.testing.assert_array_equal(got[2], infeasible.numpy())

    # The deployment graph: actor -> clamp -> critic filter -> clamp, as embodied/export writes it.
    actor = nn.Linear(OBS_DIM, ACTION_DIM)
    policy = ExportedPolicy(
        actor, torch.zeros(ACTION_DIM), torch.ones(ACTION_DIM), obs_dim=OBS_DIM, filters=FilterChain([f])
    )
    expected = policy(obs)
    assert bool((expected[1] != actor(obs).clamp(-1.0, 1.0)).any())
    torch.testing.assert_close(torch.jit.script(policy)(obs), expected, atol=1e-5, rtol=0.0)
    torch.onnx.export(
        policy,
        (obs[:1],),
        str(tmp_path / "p.onnx"),
        dynamo=False,
        opset_version=OPSET,
        input_names=["obs"],
        dynamic_axes={"obs": {0: "b"}},
    )
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        sess.run(None, {"obs": obs.numpy()})[1], expected[1].numpy(), atol=1e-5, rtol=0.0
    )


def test_trained_critic_ranks_speeding_higher_and_its_filter_cuts_the_cost(tmp_path):
    env = make_env("driving_lane_follow", num_envs=16, overrides=DRIVE)
    layout = env.obs_layout("policy")
    policy = build_policy("mlp", env.obs_spec, env.action_dim, {})
    # An installed filter that would stop every speeding step: collection must run without it.
    box = FilterChain([BoxFilter(layout, 2, low=-1.0, high=[1.0, -0.5])])
    env.set_filters(box)
    path = train_safety_critic(
        env, policy, tmp_path / "critic.pt", iterations=6, steps_per_iteration=40, epochs=8, gamma=0.8
    )
    assert env.filters is box
    data = torch.load(path, weights_only=True)
    fig = data["figures"]
    print(f"safety critic figures: {fig}")
    assert data["format"] == FORMAT and data["action_dim"] == 2 and data["gamma"] == 0.8
    assert (
        fig["steps"] == 6 * 40 * 16 and 0.05 < fig["cost_fraction"] < 0.95 and np.isfinite(fig["final_loss"])
    )

    chain = build_chain(["critic"], {"critic": {"path": str(path), "threshold": 0.5}}, layout, env.action_dim)
    q = chain.filters[0].critic
    # Held-out random-action data: steps with a cost rank above steps without (AUC).
    env.set_filters(FilterChain())
    obs = env.reset(seed=5)
    gen = torch.Generator().manual_seed(3)
    rows, acts, costs = [], [], []
    for _ in range(60):
        out = env.step(2.0 * torch.rand(16, 2, generator=gen) - 1.0)
        rows.append(obs["policy"])
        acts.append(out.info["applied_action"])
        costs.append(out.cost)
        obs = out.obs
    o, a, c = torch.cat(rows), torch.cat(acts), torch.cat(costs)
    with torch.no_grad():
        pred = q(o, a)
        full = q(o, torch.tensor([0.0, 1.0]).expand(len(o), 2))
        brake = q(o, torch.tensor([0.0, -1.0]).expand(len(o), 2))
    auc = float((pred[c > 0][:, None] > pred[c == 0][None]).float().mean())
    print(
        f"held-out AUC {auc:.3f}, full throttle {full.mean():.2f} > brake {brake.mean():.2f} in {(full > brake).float().mean():.2f}"
    )
    assert int((c > 0).sum()) >= 20 and auc > 0.8
    assert float((full > brake).float().mean()) > 0.9

    # Full throttle for 8 s: the filter turns speeding down.
    per_step = {}
    for name, filters in (("unfiltered", FilterChain()), ("critic", chain)):
        env.set_filters(filters)
        env.reset(seed=1)
        total = 0.0
        for _ in range(80):
            total += float(env.step(torch.tensor([[0.0, 1.0]]).expand(16, 2)).cost.mean())
        per_step[name] = total / 80
    print(f"speeding cost per step at full throttle: {per_step}")
    assert per_step["unfiltered"] > 0.3 and per_step["critic"] < 0.5 * per_step["unfiltered"]
    env.close()


FILE = "<the critic file>"  # replaced by the test's file


@pytest.mark.parametrize(
    ("params", "layout", "action_dim", "match"),
    [
        ({}, LAYOUT, ACTION_DIM, "critic.path is required"),
        ({"path": "nope/missing.pt"}, LAYOUT, ACTION_DIM, "no safety-critic file"),
        ({"path": FILE}, LAYOUT, 2, "trained for 3 actions, this env has 2"),
        (
            {"path": FILE},
            [LAYOUT[0], {**LAYOUT[1], "name": "prev_action"}],
            ACTION_DIM,
            "term 1 is last_action",
        ),
        ({"path": FILE}, [LAYOUT[0], {**LAYOUT[1], "scale": 1.0}], ACTION_DIM, "another policy observation"),
        ({"path": FILE}, LAYOUT[:1], ACTION_DIM, "the file has 2 terms"),
        ({"path": FILE, "num_candidates": 0}, LAYOUT, ACTION_DIM, "num_candidates must be an integer >= 1"),
        ({"path": FILE, "threshold": float("nan")}, LAYOUT, ACTION_DIM, "threshold must be a finite number"),
        ({"path": FILE, "radius": -0.1}, LAYOUT, ACTION_DIM, "radius must be a finite number >= 0"),
    ],
)
def test_bad_params_are_one_line_filter_errors(tmp_path, params, layout, action_dim, match):
    path = _write(tmp_path / "q.pt", _known_critic())
    params = {k: str(path) if v == FILE else v for k, v in params.items()}
    with pytest.raises(FilterError, match=match) as e:
        build_chain(["critic"], {"critic": params}, layout, action_dim)
    assert "\n" not in str(e.value)


def test_a_file_of_another_format_is_refused(tmp_path):
    torch.save({"format": "embodied-checkpoint-v2"}, tmp_path / "ckpt.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    assert "critic" in FILTERS
    with pytest.raises(FilterError, match="has format 'embodied-checkpoint-v2'"):
        CriticFilter(LAYOUT, ACTION_DIM, path=str(tmp_path / "ckpt.pt"))
    with pytest.raises(FilterError, match="not a readable torch file"):
        CriticFilter(LAYOUT, ACTION_DIM, path=str(tmp_path / "junk.pt"))
