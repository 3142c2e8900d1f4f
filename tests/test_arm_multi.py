"""arm_multi: the instruction contract, the goal's success, template errors, pads, group resets."""

from __future__ import annotations

import re

import pytest
import torch

from embodied.cli import main
from embodied.errors import ConfigError
from embodied.registry import make_env
from policies.spec import TensorSpec

torch.set_num_threads(1)

N = 6
TEXT = re.compile(r"the (\w+) (?:cube|block) .*the (\w+) (?:pad|target)")


def _env(n: int = N, **overrides):
    return make_env("arm_multi", num_envs=n, nthread=1, seed=0, overrides=overrides or None)


def _names(env, idx: torch.Tensor) -> list[tuple[str, str]]:
    """(cube colour, pad colour) parsed back from each instruction string."""
    return [TEXT.search(t).groups() for t in env.instruction_texts(idx)]


def _goal_names(env, goal: torch.Tensor) -> list[tuple[str, str]]:
    return [(env.cube_names[c], env.pad_names[p]) for c, p in goal.tolist()]


def _hold(env) -> torch.Tensor:
    return torch.zeros(env.num_envs, env.action_dim)  # ee_delta: a zero action holds the hand


@pytest.fixture(scope="module")
def env():
    e = _env()
    yield e
    e.close()


def test_spec_groups_and_instruction_contract(env):
    obs = env.reset()
    assert set(env.obs_spec) == {"policy", "proprio", "critic", "draw", "instruction"}
    assert env.obs_spec["instruction"] == TensorSpec((1,), torch.int64, "instruction")
    for g, spec in env.obs_spec.items():
        assert obs[g].shape == (N, *spec.shape) and obs[g].dtype == spec.dtype
    assert [t["name"] for t in env.obs_layout("proprio")] == [
        "joint_pos_rel",
        "joint_vel",
        "gripper_pos",
        "ee_pos",
        "last_action",
    ]
    policy = [t["name"] for t in env.obs_layout("policy")]
    critic = [t["name"] for t in env.obs_layout("critic")]
    assert critic[: len(policy)] == policy and {"pads_pos", "goal_onehot", "cubes_pos"} <= set(critic)
    # 6 train templates x 3 cubes x 3 pads, in a fixed order; the held-out split is disjoint.
    assert len(env.instructions) == 54 and len(set(env.instructions)) == 54
    held = _env(2, instructions={"split": "heldout"})
    assert len(held.instructions) == 18 and not set(held.instructions) & set(env.instructions)
    assert env.goal.shape == (N, 2) and env.goal.dtype == torch.long
    off = sum(t["dim"] for t in env.obs_layout("policy")[: policy.index("goal_onehot")])
    onehot = obs["policy"][:, off : off + 6]
    assert torch.equal(onehot[:, :3].argmax(-1), env.goal[:, 0])
    assert torch.equal(onehot[:, 3:].argmax(-1), env.goal[:, 1])


def test_instructions_name_the_goal_across_auto_resets():
    env = _env(8, episode_length_s=0.2)  # 5 steps per episode
    seen = set()
    for _ in range(12):
        out = env.step(_hold(env))
        assert _names(env, out.obs["instruction"]) == _goal_names(env, env.goal)
        seen.update(env.goal[:, 0].tolist())
    assert seen == {0, 1, 2}  # every cube gets named
    assert torch.equal(env.instruction_goals[env.instruction], env.goal)


def _place(env, cube_xy: torch.Tensor) -> None:
    """Put cube k of every env at cube_xy[:, k], resting, arm at home; then one held step."""
    qpos = env.backend.state().qpos.clone()
    qpos[:, env._cube_pos_cols[:, :2]] = cube_xy
    qpos[:, env._cube_pos_cols[:, 2]] = env.table_height + env.object_half
    qpos[:, env._cube_quat_cols] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    env.backend.reset(
        torch.ones(env.num_envs, dtype=torch.bool), qpos, torch.zeros_like(env.backend.state().qvel)
    )


def test_success_when_the_named_cube_rests_on_the_named_pad():
    env = _env(3)
    env.reset()
    env.override_goal(torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1]))
    rows = torch.arange(3)
    pads = env.pads[:, :, :2]
    far = torch.tensor([[0.1, -0.45], [0.1, 0.0], [0.1, 0.45]])  # away from every pad
    # env 0: the named cube on the named pad; env 1: another cube on the named pad; env 2: the
    # named cube on another pad.
    xy = far.expand(3, 3, 2).clone()
    xy[0, 0] = pads[0, 2]
    xy[1, 0] = pads[1, 0]
    xy[2, 2] = pads[2, 0]
    _place(env, xy)
    out = env.step(_hold(env))
    assert out.info["metric/success"].tolist() == [1.0, 0.0, 0.0]
    assert bool(
        (env.state.object_pos[:, :2] - env.state.cubes_pos[rows, env.goal[:, 0], :2]).abs().max() < 1e-6
    )


def test_swapped_instructions_and_overrides_set_words_and_goal_apart():
    env = _env(8, instructions={"swap": True})
    obs = env.reset()
    told = env.instruction_goals[obs["instruction"][:, 0]]
    assert bool((told != env.goal).any(-1).all())  # every instruction names another goal
    _place(
        env, torch.stack([env.pads[:, 0, :2], env.pads[:, 1, :2], env.pads[:, 2, :2]], 1)
    )  # cube k on pad k
    out = env.step(_hold(env))
    on_own_pad = lambda g: (g[:, 0] == g[:, 1]).float()  # noqa: E731
    assert torch.equal(out.info["metric/success"], on_own_pad(env.goal))
    assert torch.equal(out.info["metric/instruction_success"], on_own_pad(told))
    # set_instruction changes what is said, not what is measured; override_goal the other way.
    goal = env.goal.clone()
    obs = env.set_instruction(torch.zeros(8, dtype=torch.long))
    assert bool((obs["instruction"] == 0).all()) and torch.equal(env.goal, goal)
    policy = obs["policy"].clone()
    obs = env.override_goal(2, 2)
    assert bool((env.goal == 2).all()) and bool((obs["instruction"] == 0).all())
    assert not torch.equal(obs["policy"], policy)
    with pytest.raises(ValueError, match="instruction indices"):
        env.set_instruction(len(env.instructions))


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("push the {bowl} onto the {pad} pad", "unknown object {bowl}"),
        ("push the {cube} cube onto the yellow pad", "'yellow', a colour this task does not have"),
        ("push the {cube} cube onto the red pad", "'red', a fixed object"),
        ("push the {cube} cube somewhere", "does not name the goal's pad"),
    ],
)
def test_template_naming_an_unknown_object_is_a_config_error(template, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        _env(2, instructions={"train": [template]})


def test_cli_reports_an_unknown_object_on_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "task=arm_multi",
            "task.instructions.heldout=['put the {cup} on the {pad} pad']",
            f"run_dir={tmp_path / 'r'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unknown object {cup}" in err and "\n" not in err


def test_pads_are_drawn_where_they_are():
    env = _env(1, rgb={"enabled": True, "width": 64, "height": 48})
    env.reset()
    _place(env, torch.tensor([[[0.0, -0.5], [0.0, 0.0], [0.0, 0.5]]]))  # cubes out of the way
    env.pads[0] = torch.tensor([[0.5, -0.15, 0.0], [0.8, 0.4, 0.0], [0.8, -0.4, 0.0]])
    before = env.frames().clone()
    env.pads[0, 0] = torch.tensor([0.5, 0.15, 0.0])  # move the red pad across the table
    after = env.frames()
    changed = (before.int() - after.int()).abs().sum(1)[0] > 30  # (H, W)
    assert int(changed.sum()) > 10
    # Where the red pad was, the frame before is red; where it went, the frame after is.
    left, right = changed[:, :32], changed[:, 32:]
    assert int(left.sum()) > 0 and int(right.sum()) > 0
    for img, side in ((before, left), (after, right)):
        half = img[0][:, :, :32] if side is left else img[0][:, :, 32:]
        r, g, b = (half[c][side].float().mean() for c in range(3))
        assert r > g + 30 and r > b + 30


def test_group_size_resets_groups_to_identical_states():
    env = _env(6, group_size=3, randomization={"friction": [0.5, 1.5]})
    for mask in (None, torch.tensor([False, False, False, True, True, True])):
        obs = env.reset(mask)
        q = env.backend.state().qpos
        for a, b in ((0, 1), (1, 2), (3, 4), (4, 5)):
            assert torch.equal(q[a], q[b]) and torch.equal(obs["instruction"][a], obs["instruction"][b])
            assert torch.equal(env.goal[a], env.goal[b]) and torch.equal(env.pads[a], env.pads[b])
            assert env.physics.friction[a] == env.physics.friction[b]
        assert not torch.equal(q[0], q[3])
    action = torch.rand(2, env.action_dim).repeat_interleave(3, 0) * 2 - 1
    for _ in range(5):
        out = env.step(action)
    assert torch.equal(out.obs["critic"][0], out.obs["critic"][2])
    with pytest.raises(ConfigError, match="group_size"):
        _env(4, group_size=3)


def test_train_runs_on_arm_multi(tmp_path):
    code = main(
        [
            "train",
            "task=arm_multi",
            "num_envs=8",
            "algo.num_steps_per_env=4",
            "train.max_iterations=2",
            "train.evaluate=false",
            "train.export=false",
            "train.video=false",
            f"run_dir={tmp_path / 'r'}",
        ]
    )
    assert code == 0 and (tmp_path / "r" / "metrics.csv").exists()
