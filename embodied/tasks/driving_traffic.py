"""Traffic cars of the driving task: each drives its lane at its lane's speed, and may change lanes.

A car's schedule is closed form in the episode time t (s): its road arc ``sigma(t)`` and lane offset
``d(t)`` (from the road's centre line, left positive). Without a lane change ``sigma = sigma0 + v t``
and ``d`` is its lane's offset. A lane change started at ``t0`` blends ``d`` to the other lane's
offset over ``duration`` s by ``b(u) = (1 - cos(pi u)) / 2``, ``u = (t - t0) / duration``, and the
speed to the new lane's speed the same way, so that the cars of one lane share one speed and keep
their distances: ``sigma`` gains ``(v1 - v0) * duration * B(u)`` with ``B`` the integral of ``b``.
Once the change is over the car is re-anchored on the new lane (``sigma0``, ``v`` and ``d`` rewritten,
the schedule unchanged).

Changes start at random (``traffic.lane_change``): each car that is not changing draws one with
hazard ``rate`` per second, plus ``cut_in_rate`` while it drives in a lane next to the ego car's and
``cut_in_ahead`` m ahead of it (it then heads for the ego's lane). A change starts only where it
keeps clear: no other car of the target lane (or changing into it) within ``gap`` m of road arc, now
and once the speed blend is over; and where the ego car occupies the target lane, the changing car is
at least ``cut_in_ahead[0]`` m ahead of it or ``gap`` m behind it (no side swipes). So traffic cars
never overlap one another, up to two cars that swap lanes at the same step from at least ``gap`` m
apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from embodied.errors import ConfigError

LANE_CHANGE_KEYS = ("rate", "duration", "gap", "cut_in_rate", "cut_in_ahead")


@dataclass(frozen=True)
class LaneChange:
    """``traffic.lane_change``: hazards per second per car, and how a change moves and keeps clear."""

    rate: float = 0.0  # 1/s, any car
    duration: float = 3.0  # s from one lane centre to the next
    gap: float = 10.0  # m of road arc kept free around the car in the target lane (centre to centre)
    cut_in_rate: float = 0.0  # 1/s on top of rate, next to the ego's lane and cut_in_ahead ahead of it
    cut_in_ahead: tuple[float, float] = (8.0, 20.0)  # m ahead of the ego (its frame), centre to centre

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.cut_in_rate > 0


def parse_lane_change(cfg: Mapping[str, Any] | None, lanes: int) -> LaneChange:
    """``traffic.lane_change`` -> LaneChange (no key: no lane changes, today's traffic)."""
    c = dict(cfg or {})
    unknown = sorted(set(c) - set(LANE_CHANGE_KEYS))
    if unknown:
        raise ConfigError(f"unknown traffic.lane_change keys {unknown}; known: {', '.join(LANE_CHANGE_KEYS)}")
    ahead = c.get("cut_in_ahead", LaneChange.cut_in_ahead)
    if ahead is None or len(ahead) != 2 or float(ahead[0]) > float(ahead[1]):
        raise ConfigError(
            f"traffic.lane_change.cut_in_ahead must be a range [lo, hi] with lo <= hi, got {ahead!r}"
        )
    lc = LaneChange(
        rate=float(c.get("rate", LaneChange.rate)),
        duration=float(c.get("duration", LaneChange.duration)),
        gap=float(c.get("gap", LaneChange.gap)),
        cut_in_rate=float(c.get("cut_in_rate", LaneChange.cut_in_rate)),
        cut_in_ahead=(float(ahead[0]), float(ahead[1])),
    )
    for key in ("rate", "cut_in_rate", "gap"):
        if getattr(lc, key) < 0:
            raise ConfigError(f"traffic.lane_change.{key} must be >= 0, got {getattr(lc, key)}")
    if lc.duration <= 0:
        raise ConfigError(f"traffic.lane_change.duration must be > 0 s, got {lc.duration}")
    if lc.enabled and lanes < 2:
        raise ConfigError(f"traffic.lane_change needs road.lanes >= 2, got {lanes}")
    return lc


def cosine_blend(u: torch.Tensor) -> torch.Tensor:
    """0 -> 1 over u in [0, 1], with zero slope at both ends; 0 before and 1 after."""
    return 0.5 * (1 - torch.cos(math.pi * u.clamp(0.0, 1.0)))


def cosine_blend_integral(u: torch.Tensor) -> torch.Tensor:
    """The integral of ``cosine_blend`` from 0 to u: 0 before, u - 1/2 after the blend."""
    uc = u.clamp(0.0, 1.0)
    return 0.5 * uc - torch.sin(math.pi * uc) / (2 * math.pi) + (u.clamp(min=0.0) - uc)


class TrafficSchedule:
    """Every traffic car's road arc and lane offset in time, (N, M) tensors; lane changes included.

    ``sigma0``, ``speed`` and ``offset`` are the car's anchor: road arc at t = 0, speed, and the offset
    of the lane it drives in (the lane it leaves during a change).
    """

    def __init__(
        self,
        num_envs: int,
        num_cars: int,
        lane_centers: torch.Tensor,
        change: LaneChange,
        car_half_width: float,
    ) -> None:
        dev, f32 = lane_centers.device, dict(device=lane_centers.device, dtype=torch.float32)
        self.change = change
        self.lane_centers = lane_centers  # (lanes,) offsets from the road's centre line
        self.lane_width = float(lane_centers[1] - lane_centers[0]) if len(lane_centers) > 1 else 0.0
        self.car_half_width = car_half_width
        n, m = num_envs, num_cars
        self.sigma0 = torch.zeros(n, m, **f32)
        self.speed = torch.zeros(n, m, **f32)
        self.offset = torch.zeros(n, m, **f32)
        self.lane = torch.zeros(n, m, dtype=torch.long, device=dev)
        self.lane_speed = torch.zeros(n, len(lane_centers), **f32)
        # The change in progress: target lane, its offset and speed, start time; changing false: none.
        self.changing = torch.zeros(n, m, dtype=torch.bool, device=dev)
        self.target = torch.zeros(n, m, dtype=torch.long, device=dev)
        self.target_offset = torch.zeros(n, m, **f32)
        self.target_speed = torch.zeros(n, m, **f32)
        self.t0 = torch.zeros(n, m, **f32)
        self.changes_started = torch.zeros(n, dtype=torch.long, device=dev)  # this episode

    def reset(
        self, mask: torch.Tensor, sigma0: torch.Tensor, lane: torch.Tensor, lane_speed: torch.Tensor
    ) -> None:
        """New cars where mask (N,) is true: road arcs sigma0 (N, M), lanes (N, M), lane speeds (N, lanes)."""
        m = mask[:, None]
        self.sigma0 = torch.where(m, sigma0, self.sigma0)
        self.lane = torch.where(m, lane, self.lane)
        self.offset = torch.where(m, self.lane_centers[lane], self.offset)
        self.lane_speed = torch.where(m, lane_speed, self.lane_speed)
        self.speed = torch.where(m, lane_speed.gather(1, lane), self.speed)
        self.changing &= ~m
        self.changes_started = torch.where(mask, 0, self.changes_started)

    def at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Road arcs and lane offsets (N, M) at times t ((N, 1) or (N, M), s since the episode began)."""
        sigma = self.sigma0 + self.speed * t
        if not self.change.enabled:
            return sigma, self.offset.expand_as(sigma)
        dur = self.change.duration
        u = torch.where(self.changing, (t - self.t0) / dur, 0.0)
        sigma = sigma + (self.target_speed - self.speed) * dur * cosine_blend_integral(u)
        offset = self.offset + (self.target_offset - self.offset) * cosine_blend(u)
        return sigma, offset

    def advance(
        self,
        t: torch.Tensor,
        dt: float,
        generator: torch.Generator,
        ego_ahead: torch.Tensor,
        ego_road_offset: torch.Tensor,
    ) -> None:
        """End the changes that are over by time t (N,) and start new ones for the step of dt s ahead.

        ego_ahead: (N, M) each car's distance ahead of the ego car along the ego's heading (m);
        ego_road_offset: (N,) the ego's offset from the road's centre line.
        """
        c = self.change
        if not c.enabled:
            return
        t = t[:, None]
        done = self.changing & (t >= self.t0 + c.duration)
        if bool(done.any()):
            shift = (self.target_speed - self.speed) * (self.t0 + 0.5 * c.duration)
            self.sigma0 = torch.where(done, self.sigma0 - shift, self.sigma0)
            self.speed = torch.where(done, self.target_speed, self.speed)
            self.offset = torch.where(done, self.target_offset, self.offset)
            self.lane = torch.where(done, self.target, self.lane)
            self.changing &= ~done

        lanes = len(self.lane_centers)
        ego_lane = (
            ((ego_road_offset - self.lane_centers[0]) / self.lane_width).round().long().clamp(0, lanes - 1)
        )
        if lanes == 2:
            target = 1 - self.lane
        else:  # a random neighbour, turned back at the road's edges
            step = torch.where(torch.rand(self.lane.shape, generator=generator, device=t.device) < 0.5, -1, 1)
            target = self.lane + step
            target = torch.where((target < 0) | (target >= lanes), self.lane - step, target)
        lo, hi = c.cut_in_ahead
        cut_in = ((self.lane - ego_lane[:, None]).abs() == 1) & (ego_ahead >= lo) & (ego_ahead <= hi)
        target = torch.where(cut_in, ego_lane[:, None].expand_as(target), target)
        hazard = c.rate + c.cut_in_rate * cut_in.float()
        draw = torch.rand(self.lane.shape, generator=generator, device=t.device)
        start = (
            ~self.changing
            & (draw < 1 - torch.exp(-hazard * dt))
            & self._clear(t, target, ego_ahead, ego_road_offset)
        )
        if not bool(start.any()):
            return
        self.target = torch.where(start, target, self.target)
        self.target_offset = torch.where(start, self.lane_centers[target], self.target_offset)
        self.target_speed = torch.where(start, self.lane_speed.gather(1, target), self.target_speed)
        self.t0 = torch.where(start, t.expand_as(self.t0), self.t0)
        self.changing |= start
        self.changes_started += start.sum(1)

    def _clear(
        self, t: torch.Tensor, target: torch.Tensor, ego_ahead: torch.Tensor, ego_road_offset: torch.Tensor
    ) -> torch.Tensor:
        """(N, M) bool: car i may move into lane ``target[i]`` now (see the module's docstring)."""
        c, m = self.change, self.lane.shape[1]
        sigma, _ = self.at(t)
        gap = sigma[:, None, :] - sigma[:, :, None]  # (N, i, j): car j ahead of car i by this much
        # The gap once car i's speed blend is over: car j keeps its speed, car i gains half the change.
        v_i, v_k = self.speed[:, :, None], self.lane_speed.gather(1, target)[:, :, None]
        after = gap + (self.speed[:, None, :] - v_i) * c.duration - (v_k - v_i) * 0.5 * c.duration
        tgt = target[:, :, None]
        in_target = (self.lane[:, None, :] == tgt) | (
            self.changing[:, None, :] & (self.target[:, None, :] == tgt)
        )
        other = ~torch.eye(m, dtype=torch.bool, device=t.device)
        close = (gap.abs() < c.gap) | (after.abs() < c.gap) | (gap * after < 0)
        cars_clear = ~(in_target & other & close).any(-1)
        ego_center = self.lane_centers[target] - ego_road_offset[:, None]
        ego_there = ego_center.abs() < 0.5 * self.lane_width + self.car_half_width
        ego_clear = ~ego_there | (ego_ahead >= c.cut_in_ahead[0]) | (ego_ahead <= -c.gap)
        return cars_clear & ego_clear
