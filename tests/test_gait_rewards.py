"""feet_phase_time: a foot's swing or stance pays its duration up to mode_time, then nothing."""

from types import SimpleNamespace

import pytest
import torch

from embodied.terms.rewards import feet_phase_time


def _state(air, contact, command=(0.5, 0.0, 0.0), vel=(0.0, 0.0, 0.0)):
    return SimpleNamespace(
        air_time=torch.tensor([air]),
        contact_time=torch.tensor([contact]),
        command=torch.tensor([command]),
        base_lin_vel=torch.tensor([vel]),
    )


def test_moving_feet_earn_their_phase_duration_until_mode_time():
    s = _state([0.1, 0.0, 0.35, 0.0], [0.0, 0.2, 0.0, 0.3])
    # 0.1 (swing) + 0.2 (stance) + 0 (swing past 0.3) + 0 (stance at 0.3, not under it)
    assert float(feet_phase_time(s, mode_time=0.3)) == pytest.approx(0.3)


def test_per_unit_time_the_reward_peaks_at_mode_time_phases():
    def rate(phase: float, mode: float = 0.3, dt: float = 0.02) -> float:
        steps = round(phase / dt)
        paid = sum(
            float(feet_phase_time(_state([(k + 1) * dt], [0.0]), mode_time=mode)) for k in range(steps)
        )
        return paid / (steps * dt)

    assert rate(0.1) < rate(0.2) < rate(0.3) > rate(0.4) > rate(0.6)


def test_standing_feet_earn_contact_and_lose_air_time():
    stand = _state([0.0, 0.2, 0.0, 0.5], [0.4, 0.0, 0.1, 0.0], command=(0.0, 0.0, 0.0))
    assert float(feet_phase_time(stand, mode_time=0.3)) == pytest.approx(0.3 - 0.2 + 0.1 - 0.3)
    pushed = _state([0.0, 0.2, 0.0, 0.5], [0.4, 0.0, 0.1, 0.0], command=(0.0, 0.0, 0.0), vel=(0.6, 0, 0))
    assert float(feet_phase_time(pushed, mode_time=0.3)) == pytest.approx(0.2 + 0.1)  # moving: gait form


def test_a_yaw_command_alone_asks_for_a_gait():
    s = _state([0.1, 0.0, 0.0, 0.0], [0.0, 0.1, 0.1, 0.1], command=(0.0, 0.0, 0.5))
    assert float(feet_phase_time(s)) == pytest.approx(0.4)
