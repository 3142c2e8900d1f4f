"""The gait clock: gait_time counts env steps, gait_clock observes its phase, gait_contact rewards
a trot on its schedule, and the deploy runner counts the same clock in control ticks."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from embodied.errors import ConfigError
from embodied.export.observation_graph import training_signals
from embodied.registry import make_env
from embodied.terms.observations import gait_clock
from embodied.terms.rewards import feet_swing_height, gait_contact
from tests.test_obs_history import exported_pair

torch.set_num_threads(1)

CLOCK = {
    "gait_period": 0.5,
    "observations.policy.gait_clock": {},
    "rewards.gait_contact": {"weight": 1.0},
}


def _env(n: int = 2, **extra):
    over = OmegaConf.create({})
    for k, v in {**CLOCK, **extra}.items():
        OmegaConf.update(over, k, v)
    return make_env("go2_velocity", num_envs=n, nthread=1, seed=0, overrides=over)


def _state(t: float, contact, period: float = 0.5):
    return SimpleNamespace(
        gait_time=torch.tensor([[t]]), gait_period=period, foot_contact=torch.tensor([contact])
    )


def test_gait_clock_is_the_phase_of_the_period():
    for t, phase in ((0.0, 0.0), (0.125, 0.25), (0.25, 0.5), (0.6, 0.2)):
        got = gait_clock(_state(t, [True] * 4))
        want = torch.tensor([[math.sin(2 * math.pi * phase), math.cos(2 * math.pi * phase)]])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_gait_contact_pays_the_trot_schedule():
    # First half of the cycle: FL and RR stand, FR and RL swing; second half the other pair.
    early, late = [True, False, False, True], [False, True, True, False]
    assert float(gait_contact(_state(0.1, early))) == 1.0
    assert float(gait_contact(_state(0.1, late))) == 0.0
    assert float(gait_contact(_state(0.35, late))) == 1.0
    assert float(gait_contact(_state(0.1, [True] * 4))) == 0.5  # standing still matches half
    # duty 0.75: three quarters of the cycle on the ground, a quarter in the air.
    assert float(gait_contact(_state(0.3, [True] * 4), duty=0.75)) == 1.0  # phases 0.6 and 0.1
    assert float(gait_contact(_state(0.45, [True] * 4), duty=0.75)) == 0.5  # FL, RR at 0.9: swing
    assert float(gait_contact(_state(0.45, late), duty=0.75)) == 1.0


def test_swing_height_pays_clearance_of_the_scheduled_swing_feet():
    s = _state(0.1, [True, False, False, True])  # FR and RL scheduled to swing
    s.foot_pos = torch.zeros(1, 4, 3)
    s.foot_pos[0, :, 2] = torch.tensor([0.2, 0.062, 0.022, 0.2])  # stance feet lifted: not paid
    assert float(feet_swing_height(s, height=0.08)) == pytest.approx((0.5 + 0.0) / 4)
    s.foot_pos[0, 1, 2] = 0.5  # clipped at the target height
    assert float(feet_swing_height(s, height=0.08)) == pytest.approx(1.0 / 4)


def test_the_clock_counts_env_steps_and_restarts_at_reset():
    env = _env()
    env.reset()
    assert torch.equal(env.state.gait_time, torch.zeros(2, 1))
    zero = torch.zeros(2, 12)
    for _ in range(3):
        out = env.step(zero)
    torch.testing.assert_close(env.state.gait_time, torch.full((2, 1), 3 * env.dt))
    assert "log/reward/gait_contact" in out.info
    phase = 2 * math.pi * 3 * env.dt / 0.5
    block = out.obs["policy"][:, -2:]  # gait_clock is the last policy term
    torch.testing.assert_close(block, torch.tensor([[math.sin(phase), math.cos(phase)]] * 2))
    env.reset(torch.tensor([True, False]))
    assert float(env.state.gait_time[0]) == 0.0 and float(env.state.gait_time[1]) > 0.0


def test_clock_terms_without_a_period_are_one_line_errors():
    over = OmegaConf.create({"observations": {"policy": {"gait_clock": {}}}})
    with pytest.raises(ConfigError, match="gait_clock needs the task key gait_period"):
        make_env("go2_velocity", num_envs=1, nthread=1, overrides=over)
    with pytest.raises(ConfigError, match="gait_contact needs the task key gait_period"):
        gait_contact(_state(0.0, [True] * 4, period=None))
    with pytest.raises(ConfigError, match="3 offsets for 4 feet"):
        gait_contact(_state(0.0, [True] * 4), offsets=(0.0, 0.5, 0.5))
    for duty in (0.0, 1.0, 1.5):  # a duty out of (0, 1) would schedule no swing or no stance at all
        with pytest.raises(ConfigError, match=r"gait_contact.duty is the stance fraction"):
            gait_contact(_state(0.0, [True] * 4), duty=duty)


@pytest.mark.parametrize("bad", [0, -0.5, "fast", float("inf")])
def test_bad_gait_period_is_a_one_line_error(bad):
    with pytest.raises(ConfigError, match="gait_period must be a positive number of seconds"):
        _env(gait_period=bad)


def test_deploy_runner_counts_the_clock_training_saw(tmp_path: Path):
    args = ["+task.gait_period=0.5", "+task.observations.policy.gait_clock={}"]
    manifest, env, ac, graph, builder, obs = exported_pair(tmp_path / "run", *args)
    assert manifest.observation.inputs["time"] == 1
    for _ in range(6):
        x = {k: v.numpy() for k, v in training_signals(graph, env.state).items()}
        np.testing.assert_allclose(builder.time(), x["time"][0], atol=1e-6)  # the runner's own count
        x["time"] = builder.time()[None].astype(np.float32)
        np.testing.assert_allclose(builder.stack(x), obs["policy"][0].numpy(), atol=1e-5)
        with torch.no_grad():
            obs = env.step(ac.act_inference(obs)).obs
    builder.reset()
    assert float(builder.time()[0]) == 0.0
