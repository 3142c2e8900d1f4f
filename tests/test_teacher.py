"""Teacher guidance: the scripted pick-and-place grasp, its labels, and PPO's imitation term."""

import pytest
import torch
from omegaconf import OmegaConf

from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.algorithms.teacher import TeacherConfig, parse_teacher
from embodied.errors import ConfigError
from embodied.registry import make_env, task_config
from embodied.terms.arm_teacher import scripted_pick_place
from embodied.workflow import build_algo, build_policy
from policies import ActorCritic
from policies.spec import TensorSpec
from tests.test_manipulation import _hand_state

torch.set_num_threads(1)


def test_the_scripted_grasp_alone_solves_pick_place():
    env = make_env("arm_pick_place", num_envs=32, nthread=1, seed=4)
    obs = env.reset()
    for _ in range(75):  # 3 s of an 8 s episode
        out = env.step(obs["teacher"])
        obs = out.obs
    assert float(env.state.success.float().mean()) >= 0.9
    assert not bool((out.terminated | out.truncated).any())


def test_labels_follow_the_learner_state():
    ee = torch.tensor([[0.5, 0.0, 0.03], [0.5, 0.0, 0.03], [0.5, 0.0, 0.3]])
    cube = torch.tensor([[0.5, 0.0, 0.025]]).repeat(3, 1)
    closing = torch.tensor([[0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0]])
    s = _hand_state(3, ee_pos=ee, object_pos=cube, action=closing, gripper_pos=torch.full((3, 1), 0.02))
    a = scripted_pick_place(s)
    assert a.shape == (3, 4) and bool((a.abs() <= 1).all())
    # Within the grasp radius the fingers close whatever was commanded; far above, they open.
    assert a[:, 3].tolist() == [-1.0, -1.0, 1.0]
    # Closed on the cube: carry it toward the goal (+y); far above it: go down toward it.
    assert float(a[0, 1]) > 0 and float(a[2, 2]) < 0
    # Holding only by the memory of a closing command: 3 cm away it still holds, an open one does not.
    s.ee_pos = torch.tensor([[0.5, 0.0, 0.055]]).repeat(3, 1)
    assert scripted_pick_place(s)[:2, 3].tolist() == [-1.0, 1.0]
    # Fingers still open while holding: wait in place for them to close.
    s.gripper_pos = torch.full((3, 1), 0.04)
    s.ee_pos = ee
    assert scripted_pick_place(s)[0, :3].abs().max() < 0.3


def test_coefficient_schedule_and_bad_blocks():
    t = TeacherConfig(coef=2.0, decay_iterations=10, min_coef=0.5)
    assert [t.coefficient(i) for i in (0, 5, 10, 50)] == [2.0, 1.25, 0.5, 0.5]
    assert TeacherConfig(coef=0.3).coefficient(1000) == 0.3
    assert parse_teacher(None) is None and parse_teacher({"coef": 0.0}) is None
    with pytest.raises(ConfigError, match=r"task\.teacher: unknown key"):
        parse_teacher({"weight": 1.0})
    with pytest.raises(ConfigError, match="min_coef"):
        parse_teacher({"coef": 0.5, "min_coef": 1.0})
    with pytest.raises(ConfigError, match="decay_iterations"):
        parse_teacher({"decay_iterations": -1})


def _ppo(spec):
    ac = ActorCritic(spec, 2, actor_hidden_dims=[16], critic_hidden_dims=[16])
    return PPO(
        ac, 8, PPOConfig(num_steps_per_env=4, num_learning_epochs=2, num_mini_batches=1), obs_spec=spec
    )


def test_set_teacher_checks_group_and_width():
    spec = {"policy": TensorSpec((2,)), "critic": TensorSpec((2,)), "teacher": TensorSpec((3,))}
    with pytest.raises(ConfigError, match="not an observation group"):
        _ppo(spec).set_teacher(TeacherConfig(group="expert"))
    with pytest.raises(ConfigError, match="acts with 2 dims"):
        _ppo(spec).set_teacher(TeacherConfig())


def test_imitation_term_pulls_the_mean_to_the_teacher():
    spec = {"policy": TensorSpec((2,)), "critic": TensorSpec((2,)), "teacher": TensorSpec((2,))}
    alg = _ppo(spec)
    alg.set_teacher(TeacherConfig(coef=10.0))
    target = torch.tensor([0.8, -0.6])
    gen = torch.Generator().manual_seed(0)
    errors, stats = [], {}
    for _ in range(30):
        for _ in range(4):
            obs = {"policy": torch.randn(8, 2, generator=gen), "teacher": target.expand(8, 2).clone()}
            obs["critic"] = obs["policy"]
            alg.act(obs)
            z = torch.zeros(8)
            out = type("Out", (), {"reward": z, "terminated": z.bool(), "truncated": z.bool(), "info": {}})
            alg.process_env_step(out)
        alg.compute_returns(obs)
        stats = alg.update()
        errors.append(stats["teacher/action_mse"])
    assert stats["teacher/coef"] == 10.0
    assert errors[-1] < 0.05 * errors[0]


def test_build_algo_wires_the_task_teacher():
    cfg = OmegaConf.create(
        {
            "task": task_config("arm_pick_place"),
            "policy": {"name": "mlp", "actor_hidden_dims": [16], "critic_hidden_dims": [16]},
            "algo": {"name": "ppo", "num_steps_per_env": 4},
        }
    )
    env = make_env(cfg.task, num_envs=4, nthread=1)
    alg = build_algo(cfg, env, build_policy(cfg, env))
    assert alg.teacher is not None and "teacher" in alg.storage.obs
    cfg.task.teacher = None
    assert build_algo(cfg, env, build_policy(cfg, env)).teacher is None
    cfg.task.teacher = {"coef": 1.0}
    cfg.algo = {"name": "dyna_ppo"}
    with pytest.raises(ConfigError, match="no teacher labels"):
        build_algo(cfg, env, build_policy(cfg, env))
