"""The swept-corridor barrier: hits in the car's path brake it, hits beside it keep it from steering in."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.safety import FilterError
from policies.safety.barriers import Barriers
from policies.safety.cbf import CBFFilter
from policies.safety.corridor import INACTIVE, SweptCorridor

RAYS = 5  # over 120 degrees: -60, -30, 0, 30, 60
LAYOUT = [
    {"name": "ego_velocity", "dim": 3, "scale": 0.2},
    {"name": "lane_error", "dim": 2, "scale": 1.0},
    {"name": "route_waypoints", "dim": 8, "scale": 0.05},
    {"name": "range_rays", "dim": RAYS, "scale": 1.0},
]
SPEC = {"kind": "swept_corridor", "fov_deg": 120.0, "origin_ahead": 2.0, "half_width": 0.85, "margin": 0.15}
ANGLES = [math.radians(a) for a in (-60.0, -30.0, 0.0, 30.0, 60.0)]


def _obs(v=8.0, v_left=0.0, offset=0.0, psi=0.0, ranges=(40.0,) * RAYS, curvature=0.0):
    """One policy observation; the lane's centre line is y = -offset + curvature x^2 / 2 (car frame)."""
    wp = []
    for k in range(1, 5):
        x = 4.0 * k
        wp += [x, -offset + 0.5 * curvature * x * x]
    raw = [v, v_left, 0.0, offset, psi, *wp, *(r / 40.0 for r in ranges)]
    scale = [0.2] * 3 + [1.0] * 2 + [0.05] * 8 + [1.0] * RAYS
    return torch.tensor([[a * s for a, s in zip(raw, scale, strict=True)]])


def _range_to(x, y):
    """The ray and range that hit a point x m ahead of the ray origin, y m to the left."""
    angle = math.atan2(y, x)
    i = min(range(RAYS), key=lambda j: abs(ANGLES[j] - angle))
    assert abs(ANGLES[i] - angle) < 1e-6, "pick points on the rays"
    return i, math.hypot(x, y)


def _hit(x, y, **kw):
    i, r = _range_to(x, y)
    ranges = [40.0] * RAYS
    ranges[i] = r
    return i, _obs(ranges=tuple(ranges), **kw)


def test_a_hit_in_the_path_gives_a_braking_row_and_one_beside_it_a_lateral_row():
    corridor = SweptCorridor(SPEC, LAYOUT, 2, "test")
    i, obs = _hit(10.0, 0.0, v=8.0)  # straight ahead
    rows = corridor.per_ray(obs)
    assert rows["on_brake"][0].tolist() == [j == i for j in range(RAYS)] and not bool(rows["on_side"].any())
    # standing obstacle: rate -v; h = 10 - 1 - 1.5 x 8
    assert float(rows["h_brake"][0, i]) == pytest.approx(10.0 - 1.0 - 1.5 * 8.0, abs=1e-4)
    assert float(rows["gain_brake"][0, i]) < 0  # more throttle lowers h
    g, b, h = corridor(obs)  # three rows: throttle from above, steering from above and from below
    assert g.shape == (1, 3, 2) and b.shape == h.shape == (1, 3)
    torch.testing.assert_close(g[0], torch.tensor([[0.0, -1.0], [-1.0, 0.0], [1.0, 0.0]]))
    bound = float(rows["b_brake"][0, i] / rows["gain_brake"][0, i])  # throttle <= bound
    assert float(b[0, 0]) == pytest.approx(-bound) and float(h[0, 0]) == float(rows["h_brake"][0, i])
    assert h[0, 1:].tolist() == [INACTIVE, INACTIVE]  # nothing beside the path
    assert float(b[0, 1]) == -1000.0 and float(b[0, 2]) == -1000.0  # no bound on the steering

    j, obs = _hit(3.0 * math.cos(ANGLES[3]), 3.0 * math.sin(ANGLES[3]))  # 1.5 m to the left, 2.6 m ahead
    rows = corridor.per_ray(obs)
    assert bool(rows["on_side"][0, j]) and not bool(rows["on_brake"].any())
    e = 1.5  # its offset from the path: the lane is straight and the car on its centre line
    assert float(rows["h_side"][0, j]) == pytest.approx(e - 1.0, abs=1e-4)
    assert float(rows["gain_side"][0, j]) < 0  # steering left lowers h: an upper bound on steering
    _, b, h = corridor(obs)
    assert float(h[0, 1]) == pytest.approx(e - 1.0, abs=1e-4) and h[0, [0, 2]].tolist() == [INACTIVE] * 2
    # within `near` of the nose the car-frame row applies too; the bound is the tighter of the two
    assert bool(rows["on_near"][0, j]) and float(rows["gain_near"][0, j]) < 0
    bounds = [float(rows[f"b_{k}"][0, j] / rows[f"gain_{k}"][0, j]) for k in ("side", "near")]
    assert float(b[0, 1]) == pytest.approx(-min(bounds))


def test_the_rows_of_many_rays_combine_into_their_tightest_bounds():
    corridor = SweptCorridor(SPEC, LAYOUT, 2, "test")
    ranges = (40.0, 40.0, 12.0, 40.0, 2.0)  # one hit ahead, one beside on the left
    near = _obs(ranges=ranges, v=6.0)
    ranges = (40.0, 40.0, 7.0, 40.0, 2.0)  # the hit ahead nearer: a tighter throttle bound
    nearer = _obs(ranges=ranges, v=6.0)
    _, b1, _ = corridor(near)
    _, b2, _ = corridor(nearer)
    assert float(-b2[0, 0]) < float(-b1[0, 0])
    f = CBFFilter(LAYOUT, 2, barriers={"corridor": SPEC})
    a = torch.tensor([[1.0, 1.0]])
    safe, _, _ = f(nearer, a)
    rows = corridor.per_ray(nearer)
    # every per-ray row holds at the filtered action, up to the solver's tolerance
    got_brake = rows["gain_brake"] * safe[:, 1:2] - rows["b_brake"]
    got_side = rows["gain_side"] * safe[:, 0:1] - rows["b_side"]
    assert bool((got_brake[rows["on_brake"]] >= -1e-4).all()) or float(safe[0, 1]) == -1.0
    assert bool((got_side[rows["on_side"]] >= -1e-4).all())


def test_the_path_follows_the_lane_through_a_curve():
    corridor = SweptCorridor(SPEC, LAYOUT, 2, "test")
    # A hit on the 30-degree ray 6 m ahead of the ray origin (8 m from the car's centre, 3.46 m left),
    # on a left curve whose centre line passes through it: the hit is in the car's path.
    x, y = 6.0, 6.0 * math.tan(ANGLES[3])
    k = 2.0 * y / 8.0**2
    ranges = [40.0] * RAYS
    ranges[3] = math.hypot(x, y)
    curved = _obs(ranges=tuple(ranges), curvature=k)
    e, _, _ = corridor.path_offset(curved)
    assert abs(float(e[0, 3])) < 1e-4  # the waypoint at 8 m is on the line: exact there
    rows = corridor.per_ray(curved)
    assert bool(rows["on_brake"][0, 3]) and not bool(rows["on_side"][0, 3])  # a braking row
    rows = corridor.per_ray(_obs(ranges=tuple(ranges)))  # the same hit on a straight lane is beside it
    assert not bool(rows["on_brake"][0, 3]) and bool(rows["on_side"][0, 3])


def test_the_filter_brakes_for_a_hit_ahead_and_stops_a_steer_into_one_beside():
    f = CBFFilter(LAYOUT, 2, barriers={"corridor": SPEC})
    _, ahead = _hit(14.0, 0.0, v=8.0)
    safe, hit, info = f(ahead, torch.tensor([[0.0, 1.0]]))
    assert bool(hit[0]) and float(safe[0, 1]) < 1.0 and float(safe[0, 0]) == 0.0
    assert not bool(info["infeasible"][0])  # 14 m at 8 m/s: braking still keeps the barrier

    _, beside = _hit(1.2 * math.cos(ANGLES[4]), 1.2 * math.sin(ANGLES[4]), v=8.0, v_left=1.0)
    safe, hit, _ = f(beside, torch.tensor([[1.0, 0.0]]))  # hard left towards a hit 1.04 m to the left
    assert bool(hit[0]) and float(safe[0, 0]) < 1.0

    clear = _obs()  # nothing in range: any action passes bit for bit
    a = torch.tensor([[0.7, 1.0]])
    safe, hit, _ = f(clear, a)
    assert torch.equal(safe, a) and not bool(hit[0])


def test_corridor_rows_follow_the_polynomial_rows_and_script():
    spec = {"speed": {"h": {"ego_velocity[0]": -1.0, "const": 10.0}, "gain": [0.0, -0.35]}, "corridor": SPEC}
    b = Barriers(spec, LAYOUT, 2, sum(t["dim"] for t in LAYOUT))
    assert b.names == ["speed", "corridor"] and b.row_counts == [1, 3] and b.num_rows == 4
    f = CBFFilter(LAYOUT, 2, barriers=spec)
    _, obs = _hit(6.0, 0.0, v=9.0)
    obs = torch.cat([obs, _obs(), _hit(3.0 * math.cos(ANGLES[1]), 3.0 * math.sin(ANGLES[1]))[1]])
    a = torch.tensor([[0.0, 1.0], [0.5, 0.5], [-1.0, 0.2]])
    torch.testing.assert_close(torch.jit.script(f)(obs, a)[0], f(obs, a)[0])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"kind": "tunnel"}, r"unknown kind 'tunnel'"),
        ({"kind": "swept_corridor", "width": 2.0}, r"unknown key\(s\) \['width'\]"),
        ({"kind": "swept_corridor", "rays": "lidar"}, r"no term 'lidar'"),
        ({"kind": "swept_corridor", "rates": "doppler"}, r"no term 'doppler'"),
        ({"kind": "swept_corridor", "half_width": -1.0}, r"half_width must be > 0"),
        ({"kind": "swept_corridor", "rate": 2.0}, r"rate must be in \(0, 1\]"),
        ({"kind": "swept_corridor", "speed_drift": 0.1}, r"speed_drift must be two numbers"),
        ({"kind": "swept_corridor", "headway": "long"}, r"expected a finite number"),
    ],
)
def test_bad_corridor_specs_are_one_line_errors(spec, match):
    with pytest.raises(FilterError, match=match) as e:
        CBFFilter(LAYOUT, 2, barriers={"corridor": spec})
    assert "\n" not in str(e.value)


def test_a_corridor_needs_the_cars_two_actions():
    with pytest.raises(FilterError, match="needs the car's 2 actions"):
        CBFFilter(LAYOUT, 3, barriers={"corridor": SPEC})


def test_a_fan_wider_than_180_degrees_guards_the_front_half_of_the_cars_side():
    corridor = SweptCorridor({**SPEC, "fov_deg": 300.0}, LAYOUT, 2, "test")  # rays at +-150, +-75, 0
    beside = _obs(ranges=(40.0, 40.0, 40.0, 40.0, 2.0))  # 1.73 m back from the bumper, 1 m left
    rows = corridor.per_ray(beside)
    assert bool(rows["on_near"][0, 4]) and not bool(rows["on_brake"][0, 4])  # no braking backwards
    behind = _obs(ranges=(40.0, 40.0, 40.0, 40.0, 4.0))  # beside the rear half: steering swings it away
    rows = corridor.per_ray(behind)
    assert not any(bool(rows[f"on_{k}"][0, 4]) for k in ("brake", "side", "near"))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_the_three_rows_hold_exactly_where_every_rays_row_holds(seed):
    """On 1,000 random states and actions per example: an action meets the combined rows if and only
    if it meets each ray's row (bounds that are not "none" or "impossible")."""
    corridor = SweptCorridor({**SPEC, "fov_deg": 300.0}, LAYOUT, 2, "test")
    g = torch.Generator().manual_seed(seed)
    n = 1000
    raw = [
        (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([12.0, 2.0, 1.0]),  # v, v_left, yaw rate
        (torch.rand(n, 2, generator=g) * 2 - 1) * torch.tensor([1.0, 0.3]),  # lane offset, heading
        torch.stack([4.0 * torch.arange(1, 5).expand(n, 4), (torch.rand(n, 4, generator=g) * 2 - 1)], -1),
        torch.rand(n, RAYS, generator=g) * 40.0,
    ]
    obs = torch.cat([raw[0] * 0.2, raw[1], raw[2].flatten(1) * 0.05, raw[3] / 40.0], 1)
    a = torch.rand(n, 2, generator=g) * 2 - 1
    gg, b, _ = corridor(obs)
    combined = ((gg @ a[..., None])[..., 0] >= b - 1e-5 * (1 + b.abs())).all(-1)
    rows = corridor.per_ray(obs)
    ok_brake = rows["gain_brake"] * a[:, 1:2] >= rows["b_brake"] - 1e-5 * (1 + rows["b_brake"].abs())
    ok = [torch.where(rows["on_brake"], ok_brake, True).all(-1)]
    for k in ("side", "near"):
        met = rows[f"gain_{k}"] * a[:, 0:1] >= rows[f"b_{k}"] - 1e-5 * (1 + rows[f"b_{k}"].abs())
        usable = rows[f"gain_{k}"].abs() > 1e-6  # a row no steering moves: the combined row says impossible
        ok.append(torch.where(rows[f"on_{k}"] & usable, met, True).all(-1))
    per_ray = ok[0] & ok[1] & ok[2]
    dead = (rows["on_side"] & (rows["gain_side"].abs() <= 1e-6) & (rows["b_side"] > 0)).any(-1)
    dead |= (rows["on_near"] & (rows["gain_near"].abs() <= 1e-6) & (rows["b_near"] > 0)).any(-1)
    assert torch.equal(combined, per_ray & ~dead)


def test_a_row_steering_cannot_move_pushes_away_from_its_hit_not_towards_it():
    """At a standstill the steering moves nothing (gain 0): a lateral row broken by a sideways slide
    towards a hit on the right is flagged, and the saturated steering points left, away from it."""
    f = CBFFilter(LAYOUT, 2, barriers={"corridor": SPEC})
    _, obs = _hit(3.0 * math.cos(ANGLES[1]), 3.0 * math.sin(ANGLES[1]), v=0.0, v_left=-2.0)  # 1.5 m right
    rows = f.barriers.modules_[0].per_ray(obs)
    j = 1
    assert bool(rows["on_side"][0, j]) and float(rows["gain_side"][0, j]) == 0.0
    assert float(rows["h_side"][0, j]) < 0 and float(rows["side"][0, j]) == -1.0
    safe, _, info = f(obs, torch.tensor([[0.0, 0.0]]))
    assert bool(info["infeasible"][0]) and float(safe[0, 0]) > 0.0
