"""driving_dense: traffic that changes lanes and cuts in; the older driving configs keep
their traffic in lane."""

import torch

from embodied.registry import make_env


def _roll(task: str, steps: int, n: int = 16):
    env = make_env(task, num_envs=n)
    env.reset(seed=0)
    offsets, changes = [env.traffic.offset.clone()], 0
    for _ in range(steps):
        out = env.step(torch.tensor([[0.0, 0.3]]).expand(n, 2))
        changes += int(env.traffic.changes_started.sum())
        offsets.append(env.traffic.offset.clone())
        assert not bool(out.terminated.all())
    return env, torch.stack(offsets), changes


def test_old_traffic_keeps_its_lane():
    env, _, changes = _roll("driving_traffic", 40)
    assert changes == 0 and not bool(env.traffic.changing.any())
    env.close()


def test_dense_traffic_changes_lanes_and_ends_changes_in_a_lane_centre():
    env, offsets, changes = _roll("driving_dense", 60)
    moved = (offsets.amax(0) - offsets.amin(0)) > 0.5
    assert changes > 0 and bool(moved.any())
    centres = env.traffic.lane_centers
    settled = ~env.traffic.changing
    gap = (env.traffic.offset[..., None] - centres).abs().amin(-1)
    assert bool((gap[settled] < 1e-4).all())
    env.close()
