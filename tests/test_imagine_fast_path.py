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
