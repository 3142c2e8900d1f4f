"""The driving family: cost/termination/reward terms, Ackermann geometry, rays vs MuJoCo, routes, traffic."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest
import torch

from embodied.cli import main
from embodied.errors import ConfigError
from embodied.registry import make_env
from embodied.tasks.driving import DriveState, ackermann_angles, rear_wheel_speeds
from embodied.terms import driving
from embodied.terms.driving import ray_angles, ray_box_hits
from embodied.terms.namespaces import family_terms

torch.set_num_threads(1)

TERMS = family_terms("driving")


def _hand_state(n: int = 2, **fields) -> DriveState:
    """A clear DriveState: the car at 5 m/s under a 10 m/s limit, centred in its lane, touching nothing."""
    z = torch.zeros
    route = torch.stack([torch.arange(10.0) * 4, z(10)], -1).expand(n, -1, -1)
    s = DriveState(
        num_envs=n,
        dt=0.1,
        ego_pos=z(n, 3),
        ego_quat=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        ego_yaw=z(n),
        ego_vel=torch.tensor([[5.0, 0, 0]]).repeat(n, 1),
        yaw_rate=z(n),
        up_z=torch.ones(n),
        steer=z(n),
        action=z(n, 2),
        last_action=z(n, 2),
        route=route,
        route_cum=route[..., 0].clone(),
        route_arc=z(n),
        route_segment=torch.zeros(n, dtype=torch.long),
        lane_offset=z(n),
        heading_error=z(n),
        road_offset=torch.full((n,), -1.75),
        road_half_width=3.5,
        progress=torch.full((n,), 0.01),
        route_completion=torch.full((n,), 0.5),
        speed_limit=torch.full((n,), 10.0),
        off_road=torch.zeros(n, dtype=torch.bool),
        collision=torch.zeros(n, dtype=torch.bool),
        ray_origin=z(n, 3),
        box_center=torch.full((n, 1, 2), 100.0),
        box_yaw=z(n, 1),
        box_half=torch.tensor([[1.0, 0.5]]),
        box_vel=z(n, 1, 2),
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
        ("collision", {}, {"collision": torch.tensor([True, False])}),
        ("lane_departure", {"max_offset": 1.0}, {"lane_offset": torch.tensor([-1.2, 0.9])}),
        ("speed_over_limit", {"tolerance": 0.0}, {"ego_vel": torch.tensor([[10.5, 0, 0], [9.9, 0, 0]])}),
    ],
)
def test_cost_is_one_on_violating_env_and_zero_on_clear_one(name, params, hit):
    fn = TERMS["costs"][name]
    assert fn(_hand_state(), **params).tolist() == [0.0, 0.0], "a clear state costs nothing"
    assert fn(_hand_state(**hit), **params).tolist() == [1.0, 0.0]


def test_speed_limit_is_per_env():
    s = _hand_state(ego_vel=torch.tensor([[8.0, 0, 0], [8.0, 0, 0]]), speed_limit=torch.tensor([7.0, 9.0]))
    assert TERMS["costs"]["speed_over_limit"](s).tolist() == [1.0, 0.0]
    assert TERMS["costs"]["speed_over_limit"](s, tolerance=0.2).tolist() == [0.0, 0.0]


def test_collision_leaving_the_road_and_flipping_terminate():
    t = TERMS["terminations"]
    s = _hand_state(
        3,
        collision=torch.tensor([True, False, False]),
        off_road=torch.tensor([False, True, False]),
        up_z=torch.tensor([1.0, 1.0, -1.0]),
    )
    assert t["collided"](s).tolist() == [True, False, False]
    assert t["off_road"](s).tolist() == [False, True, False]
    assert t["flipped"](s, max_tilt=1.0).tolist() == [False, False, True]
    assert not any(t[k](_hand_state()).any() for k in ("collided", "off_road", "flipped"))


def test_reward_is_progress_scaled_by_soft_infractions():
    r = TERMS["rewards"]["route_progress"]
    clean = _hand_state(4)
    assert torch.allclose(r(clean), torch.full((4,), 0.1)), "0.01 of the route in a 0.1 s step"
    assert r(_hand_state(progress=torch.zeros(2))).tolist() == [0.0, 0.0], "no progress, no reward"
    s = _hand_state(
        4,
        lane_offset=torch.tensor([0.0, 1.5, 0.0, -1.5]),
        ego_vel=torch.tensor([[10.0, 0, 0], [10.0, 0, 0], [11.0, 0, 0], [13.0, 0, 0]]),
    )
    got = r(s, lane_penalty=0.5, max_offset=1.0, speeding_gain=5.0) * s.dt / s.progress
    assert torch.allclose(got, torch.tensor([1.0, 0.5, 0.5, 0.0])), "lane x0.5; 10 % over x0.5; 30 % over x0"
    hard = TERMS["rewards"]["hard_infraction"]
    s = _hand_state(
        3, collision=torch.tensor([True, False, False]), off_road=torch.tensor([False, True, False])
    )
    assert (hard(s) * s.dt).tolist() == [1.0, 1.0, 0.0]


def test_route_waypoints_are_in_the_car_frame():
    s = _hand_state(1, ego_pos=torch.tensor([[4.0, 1.0, 0.3]]), ego_yaw=torch.tensor([math.pi / 2]))
    s.route_arc = torch.tensor([4.0])
    pts = TERMS["observations"]["route_waypoints"](s, num=2, spacing=4.0).view(2, 2)
    # route points (8, 0) and (12, 0) seen from (4, 1) facing +y: ahead is +y, left is -x
    assert torch.allclose(pts, torch.tensor([[-1.0, -4.0], [-1.0, -8.0]]), atol=1e-5)


def test_driving_terms_have_their_own_names():
    for table, drive in (
        (TERMS["rewards"], driving.DRIVE_REWARDS),
        (TERMS["observations"], driving.DRIVE_OBSERVATIONS),
        (TERMS["costs"], driving.DRIVE_COSTS),
        (TERMS["terminations"], driving.DRIVE_TERMINATIONS),
    ):
        for name, fn in drive.items():
            assert table[name] is fn, f"{name} is shadowed in the merged table"
        others = {n for n, f in table.items() if f.__module__ != driving.__name__}
        assert not others & set(drive)


# -- geometry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.05, 0.2, 0.3, -0.05, -0.3])
def test_ackermann_inner_wheel_turns_more_and_both_aim_at_one_centre(delta):
    wheelbase, track = 2.6, 1.55
    left, right = ackermann_angles(torch.tensor([delta]), wheelbase, track)[0].tolist()
    inner, outer = (left, right) if delta > 0 else (right, left)
    assert abs(inner) > abs(delta) > abs(outer) and math.copysign(1, left) == math.copysign(1, right)
    # each wheel's axle line meets the rear axle's line at the same turning centre
    centre_l = track / 2 + wheelbase / math.tan(left)
    centre_r = -track / 2 + wheelbase / math.tan(right)
    assert centre_l == pytest.approx(centre_r, rel=1e-5)
    assert centre_l == pytest.approx(wheelbase / math.tan(delta), rel=1e-5)


def test_electronic_differential_slows_the_inner_rear_wheel():
    wheelbase, track = 2.6, 1.55
    delta = torch.tensor([0.2, 0.0, -0.2])
    left, right = rear_wheel_speeds(torch.full((3,), 10.0), delta, wheelbase, track).T.tolist()
    assert left[0] < 10.0 < right[0] and left[1] == right[1] == 10.0 and right[2] < 10.0 < left[2]
    radius = wheelbase / math.tan(0.2)  # rear axle centre to the turning centre
    assert left[0] / right[0] == pytest.approx((radius - track / 2) / (radius + track / 2), rel=1e-5)
    assert (left[0] + right[0]) / 2 == pytest.approx(10.0)


def test_steering_action_sets_ackermann_wheel_angles_in_the_sim():
    env = _env("driving_lane_follow", 2, reset={"speed": [3.0, 3.0], "lateral_noise": 0.0, "yaw_noise": 0.0})
    env.reset(seed=0)
    action = torch.tensor([[0.8, -0.5], [-0.8, -0.5]])
    for _ in range(5):
        env.step(action)
    joints = env.backend.state().qpos[:, env._steer_q]
    want = ackermann_angles(action[:, 0] * env.steer_max, env.wheelbase, env.track)
    assert torch.allclose(joints, want, atol=5e-3)
    assert joints[0, 0] > joints[0, 1] > 0, "turning left, the left (inner) wheel turns more"
    assert joints[1, 1] < joints[1, 0] < 0, "turning right, the right (inner) wheel turns more"
    assert env.state.yaw_rate[0] > 0.1 and env.state.yaw_rate[1] < -0.1
    env.close()


def test_torch_road_matches_the_simulated_road():
    env = _env("driving_lane_follow", 3)
    m, d = env.backend.model, None
    qpos = env.backend.state().qpos.double().numpy()
    ids = [m.body(f"road{i}").id for i in range(env.num_segments)]
    for i in range(3):
        d = mujoco.MjData(m)
        d.qpos[:] = qpos[i]
        mujoco.mj_kinematics(m, d)
        np.testing.assert_allclose(d.xpos[ids, :2], env.road_vertices[i, :-1].numpy(), atol=1e-3)
    env.close()


def test_rays_match_mujoco_multiray():
    env = _env("driving_traffic", 3)
    m = env.backend.model
    st = env.backend.state()
    qpos, qvel = st.qpos.clone(), st.qvel.clone()
    g = torch.Generator().manual_seed(3)
    nbox = len(env._box_q)
    # scatter every obstacle and traffic box 6-25 m around each car, at random headings
    for i in range(3):
        ang = torch.rand(nbox, generator=g) * 2 * math.pi
        rad = 6 + 19 * torch.rand(nbox, generator=g)
        xy = qpos[i, :2] + rad[:, None] * torch.stack([torch.cos(ang), torch.sin(ang)], -1)
        qpos[i, env._box_q[:, 0]] = xy[:, 0] - env._box_home[:, 0]
        qpos[i, env._box_q[:, 1]] = xy[:, 1] - env._box_home[:, 1]
        qpos[i, env._box_q[:, 2]] = (torch.rand(nbox, generator=g) * 2 - 1) * math.pi
    env.backend.reset(torch.ones(3, dtype=torch.bool), qpos, qvel)
    s = env._read_state(torch.zeros(3, 2))
    num, max_range = 61, 40.0
    got = TERMS["observations"]["range_rays"](s, num=num, fov_deg=360.0, max_range=max_range) * max_range
    group = np.zeros(6, np.uint8)
    group[env.box_group] = 1
    hits = 0
    for i in range(3):
        d = mujoco.MjData(m)
        d.qpos[:] = env.backend.state().qpos[i].double().numpy()
        mujoco.mj_kinematics(m, d)
        angles = (s.ego_yaw[i] + ray_angles(num, 360.0)).double().numpy()
        vec = np.stack([np.cos(angles), np.sin(angles), np.zeros(num)], -1).flatten()
        dist, geomid = np.zeros(num), np.zeros(num, np.int32)
        pnt = d.site("ray_origin").xpos.copy()
        mujoco.mj_multiRay(m, d, pnt, vec, group, 1, -1, geomid, dist, None, num, max_range)
        want = np.where(dist < 0, max_range, np.minimum(dist, max_range))
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-3)
        hits += int((want < max_range).sum())
    assert hits > 20, "the scattered boxes should be in sight of many rays"
    env.close()


def test_rays_clip_at_max_range_and_read_zero_from_inside_a_box():
    origin = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    angles = torch.tensor([[0.0, math.pi], [0.0, math.pi / 2]])
    centers = torch.tensor([[[10.0, 0.0]], [[0.2, 0.0]]])
    half = torch.tensor([[1.0, 1.0]])
    d = ray_box_hits(origin, angles, centers, torch.zeros(2, 1), half, 5.0)[0]
    assert d.tolist() == [[5.0, 5.0], [0.0, 0.0]]
    d = ray_box_hits(origin, angles, centers, torch.zeros(2, 1), half, 20.0)[0]
    assert d[0].tolist() == [9.0, 20.0]


# -- routes, episodes, traffic --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"route": {"num_waypoints": 1}}, "at least 2 waypoints"),
        ({"route": {"num_waypoints": 0}}, "at least 2 waypoints"),
        ({"route": {"waypoint_spacing": 0.0}}, "waypoint_spacing must be > 0"),
        ({"route": {"num_waypoints": 60}}, "does not fit on the model's 192 m road"),
        ({"route": {"length": 50}}, "unknown route keys"),
        ({"traffic": {"count": 9}}, r"traffic.count must be in \[0, 4\]"),
        ({"randomization": {"friction": [0.8, 1.2]}}, "randomizes latency_steps only"),
    ],
)
def test_bad_config_is_a_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        _env("driving_lane_follow", 2, **overrides)
    assert "\n" not in str(e.value)


def test_cli_reports_a_one_waypoint_route_on_one_line(tmp_path, capsys):
    code = main(
        ["train", "task=driving_lane_follow", "task.route.num_waypoints=1", f"run_dir={tmp_path / 'r'}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "at least 2 waypoints" in err and "\n" not in err


def _pure_pursuit(env, speed: float = 9.0, lookahead: float = 8.0) -> torch.Tensor:
    """Steer at the route point ``lookahead`` m ahead (bicycle model), hold a wheel-speed target."""
    s = env.state
    ahead = TERMS["observations"]["route_waypoints"](s, num=1, spacing=lookahead)
    curvature = 2 * ahead[:, 1] / ahead.square().sum(-1)
    steer = torch.atan(env.wheelbase * curvature) / env.steer_max
    throttle = torch.full_like(steer, 2 * speed / env.max_speed - 1)
    return torch.stack([steer, throttle], -1).clamp(-1, 1)


def test_a_pure_pursuit_driver_completes_every_route():
    env = _env("driving_lane_follow", 8)
    env.reset(seed=0)
    for _ in range(env.max_episode_length - 1):
        out = env.step(_pure_pursuit(env))
        assert not out.terminated.any(), "a careful driver neither collides nor leaves the road"
        assert (out.info["log/cost/lane_departure"] == 0) and (out.info["log/cost/speed_over_limit"] == 0)
    assert out.info["metric/route_completion"].tolist() == [1.0] * 8
    assert out.info["metric/success"].tolist() == [1.0] * 8
    assert out.info["metric/collision"].tolist() == [0.0] * 8
    env.close()


def test_progress_reward_sums_to_the_route_driven():
    env = _env("driving_lane_follow", 4)
    env.reset(seed=1)
    paid = torch.zeros(4)
    for _ in range(60):
        out = env.step(_pure_pursuit(env))
        assert not out.terminated.any()
        paid += out.reward
    done = out.info["metric/route_completion"]
    assert (done > 0.3).all() and (done < 1.0).all()
    assert torch.allclose(paid, done, atol=1e-4), "weight 1 x dt x progress rate = the fraction driven"
    env.close()


def test_traffic_keeps_to_its_lane_schedule():
    env = _env("driving_traffic", 4)
    env.reset(seed=2)
    for _ in range(20):
        env.step(torch.tensor([[0.0, -1.0]]).repeat(4, 1))  # the car brakes and waits
    nt = env.num_traffic
    t = env.episode_length.float() * env.dt
    sigma = env.traffic_sigma0[:, :nt] + env.traffic_speed[:, :nt] * t[:, None]
    want, _ = env._lane_pose(env.road_vertices, env.road_normals, sigma, env.traffic_offset[:, :nt])
    now = env.state.box_center[:, len(env.obstacle_q) : len(env.obstacle_q) + nt]
    assert (now - want).norm(dim=-1).max() < 0.3
    assert (env.traffic_speed[:, :nt] >= 7.0).all() and (env.traffic_speed[:, :nt] <= 9.0).all()
    env.close()


def test_obstacles_stand_at_the_road_edges_along_the_route():
    env = _env("driving_traffic", 4)
    env.reset(seed=3)
    s = env.state
    no = env.num_obstacles
    centers = s.box_center[:, :no]
    # distance of each obstacle centre from the road's centre line (nearest vertex segment)
    v = env.road_vertices
    a, b = v[:, None, :-1], v[:, None, 1:]
    p = centers[:, :, None]
    t = (((p - a) * (b - a)).sum(-1) / (b - a).square().sum(-1)).clamp(0, 1)
    dist = (p - (a + t[..., None] * (b - a))).norm(dim=-1).amin(-1)
    lo, hi = env.obstacle_intrusion
    inner = dist - env.obstacle_half[:no, 1]  # nearest face to the centre line (up to the yaw noise)
    assert (inner > env.road_half_width - hi - 0.3).all() and (inner < env.road_half_width - lo + 0.3).all()
    env.close()


def test_forward_speed_is_the_speed_fraction_of_the_limit_clamped() -> None:
    from embodied.terms.namespaces import family_terms

    fn = family_terms("driving")["rewards"]["forward_speed"]
    env = make_env("driving_lane_follow", num_envs=4, seed=0)
    env.reset(seed=0)
    for _ in range(10):
        env.step(torch.ones(4, env.action_dim))  # full throttle, straight
    s = env.state
    v = fn(s)
    torch.testing.assert_close(v, (s.ego_vel[:, 0] / s.speed_limit).clamp(0.0, 1.0))
    assert bool((v > 0).all()) and bool((v <= 1).all())
    env.close()


def test_range_rate_is_the_hit_box_velocity_relative_to_the_car_along_the_ray() -> None:
    """The car at 5 m/s along +x; a box 10 m ahead moving at 2 m/s along +x (closing at 3 m/s) in env 0,
    out of range in env 1. Rays at 0 and +-45 degrees: only the middle one hits the box."""
    s = _hand_state(
        box_center=torch.tensor([[[11.0, 0.0]], [[100.0, 0.0]]]),
        box_vel=torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]]),
    )
    rate = driving.range_rate(s, num=3, fov_deg=90.0, max_range=40.0)
    assert rate.tolist() == [[0.0, pytest.approx(-3.0), 0.0], [0.0, 0.0, 0.0]]
    # the rate is the one of the range the rays read: the same hit box, along the same ray
    assert driving.range_rays(s, num=3, fov_deg=90.0, max_range=40.0)[0].tolist() == [1.0, 0.25, 1.0]
    # a car heading 90 degrees left, the box moving across its ray: only the relative velocity counts
    s = _hand_state(
        ego_yaw=torch.full((2,), math.pi / 2),
        ego_vel=torch.tensor([[4.0, 0, 0]]).repeat(2, 1),
        box_center=torch.tensor([[[0.0, 11.0]], [[0.0, 11.0]]]),
        box_vel=torch.tensor([[[3.0, 1.0]], [[0.0, -2.0]]]),
    )
    rate = driving.range_rate(s, num=1, fov_deg=0.0, max_range=40.0)
    assert rate[:, 0].tolist() == [pytest.approx(1.0 - 4.0), pytest.approx(-2.0 - 4.0)]


def test_range_rate_predicts_the_change_of_the_simulated_ranges() -> None:
    """Over one step in dense traffic, rays that stay on the same box change by about rate x dt."""
    env = _env("driving_dense", n=16)
    env.reset(seed=3)
    action = torch.tensor([[0.0, 0.3]]).repeat(16, 1)  # straight ahead, moderate throttle
    errors = []
    for _ in range(40):
        before = env._read_state(action)
        d0, box0, *_ = driving._ray_hits(before, 25, 150.0, 40.0)
        rate = driving.range_rate(before, 25, 150.0, 40.0)
        out = env.step(action)
        after = env._read_state(action)
        d1, box1, *_ = driving._ray_hits(after, 25, 150.0, 40.0)
        same = (box0 >= 0) & (box0 == box1) & ~(out.terminated | out.truncated)[:, None]
        errors.append(((d1 - d0) / env.dt - rate)[same])
    err = torch.cat(errors)
    assert err.numel() > 100
    assert float(err.abs().median()) < 0.15, float(err.abs().median())
