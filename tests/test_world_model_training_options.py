"""The ensemble's linear skip path, the multi-step (rollout) loss and training-input noise."""

from __future__ import annotations

import pytest
import torch

from tests.test_world_model_core import A_TRUE, A, S, linear_system
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


def test_a_linear_skip_starts_at_zero_and_learns_a_linear_system_with_no_hidden_layer_help() -> None:
    """With the MLP's weights frozen at zero the skip path alone must fit x' = A x + B u."""
    torch.manual_seed(0)
    data, b_true = linear_system()
    buf = TransitionBuffer(data, val_fraction=0.2, seed=0)
    model = Ensemble(S, A, members=3, elites=2, hidden=(16,), linear_skip=True)
    plain = Ensemble(S, A, members=3, elites=2, hidden=(16,))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "skip"})
    x = torch.randn(3, 5, S + A)
    assert torch.equal(model(x)[0], plain(x)[0])  # the skip starts at zero: the plain MLP
    with torch.no_grad():
        model.weights[-1].zero_()  # the MLP's mean output is then its bias only
    model.weights[-1].requires_grad_(False)
    fit(model, buf, epochs=60, lr=1e-2, generator=torch.Generator().manual_seed(0))
    state, action, _, _ = buf.flat("val")
    with torch.no_grad():
        pred = model.predict(state, action).delta_mean[model.elite_idx].mean(0)
    true = state @ A_TRUE.T + action @ b_true.T - state
    assert float((pred - true).pow(2).mean().sqrt()) < 0.05 * float(true.std())


def test_a_linear_skip_model_saves_and_reloads_with_the_same_predictions(tmp_path) -> None:
    model = Ensemble(S, A, members=2, elites=2, hidden=(8,), linear_skip=True)
    with torch.no_grad():
        model.skip.normal_()
    layout = StateLayout.from_groups({"critic": [{"name": "x", "dim": S}]})
    path = save_world_model(tmp_path / "m.pt", WorldModel(model, layout, "toy", 0.02))
    back = load_world_model(path).ensemble
    assert back.linear_skip and back.config() == model.config()
    s, a = torch.randn(7, S), torch.randn(7, A)
    assert torch.equal(back.predict(s, a).delta_mean, model.predict(s, a).delta_mean)


def test_the_rollout_loss_of_one_step_is_the_one_step_loss() -> None:
    torch.manual_seed(0)
    data, _ = linear_system(t=60, n=8)
    model = Ensemble(S, A, members=3, elites=2, hidden=(16,))
    buf = TransitionBuffer(data, val_fraction=0.0)
    state, action, target, _ = buf.flat("train")
    model.set_normalization(torch.cat([state, action], -1), target)
    w = buf.gather(buf.window_starts(1, "train")[:20], 1)
    expand = [f[:, None].expand(-1, 3, *f.shape[1:]) for f in (w.state, w.action, w.next_state)]
    one = [f[:, None].expand(-1, 3, -1) for f in (w.reward, w.cost, w.terminated)]
    multi, _ = model.rollout_loss(*expand, one[0], one[1], one[2])
    x = model.normalize_input(w.state[0], w.action[0]).expand(3, -1, -1)
    y = model.normalize_target(
        torch.cat([w.next_state[0] - w.state[0], w.reward[0][:, None], w.cost[0][:, None]], -1)
    )
    single, _ = model.loss(x, y.expand(3, -1, -1), w.terminated[0].expand(3, -1))
    assert torch.allclose(multi, single, rtol=1e-6, atol=1e-6)


def test_the_rollout_loss_fits_a_linear_system_and_rolls_it_out_accurately() -> None:
    """Trained on 5-step windows, the 20-step open-loop rollout stays close to the true system."""
    torch.manual_seed(0)
    data, _ = linear_system()
    buf = TransitionBuffer(data, val_fraction=0.2, seed=0)
    model = Ensemble(S, A, members=3, elites=2, hidden=(64, 64), linear_skip=True)
    result = fit(
        model, buf, epochs=30, batch_size=64, rollout_steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert result.updates > 0 and all(v == v for v in result.val_mse)
    win = buf.windows(20, "val", max_windows=64)
    fut = imagine(model, win.state[0], win.action, 20, 1, noise=False, sample_members=False)
    err = (fut.state[-1, :, 0] - win.next_state[-1]).pow(2).mean().sqrt()
    assert float(err) < 0.1 * float(win.next_state[-1].std())


@pytest.mark.parametrize("steps", [0, -2, 1.5])
def test_a_bad_rollout_length_is_refused(steps) -> None:
    data, _ = linear_system(t=20, n=4, episode=10)
    with pytest.raises(WorldModelError, match="rollout_steps must be an integer >= 1"):
        fit(
            Ensemble(S, A, members=2, elites=1, hidden=(8,)), TransitionBuffer(data, 0.0), rollout_steps=steps
        )


def test_windows_longer_than_every_episode_are_refused() -> None:
    data, _ = linear_system(t=40, n=4, episode=10)
    with pytest.raises(WorldModelError, match="no train episode has 12 consecutive steps"):
        fit(Ensemble(S, A, members=2, elites=1, hidden=(8,)), TransitionBuffer(data, 0.0), rollout_steps=12)


def test_imagined_states_stay_inside_the_fitted_state_bounds(tmp_path) -> None:
    """A model whose every step pushes the state up is held at the training range's edge (+5 %)."""
    torch.manual_seed(0)
    data, _ = linear_system(t=60, n=8)
    buf = TransitionBuffer(data, val_fraction=0.0)
    model = Ensemble(S, A, members=2, elites=2, hidden=(8,))
    state, action, target, _ = buf.flat("train")
    model.set_normalization(torch.cat([state, action], -1), target)
    lo, hi = state.min(0).values, state.max(0).values
    assert torch.allclose(model.state_hi, hi + 0.05 * (hi - lo))
    with torch.no_grad():
        model.biases[-1][..., :S] = 50.0  # a large positive change every step
    fut = imagine(model, state[:4], torch.zeros(30, 4, A), 30, 3, noise=False)
    assert bool((fut.state <= model.state_hi).all()) and torch.allclose(
        fut.state[-1], model.state_hi.expand(4, 3, S)
    )
    # A file written before the bounds existed loads, unbounded, as it was written.
    layout = StateLayout.from_groups({"critic": [{"name": "x", "dim": S}]})
    path = save_world_model(tmp_path / "old.pt", WorldModel(model, layout, "toy", 0.02))
    payload = torch.load(path, weights_only=True)
    for key in ("state_lo", "state_hi"):
        del payload["state"][key]
    torch.save(payload, path)
    old = load_world_model(path).ensemble
    assert bool(torch.isinf(old.state_hi).all())
    assert bool(
        (imagine(old, state[:4], torch.zeros(30, 4, A), 30, 3, noise=False).state > model.state_hi).any()
    )


def test_a_non_boolean_linear_skip_is_refused() -> None:
    with pytest.raises(WorldModelError, match="linear_skip must be true or false"):
        Ensemble(S, A, linear_skip="yes")


def on_a_line(t: int = 100, n: int = 16, seed: int = 0) -> Transitions:
    """x1' = x1 + 0.1 u and x2' = x1': the data never leaves the line x2 = x1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g).expand(n, 2).clone()
    states, actions, nexts = [], [], []
    for _ in range(t):
        a = torch.rand(n, 1, generator=g) * 2 - 1
        y = (x[:, :1] + 0.1 * a).expand(n, 2).clone()
        states.append(x)
        actions.append(a)
        nexts.append(y)
        x = y
    truncated = torch.zeros(t, n, dtype=torch.bool)
    truncated[49::50] = True
    st, nx = torch.stack(states), torch.stack(nexts)
    return Transitions(
        st, torch.stack(actions), nx, torch.zeros(t, n), torch.zeros(t, n), truncated & False, truncated
    )


def pulled_back(noise: float, steps: int) -> float:
    """How far a state two one-step changes off the line stays off it after one predicted step (1: all)."""
    torch.manual_seed(0)
    buf = TransitionBuffer(on_a_line(), val_fraction=0.2, seed=0)
    model = Ensemble(2, 1, members=3, elites=2, hidden=(16, 16))
    gen = torch.Generator().manual_seed(0)
    fit(
        model,
        buf,
        epochs=80,
        batch_size=32,
        lr=1e-2,
        patience=80,
        rollout_steps=steps,
        input_noise=noise,
        generator=gen,
    )
    off = 2.0 * float(model.out_std[1])
    state = torch.tensor([[0.0, off], [0.0, -off]])
    with torch.no_grad():
        nxt = state + model.predict(state, torch.zeros(2, 1)).delta_mean[model.elite_idx].mean(0)
    return float(nxt[:, 1].abs().max()) / off


@pytest.mark.parametrize("steps", [1, 3])
def test_input_noise_teaches_the_model_to_pull_an_off_line_state_back(steps) -> None:
    # With both coordinates noisy, the best guess of x1 is their mean: half the offset remains.
    assert pulled_back(4.0, steps) < 0.7


def test_without_input_noise_an_off_line_state_stays_off() -> None:
    assert pulled_back(0.0, 1) > 0.9


def test_bad_input_noise_or_share_is_refused() -> None:
    buf = TransitionBuffer(on_a_line(t=60, n=4), val_fraction=0.0)
    for bad in (-1.0, True, float("nan"), "0.1"):
        with pytest.raises(WorldModelError, match="input_noise must be a number >= 0"):
            fit(Ensemble(2, 1, members=2, elites=1, hidden=(8,)), buf, epochs=1, input_noise=bad)
    for bad in (-0.1, 1.5, False, float("nan")):
        with pytest.raises(WorldModelError, match=r"noise_share must be a number in \[0, 1\]"):
            fit(
                Ensemble(2, 1, members=2, elites=1, hidden=(8,)),
                buf,
                epochs=1,
                input_noise=1.0,
                noise_share=bad,
            )


def fitted_weights(epochs: int, **kw) -> list[torch.Tensor]:
    buf = TransitionBuffer(on_a_line(t=60, n=4), val_fraction=0.0)
    torch.manual_seed(0)
    model = Ensemble(2, 1, members=2, elites=1, hidden=(8,))
    fit(model, buf, epochs=epochs, patience=epochs, lr=1e-2, generator=torch.Generator().manual_seed(0), **kw)
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_lr_end_decays_the_learning_rate_after_the_first_epoch_only() -> None:
    assert same(fitted_weights(1), fitted_weights(1, lr_end=0.0))  # epoch 1 runs at the full rate
    assert not same(fitted_weights(3), fitted_weights(3, lr_end=0.0))
    assert same(fitted_weights(3), fitted_weights(3, lr_end=1e-2))  # decaying to lr is no decay


def test_a_bad_lr_end_is_refused() -> None:
    buf = TransitionBuffer(on_a_line(t=60, n=4), val_fraction=0.0)
    for bad in (-1e-4, True, float("nan"), "0.1"):
        with pytest.raises(WorldModelError, match="lr_end must be null or a number >= 0"):
            fit(Ensemble(2, 1, members=2, elites=1, hidden=(8,)), buf, epochs=1, lr_end=bad)
