"""The manipulation family: cost/termination terms, kinematics and IK, config errors, success, resets."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch

from embodied.cli import main
from embodied.errors import ConfigError
from embodied.registry import make_env
from embodied.tasks.manipulation import ArmState, dls_ik
from embodied.terms import manipulation
from embodied.terms.namespaces import family_terms

torch.set_num_threads(1)

TERMS = family_terms("manipulation")


def _hand_state(n: int = 2, **fields) -> ArmState:
    """A clear ArmState: arm at rest mid-range, cube on the table, nothing touching."""
    z = torch.zeros
    s = ArmState(
        num_envs=n,
        dt=0.04,
        joint_pos=z(n, 7),
        joint_vel=z(n, 7),
        default_joint_pos=z(7),
        joint_pos_limits=torch.tensor([[-0.9, 0.9]] * 7),
        joint_hard_limits=torch.tensor([[-1.0, 1.0]] * 7),
        gripper_pos=z(n, 1),
        ee_pos=torch.tensor([[0.4, 0.0, 0.3]]).repeat(n, 1),
        ee_rot=torch.eye(3).expand(n, 3, 3),
        ee_lin_vel=z(n, 3),
        jacobian=z(n, 6, 7),
        object_pos=torch.tensor([[0.5, 0.0, 0.025]]).repeat(n, 1),
        object_quat=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        object_lin_vel=z(n, 3),
        goal_pos=torch.tensor([[0.5, 0.1, 0.025]]).repeat(n, 1),
        action=z(n, 8),
        last_action=z(n, 8),
        success=torch.zeros(n, dtype=torch.bool),
        table_height=0.0,
        table_bounds=torch.tensor([[-0.2, -0.6], [0.9, 0.6]]),
        object_half_size=0.025,
        table_contact=torch.zeros(n, dtype=torch.bool),
        self_contact=torch.zeros(n, dtype=torch.bool),
        finger_contact=torch.zeros(n, 2, dtype=torch.bool),
    )
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def _env(task: str, n: int = 4, **overrides):
    return make_env(task, num_envs=n, nthread=1, seed=0, overrides=overrides or None)


# -- terms on hand-built states ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "hit"),
    [
        ("arm_table_contact", {}, {"table_contact": torch.tensor([True, False])}),
        ("arm_self_contact", {}, {"self_contact": torch.tensor([True, False])}),
        (
            "ee_speed_over_limit",
            {"max_speed": 1.0},
            {"ee_lin_vel": torch.tensor([[0.9, 0.9, 0.0], [0.5, 0, 0]])},
        ),
        (
            "joint_limit_violation",
            {"margin": 0.05},
            {"joint_pos": torch.tensor([[0, 0, 0, 0.97, 0, 0, 0], [0.9] * 7])},
        ),
    ],
)
def test_cost_is_one_on_violating_env_and_zero_on_clear_one(name, params, hit):
    fn = TERMS["costs"][name]
    assert fn(_hand_state(), **params).tolist() == [0.0, 0.0], "a clear state costs nothing"
    assert fn(_hand_state(**hit), **params).tolist() == [1.0, 0.0]


def test_cube_off_the_table_or_thrown_up_terminates():
    s = _hand_state(3, object_pos=torch.tensor([[0.5, 0.0, 0.025], [0.95, 0.0, -0.2], [0.5, 0.0, 2.0]]))
    assert TERMS["terminations"]["object_out_of_bounds"](s).tolist() == [False, True, True]


def test_goal_terms_follow_distance_and_lift():
    s = _hand_state(2, object_pos=torch.tensor([[0.5, 0.1, 0.025], [0.5, 0.1, 0.2]]))
    s.goal_pos = s.object_pos.clone()
    gated = TERMS["rewards"]["object_goal_tanh"](s, std=0.1, min_lift=0.02)
    assert gated.tolist() == [0.0, 1.0], "carrying reward is paid only while the cube is lifted"
    assert TERMS["rewards"]["object_lifted"](s, min_lift=0.02).tolist() == [0.0, 1.0]
    assert TERMS["observations"]["object_goal_error"](s).abs().max() == 0


def test_manipulation_namespace_holds_no_other_family_terms():
    for kind, table in TERMS.items():
        for name, fn in table.items():
            assert fn.__module__ != "embodied.terms.driving", f"{kind} {name} comes from driving"
    assert "feet_air_time" not in TERMS["rewards"] and "base_contact" not in TERMS["terminations"]
    assert TERMS["rewards"]["object_lifted"] is manipulation.MANIP_REWARDS["object_lifted"]


# -- kinematics and differential IK ---------------------------------------------------------------
def test_torch_kinematics_match_mujoco_on_random_poses():
    env = _env("arm_reach", 2)
    m = env.backend.model
    d = mujoco.MjData(m)
    lo, hi = env.joint_hard_limits.T
    q = lo + (hi - lo) * torch.rand(16, 7, generator=torch.Generator().manual_seed(1))
    ee, rot, jac, _ = env.kin.forward(q)
    jp, jr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
    for i in range(16):
        d.qpos[env._qpos_adr[:7].numpy()] = q[i].double().numpy()
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_jacSite(m, d, jp, jr, m.site("ee").id)
        cols = env._dof_adr[:7].numpy()
        np.testing.assert_allclose(ee[i].numpy(), d.site("ee").xpos, atol=1e-5)
        np.testing.assert_allclose(rot[i].numpy(), d.site("ee").xmat.reshape(3, 3), atol=1e-5)
        np.testing.assert_allclose(jac[i].numpy(), np.vstack([jp[:, cols], jr[:, cols]]), atol=1e-5)
    env.close()


def test_dls_step_realises_a_small_commanded_twist():
    env = _env("arm_reach", 3)
    s = env.state
    err = torch.tensor([[0.01, 0, 0, 0, 0, 0], [0, 0, -0.01, 0, 0, 0], [0, 0, 0, 0, 0, 0.02]])
    dq = dls_ik(s.jacobian, err, damping=1e-3)
    ee, rot, _, _ = env.kin.forward(s.joint_pos + dq)
    assert torch.allclose(ee - s.ee_pos, err[:, :3], atol=1e-3)
    turn = rot @ s.ee_rot.transpose(1, 2)  # world-frame rotation the step made
    assert turn[2, 1, 0] == pytest.approx(0.02, abs=2e-3) and turn[:2, 1, 0].abs().max() < 2e-3
    env.close()


def test_ee_delta_action_moves_the_end_effector_toward_the_command():
    env = _env(
        "arm_reach", 4, action_mode="ee_delta", ik={"orientation": "free"}, reset={"joint_pos_noise": 0.0}
    )
    assert env.action_dim == 6
    env.reset(seed=0)
    cmd = torch.zeros(4, 6)
    cmd[0, 0], cmd[1, 1], cmd[2, 2], cmd[3, 5] = 1.0, -1.0, 1.0, 1.0  # +x, -y, +z, yaw only
    start = env.state.ee_pos.clone()
    for _ in range(5):
        env.step(cmd)
    moved = env.state.ee_pos - start
    for i in range(3):
        direction = cmd[i, :3] / cmd[i, :3].norm()
        assert torch.dot(moved[i], direction) > 0.1, "5 steps at 3 cm/step cover most of 15 cm"
        assert torch.cosine_similarity(moved[i], direction, dim=0) > 0.97
    assert moved[3].norm() < 0.02, "a pure rotation command leaves the tool point in place"
    env.close()


def test_hold_orientation_keeps_the_hand_pointing_down_under_random_translations():
    env = _env("arm_push", 8, action_mode="ee_delta", ik={"orientation": "hold"})
    assert env.action_dim == 4, "3-D translation + gripper"
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    start = env.state.ee_pos.clone()
    for _ in range(40):
        env.step(torch.rand(8, 4, generator=g) * 2 - 1)
    home_z = env.home_ee_rot[0, :, 2]
    tilt = torch.acos((env.state.ee_rot[:, :, 2] @ home_z).clamp(-1, 1))
    assert float(tilt.max()) < 0.15, f"hand tilted {float(tilt.max()):.3f} rad from its home orientation"
    assert float((env.state.ee_pos - start).norm(dim=-1).max()) > 0.02, "the translations moved the hand"
    env.close()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ("arm_reach", {"action_mode": "cartesian"}, "unknown action_mode 'cartesian'"),
        ("arm_reach", {"objective": "stack"}, "unknown objective 'stack'"),
        ("arm_reach", {"ik": {"orientation": "tilted"}}, "unknown ik.orientation 'tilted'"),
        ("arm_reach", {"goal": {"x": [1.1, 1.3], "y": [0, 0], "z": [0.3, 0.3]}}, "goal range is unreachable"),
        ("arm_reach", {"goal": {"x": [0.4, 0.5], "y": [0, 0], "z": [-0.2, 0.3]}}, "goes below the table"),
        ("arm_pick_place", {"object": {"x": [0.4, 0.4], "y": [0.59, 0.59]}}, "leaves the table top"),
        ("arm_push", {"goal": {"x": [0.4, 0.5], "y": [0.0]}}, r"goal.y must be a range"),
    ],
)
def test_bad_config_is_a_one_line_config_error(task, overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        _env(task, 2, **overrides)
    assert "\n" not in str(e.value)


def test_cli_reports_unknown_action_mode_on_one_line(tmp_path, capsys):
    code = main(["train", "task=arm_reach", "task.action_mode=cartesian", f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: unknown action_mode 'cartesian'") and "\n" not in err


def test_only_joint_position_reach_has_an_action_affine():
    env = _env("arm_reach", 2, action_mode="joint_position")
    offset, scale = env.action_affine()
    assert offset.shape == scale.shape == (7,)
    env.close()
    env = _env("arm_push", 2, action_mode="joint_position")
    assert env.action_dim == 8
    with pytest.raises(ConfigError, match="binary"):
        env.action_affine()
    env.close()


# -- success and resets ---------------------------------------------------------------------------
def test_success_metric_is_per_env():
    env = _env("arm_reach", 3, reset={"joint_pos_noise": 0.0})
    env.reset(seed=0)
    ee = env.state.ee_pos.clone()
    env.goal_pos = ee + torch.tensor([[0.0, 0, 0], [0.02, 0, 0], [0.2, 0, 0]])
    out = env.step(torch.zeros(3, env.action_dim))  # holds the home pose
    assert out.info["metric/success"].tolist() == [1.0, 1.0, 0.0]
    assert out.info["metric/failure_rate"].tolist() == [0.0, 0.0, 1.0]
    assert out.info["metric/goal_distance"].shape == (3,)
    env.close()


def test_cube_reset_lands_on_the_table_inside_its_range():
    env = _env("arm_push", 8)
    for _ in range(10):
        out = env.step(torch.zeros(8, env.action_dim))
    s = env.state
    lo, hi = env.object_range
    assert torch.allclose(s.object_pos[:, 2], torch.full((8,), 0.025), atol=2e-3), "resting on the top"
    assert ((s.object_pos[:, :2] >= lo[:2] - 1e-3) & (s.object_pos[:, :2] <= hi[:2] + 1e-3)).all()
    assert not out.terminated.any() and not s.table_contact.any()
    far = (s.goal_pos[:, :2] - s.object_pos[:, :2]).norm(dim=-1)
    assert (far >= env.min_goal_distance - 2e-3).all(), "goals keep min_goal_distance from the spawn"
    env.close()
