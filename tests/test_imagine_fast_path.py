"""The planner's fast path (``spread=False``) gives the same futures as the all-member path."""

from __future__ import annotations

import pytest
import torch

from world_models import Ensemble, imagine
from world_models.imagine import state_actor


class TanhPolicy(torch.nn.Module):
    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(obs_dim, act_dim)

    def act_inference(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tanh(self.layer(obs["policy"]))


@pytest.fixture
def ensemble() -> Ensemble:
    torch.manual_seed(0)
    ens = Ensemble(6, 3, members=7, elites=5, hidden=(32, 32), linear_skip=True).eval()
    with torch.no_grad():
        ens.skip.normal_(0.0, 0.1)
    return ens


def order_dependent(x: torch.Tensor) -> torch.Tensor:
    """An actor whose action depends on the row's position: it must see the particles in order."""
    rank = torch.arange(x.shape[0], dtype=x.dtype)[:, None] / x.shape[0]
    return torch.tanh(x[:, :3] + rank)


@pytest.mark.parametrize("actor", ["rowwise contiguous", "rowwise gathered", "order dependent", "actions"])
def test_fast_path_matches_the_all_member_path(ensemble, actor) -> None:
    start = torch.randn(13, 6)
    plan = {
        "rowwise contiguous": state_actor(TanhPolicy(4, 3), torch.arange(1, 5)),
        "rowwise gathered": state_actor(TanhPolicy(4, 3), torch.tensor([0, 2, 3, 5])),
        "order dependent": order_dependent,
        "actions": torch.rand(9, 13, 8, 3) * 2 - 1,
    }[actor]
    runs = [
        imagine(
            ensemble, start, plan, 9, 8, noise=False, spread=s, generator=torch.Generator().manual_seed(3)
        )
        for s in (False, True)
    ]
    fast, full = runs
    assert torch.equal(fast.members, full.members)
    for name in ("state", "action", "reward", "cost", "aleatoric"):
        assert torch.allclose(getattr(fast, name), getattr(full, name), atol=1e-6), name
    assert torch.allclose(fast.terminated, full.terminated, atol=1e-6)
    assert bool((fast.epistemic == 0).all()) and bool((full.epistemic > 0).any())


def test_state_actor_is_marked_rowwise_only_without_extra_inputs() -> None:
    policy = TanhPolicy(2, 3)
    assert state_actor(policy, torch.arange(2)).rowwise
    assert not state_actor(policy, torch.arange(2), extra={"rgb": torch.zeros(1)}).rowwise


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_block_step_matches_each_members_prediction(ensemble, dtype) -> None:
    from world_models.fast_path import BlockStep

    used, width = torch.tensor([1, 4, 6]), 5
    with torch.no_grad():  # fitted-looking statistics, so the folded scales and shifts matter
        ensemble.in_mean.normal_()
        ensemble.in_std.uniform_(0.5, 2.0)
        ensemble.out_mean.normal_()
        ensemble.out_std.uniform_(0.5, 2.0)
    x, a = torch.randn(len(used) * width, 6), torch.rand(len(used) * width, 3) * 2 - 1
    step = BlockStep(ensemble, used, width, dtype)
    step(x, a)
    # every member predicts; member used[i] is given block i's rows, the others zeros
    expected = ensemble.predict(
        torch.zeros(7, width, 6).index_copy(0, used, x.view(len(used), width, 6)),
        torch.zeros(7, width, 3).index_copy(0, used, a.view(len(used), width, 3)),
    )
    tol = dict(atol=1e-5, rtol=1e-5) if dtype is None else dict(atol=0.05, rtol=0.05)
    got = {
        "delta": step.delta.view(len(used), width, 6),
        "std": step.std.view(len(used), width, 6),
        "reward": step.extra[:, 0].view(len(used), width),
        "cost": step.extra[:, 1].view(len(used), width),
        "terminated": torch.sigmoid(step.extra[:, 2]).view(len(used), width),
    }
    want = {
        "delta": expected.delta_mean[used],
        "std": expected.delta_std[used],
        "reward": expected.reward_mean[used],
        "cost": expected.cost_mean[used],
        "terminated": expected.terminated_prob[used],
    }
    for name in got:
        assert torch.allclose(got[name], want[name], **tol), name


def test_fast_path_noise_is_reproducible_and_bfloat16_stays_close(ensemble) -> None:
    start = torch.randn(11, 6)
    actor = state_actor(TanhPolicy(4, 3), torch.arange(1, 5))

    def run(precision: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        return imagine(ensemble, start, actor, 12, 8, spread=False, generator=gen, precision=precision).state

    first, again, low = run("float32"), run("float32"), run("bfloat16")
    assert torch.equal(first, again)
    change = (first - start[None, :, None]).abs().mean()
    assert float((low - first).abs().mean() / change) < 0.02
