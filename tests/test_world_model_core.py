"""The world-model core: ensemble fitting, the Futures contract, trajectory sampling, data splits, files."""

from __future__ import annotations

import pytest
import torch

from world_models import (
    Ensemble,
    StateLayout,
    TransitionBuffer,
    Transitions,
    WorldModel,
    WorldModelError,
    imagine,
    load_world_model,
    save_world_model,
)
from world_models.train import fit

S, A = 4, 2
A_TRUE = torch.tensor(
    [[0.9, 0.1, 0.0, 0.0], [0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.9, 0.1], [0.05, 0.0, 0.0, 0.9]]
)


def linear_system(
    t: int = 200, n: int = 32, episode: int = 50, seed: int = 0
) -> tuple[Transitions, torch.Tensor]:
    """x' = A x + B u + small noise, episodes of ``episode`` steps ending in a time limit."""
    g = torch.Generator().manual_seed(seed)
    b_true = torch.randn(S, A, generator=g) * 0.3
    x = torch.randn(n, S, generator=g)
    states, actions, nexts = [], [], []
    for _ in range(t):
        a = torch.rand(n, A, generator=g) * 2 - 1
        y = x @ A_TRUE.T + a @ b_true.T + 0.01 * torch.randn(n, S, generator=g)
        states.append(x)
        actions.append(a)
        nexts.append(y)
        x = y
    st, ac, nx = torch.stack(states), torch.stack(actions), torch.stack(nexts)
    truncated = torch.zeros(t, n, dtype=torch.bool)
    truncated[episode - 1 :: episode] = True
    reward = -(nx**2).sum(-1)
    data = Transitions(st, ac, nx, reward, torch.zeros(t, n), torch.zeros_like(truncated), truncated)
    return data, b_true


@pytest.fixture(scope="module")
def fitted() -> tuple[Ensemble, TransitionBuffer, torch.Tensor]:
    torch.manual_seed(0)
    data, b_true = linear_system()
    buf = TransitionBuffer(data, val_fraction=0.2, seed=0)
    model = Ensemble(S, A, members=5, elites=3, hidden=(64, 64))
    fit(model, buf, epochs=40, generator=torch.Generator().manual_seed(0))
    return model, buf, b_true


def test_ensemble_fitted_on_a_linear_system_recovers_its_dynamics(fitted) -> None:
    model, buf, b_true = fitted
    state, action, target, _ = buf.flat("val")
    with torch.no_grad():
        pred = model.predict(state, action)
    true_delta = state @ A_TRUE.T + action @ b_true.T - state
    err = (pred.delta_mean[model.elite_idx].mean(0) - true_delta).pow(2).mean().sqrt()
    assert err < 0.05 * true_delta.std()  # held-out episodes, within 5 % of the signal
    # Aleatoric std near the true noise (0.01), not zero and not the signal's spread.
    assert 0.003 < float(pred.delta_std.mean()) < 0.05
    # Reward head learns -|x'|^2.
    r_err = (pred.reward_mean.mean(0) - target[:, S]).abs().mean()
    assert r_err < 0.1 * target[:, S].abs().mean()


def test_futures_shapes_and_dtypes_match_the_contract(fitted) -> None:
    model, buf, _ = fitted
    start = buf.flat("val")[0][:6]
    h, n, k = 5, 6, 8
    f = imagine(model, start, torch.zeros(h, n, A), horizon=h, futures=k)
    for name in ("state", "epistemic", "aleatoric"):
        assert getattr(f, name).shape == (h, n, k, S) and getattr(f, name).dtype == torch.float32
    assert f.action.shape == (h, n, k, A)
    for name in ("reward", "cost", "terminated", "alive"):
        assert getattr(f, name).shape == (h, n, k) and getattr(f, name).dtype == torch.float32
    assert f.members.shape == (n, k) and f.members.dtype == torch.long
    assert bool((f.alive[0] == 1).all()) and bool((f.terminated >= 0).all() and (f.terminated <= 1).all())
    assert set(f.members.unique().tolist()) <= set(model.elite_idx.tolist())
    assert bool((f.epistemic > 0).any())


def test_bfloat16_layers_track_the_float32_rollout_and_a_bad_precision_is_refused(fitted) -> None:
    """bfloat16 runs the ensemble's layers only (states accumulate in float32): over 10 steps of the
    planner's fast path its states stay within 2 % of the float32 rollout's change."""
    model, buf, _ = fitted
    start = buf.flat("val")[0][:16]
    acts = torch.rand(10, 16, A) * 2 - 1
    runs = {
        p: imagine(
            model, start, acts, 10, 4, spread=False, generator=torch.Generator().manual_seed(0), precision=p
        )
        for p in ("float32", "bfloat16")
    }
    full, half = runs["float32"], runs["bfloat16"]
    assert half.state.dtype == torch.float32 and torch.equal(half.members, full.members)
    change = (full.state - start[None, :, None]).abs().mean()
    assert 0 < float((half.state - full.state).abs().mean()) < 0.02 * float(change)
    with pytest.raises(WorldModelError, match="precision must be one of"):
        imagine(model, start, acts, 10, 4, precision="float16")


def test_k_futures_differ_but_are_identical_without_noise_and_member_sampling(fitted) -> None:
    model, buf, _ = fitted
    start = buf.flat("val")[0][:4]
    acts = torch.rand(10, 4, A) * 2 - 1
    spread = imagine(model, start, acts, horizon=10, futures=8)
    assert float((spread.state - spread.state[:, :, :1]).abs().amax()) > 1e-3
    same = imagine(model, start, acts, horizon=10, futures=8, noise=False, sample_members=False)
    assert torch.equal(same.state, same.state[:, :, :1].expand_as(same.state))
    assert bool((same.members == -1).all())


def test_each_future_keeps_its_member_and_fast_path_agrees(fitted) -> None:
    model, buf, _ = fitted
    start = buf.flat("val")[0][:5]
    acts = torch.rand(6, 5, A) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = imagine(model, start, acts, horizon=6, futures=6, noise=False, generator=g1)
    fast = imagine(model, start, acts, horizon=6, futures=6, noise=False, spread=False, generator=g2)
    assert torch.equal(full.members, fast.members)
    torch.testing.assert_close(full.state, fast.state, rtol=1e-4, atol=1e-5)
    # A deterministic rollout of one member by hand equals that future.
    m = int(full.members[0, 0])
    x = start[:1]
    for h in range(6):
        with torch.no_grad():
            x = x + model.predict(x, acts[h, :1]).delta_mean[m]
        torch.testing.assert_close(full.state[h, 0, 0], x[0], rtol=1e-4, atol=1e-5)


def test_actor_sees_the_predicted_states_of_every_future(fitted) -> None:
    model, buf, _ = fitted
    start = buf.flat("val")[0][:3]
    seen = []

    def actor(state: torch.Tensor) -> torch.Tensor:
        seen.append(state.shape)
        return torch.tanh(state[:, :A])

    f = imagine(model, start, actor, horizon=4, futures=5)
    assert seen == [(15, S)] * 4
    torch.testing.assert_close(f.action[1], torch.tanh(f.state[0, ..., :A]))


@pytest.mark.parametrize("h,k", [(0, 4), (4, 0), (-1, 1)])
def test_horizon_or_futures_below_one_is_refused(fitted, h: int, k: int) -> None:
    model, buf, _ = fitted
    with pytest.raises(WorldModelError, match="must be an integer >= 1"):
        imagine(model, buf.flat("val")[0][:2], torch.zeros(max(h, 1), 2, A), horizon=h, futures=k)


def test_a_state_of_another_size_is_refused(fitted) -> None:
    model, _, _ = fitted
    with pytest.raises(WorldModelError, match="takes states of size 4, got 7"):
        imagine(model, torch.zeros(2, 7), torch.zeros(3, 2, A), horizon=3, futures=2)
    with pytest.raises(WorldModelError, match="actions must be"):
        imagine(model, torch.zeros(2, S), torch.zeros(3, 2, A + 1), horizon=3, futures=2)


def test_validation_split_holds_whole_episodes_and_windows_stay_inside_one() -> None:
    data, _ = linear_system(t=100, n=8, episode=25)
    buf = TransitionBuffer(data, val_fraction=0.3, seed=1)
    ids = data.episode_ids()
    for e in ids.unique():
        rows = buf.val_mask[ids == e]
        assert bool(rows.all()) or not bool(rows.any())  # never split inside an episode
    assert bool(buf.val_mask.any()) and bool(buf.train_mask.any())
    w = buf.windows(10, "val")
    # Consecutive states chain: each window's next state is the following step's state.
    torch.testing.assert_close(w.next_state[:-1], w.state[1:])
    assert not bool(w.truncated[:-1].any())
    with pytest.raises(WorldModelError, match="no val episode has 26 consecutive steps"):
        buf.windows(26, "val")


def test_model_file_round_trips_and_bad_files_are_one_line_errors(fitted, tmp_path) -> None:
    model, _, _ = fitted
    layout = StateLayout.from_groups({"policy": [{"name": "x", "dim": S, "scale": 1.0, "clip": None}]})
    path = save_world_model(tmp_path / "model.pt", WorldModel(model, layout, "toy", 0.1, {"note": "t"}))
    back = load_world_model(path, task="toy")
    x, a = torch.randn(3, S), torch.randn(3, A)
    with torch.no_grad():
        torch.testing.assert_close(back.ensemble.predict(x, a).delta_mean, model.predict(x, a).delta_mean)
    assert back.layout == layout and back.info == {"note": "t"}
    with pytest.raises(WorldModelError, match="trained on task 'toy', not 'arm_reach'"):
        load_world_model(path, task="arm_reach")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(WorldModelError, match="is corrupt") as e:
        load_world_model(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(WorldModelError, match="no world model at"):
        load_world_model(tmp_path / "missing.pt")


def test_layout_cuts_the_policy_observation_out_of_the_state() -> None:
    policy = [
        {"name": "a", "dim": 2, "scale": 1.0, "clip": None},
        {"name": "b", "dim": 1, "scale": 0.5, "clip": None},
    ]
    critic = [*policy, {"name": "c", "dim": 3, "scale": 1.0, "clip": None}]
    draw = [{"name": "robot_qpos", "dim": 4, "scale": 1.0, "clip": None}]
    layout = StateLayout.from_groups({"critic": critic, "draw": draw})
    assert layout.dim == 10 and layout.draw_slice() == slice(6, 10)
    assert layout.index_for(policy).tolist() == [0, 1, 2]
    with pytest.raises(WorldModelError, match="term 'z' is not in the world-model state"):
        layout.index_for([{"name": "z", "dim": 1}])
    with pytest.raises(WorldModelError, match="differs"):
        layout.index_for([{"name": "b", "dim": 1, "scale": 1.0, "clip": None}])
