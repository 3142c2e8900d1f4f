"""The BatchedEnv contract, checked on every registered task x backend."""

from __future__ import annotations

import pytest
import torch

from embodied.registry import make_env, task_names
from tests.conftest import engine_params

N = 6
# Every task on every engine; an engine not installed here shows up as skips that say why.
CASES = [p for t in task_names() for p in engine_params(t)]


def _env(task: str, engine: str, seed: int = 0, nthread: int = 2, **kw):
    return make_env(task, num_envs=N, engine=engine, nthread=nthread, seed=seed, **kw)


# One env per (task, backend) for the whole module: building one (and, for mjwarp, loading its
# kernels) costs seconds, so the tests share it and each starts from the state it needs.
@pytest.fixture(scope="module", params=[pytest.param(p.values, id=p.id, marks=p.marks) for p in CASES])
def env(request):
    e = _env(*request.param)
    yield e
    e.close()


def _random_actions(env, steps: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, env.num_envs, env.action_dim, generator=g) * 2 - 1


def test_shapes_dtypes_device_and_finite(env):
    obs = env.reset()
    assert set(env.obs_spec) >= {"policy", "critic"}
    for g, spec in env.obs_spec.items():
        assert obs[g].shape == (N, *spec.shape) and obs[g].dtype == spec.dtype and obs[g].device == env.device
    for a in _random_actions(env, 30):
        out = env.step(a)
        for g, spec in env.obs_spec.items():
            assert out.obs[g].shape == (N, *spec.shape) and out.obs[g].dtype == spec.dtype
            assert out.info["final_obs"][g].shape == (N, *spec.shape)
            if spec.dtype.is_floating_point:
                assert torch.isfinite(out.obs[g]).all()
        for t in (out.reward, out.cost):
            assert t.shape == (N,) and t.dtype == torch.float32 and torch.isfinite(t).all()
        assert out.terminated.dtype == torch.bool and out.truncated.dtype == torch.bool
        assert not (out.terminated & out.truncated).any(), "an episode ends one way, not both"
        assert all(
            k.startswith(("log/", "metric/", "safety/", "final_obs", "applied_action")) for k in out.info
        )
        if "applied_action" in out.info:  # what reached the actuators: sanitized and filtered
            assert out.info["applied_action"].shape == (N, env.action_dim)


def test_every_reward_term_is_logged(env):
    out = env.step(torch.zeros(N, env.action_dim))
    for t in env.rewards:
        assert f"log/reward/{t.name}" in out.info
    for t in env.terminations:
        assert f"log/termination/{t.name}" in out.info
    assert "log/sim/unstable_resets" in out.info and "log/sim/nan_actions" in out.info


def test_each_cost_term_is_reported_per_env_and_sums_to_the_cost(env):
    out = env.step(torch.zeros(N, env.action_dim))
    per_term = [out.info[f"metric/cost/{t.name}"] for t in env.costs]
    assert all(v.shape == (N,) for v in per_term)
    total = torch.stack(per_term).sum(0) if per_term else torch.zeros(N)
    assert torch.allclose(total, out.cost)


def test_time_limit_truncates_exactly_at_the_last_step_and_auto_resets_with_final_obs(env):
    env.reset()
    env.episode_length[:] = env.max_episode_length - 3  # three control steps left
    for k in (1, 2, 3):
        out = env.step(torch.zeros(N, env.action_dim))
        assert not out.terminated.any(), f"step {k}: standing still from a reset ends no episode"
        assert out.truncated.tolist() == [k == 3] * N, f"step {k}: only the last step truncates"
        if k < 3:
            assert (env.episode_length == env.max_episode_length - 3 + k).all()
    assert (env.episode_length == 0).all(), "done envs restart their episode"
    # final_obs is the last observation of the old episode, obs the first of the new one
    assert not torch.equal(out.info["final_obs"]["policy"], out.obs["policy"])


def test_fall_is_terminated_not_truncated(env):
    env.reset()
    st = env.backend.state()
    qpos, qvel = st.qpos.clone(), st.qvel.clone()
    qpos[0, 3:7] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # upside down
    qpos[0, 2] = 2.0  # and high in the air: every task calls this a failure
    mask = torch.zeros(N, dtype=torch.bool)
    mask[0] = True
    env.backend.reset(mask, qpos, qvel)
    env.episode_length[:] = env.max_episode_length - 1  # would also time out this step
    out = env.step(torch.zeros(N, env.action_dim))
    assert out.terminated.tolist() == [True] + [False] * (N - 1), "only the flipped env fell"
    assert out.truncated.tolist() == [False] + [True] * (N - 1), "a fall is not also a timeout"


def test_masked_reset_touches_only_masked_envs(env):
    env.reset()
    for a in _random_actions(env, 5):
        env.step(a)
    before = env.backend.state().qpos.clone()
    mask = torch.zeros(N, dtype=torch.bool)
    mask[::2] = True
    env.reset(mask)
    after = env.backend.state().qpos
    assert torch.equal(after[~mask], before[~mask])
    assert not torch.equal(after[mask], before[mask])
    assert (env.episode_length[mask] == 0).all()


def _rollout(task: str, engine: str, seed: int, nthread: int) -> list[torch.Tensor]:
    env = _env(task, engine, seed=seed, nthread=nthread)
    obs = [env.reset()["policy"].clone()]
    for a in _random_actions(env, 40, seed=seed):
        out = env.step(a)
        obs += [out.obs["policy"].clone(), out.reward.clone()]
    env.close()
    return obs


@pytest.mark.parametrize(("task", "engine"), CASES)
def test_same_seed_gives_bitwise_identical_rollouts(task, engine):
    a = _rollout(task, engine, seed=3, nthread=2)
    b = _rollout(task, engine, seed=3, nthread=2)
    c = _rollout(task, engine, seed=3, nthread=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a, c, strict=True)), "thread count must not change results"
    d = _rollout(task, engine, seed=4, nthread=2)
    assert not all(torch.equal(x, y) for x, y in zip(a, d, strict=True))


def test_blown_up_physics_is_reset_and_counted(env):
    env.reset()
    total_before = int(env.unstable_total)
    st = env.backend.state()
    qpos, qvel = st.qpos.clone(), st.qvel.clone()
    qvel[1] = float("nan")
    qvel[2] = 1e12
    mask = torch.zeros(N, dtype=torch.bool)
    mask[1:3] = True
    env.backend.reset(mask, qpos, qvel)
    out = env.step(torch.zeros(N, env.action_dim))
    assert out.info["log/sim/unstable_resets"].item() == 2
    assert out.terminated[1] and out.terminated[2]
    assert torch.isfinite(out.obs["policy"]).all() and torch.isfinite(out.reward).all()
    assert int(env.unstable_total) - total_before == 2
    assert (env.episode_length[1:3] == 0).all()
    out = env.step(torch.zeros(N, env.action_dim))
    assert out.info["log/sim/unstable_resets"].item() == 0


def test_nan_action_is_zeroed_and_counted(env):
    env.reset()
    total_before = int(env.nan_action_total)
    a = torch.zeros(N, env.action_dim)
    a[0, 0] = float("nan")
    a[3, :] = float("inf")
    out = env.step(a)
    assert out.info["log/sim/nan_actions"].item() == 2
    assert torch.isfinite(out.obs["policy"]).all()
    assert int(env.nan_action_total) - total_before == 2


def test_wrong_action_shape_is_refused(env):
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(torch.zeros(N + 1, env.action_dim))
