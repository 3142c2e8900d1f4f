"""Property tests of the closed-form filters on 10,000 random (observation, action) pairs each.

Each hypothesis example draws the filter's parameters and a seed for a batch of 1,000 pairs; ten
examples per property make the 10,000. box and rate: no violation, safe actions untouched. cbf on
the tasks' own barriers: where some action in the box meets every constraint the result meets them
(and, for axis-aligned barriers, is exactly the closest such action); where none does, the row is
flagged infeasible; an action that already meets them passes unchanged.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from scipy.optimize import linprog

from embodied.registry import make_env, task_config
from policies.safety import build_chain
from policies.safety.box import BoxFilter, RateFilter

BATCH = 1000
SETTINGS = settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
LAYOUT = [{"name": "speed", "dim": 1, "scale": 1.0}, {"name": "last_action", "dim": 3, "scale": 0.5}]


def _slack(b: torch.Tensor) -> torch.Tensor:
    return 1e-4 * (1.0 + b.abs())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), low=st.floats(-1.0, 0.0), width=st.floats(0.0, 1.0))
def test_box_never_leaves_its_bounds_and_keeps_safe_actions(seed, low, width):
    high = min(1.0, low + width)
    f = BoxFilter(LAYOUT, 3, low=low, high=high)
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(BATCH, 3, generator=g) * 2 - 1
    safe, hit, _ = f(torch.zeros(BATCH, 4), a)
    assert bool(((safe >= low) & (safe <= high)).all())
    inside = ((a >= low) & (a <= high)).all(-1)
    assert torch.equal(safe[inside], a[inside]) and not bool(hit[inside].any())
    assert bool(hit[~inside].all())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), delta=st.floats(0.01, 2.0))
def test_rate_never_moves_further_than_its_limit_and_keeps_safe_actions(seed, delta):
    f = RateFilter(LAYOUT, 3, max_delta=delta)
    g = torch.Generator().manual_seed(seed)
    last = torch.rand(BATCH, 3, generator=g) * 2 - 1
    obs = torch.cat([torch.zeros(BATCH, 1), 0.5 * last], 1)  # the term is scaled by 0.5
    a = torch.rand(BATCH, 3, generator=g) * 2 - 1
    safe, hit, _ = f(obs, a)
    assert bool(((safe - last).abs() <= delta + 1e-6).all())
    ok = ((a - last).abs() <= delta).all(-1)
    assert torch.equal(safe[ok], a[ok]) and not bool(hit[ok].any())


def _cbf(task: str):
    env = make_env(task, num_envs=1)
    cfg = OmegaConf.to_container(task_config(task), resolve=True)
    chain = build_chain(["cbf"], {}, env.obs_layout("policy"), env.action_dim, task=cfg)
    dim, layout = env.obs_spec["policy"].shape[0], env.obs_layout("policy")
    env.close()
    return chain.filters[0], dim, layout


def _random_obs(layout, g: torch.Generator) -> torch.Tensor:
    """Observations with every term's raw value spread over a wide range (rays within [0, 1])."""
    parts = []
    for t in layout:
        width = int(t["dim"]) * int(t.get("history", 1))
        if t["name"] == "range_rays":
            parts.append(torch.rand(BATCH, width, generator=g))
        else:
            raw = (torch.rand(BATCH, width, generator=g) * 2 - 1) * 3.0
            parts.append(raw * float(t["scale"]) * (4.0 if t["name"] == "ego_velocity" else 1.0))
    return torch.cat(parts, 1)


def _intervals(g: torch.Tensor, b: torch.Tensor):
    """Rows that each act on one action dimension: the box of actions meeting them, (lo, hi), and
    whether it is empty (a violated row no action moves counts as empty)."""
    n, _, a = g.shape
    lo, hi = -torch.ones(n, a), torch.ones(n, a)
    for j in range(a):
        gj = g[..., j]
        up = torch.where(gj < -1e-8, b / gj.where(gj < -1e-8, -1.0), torch.inf).amin(-1)  # a_j <= b / g
        dn = torch.where(gj > 1e-8, b / gj.where(gj > 1e-8, 1.0), -torch.inf).amax(-1)  # a_j >= b / g
        lo[:, j], hi[:, j] = torch.maximum(lo[:, j], dn), torch.minimum(hi[:, j], up)
    dead = (g.abs().amax(-1) <= 1e-8) & (b > 0)
    return lo, hi, dead.any(-1) | (lo > hi).any(-1)


def _axis_intervals(g: torch.Tensor, b: torch.Tensor):
    """(feasible, infeasible, lo, hi). Infeasible: not even within the filter's slack, the tolerance
    it counts a constraint as met by; rows between the two are neither."""
    lo, hi, empty = _intervals(g, b)
    _, _, empty_with_slack = _intervals(g, b - _slack(b))
    return ~empty, empty_with_slack, lo, hi


@pytest.mark.parametrize("task", ["driving_traffic", "driving_dense", "arm_pick_place"])  # dense: corridor
def test_cbf_on_axis_aligned_barriers_is_the_exact_projection_or_flags_the_row(task):
    f, _, layout = _cbf(task)

    @SETTINGS
    @given(seed=st.integers(0, 2**31 - 1))
    def check(seed):
        gen = torch.Generator().manual_seed(seed)
        obs = _random_obs(layout, gen)
        a = torch.rand(BATCH, f.box_g.shape[1], generator=gen) * 2 - 1
        safe, hit, info = f(obs, a)
        g, b, _ = f.constraints(obs)
        assert bool(((g != 0).sum(-1) <= 1).all()), "these barriers act on one action dimension each"
        feasible, infeasible, lo, hi = _axis_intervals(g, b)
        violated = ((b - (g @ safe[..., None])[..., 0]) > _slack(b)).any(-1)
        assert not bool(violated[feasible].any())  # 0 violations on feasible rows
        assert bool(info["infeasible"][infeasible].all())  # every infeasible row is flagged
        assert not bool(info["infeasible"][feasible].any())
        exact = torch.minimum(torch.maximum(a, lo), hi)
        torch.testing.assert_close(safe[feasible], exact[feasible], atol=1e-3, rtol=0)  # to the slack
        already = ((b - (g @ a[..., None])[..., 0]) <= _slack(b)).all(-1)
        assert torch.equal(safe[already], a[already]) and not bool(hit[already].any())

    check()


def test_cbf_on_coupled_barriers_meets_every_feasible_row_and_flags_the_rest():
    f, _, layout = _cbf("ant_velocity")  # every motor moves both speed rows: nothing is axis-aligned

    @SETTINGS
    @given(seed=st.integers(0, 2**31 - 1))
    def check(seed):
        gen = torch.Generator().manual_seed(seed)
        obs = _random_obs(layout, gen)
        a = torch.rand(BATCH, 8, generator=gen) * 2 - 1
        safe, hit, info = f(obs, a)
        g, b, _ = f.constraints(obs)
        violated = ((b - (g @ safe[..., None])[..., 0]) > _slack(b)).any(-1)
        assert torch.equal(violated, info["infeasible"])  # flagged exactly where a constraint is unmet
        for i in torch.nonzero(violated).flatten().tolist():  # an LP says each flagged row is infeasible
            lp = linprog(
                np.zeros(8), A_ub=-g[i].double().numpy(), b_ub=-b[i].double().numpy(), bounds=(-1, 1)
            )
            assert lp.status == 2, f"row {i} is feasible but the solver left it violated"
        already = ((b - (g @ a[..., None])[..., 0]) <= _slack(b)).all(-1)
        assert torch.equal(safe[already], a[already]) and not bool(hit[already].any())

    check()
