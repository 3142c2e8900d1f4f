"""PPO: learning-rate schedule, losses, checkpoints, and a tiny end-to-end learning run."""

import io
import time

import pytest
import torch

from embodied.algorithms.ppo import PPO, PPOConfig, surrogate_loss, value_loss
from embodied.checkpoint import load_module_state
from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from policies import MLP, ActorCritic, gaussian_entropy, gaussian_kl, gaussian_log_prob
from policies.spec import TensorSpec

SPEC = {"policy": TensorSpec((1,)), "critic": TensorSpec((2,))}

torch.set_num_threads(1)


class PointMass1D:
    """N points on a line; the action moves each by up to 0.1 and the reward 1 - x^2 pays for staying
    near the origin. Leaving |x| < 2 terminates; the time limit truncates."""

    obs_spec = {"policy": TensorSpec((1,)), "critic": TensorSpec((2,))}  # noqa: RUF012
    action_dim = 1
    dt = 0.1

    def __init__(self, num_envs: int, max_episode_length: int = 40, seed: int = 0):
        self.num_envs = num_envs
        self.max_episode_length = max_episode_length
        self.device = torch.device("cpu")
        self.gen = torch.Generator().manual_seed(seed)
        self.x = torch.zeros(num_envs)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.reset()

    def _obs(self) -> Obs:
        time_left = 1.0 - self.t.float() / self.max_episode_length
        return {"policy": self.x[:, None].clone(), "critic": torch.stack([self.x, time_left], -1)}

    def reset(self, mask: torch.Tensor | None = None, *, seed: int | None = None) -> Obs:
        if seed is not None:
            self.gen.manual_seed(seed)
        mask = torch.ones(self.num_envs, dtype=torch.bool) if mask is None else mask
        x0 = torch.rand(self.num_envs, generator=self.gen) * 3.0 - 1.5
        self.x = torch.where(mask, x0, self.x)
        self.t = torch.where(mask, 0, self.t)
        return self._obs()

    def step(self, action: torch.Tensor) -> StepOut:
        self.x = self.x + self.dt * action.clamp(-1.0, 1.0)[:, 0]
        self.t = self.t + 1
        reward = 1.0 - self.x.square()
        terminated = self.x.abs() > 2.0
        truncated = self.t >= self.max_episode_length
        final_obs = self._obs()
        obs = self.reset(terminated | truncated)
        return StepOut(obs, reward, torch.zeros_like(reward), terminated, truncated, {"final_obs": final_obs})

    def close(self) -> None:
        pass


def _make_ppo(num_envs: int = 8, hidden: tuple[int, ...] = (32, 32), **cfg_kwargs) -> PPO:
    ac = ActorCritic(SPEC, 1, actor_hidden_dims=hidden, critic_hidden_dims=hidden)
    return PPO(ac, num_envs=num_envs, cfg=PPOConfig(**cfg_kwargs))


def _collect(ppo: PPO, env: PointMass1D, obs: Obs) -> Obs:
    for _ in range(ppo.cfg.num_steps_per_env):
        out = env.step(ppo.act(obs))
        ppo.process_env_step(out)
        obs = out.obs
    ppo.compute_returns(obs)
    return obs


@torch.no_grad()
def _deterministic_return(ac: ActorCritic, num_envs: int = 256) -> float:
    """Mean undiscounted return of one episode per env from fixed start states, mean actions."""
    env = PointMass1D(num_envs, seed=123)
    obs, total, alive = env.reset(seed=123), torch.zeros(num_envs), torch.ones(num_envs, dtype=torch.bool)
    for _ in range(env.max_episode_length):
        out = env.step(ac.act_inference(obs))
        total += torch.where(alive, out.reward, 0.0)
        alive &= ~(out.terminated | out.truncated)
        obs = out.obs
    return total.mean().item()


def test_config_rejects_bad_field():
    with pytest.raises(ValueError, match="clip_param"):
        PPOConfig(clip_param=0.0)
    with pytest.raises(ValueError, match="schedule"):
        PPOConfig(schedule="cosine")
    with pytest.raises(ValueError, match="learning_rate"):
        PPOConfig(learning_rate="1e-3")  # what YAML makes of 1e-3 without a dot


def test_unknown_activation_names_valid_ones():
    with pytest.raises(ValueError, match="elu"):
        MLP(2, (4,), 1, activation="swishy")


def test_gaussian_helpers_match_torch_distributions():
    mu_p, mu_q, x = torch.randn(3, 4, 2)
    sp, sq = torch.rand(4, 2) + 0.1, torch.rand(4, 2) + 0.1
    p, q = torch.distributions.Normal(mu_p, sp), torch.distributions.Normal(mu_q, sq)
    torch.testing.assert_close(gaussian_log_prob(x, mu_p, sp), p.log_prob(x).sum(-1))
    torch.testing.assert_close(gaussian_entropy(sp), p.entropy().sum(-1))
    torch.testing.assert_close(
        gaussian_kl(mu_p, sp, mu_q, sq), torch.distributions.kl_divergence(p, q).sum(-1)
    )


def _rollout_ppo(**cfg_kwargs) -> PPO:
    """A PPO with one full rollout stored and returns computed, ready to update."""
    torch.manual_seed(0)
    ppo = _make_ppo(num_envs=8, num_steps_per_env=4, num_learning_epochs=1, num_mini_batches=1, **cfg_kwargs)
    env = PointMass1D(8)
    _collect(ppo, env, env.reset())
    return ppo


def test_adaptive_kl_raises_lr_when_policy_barely_moves():
    ppo = _rollout_ppo()
    stats = ppo.update()  # one minibatch, measured before its step: KL = 0 < desired / 2
    assert stats["policy/learning_rate"] == pytest.approx(1e-3 * 1.5)
    assert all(g["lr"] == pytest.approx(1.5e-3) for g in ppo.optimizer.param_groups)


def test_adaptive_kl_lowers_lr_when_policy_moves_too_far():
    ppo = _rollout_ppo()
    with torch.no_grad():
        ppo.actor_critic.actor[-1].bias += 5.0  # mean moves 5 stds: KL ~ 5^2 / 2 >> 2 * desired
    stats = ppo.update()
    # Not exactly 12.5: the normalizers also moved since the rollout was collected.
    assert stats["policy/kl"] == pytest.approx(12.5, rel=0.05)
    assert stats["policy/learning_rate"] == pytest.approx(1e-3 / 1.5)
    assert all(g["lr"] == pytest.approx(1e-3 / 1.5) for g in ppo.optimizer.param_groups)


def test_adaptive_kl_lr_stays_within_bounds_and_fixed_schedule_keeps_it():
    assert _rollout_ppo(learning_rate=1e-2).update()["policy/learning_rate"] == pytest.approx(1e-2)
    assert _rollout_ppo(schedule="fixed").update()["policy/learning_rate"] == pytest.approx(1e-3)


def test_clipped_value_loss_takes_worse_of_clipped_and_unclipped():
    values, old, returns = torch.tensor([1.0, 0.1]), torch.zeros(2), torch.ones(2)
    # Row 0 jumped 1.0 from its old value: clipped to 0.2, error (0.2 - 1)^2 = 0.64 instead of 0.
    # Row 1 moved 0.1 (inside the clip): error (0.1 - 1)^2 = 0.81 either way.
    assert value_loss(values, old, returns, 0.2, clipped=True).item() == pytest.approx((0.64 + 0.81) / 2)
    assert value_loss(values, old, returns, 0.2, clipped=False).item() == pytest.approx((0.0 + 0.81) / 2)


def test_surrogate_clips_probability_ratio():
    log_prob, old, adv = torch.tensor([0.5, -0.5]), torch.zeros(2), torch.ones(2)
    # Row 0: ratio e^0.5 = 1.6487 is clipped to 1.2 (no extra credit for moving further): -1.2.
    # Row 1: ratio e^-0.5 = 0.6065 is below 0.8, and the pessimistic max keeps it: -0.6065.
    expected = (-1.2 - 0.60653066) / 2
    assert surrogate_loss(log_prob, old, adv, 0.2).item() == pytest.approx(expected)


def test_update_returns_finite_stats_and_clears_storage():
    ppo = _rollout_ppo()
    stats = ppo.update()
    assert set(stats) == {
        "loss/value",
        "loss/surrogate",
        "loss/entropy",
        "policy/kl",
        "policy/learning_rate",
        "policy/action_std",
    }
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert ppo.storage.step == 0 and ppo.iteration == 1


def test_state_dict_round_trip_gives_identical_actions():
    ppo = _rollout_ppo()
    ppo.update()
    buffer = io.BytesIO()
    torch.save({"policy": ppo.policy.state_dict(), "algo": ppo.state_dict()}, buffer)
    buffer.seek(0)

    torch.manual_seed(99)
    restored = _make_ppo(num_envs=8, num_steps_per_env=4)
    saved = torch.load(buffer, weights_only=True)
    assert "model" not in saved["algo"]  # the policy's weights are kept apart from the algorithm's state
    load_module_state(restored.policy, saved["policy"], "saved")
    restored.load_state_dict(saved["algo"])
    obs = {"policy": torch.randn(16, 1), "critic": torch.randn(16, 2)}
    torch.testing.assert_close(restored.actor_critic.act_inference(obs), ppo.actor_critic.act_inference(obs))
    torch.manual_seed(7)
    sampled = ppo.act(obs)
    torch.manual_seed(7)
    torch.testing.assert_close(restored.act(obs), sampled)
    assert restored.learning_rate == ppo.learning_rate == restored.optimizer.param_groups[0]["lr"]
    assert restored.iteration == 1
    assert int(restored.actor_critic.actor_normalizer.count) == 32


def test_mismatched_policy_state_is_a_one_line_error():
    saved = _make_ppo(hidden=(32, 32)).policy.state_dict()
    with pytest.raises(ConfigError, match=r"actor\.0\.weight has shape \(32, 1\), expected \(64, 1\)"):
        load_module_state(_make_ppo(hidden=(64, 32)).policy, saved, "saved")
    unnormalized = ActorCritic(SPEC, 1, (32, 32), (32, 32), normalize_obs=False)
    with pytest.raises(ConfigError, match="saved does not match this policy: unexpected"):
        load_module_state(unnormalized, saved, "saved")
    with pytest.raises(ValueError, match="PPO state lacks"):
        _make_ppo().load_state_dict({"learning_rate": 1e-3})


def test_ppo_learns_to_hold_point_mass_at_origin():
    torch.manual_seed(0)
    ppo = _make_ppo(num_envs=64, num_steps_per_env=24)
    env = PointMass1D(64, seed=0)
    obs = env.reset()
    before = _deterministic_return(ppo.actor_critic)
    start = time.perf_counter()
    for _ in range(15):
        obs = _collect(ppo, env, obs)
        ppo.update()
    after = _deterministic_return(ppo.actor_critic)
    # Measured (seed 0, torch 2.13 CPU, ~1 s): before -5.5, after 37.7. Standing still earns ~10 and
    # the best possible is ~37.7, so > 33 means it learned to walk to the origin and stay there.
    assert after > 33.0, (before, after)
    assert after - before > 20.0, (before, after)
    assert time.perf_counter() - start < 20.0


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_actor_module_exports_as_one_module():
    ac = ActorCritic(SPEC, 1, actor_hidden_dims=(8,), critic_hidden_dims=(8,)).eval()
    ac.actor_normalizer.mean.fill_(0.5)  # exported graph must carry the normalizer
    x = torch.randn(4, 1)
    ac.act({"policy": x})  # a kept distribution must not get in the way of export
    actor = ac.actor_module()
    torch.testing.assert_close(torch.export.export(actor, (x,)).module()(x), ac.act_inference({"policy": x}))
    torch.testing.assert_close(torch.jit.script(actor)(x), ac.act_inference({"policy": x}))


def test_actor_critic_refuses_an_image_group():
    spec = {**SPEC, "rgb": TensorSpec((3, 8, 8), torch.uint8, "rgb")}
    with pytest.raises(ValueError, match="reads vector groups"):
        ActorCritic(spec, 1, actor_obs="rgb")
