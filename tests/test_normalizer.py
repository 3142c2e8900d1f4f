"""EmpiricalNormalizer: exact running statistics, freezing, and eval mode."""

import torch

from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.env import StepOut
from policies import ActorCritic, EmpiricalNormalizer
from policies.spec import TensorSpec

torch.set_num_threads(1)
SPEC = {"policy": TensorSpec((2,)), "critic": TensorSpec((3,))}


def _batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [7, 1, 64, 3]
    return [torch.randn(n, 3, generator=g) * torch.tensor([1.0, 5.0, 0.1]) + 2.0 for n in sizes]


def test_running_stats_match_concatenated_batches():
    norm = EmpiricalNormalizer(3)
    batches = _batches()
    for b in batches:
        norm.update(b)
    data = torch.cat(batches)
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, correction=0))
    torch.testing.assert_close(norm.std, data.var(0, correction=0).sqrt())
    assert int(norm.count) == data.shape[0]
    x = torch.randn(5, 3)
    torch.testing.assert_close(norm(x), (x - data.mean(0)) / (data.std(0, correction=0) + 1e-2))


def test_stats_are_buffers_in_state_dict():
    assert {"mean", "var", "std", "count"} <= set(EmpiricalNormalizer(3).state_dict())


def test_until_freezes_updates():
    norm = EmpiricalNormalizer(3, until=8)
    b0, b1, b2, _ = _batches()
    norm.update(b0)  # count 7 < 8: updates
    norm.update(b1)  # count 8 after this one
    frozen = norm.state_dict()
    frozen = {k: v.clone() for k, v in frozen.items()}
    norm.update(b2)
    for k, v in norm.state_dict().items():
        torch.testing.assert_close(v, frozen[k])
    torch.testing.assert_close(norm.mean, torch.cat([b0, b1]).mean(0))


def test_eval_mode_does_not_update():
    norm = EmpiricalNormalizer(3)
    norm.eval()
    norm.update(_batches()[2])
    assert int(norm.count) == 0
    torch.testing.assert_close(norm.mean, torch.zeros(3))
    torch.testing.assert_close(norm.std, torch.ones(3))


def test_process_env_step_updates_normalizers_with_acted_obs():
    ac = ActorCritic(SPEC, 1, actor_hidden_dims=(8,), critic_hidden_dims=(8,))
    ppo = PPO(ac, num_envs=5, cfg=PPOConfig(num_steps_per_env=2))
    policy_obs, critic_obs = torch.randn(5, 2) + 3.0, torch.randn(5, 3) - 1.0
    ppo.act({"policy": policy_obs, "critic": critic_obs})
    out = StepOut(
        obs={"policy": torch.zeros(5, 2), "critic": torch.zeros(5, 3)},
        reward=torch.zeros(5),
        cost=torch.zeros(5),
        terminated=torch.zeros(5, dtype=torch.bool),
        truncated=torch.zeros(5, dtype=torch.bool),
        info={"final_obs": {"policy": torch.zeros(5, 2), "critic": torch.zeros(5, 3)}},
    )
    ppo.process_env_step(out)
    torch.testing.assert_close(ac.actor_normalizer.mean, policy_obs.mean(0))
    torch.testing.assert_close(ac.critic_normalizer.mean, critic_obs.mean(0))
