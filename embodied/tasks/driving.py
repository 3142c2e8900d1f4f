"""Driving: an Ackermann-steered car follows a route along its lane on a randomly curved two-lane road.

One module, two configs with the same keys: ``driving_lane_follow`` (the route alone) and
``driving_traffic`` (plus static obstacles at the road's edges and traffic cars in both lanes).
Everything geometric (wheelbase, track, wheel radius, road segment length and width, obstacle and
traffic box sizes, the ray origin) is read from the task's MJCF (sim/assets/car_road.xml).

Road and route, drawn per env at every reset, all in torch: the road is the model's chain of S
straight segments of length l, laid out through qpos (the hinge of segment i turns it by
``kappa_i * l``, with the curvature ``kappa`` constant over sections of ``road.section_length`` m,
drawn in [-1/min_radius, 1/min_radius] or 0 with ``road.straight_prob``). A lane is the centre line
offset sideways (miter vectors at the vertices keep it parallel). The route is the chosen lane's
centre line from the spawn point, resampled every ``route.waypoint_spacing`` m:
``route.num_waypoints`` waypoints make the route whose completion is scored; the polyline goes on
to the end of the road, so look-ahead and progress continue after the route is done.

Actions, (N, 2) in [-1, 1]: steering ``a0`` -> bicycle-model angle ``delta = a0 * car.steer_max``,
set as the inner and outer front-wheel angles of Ackermann geometry (``ackermann_angles``);
throttle/brake ``a1`` -> rear-axle speed target ``(a1 + 1) / 2 * car.max_speed``, split between the
two rear wheels' velocity servos by an electronic differential (``rear_wheel_speeds``); their force
limit is the engine and the brake (-1 brakes to a stop, 0 is half speed). Traffic cars follow their
lanes at a constant speed each, and change lanes where ``traffic.lane_change`` says so (the schedule
is embodied/tasks/driving_traffic.py): their velocity-servo controls follow the car's four.

Reward, costs and terminations are terms in embodied/terms/driving.py (CaRL-style: route progress
scaled by soft infractions; collisions and leaving the road end the episode). Metrics per env and
step (``info["metric/<name>"]``): ``route_completion`` (0..1, the farthest point reached),
``collision`` (1 once the car touched an obstacle or traffic car this episode), ``success`` (the
route is complete with no collision and without leaving the road) and ``failure_rate`` (1 - success).
The eval configs set ``warmup_s`` so that evaluation reads them over the last 0.5 s of an episode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from embodied.errors import ConfigError
from embodied.math import quat_rotate, quat_rotate_inverse, yaw_quat
from embodied.task_env import TaskEnv
from embodied.tasks.driving_model import DrivingModel
from embodied.tasks.driving_traffic import TrafficSchedule, parse_lane_change
from embodied.terms.driving import polyline_points, wrap_angle
from sim.assets import load_model
from sim.backend import SimBackend, SimConfigError
from sim.randomize import RANGES

HEADING_LOOKAHEAD = 3.0  # metres: traffic cars face the lane point this far ahead


@dataclass
class DriveState:
    """Everything driving terms read; (N, ...) tensors, world frame unless named ``ego``/``lane``."""

    num_envs: int
    dt: float
    ego_pos: torch.Tensor  # (N, 3) centre of the footprint at axle height
    ego_quat: torch.Tensor  # (N, 4) wxyz
    ego_yaw: torch.Tensor  # (N,)
    ego_vel: torch.Tensor  # (N, 3) car frame: forward, left, up
    yaw_rate: torch.Tensor  # (N,)
    up_z: torch.Tensor  # (N,) z of the car's up axis: 1 upright, -1 upside down
    steer: torch.Tensor  # (N,) mean front-wheel angle
    action: torch.Tensor  # (N, 2)
    last_action: torch.Tensor  # (N, 2)
    route: torch.Tensor  # (N, P, 2) route polyline (continues past the scored route to the road's end)
    route_cum: torch.Tensor  # (N, P) arc length at each route point
    route_arc: torch.Tensor  # (N,) arc length of the car's projection on the route
    route_segment: torch.Tensor  # (N,) long: the route segment that projection lies on
    lane_offset: torch.Tensor  # (N,) signed distance from the route (lane centre), left positive
    heading_error: torch.Tensor  # (N,) car yaw - route heading, wrapped
    road_offset: torch.Tensor  # (N,) signed distance from the road's centre line
    road_half_width: float
    progress: torch.Tensor  # (N,) route fraction newly completed this step
    route_completion: torch.Tensor  # (N,) farthest route fraction reached, 0..1
    speed_limit: torch.Tensor  # (N,) m/s
    off_road: torch.Tensor  # (N,) bool: |road_offset| > road half width + off_road_margin
    collision: torch.Tensor  # (N,) bool: the car touches an obstacle or traffic car now
    ray_origin: torch.Tensor  # (N, 3) where the range rays start
    box_center: torch.Tensor  # (N, B, 2) obstacle and traffic boxes the rays see
    box_yaw: torch.Tensor  # (N, B)
    box_half: torch.Tensor  # (B, 2) half extents in x, y
    box_vel: torch.Tensor  # (N, B, 2) the boxes' velocities (their slide joints', m/s)
    cache: dict = field(default_factory=dict)  # terms that both observation groups read, computed once
    qpos: torch.Tensor | None = None  # (N, nq) the whole scene's generalized positions


def ackermann_angles(delta: torch.Tensor, wheelbase: float, track: float) -> torch.Tensor:
    """Bicycle-model steering angles (N,) -> (N, 2) left and right front-wheel angles.

    Both wheels point at the same turning centre on the rear axle's line: the inner wheel turns more,
    tan(inner) = L / (R - w/2), tan(outer) = L / (R + w/2) with R = L / tan(delta).
    """
    t = torch.tan(delta)
    half = 0.5 * track * t
    left = torch.atan(wheelbase * t / (wheelbase - half))
    right = torch.atan(wheelbase * t / (wheelbase + half))
    return torch.stack([left, right], -1)


def rear_wheel_speeds(
    speed: torch.Tensor, delta: torch.Tensor, wheelbase: float, track: float
) -> torch.Tensor:
    """Rear-axle speed (N,) and bicycle steering angle (N,) -> (N, 2) left and right wheel speeds.

    An electronic differential: on the turn of curvature tan(delta) / L each wheel rolls at the speed of
    its own radius, so the inner one turns slower.
    """
    k = 0.5 * track * torch.tan(delta) / wheelbase
    return torch.stack([speed * (1 - k), speed * (1 + k)], -1)


def layout_road(
    turn: torch.Tensor, origin: torch.Tensor, segment_length: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heading changes at the segments' starts (N, S) -> headings (N, S), vertices (N, S + 1, 2) and
    miter normals (N, S + 1, 2): at a vertex, the unit normals of both segments averaged and scaled so
    that an offset along it stays the same distance from both (a lane keeps its width in a bend)."""
    psi = turn.cumsum(1)
    direction = torch.stack([torch.cos(psi), torch.sin(psi)], -1)
    start = origin.expand(turn.shape[0], 1, 2)
    vertices = torch.cat([start, start + segment_length * direction.cumsum(1)], 1)
    normal = torch.stack([-direction[..., 1], direction[..., 0]], -1)
    a, b = normal[:, :-1], normal[:, 1:]
    inner = (a + b) / (1 + (a * b).sum(-1, keepdim=True))
    return psi, vertices, torch.cat([normal[:, :1], inner, normal[:, -1:]], 1)


def _range(v: Any, name: str) -> tuple[float, float]:
    if v is None or len(v) != 2 or float(v[0]) > float(v[1]):
        raise ConfigError(f"{name} must be a range [lo, hi] with lo <= hi, got {v!r}")
    return float(v[0]), float(v[1])


class DrivingEnv(DrivingModel, TaskEnv):
    """An Ackermann car following a per-episode route, optionally among obstacles and traffic."""

    def __init__(self, cfg: Mapping[str, Any], backend: SimBackend, seed: int = 0) -> None:
        dev, info = backend.device, backend.info
        physics_keys = sorted(set(cfg.get("randomization") or {}) & {*RANGES, "com_offset", "push"})
        if physics_keys:
            raise ConfigError(
                f"driving randomizes latency_steps only (per-env physics of the road, obstacle and "
                f"traffic bodies is not set up); drop {physics_keys}"
            )
        try:
            model = load_model(cfg["model"])
        except SimConfigError as e:
            raise ConfigError(str(e)) from None
        self._read_car(model, info, dev)
        self._read_road(model, dev)
        self._read_boxes(model, dev)
        self._parse(cfg)
        self._select_active_boxes()
        self._sensor_cols = self._resolve_sensors(backend, cfg.get("sensors") or {})
        self.home_qpos = torch.as_tensor(info.home_qpos, dtype=torch.float32, device=dev)
        self.action_dim = 2

        n, s, f32 = backend.num_envs, self.num_segments, dict(device=dev, dtype=torch.float32)
        # Per-env episode layout, redrawn at reset; a straight road until the first reset.
        self.road_vertices = torch.zeros(n, s + 1, 2, **f32)
        self.road_normals = torch.zeros(n, s + 1, 2, **f32)
        self.road_cum = (self.segment_length * torch.arange(s + 1, **f32)).expand(n, -1).contiguous()
        self.road_vertices[..., 0] = self.road_cum
        self.road_normals[..., 1] = 1.0
        self.lane_center = torch.zeros(n, **f32)
        p = self.route_points
        self.route_cum = (self.route_spacing * torch.arange(p, **f32)).expand(n, -1).contiguous()
        self.route = torch.stack([self.route_cum + self.route_start, torch.zeros_like(self.route_cum)], -1)
        self.route_length = self.route_cum[:, self.route_waypoints - 1].clone()
        self.speed_limit = torch.full((n,), self.speed_limit_range[0], **f32)
        nob, nt = len(self.obstacle_q), self.num_traffic
        lanes = torch.arange(self.lanes, device=dev)
        lane_centers = -self.road_half_width + self.lane_width * (lanes + 0.5)
        car_half = float(self._all_box_half[nob:, 1].max()) if len(self.traffic_q) else 0.0
        self.traffic = TrafficSchedule(n, nt, lane_centers, self.lane_change, car_half)
        # Per-episode trackers.
        self._seg = torch.zeros(n, dtype=torch.long, device=dev)
        self.best_arc = torch.zeros(n, **f32)
        self.collided = torch.zeros(n, dtype=torch.bool, device=dev)
        self.infraction = torch.zeros(n, dtype=torch.bool, device=dev)
        self.last_action = torch.zeros(n, 2, **f32)
        super().__init__(cfg, backend, seed)

    @property
    def traffic_sigma0(self) -> torch.Tensor:
        """(N, M) each traffic car's road arc at t = 0 (its schedule's anchor)."""
        return self.traffic.sigma0

    @property
    def traffic_speed(self) -> torch.Tensor:
        """(N, M) each traffic car's speed along the road, m/s (the lane it drives in)."""
        return self.traffic.speed

    @property
    def traffic_offset(self) -> torch.Tensor:
        """(N, M) the offset of each traffic car's lane from the road's centre line (left positive)."""
        return self.traffic.offset

    def _select_active_boxes(self) -> None:
        """The boxes in use (the first ``count`` obstacles and traffic cars); the rest stay parked far
        away, out of every ray's range, and are left out of the per-step work."""
        nob = len(self.obstacle_q)
        active = [*range(self.num_obstacles), *range(nob, nob + self.num_traffic)]
        idx = torch.tensor(active, dtype=torch.long, device=self._box_q.device)
        q = self._box_q[idx]
        self._xy_cols, self._yaw_cols = q[:, :2].flatten(), q[:, 2]
        self._xy_dof_cols = self._box_dof[idx][:, :2].flatten()
        self.box_home, self.box_offset = self._box_home[idx], self._box_offset[idx]
        self.box_yaw0, self.box_half = self._box_yaw0[idx], self._all_box_half[idx]
        tq = self.traffic_q[: self.num_traffic]
        self._traffic_xy_cols, self._traffic_yaw_cols = tq[:, :2].flatten(), tq[:, 2]
        self._traffic_home = self._box_home[nob : nob + self.num_traffic]
        self._traffic_ctrl_cols = self._traffic_act[: self.num_traffic].flatten()

    def _parse(self, cfg: Mapping[str, Any]) -> None:
        blocks = {
            "car": ("steer_max", "max_speed"),
            "road": ("lanes", "min_radius", "section_length", "straight_prob", "straight_start"),
            "route": ("start", "num_waypoints", "waypoint_spacing"),
            "reset": ("lateral_noise", "yaw_noise", "speed"),
            "obstacles": ("count", "arc", "intrusion", "yaw_noise"),
            "traffic": ("count", "arc", "speed", "lane_change"),
        }
        b = {}
        for name, known in blocks.items():
            b[name] = dict(cfg.get(name) or {})
            unknown = sorted(set(b[name]) - set(known))
            if unknown:
                raise ConfigError(f"unknown {name} keys {unknown}; known: {', '.join(known)}")
        car, road, route, reset = b["car"], b["road"], b["route"], b["reset"]
        self.steer_max = float(car.get("steer_max", 0.3))
        self.max_speed = float(car.get("max_speed", 12.0))
        if not 0 < self.steer_max <= 0.7 or self.max_speed <= 0:
            raise ConfigError("car.steer_max must be in (0, 0.7] rad and car.max_speed > 0 m/s")
        self.speed_limit_range = _range(cfg.get("speed_limit", (10.0, 10.0)), "speed_limit")
        if self.speed_limit_range[0] <= 0:
            raise ConfigError("speed_limit must be > 0 m/s")
        self.lanes = int(road.get("lanes", 2))
        self.min_radius = float(road.get("min_radius", 40.0))
        self.section_length = float(road.get("section_length", 32.0))
        self.straight_prob = float(road.get("straight_prob", 0.3))
        self.straight_start = float(road.get("straight_start", 12.0))
        if self.lanes < 1 or self.min_radius <= 0 or self.section_length <= 0:
            raise ConfigError("road.lanes must be >= 1, road.min_radius and road.section_length > 0")
        self.lane_width = 2 * self.road_half_width / self.lanes

        self.route_start = float(route.get("start", 6.0))
        self.route_waypoints = int(route.get("num_waypoints", 26))
        self.route_spacing = float(route.get("waypoint_spacing", 4.0))
        if self.route_waypoints < 2:
            raise ConfigError(
                f"a route needs at least 2 waypoints, got route.num_waypoints={self.route_waypoints}"
            )
        if self.route_spacing <= 0:
            raise ConfigError(f"route.waypoint_spacing must be > 0 m, got {self.route_spacing}")
        end = self.route_start + (self.route_waypoints - 1) * self.route_spacing
        if self.route_start < 0 or end > self.road_length:
            raise ConfigError(
                f"the route ({self.route_start:g} m to {end:g} m) does not fit on the model's "
                f"{self.road_length:g} m road"
            )
        self.route_points = math.ceil((self.road_length - self.route_start) / self.route_spacing) + 1
        self.lateral_noise = float(reset.get("lateral_noise", 0.0))
        self.yaw_noise = float(reset.get("yaw_noise", 0.0))
        self.spawn_speed = _range(reset.get("speed", (0.0, 0.0)), "reset.speed")

        obst, traffic = b["obstacles"], b["traffic"]
        self.num_obstacles = int(obst.get("count", 0))
        self.num_traffic = int(traffic.get("count", 0))
        for name, count, avail in (
            ("obstacles", self.num_obstacles, len(self.obstacle_q)),
            ("traffic", self.num_traffic, len(self.traffic_q)),
        ):
            if not 0 <= count <= avail:
                raise ConfigError(f"{name}.count must be in [0, {avail}] (bodies in the model), got {count}")
        self.obstacle_arc = _range(obst.get("arc", (20.0, 100.0)), "obstacles.arc")
        self.obstacle_intrusion = _range(obst.get("intrusion", (-0.5, 0.3)), "obstacles.intrusion")
        self.obstacle_yaw_noise = float(obst.get("yaw_noise", 0.0))
        self.traffic_arc = _range(traffic.get("arc", (15.0, 115.0)), "traffic.arc")
        self.traffic_speed_range = _range(traffic.get("speed", (7.0, 9.0)), "traffic.speed")
        self.lane_change = parse_lane_change(traffic.get("lane_change"), self.lanes)
        self.off_road_margin = float(cfg.get("off_road_margin", 0.5))

    # -- hooks ---------------------------------------------------------------------------------
    def _action_to_ctrl(self, action: torch.Tensor) -> torch.Tensor:
        ctrl = torch.zeros(self.num_envs, self.backend.info.nu, device=self.device)
        delta = action[:, 0] * self.steer_max
        ctrl.index_copy_(1, self._steer_act, ackermann_angles(delta, self.wheelbase, self.track))
        speed = 0.5 * (action[:, 1] + 1.0) * self.max_speed / self.wheel_radius
        ctrl.index_copy_(1, self._drive_act, rear_wheel_speeds(speed, delta, self.wheelbase, self.track))
        if self.num_traffic:
            ctrl.index_copy_(1, self._traffic_ctrl_cols, self._traffic_command().flatten(1))
        return ctrl

    def action_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise ConfigError(
            "driving has no (offset, scale) action map: steering goes through Ackermann geometry and "
            "throttle through an electronic differential"
        )

    def robot_qpos_columns(self) -> torch.Tensor:
        """The car's free joint (pos, quat) and its front-wheel steering hinges."""
        return torch.cat([torch.arange(7, device=self.device), self._steer_q])

    def _read_state(self, action: torch.Tensor) -> DriveState:
        sim = self.backend.state()
        qpos, qvel = sim.qpos, sim.qvel
        pos, quat = qpos[:, 0:3], qpos[:, 3:7]
        w, x, y, z = quat.unbind(-1)
        yaw = torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        xy = pos[:, :2]
        arc, lateral, heading, seg = self._project(xy)
        road_offset = lateral + self.lane_center
        off_road = road_offset.abs() > self.road_half_width + self.off_road_margin
        progress = (arc - self.best_arc).clamp(min=0.0) / self.route_length
        completion = (torch.maximum(self.best_arc, arc) / self.route_length).clamp(0.0, 1.0)

        box_yaw = qpos.index_select(1, self._yaw_cols)
        box_center = self.box_home + qpos.index_select(1, self._xy_cols).view(self.num_envs, -1, 2)
        if bool(self.box_offset.any()):
            c, s_, off = torch.cos(box_yaw), torch.sin(box_yaw), self.box_offset
            box_center = box_center + torch.stack(
                [c * off[:, 0] - s_ * off[:, 1], s_ * off[:, 0] + c * off[:, 1]], -1
            )
        cols, data = self._sensor_cols, sim.sensordata
        collision = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        for key in ("obstacle_contact", "traffic_contact"):
            if key in cols:
                collision |= (data.index_select(1, cols[key]) > 0).any(-1)
        st = DriveState(
            qpos=qpos,
            num_envs=self.num_envs,
            dt=self.dt,
            ego_pos=pos,
            ego_quat=quat,
            ego_yaw=yaw,
            ego_vel=quat_rotate_inverse(quat, qvel[:, 0:3]),
            yaw_rate=qvel[:, 5],  # a free joint's angular velocity is in the body frame
            up_z=1 - 2 * (x * x + y * y),
            steer=qpos.index_select(1, self._steer_q).mean(-1),
            action=action,
            last_action=self.last_action,
            route=self.route,
            route_cum=self.route_cum,
            route_arc=arc,
            route_segment=seg,
            lane_offset=lateral,
            heading_error=wrap_angle(yaw - heading),
            road_offset=road_offset,
            road_half_width=self.road_half_width,
            progress=progress,
            route_completion=completion,
            speed_limit=self.speed_limit,
            off_road=off_road,
            collision=collision,
            ray_origin=pos + quat_rotate(quat, self.ray_site_pos.expand(self.num_envs, 3)),
            box_center=box_center,
            box_yaw=box_yaw + self.box_yaw0,
            box_half=self.box_half,
            box_vel=qvel.index_select(1, self._xy_dof_cols).view(self.num_envs, -1, 2),
        )
        return st

    def _advance(self, s: DriveState) -> None:
        self._seg = s.route_segment
        self.best_arc = torch.maximum(self.best_arc, s.route_arc)
        self.collided = self.collided | s.collision
        self.infraction = self.infraction | s.collision | s.off_road
        self.last_action = s.action
        if self.num_traffic and self.lane_change.enabled:
            nob = self.num_obstacles
            rel = s.box_center[:, nob : nob + self.num_traffic] - s.ego_pos[:, None, :2]
            ahead = rel[..., 0] * torch.cos(s.ego_yaw)[:, None] + rel[..., 1] * torch.sin(s.ego_yaw)[:, None]
            t = self.episode_length.float() * self.dt
            self.traffic.advance(t, self.dt, self.generator, ahead, s.road_offset)

    def _reset_state(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = self.num_envs, self.device
        m = mask[:, None]
        turn = self._draw_turns()
        psi, vertices, normals = layout_road(turn, self.road_origin, self.segment_length)
        self.road_vertices = torch.where(m[..., None], vertices, self.road_vertices)
        self.road_normals = torch.where(m[..., None], normals, self.road_normals)
        route, center = self._draw_route(vertices, normals)
        route_cum = torch.cat([torch.zeros(n, 1, device=dev), route.diff(dim=1).norm(dim=-1).cumsum(1)], 1)
        self.route = torch.where(m[..., None], route, self.route)
        self.route_cum = torch.where(m, route_cum, self.route_cum)
        self.route_length = torch.where(mask, route_cum[:, self.route_waypoints - 1], self.route_length)
        self.lane_center = torch.where(mask, center, self.lane_center)
        self.speed_limit = torch.where(mask, self._uniform(*self.speed_limit_range, n), self.speed_limit)

        qpos = self.home_qpos.expand(n, -1).clone()
        qvel = torch.zeros(n, self.backend.info.nv, device=dev)
        # Road bodies: hinges turn by the heading change (road0: the heading), chain roots are placed.
        hi, ri = self._road_hinge_i, self._road_root_i
        qpos[:, self._road_hinge_q] = torch.where(self._road_hinge_rel, turn[:, hi], psi[:, hi])
        self._place(qpos, self._road_root_q, vertices[:, ri] - self._road_root_home, psi[:, ri])
        self._place_car(qpos, qvel, route)
        if self.num_obstacles:
            self._place_obstacles(qpos, vertices, normals)
        if self.num_traffic:
            self._place_traffic(qpos, qvel, vertices, normals, mask)
        return qpos, qvel

    def _on_reset(self, mask: torch.Tensor) -> None:
        self._seg = torch.where(mask, 0, self._seg)
        self.best_arc = torch.where(mask, 0.0, self.best_arc)
        self.collided &= ~mask
        self.infraction &= ~mask
        self.last_action = torch.where(mask[:, None], 0.0, self.last_action)

    def _metrics(self, s: DriveState) -> dict[str, torch.Tensor]:
        ok = ((s.route_completion >= 1.0) & ~self.infraction).float()
        return {
            "route_completion": s.route_completion,
            "collision": self.collided.float(),
            "success": ok,
            "failure_rate": 1.0 - ok,
        }

    # -- helpers -------------------------------------------------------------------------------
    def _uniform(self, lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=self.generator, device=self.device)

    def _stratified(self, lo: float, hi: float, count: int, jitter: float) -> torch.Tensor:
        """(N, count) road arcs from route.start + lo to + hi, one per equal slot, at least
        ``(1 - jitter)`` of a slot apart."""
        slot = (hi - lo) / count
        k = torch.arange(count, device=self.device) + self._uniform(
            0.5 - jitter / 2, 0.5 + jitter / 2, self.num_envs, count
        )
        return self.route_start + lo + k * slot

    def _draw_turns(self) -> torch.Tensor:
        """(N, S) heading change at each segment's start: constant curvature over sections of random
        phase, each in [-1/min_radius, 1/min_radius] or straight, and straight at the start."""
        n, s, seg = self.num_envs, self.num_segments, self.segment_length
        nsec = math.ceil(self.road_length / self.section_length) + 1
        kmax = 1.0 / self.min_radius
        straight = torch.rand(n, nsec, generator=self.generator, device=self.device) < self.straight_prob
        kappa = torch.where(straight, 0.0, self._uniform(-kmax, kmax, n, nsec))
        start = seg * torch.arange(s, device=self.device)
        phase = self._uniform(0.0, self.section_length, n, 1)
        sec = ((start + phase) // self.section_length).long().clamp(max=nsec - 1)
        turn = kappa.gather(1, sec) * seg * (start >= self.straight_start)
        turn[:, 0] = 0.0
        return turn

    def _draw_route(self, vertices: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random lane's centre line from the spawn point, every waypoint_spacing m -> route (N, P, 2),
        and the lane's offset from the road's centre line (N,)."""
        n, dev, seg = self.num_envs, self.device, self.segment_length
        lane = torch.randint(self.lanes, (n,), generator=self.generator, device=dev)
        center = -self.road_half_width + self.lane_width * (lane + 0.5)
        lane_pts = vertices + center[:, None, None] * normals
        lane_cum = torch.cat([torch.zeros(n, 1, device=dev), lane_pts.diff(dim=1).norm(dim=-1).cumsum(1)], 1)
        k = min(int(self.route_start // seg), self.num_segments - 1)
        t = self.route_start / seg - k
        a0 = lane_cum[:, k] + t * (lane_cum[:, k + 1] - lane_cum[:, k])  # the spawn point's lane arc
        arcs = a0[:, None] + self.route_spacing * torch.arange(self.route_points, device=dev)
        return polyline_points(lane_pts, lane_cum, arcs), center

    def _place_car(self, qpos: torch.Tensor, qvel: torch.Tensor, route: torch.Tensor) -> None:
        """The car on the route's first waypoint, facing along it, with a little noise and speed."""
        n = self.num_envs
        head = route[:, 1] - route[:, 0]
        yaw = torch.atan2(head[:, 1], head[:, 0])
        side = self._uniform(-1, 1, n) * self.lateral_noise
        qpos[:, 0:2] = route[:, 0] + side[:, None] * torch.stack([-torch.sin(yaw), torch.cos(yaw)], -1)
        yaw = yaw + self._uniform(-1, 1, n) * self.yaw_noise
        qpos[:, 3:7] = yaw_quat(yaw)
        v0 = self._uniform(*self.spawn_speed, n)
        qvel[:, 0:2] = v0[:, None] * torch.stack([torch.cos(yaw), torch.sin(yaw)], -1)
        qvel[:, self._spin_v] = (v0 / self.wheel_radius)[:, None]

    def _place_obstacles(self, qpos: torch.Tensor, vertices: torch.Tensor, normals: torch.Tensor) -> None:
        """Obstacles at the road's edges along the route, reaching ``intrusion`` m into the road."""
        n, no = self.num_envs, self.num_obstacles
        sigma = self._stratified(*self.obstacle_arc, no, jitter=0.7)
        side = torch.where(torch.rand(n, no, generator=self.generator, device=self.device) < 0.5, -1.0, 1.0)
        reach = self._uniform(*self.obstacle_intrusion, n, no)
        lateral = side * (self.road_half_width - reach + self.obstacle_half[:no, 1])
        p, yaw = self._lane_pose(vertices, normals, sigma, lateral)
        yaw = yaw + self._uniform(-1, 1, n, no) * self.obstacle_yaw_noise
        self._place(qpos, self.obstacle_q[:no], p - self._box_home[:no], yaw)

    def _place_traffic(
        self,
        qpos: torch.Tensor,
        qvel: torch.Tensor,
        vertices: torch.Tensor,
        normals: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        """Traffic ahead of the car in random lanes, one speed per lane, so cars in a lane never meet."""
        n, nt = self.num_envs, self.num_traffic
        sigma0 = self._stratified(*self.traffic_arc, nt, jitter=0.6)
        lane = torch.randint(self.lanes, (n, nt), generator=self.generator, device=self.device)
        lane_speed = self._uniform(*self.traffic_speed_range, n, self.lanes)
        self.traffic.reset(mask, sigma0, lane, lane_speed)
        speed = lane_speed.gather(1, lane)
        p, yaw = self._lane_pose(vertices, normals, sigma0, self.traffic.lane_centers[lane])
        self._place(qpos, self.traffic_q[:nt], p - self._traffic_home, yaw)
        dof = self._traffic_dof[:nt]
        qvel[:, dof[:, 0]] = speed * torch.cos(yaw)
        qvel[:, dof[:, 1]] = speed * torch.sin(yaw)

    def _project(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project car positions (N, 2) on the route near the last segment -> arc, lateral, heading,
        segment index (side-effect free: ``_advance`` keeps the segment)."""
        last = self.route.shape[1] - 2
        cand = (self._seg[:, None] - 1 + torch.arange(4, device=self.device)).clamp(0, last)  # (N, 4)
        i2 = cand[..., None].expand(-1, -1, 2)
        a, b = self.route.gather(1, i2), self.route.gather(1, i2 + 1)
        ab, ap = b - a, xy[:, None] - a
        length = ab.norm(dim=-1).clamp(min=1e-6)
        t = (ap * ab).sum(-1) / length.square()
        t = torch.where(cand == last, t.clamp(min=0.0), t.clamp(0.0, 1.0))  # the last segment runs on
        dist = (ap - t[..., None] * ab).norm(dim=-1)
        best = dist.argmin(-1, keepdim=True)  # (N, 1)
        seg = cand.gather(1, best)[:, 0]
        best2 = best[..., None].expand(-1, -1, 2)
        ab, ap = ab.gather(1, best2)[:, 0], ap.gather(1, best2)[:, 0]
        length, t = length.gather(1, best)[:, 0], t.gather(1, best)[:, 0]
        arc = self.route_cum.gather(1, seg[:, None])[:, 0] + t * length
        lateral = (ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]) / length
        return arc, lateral, torch.atan2(ab[:, 1], ab[:, 0]), seg

    def _lane_pose(
        self,
        vertices: torch.Tensor,
        normals: torch.Tensor,
        sigma: torch.Tensor,
        offset: torch.Tensor,
        offset_ahead: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (N, J, 2) at road arc ``sigma`` on lanes ``offset``, and the heading there (N, J): towards
        the point ``HEADING_LOOKAHEAD`` m on, at ``offset_ahead`` (default: the same lane)."""
        p = polyline_points(vertices, self.road_cum, sigma, normals, offset)
        offset_ahead = offset if offset_ahead is None else offset_ahead
        ahead = polyline_points(vertices, self.road_cum, sigma + HEADING_LOOKAHEAD, normals, offset_ahead) - p
        return p, torch.atan2(ahead[..., 1], ahead[..., 0])

    @staticmethod
    def _place(qpos: torch.Tensor, q: torch.Tensor, shift: torch.Tensor, yaw: torch.Tensor) -> None:
        """Write planar poses: shift (N, J, 2) from the bodies' parked spots, yaw (N, J)."""
        qpos[:, q[:, 0]] = shift[..., 0]
        qpos[:, q[:, 1]] = shift[..., 1]
        qpos[:, q[:, 2]] = yaw

    def _traffic_command(self) -> torch.Tensor:
        """(N, M, 3) velocities that bring each traffic car onto its lane schedule by the step's end."""
        nt, sched = self.num_traffic, self.traffic
        t_next = (self.episode_length + 1).float()[:, None] * self.dt
        sigma, offset = sched.at(t_next)
        ahead = None  # mid-change, a car heads for where it will be HEADING_LOOKAHEAD m on
        if self.lane_change.enabled:
            ahead = sched.at(t_next + HEADING_LOOKAHEAD / sched.speed.clamp(min=1.0))[1]
        target, yaw = self._lane_pose(self.road_vertices, self.road_normals, sigma, offset, ahead)
        qpos = self.backend.state().qpos
        now = self._traffic_home + qpos.index_select(1, self._traffic_xy_cols).view(self.num_envs, nt, 2)
        vel = (target - now) / self.dt
        spin = wrap_angle(yaw - qpos.index_select(1, self._traffic_yaw_cols)) / self.dt
        return torch.cat([vel, spin[..., None]], -1)
