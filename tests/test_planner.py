"""MPPI / CEM over a hand-made point-mass ensemble whose best plan is known exactly."""

import pytest
import torch

from world_models.ensemble import Ensemble
from world_models.errors import WorldModelError
from world_models.planner import Planner, PlannerConfig, elite_rollout, objective, shift
from world_models.reward_head import RewardHead, fit_reward_head

GOAL = torch.tensor([0.05, -0.03])  # reached in one step by the action (0.5, -0.3)
BEST_FIRST = torch.tensor([0.5, -0.3])
BETA = 200.0  # silu(beta z) / beta ~ relu(z): the |.| units are sharp to ~1e-3


def point_mass(members: int = 3) -> Ensemble:
    """x' = x + 0.1 a, reward -sum|x' - GOAL|, never terminates: one SiLU layer built by hand.

    silu(z) - silu(-z) = z passes the state change through exactly; silu(b z) / b + silu(-b z) / b
    ~ |z| gives the reward. Every member is the same model; normalization is the identity."""
    ens = Ensemble(2, 2, members=members, elites=members, hidden=(8,))
    w1 = torch.zeros(4, 8)
    b1 = torch.zeros(8)
    w2 = torch.zeros(8, 2 * ens.out_dim + 1)
    b2 = torch.zeros(2 * ens.out_dim + 1)
    for i in range(2):
        w1[2 + i, 2 * i], w1[2 + i, 2 * i + 1] = 0.1, -0.1  # delta_i = 0.1 a_i, passed through
        w2[2 * i, i], w2[2 * i + 1, i] = 1.0, -1.0
        z = 4 + 2 * i  # |x_i + 0.1 a_i - g_i| in two units
        w1[i, z], w1[2 + i, z], b1[z] = BETA, 0.1 * BETA, -BETA * GOAL[i]
        w1[i, z + 1], w1[2 + i, z + 1], b1[z + 1] = -BETA, -0.1 * BETA, BETA * GOAL[i]
        w2[z, 2], w2[z + 1, 2] = -1.0 / BETA, -1.0 / BETA  # reward column: S = 2
    b2[-1] = -30.0  # termination logit: never
    with torch.no_grad():
        ens.weights[0].copy_(w1.expand(members, -1, -1))
        ens.biases[0].copy_(b1.expand(members, 1, -1))
        ens.weights[1].copy_(w2.expand(members, -1, -1))
        ens.biases[1].copy_(b2.expand(members, 1, -1))
    return ens.eval()


def make(method: str, **kw) -> Planner:
    cfg = {"method": method, "horizon": 3, "samples": 256, "elites": 16, "iterations": 6, "discount": 1.0}
    return Planner(PlannerConfig(**{**cfg, **kw}), 2)


@pytest.mark.parametrize("method", ["mppi", "cem"])
def test_planner_finds_the_known_best_first_action_for_every_env(method):
    ens, start = point_mass(), torch.zeros(5, 2)
    plan = make(method).plan(ens, start, generator=torch.Generator().manual_seed(0))
    assert plan.action.shape == (5, 2) and plan.mean.shape == (5, 3, 2)
    assert torch.allclose(plan.action, BEST_FIRST.expand(5, 2), atol=0.06)
    assert plan.mean[:, 1:].abs().max() < 0.1  # then stay: the goal was reached in one step
    assert torch.allclose(plan.score, torch.zeros(5), atol=0.02)  # 0 is the best objective


def test_planner_steers_each_env_from_its_own_start():
    ens = point_mass()
    start = torch.tensor([[0.0, 0.0], [0.1, 0.0]])  # the second must move back: (-0.5, -0.3)
    plan = make("mppi").plan(ens, start, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(plan.action[1], torch.tensor([-0.5, -0.3]), atol=0.06)


def test_warm_start_shifts_the_previous_plan_by_one_step():
    prev = torch.tensor([[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]])
    assert torch.equal(shift(prev), torch.tensor([[[0.3, 0.4], [0.5, 0.6], [0.5, 0.6]]]))
    still = make("mppi", iterations=1, min_std=1e-4, max_std=1e-4)  # candidates ~ the warm mean
    plan = still.plan(point_mass(), torch.zeros(1, 2), prev, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plan.mean, shift(prev), atol=1e-3)
    with pytest.raises(WorldModelError, match="warm start"):
        still.plan(point_mass(), torch.zeros(2, 2), prev)


def test_policy_prior_candidates_are_used():
    """One iteration with a near-zero std finds nothing by sampling; the policy's candidates do."""
    ens, start = point_mass(), torch.zeros(4, 2)

    def policy(state):  # the one-step-optimal action, clamped
        return ((GOAL - state) / 0.1).clamp(-1.0, 1.0)

    blind = make("cem", iterations=1, elites=1, min_std=1e-3, max_std=1e-3, policy_fraction=0.25)
    alone = blind.plan(ens, start, generator=torch.Generator().manual_seed(0))
    assert alone.action.abs().max() < 0.01  # without a policy the prior is ignored
    guided = blind.plan(ens, start, policy=policy, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(guided.action, BEST_FIRST.expand(4, 2), atol=1e-3)


def test_elite_rollout_matches_member_by_member_prediction():
    torch.manual_seed(0)
    ens = Ensemble(3, 2, members=4, elites=3, hidden=(16, 16)).eval()
    ens.elite_idx.copy_(torch.tensor([0, 2, 3]))
    state, actions = torch.randn(2, 3), torch.rand(4, 2, 5, 2) * 2 - 1
    reward, cost, alive = elite_rollout(ens, state, actions)
    for k in range(5):
        member = int(ens.elite_idx[k % 3])
        x, run = state.clone(), torch.ones(2)
        for t in range(4):
            p = ens.predict(x, actions[t, :, k])
            assert torch.allclose(reward[t, :, k], p.reward_mean[member], atol=1e-5)
            assert torch.allclose(cost[t, :, k], p.cost_mean[member], atol=1e-5)
            assert torch.allclose(alive[t, :, k], run, atol=1e-5)
            run = run * (1 - p.terminated_prob[member])
            x = x + p.delta_mean[member]


def test_reward_fn_scores_the_predicted_transitions_instead_of_the_heads():
    """A reward of the next state whose optimum differs from the ensemble's head is what is planned for."""
    goal = torch.tensor([-0.02, 0.04])

    def reward_fn(state, action, next_state):
        assert state.shape[-1] == 2 and action.shape[-1] == 2
        return -(next_state - goal).abs().sum(-1), torch.zeros(next_state.shape[:-1])

    plan = make("mppi").plan(
        point_mass(), torch.zeros(3, 2), generator=torch.Generator().manual_seed(0), reward_fn=reward_fn
    )
    assert torch.allclose(plan.action, torch.tensor([-0.2, 0.4]).expand(3, 2), atol=0.06)


def test_reward_head_fits_a_sharp_kernel_of_the_next_state():
    torch.manual_seed(0)
    s, a = torch.rand(4000, 2) - 0.5, torch.rand(4000, 2) * 2 - 1
    ns = s + 0.1 * a
    reward = 1.0 - torch.tanh(ns.norm(dim=-1) / 0.1)  # peaked at the origin, flat elsewhere
    cost = (ns[:, 0] > 0.3).float()
    head = RewardHead(2, 2, hidden=(64, 64))
    fit_reward_head(head, s, a, ns, reward, cost, updates=1500)
    with torch.no_grad():
        at = torch.tensor([[0.0, 0.0], [0.4, 0.0]])  # the peak, and a state past the cost line
        r, c = head(at, torch.zeros(2, 2), at)
    assert r[0] > 0.6 and abs(float(r[1])) < 0.1  # on the peak, and far from it
    assert c[1] > 0.7 and abs(float(c[0])) < 0.2


def test_objective_discounts_and_weights_by_survival_and_cost():
    reward, cost = torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    alive = torch.tensor([[1.0], [0.5]])
    assert torch.allclose(objective(reward, cost, alive, 0.9), torch.tensor([1.0 + 0.9 * 0.5]))
    assert torch.allclose(objective(reward, cost, alive, 0.9, 1.0), torch.tensor([1.0 + 0.9 * 0.5 * -1.0]))


def test_bad_planner_settings_are_one_line_errors():
    with pytest.raises(WorldModelError, match="elites"):
        PlannerConfig(samples=8, elites=16)
    with pytest.raises(WorldModelError, match="unknown planner key"):
        PlannerConfig.from_mapping({"horizn": 3})
