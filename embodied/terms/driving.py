"""Driving terms: pure functions of ``DriveState`` (embodied/tasks/driving.py) and their 2D geometry.

Rewards return (N,), observations (N, d), terminations (N,) bool, costs (N,) in {0, 1}. Following CaRL
(Jaeger et al., "CaRL: Learning Scalable Planning Policies with Simple Rewards", 2025) the reward is one
term, route progress, scaled down multiplicatively by soft infractions (lane departure, speeding); hard
infractions (collision, leaving the road) end the episode, with ``hard_infraction`` as an optional
terminal penalty. Event terms return per-step amounts divided by ``dt``, so that ``weight * dt * term``
(what the env pays) is the amount itself. The generic ``last_action`` and ``action_rate_l2`` work on
DriveState as they are. The tables below are merged into REWARDS / OBSERVATIONS / TERMINATIONS / COSTS.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


# -- geometry (batched, torch only) --------------------------------------------------------------
def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Angles wrapped into [-pi, pi)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def to_frame(points: torch.Tensor, origin: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """World xy points (N, J, 2) into the frame at origin (N, 2) with heading yaw (N,)."""
    rel = points - origin[:, None]
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1]], -1)


def polyline_points(
    vertices: torch.Tensor,
    cum: torch.Tensor,
    arcs: torch.Tensor,
    normals: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Points at arc lengths ``arcs`` (N, J) along polylines ``vertices`` (N, V, 2) -> (N, J, 2).

    ``cum`` (N, V) is the arc length at each vertex. Arcs before the start or past the end continue
    along the first or last segment. With ``normals`` (N, V, 2, the miter vectors at the vertices) and
    ``offset`` (N, J), each point moves sideways by ``offset`` (left positive), which traces the
    parallel polyline ``vertices + offset * normals`` (a lane) at the same parameter.
    """
    v = vertices.shape[1]
    idx = (torch.searchsorted(cum, arcs.contiguous(), right=True) - 1).clamp(0, v - 2)
    c0, c1 = cum.gather(1, idx), cum.gather(1, idx + 1)
    t = ((arcs - c0) / (c1 - c0).clamp(min=1e-6))[..., None]
    i2 = idx[..., None].expand(-1, -1, 2)
    a, b = vertices.gather(1, i2), vertices.gather(1, i2 + 1)
    if normals is not None and offset is not None:
        a = a + offset[..., None] * normals.gather(1, i2)
        b = b + offset[..., None] * normals.gather(1, i2 + 1)
    return a + t * (b - a)


def ray_box_hits(
    origin: torch.Tensor,
    angles: torch.Tensor,
    centers: torch.Tensor,
    yaw: torch.Tensor,
    half: torch.Tensor,
    max_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(distance, box, face normal) of each horizontal ray's nearest oriented box: distances clipped
    at ``max_range``, box indices -1 where a ray hits nothing within it, and the world-frame unit
    normal (up to sign) of the face the ray enters through.

    origin (N, 2), angles (N, R) world headings of the rays, centers (N, B, 2), yaw (N, B), half (B, 2)
    or (N, B, 2) half extents -> (N, R), (N, R), (N, R, 2). Slab test in each box's frame; a ray
    starting inside a box reads 0.
    """
    if centers.shape[1] == 0:
        none = torch.full_like(angles, -1, dtype=torch.long)
        return angles.new_full(angles.shape, max_range), none, angles.new_zeros(*angles.shape, 2)
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]  # (N, 1, B)
    rx, ry = torch.cos(angles)[..., None], torch.sin(angles)[..., None]  # (N, R, 1)
    rel = origin[:, None] - centers  # (N, B, 2)
    ox = c * rel[:, None, :, 0] + s * rel[:, None, :, 1]  # the origin in each box's frame, (N, 1, B)
    oy = c * rel[:, None, :, 1] - s * rel[:, None, :, 0]
    inv_x = 1.0 / _nonzero(c * rx + s * ry)  # the ray's direction in each box's frame, (N, R, B)
    inv_y = 1.0 / _nonzero(c * ry - s * rx)
    h = half if half.dim() == 3 else half.expand(origin.shape[0], -1, -1)
    hx, hy = h[:, None, :, 0], h[:, None, :, 1]
    # slab x: t between (-ox - hx) / dx and (-ox + hx) / dx, i.e. centre -ox / dx, half-width hx / |dx|
    mx, my = -ox * inv_x, -oy * inv_y
    wx, wy = hx * inv_x.abs(), hy * inv_y.abs()
    near = torch.maximum(mx - wx, my - wy)
    far = torch.minimum(mx + wx, my + wy)
    dist = torch.where((far >= near) & (far >= 0), near.clamp(min=0.0), max_range)
    nearest, box = dist.min(-1)
    x_face = torch.gather(mx - wx >= my - wy, 2, box[..., None])[..., 0]  # entered through an x face
    cb = torch.gather(c.expand_as(near), 2, box[..., None])[..., 0]
    sb = torch.gather(s.expand_as(near), 2, box[..., None])[..., 0]
    normal = torch.where(x_face[..., None], torch.stack([cb, sb], -1), torch.stack([-sb, cb], -1))
    return nearest.clamp(max=max_range), torch.where(nearest < max_range, box, -1), normal


def _nonzero(x: torch.Tensor, tiny: float = 1e-9) -> torch.Tensor:
    """x with exact or near zeros moved to +tiny, so 1 / x stays finite."""
    return torch.where(x.abs() < tiny, tiny, x)


def ray_angles(num: int, fov_deg: float) -> torch.Tensor:
    """(num,) ray headings in the car's frame: spread over ``fov_deg`` centred ahead (ends included
    below 360 degrees, so an odd ``num`` has a ray straight ahead)."""
    fov = math.radians(fov_deg)
    if num == 1:
        return torch.zeros(1)
    if fov_deg >= 360.0:
        return -math.pi + 2 * math.pi * torch.arange(num) / num
    return torch.linspace(-fov / 2, fov / 2, num)


# -- shared definitions --------------------------------------------------------------------------
def _departed(s, max_offset: float) -> torch.Tensor:
    """(N,) bool: the car's centre is more than ``max_offset`` m from its lane's centre line."""
    return s.lane_offset.abs() > max_offset


def _overspeed(s) -> torch.Tensor:
    """(N,) how far the forward speed is over the limit, as a fraction of the limit (0 below it)."""
    return ((s.ego_vel[:, 0] - s.speed_limit) / s.speed_limit).clamp(min=0.0)


# -- rewards -------------------------------------------------------------------------------------
def route_progress(
    s, lane_penalty: float = 0.5, max_offset: float = 1.0, speeding_gain: float = 5.0
) -> torch.Tensor:
    """Route fraction newly completed this step, per second, times the soft-infraction factors.

    Out of the lane: x (1 - lane_penalty). Speeding: x max(0, 1 - speeding_gain * overspeed / limit).
    """
    factor = 1.0 - lane_penalty * _departed(s, max_offset).float()
    factor = factor * (1.0 - speeding_gain * _overspeed(s)).clamp(min=0.0)
    return s.progress / s.dt * factor


def forward_speed(s) -> torch.Tensor:
    """Forward speed as a fraction of the limit, in [0, 1]: the vehicle-state factor a VLM-RL style
    reward multiplies the VLM score by (``reward.state_term=forward_speed``)."""
    return (s.ego_vel[:, 0] / s.speed_limit).clamp(0.0, 1.0)


def hard_infraction(s) -> torch.Tensor:
    """1 / dt on the step the car collides or leaves the road (use a negative weight: terminal penalty)."""
    return (s.collision | s.off_road).float() / s.dt


# -- observations --------------------------------------------------------------------------------
def ego_velocity(s) -> torch.Tensor:  # 3: forward, left (m/s), yaw rate (rad/s)
    return torch.cat([s.ego_vel[:, :2], s.yaw_rate[:, None]], -1)


def steering_angle(s) -> torch.Tensor:  # 1: mean front-wheel angle, rad (left positive)
    return s.steer[:, None]


def lane_error(s) -> torch.Tensor:  # 2: offset from the lane centre (m, left +), heading error (rad)
    return torch.stack([s.lane_offset, s.heading_error], -1)


def road_edges(s) -> torch.Tensor:  # 2: distance from the car's centre to the left and right road edges
    return torch.stack([s.road_half_width - s.road_offset, s.road_half_width + s.road_offset], -1)


def route_waypoints(s, num: int = 8, spacing: float = 4.0) -> torch.Tensor:  # 2 * num, car frame
    """The route at ``spacing``, 2 * spacing, ... m ahead of the car's projection on it, (x, y) each."""
    return _memo(s, ("route_waypoints", num, spacing), lambda: _waypoints(s, num, spacing))


def _waypoints(s, num: int, spacing: float) -> torch.Tensor:
    ahead = s.route_arc[:, None] + spacing * torch.arange(1, num + 1, device=s.route_arc.device)
    pts = polyline_points(s.route, s.route_cum, ahead)
    return to_frame(pts, s.ego_pos[:, :2], s.ego_yaw).flatten(1)


def range_rays(s, num: int = 15, fov_deg: float = 180.0, max_range: float = 40.0) -> torch.Tensor:  # num
    """Range to obstacles and traffic along ``num`` horizontal rays, / max_range (1 = nothing in range)."""
    return _memo(s, ("range_rays", num, fov_deg, max_range), lambda: _rays(s, num, fov_deg, max_range))


def _rays(s, num: int, fov_deg: float, max_range: float) -> torch.Tensor:
    return _ray_hits(s, num, fov_deg, max_range)[0] / max_range


def _ray_hits(s, num: int, fov_deg: float, max_range: float) -> tuple[torch.Tensor, ...]:
    """(distance (N, R), hit box (N, R), face normal (N, R, 2), world ray headings (N, R)), once per
    state."""

    def compute() -> tuple[torch.Tensor, ...]:
        angles = s.ego_yaw[:, None] + ray_angles(num, fov_deg).to(s.ego_yaw.device)
        hits = ray_box_hits(s.ray_origin[:, :2], angles, s.box_center, s.box_yaw, s.box_half, max_range)
        return (*hits, angles)

    return _memo(s, ("ray_hits", num, fov_deg, max_range), compute)


def range_rate(
    s, num: int = 15, fov_deg: float = 180.0, max_range: float = 40.0, max_rate: float = 30.0
) -> torch.Tensor:  # num, m/s
    """How fast the range along each ``range_rays`` ray changes, m/s (negative while closing in), as
    a tracker on successive scans reads it: the hit box's velocity relative to the car's, through the
    face the ray hits, (v . n) / (ray . n); clipped at ``max_rate`` (grazing rays), 0 where the ray
    sees nothing. The rays' own turn with the car's yaw rate, and the boxes' spin, are left out."""
    key = ("range_rate", num, fov_deg, max_range, max_rate)
    return _memo(s, key, lambda: _range_rate(s, num, fov_deg, max_range, max_rate))


def _range_rate(s, num: int, fov_deg: float, max_range: float, max_rate: float) -> torch.Tensor:
    _, box, normal, angles = _ray_hits(s, num, fov_deg, max_range)
    c, sn = torch.cos(s.ego_yaw), torch.sin(s.ego_yaw)
    ego = torch.stack(
        [c * s.ego_vel[:, 0] - sn * s.ego_vel[:, 1], sn * s.ego_vel[:, 0] + c * s.ego_vel[:, 1]], -1
    )
    if s.box_vel.shape[1] == 0:
        hit_vel = ego.new_zeros(*box.shape, 2)
    else:
        hit_vel = torch.gather(s.box_vel, 1, box.clamp(min=0)[..., None].expand(-1, -1, 2))  # (N, R, 2)
    rel = hit_vel - ego[:, None]
    along = normal[..., 0] * torch.cos(angles) + normal[..., 1] * torch.sin(angles)  # ray . n
    rate = (rel * normal).sum(-1) / _nonzero(along)
    return torch.where(box >= 0, rate.clamp(-max_rate, max_rate), 0.0)


def _memo(s, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A value both observation groups read, computed once per state (``s.cache``) when it has one."""
    cache = getattr(s, "cache", None)
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def speed_limit(s) -> torch.Tensor:  # 1, m/s
    return s.speed_limit[:, None]


def route_completion(s) -> torch.Tensor:  # 1: fraction of the route done (critic)
    return s.route_completion[:, None]


# -- terminations --------------------------------------------------------------------------------
def collided(s) -> torch.Tensor:
    """The car touches an obstacle or a traffic car."""
    return s.collision


def off_road(s) -> torch.Tensor:
    """The car's centre left the road (by the task's ``off_road_margin``)."""
    return s.off_road


def flipped(s, max_tilt: float = 1.0) -> torch.Tensor:
    """The car is tilted more than ``max_tilt`` radians from upright."""
    return s.up_z < math.cos(max_tilt)


# -- costs ---------------------------------------------------------------------------------------
def collision(s) -> torch.Tensor:
    """1 when the car touches an obstacle or a traffic car."""
    return s.collision.float()


def lane_departure(s, max_offset: float = 1.0) -> torch.Tensor:
    """1 when the car's centre is more than ``max_offset`` m from its lane's centre line."""
    return _departed(s, max_offset).float()


def speed_over_limit(s, tolerance: float = 0.0) -> torch.Tensor:
    """1 when the forward speed exceeds the speed limit by more than ``tolerance`` (a fraction)."""
    return (_overspeed(s) > tolerance).float()


def _table(*fns) -> dict:
    return {f.__name__: f for f in fns}


DRIVE_REWARDS = _table(route_progress, hard_infraction, forward_speed)
DRIVE_OBSERVATIONS = _table(
    ego_velocity,
    steering_angle,
    lane_error,
    road_edges,
    route_waypoints,
    range_rays,
    range_rate,
    speed_limit,
    route_completion,
)
DRIVE_TERMINATIONS = _table(collided, off_road, flipped)
DRIVE_COSTS = _table(collision, lane_departure, speed_over_limit)
