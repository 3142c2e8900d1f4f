"""The swept-corridor barrier of a car: range-ray hits kept out of the strip the car will drive through.

A polynomial in the ray readings cannot tell a hit in the car's path from one beside it; this barrier
can. Each ray's hit point is placed in the car's frame and compared with the car's path, taken as the
lane's centre line (the ``route_waypoints``, linearly interpolated) shifted to pass through the car.
Its lateral offset ``e`` from that path decides which of two rows the ray gives:

- **in the corridor** (``|e| < half_width + margin``): a braking row keeping time to the hit,
  ``h = range - standoff + headway * range rate`` (the rate is the ``range_rate`` term where the
  observation has one, else ``-v cos(angle)``, a standing obstacle); its one-step change is
  ``rate * dt - headway * cos(angle) * (c0 + c1 v + brake * a_throttle)`` with ``speed_drift =
  [c0, c1]`` (the throttle action sets a wheel-speed target, so with a zero action a slow car speeds
  up and a fast one slows down);
- **beside it**, within ``lookahead`` m ahead: a lateral row keeping the hit outside the corridor
  (a hit in the corridor's margin, beyond the car's half width, gets one too, which pushes it out),
  a lane-edge barrier whose edge is the hit, ``h = s e - w - s T u`` with ``s`` the side of the hit,
  ``u`` the car's lateral speed across its lane (``v psi + v_left``, fitted per step as
  ``offset_rate``) and ``T = horizon``; the steering moves ``u`` by ``steer_gain * v^2`` per unit;
- **beside the car's nose**, within ``near`` m: a near row, the lateral row in the car's own frame,
  ``h = s y - w - s T (v_left + omega x_c)``, since a yawed car's nose closes in on a hit beside it
  faster than the lane's frame says.

A ray that sees nothing, or a hit outside both regions, gives an inactive row. Every ray's row bounds
one action alone (braking rows the throttle, lateral rows the steering), so the barrier hands the
filter three rows, the tightest bound of each kind (throttle from above, steering from above and from
below): the same constraint set at any number of rays. The h of each is the lowest h of its rays,
``INACTIVE`` where no ray has a row, so that it never reads as a violation. ``per_ray`` gives the rows
before they are combined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from policies.safety.base import FilterError, Layout, term_slice

INACTIVE = 1.0e6  # h of a row group with no ray in it
BOUND = 1.0e3  # |action bound| standing for "none" (a row that constrains nothing) or "impossible"

TERMS = ("rays", "rates", "waypoints", "velocity", "lane")
NUMBERS = {
    "max_range": 40.0,  # m, the rays' range (raw ray values are range / max_range)
    "fov_deg": 150.0,  # degrees spanned by the rays, centred ahead
    "origin_ahead": 2.1,  # m from the car's centre forward to where the rays start
    "half_width": 0.85,  # m, half the car's width
    "margin": 0.15,  # m added to the half width: the corridor's half width is their sum
    "lookahead": 12.0,  # m ahead of the ray origin within which lateral rows apply
    "near": 6.0,  # m ahead of the ray origin within which near rows (car frame) apply
    "standoff": 1.0,  # m kept to a hit in the corridor
    "headway": 1.5,  # s of range rate kept on top of the standoff
    "brake": 0.35,  # m/s per step per unit of throttle action (the cautious fit)
    "horizon": 0.5,  # s of lateral speed in the lateral rows
    "steer_gain": 0.0043,  # rad of heading per step per (m/s) per unit of steering action
    "dt": 0.1,  # s per policy step
    "rate": 0.3,  # gamma of the braking rows
    "lateral_rate": 0.5,  # gamma of the lateral rows
}
OFFSET_RATE = (0.099, 0.092)  # lane-offset change per step per unit of v*psi and of v_left
SPEED_DRIFT = (0.39, -0.055)  # speed change per step with a zero throttle action: c0 + c1 v (m/s)


class SweptCorridor(nn.Module):
    """Braking and lateral rows per range ray; ``forward(obs) -> (G, b, h)``. Scriptable, exportable.

    ``action_dim`` is the car's (steering, throttle); ``spec`` names the observation terms (``rays``,
    ``rates`` optional, ``waypoints``, ``velocity``, ``lane``) and overrides the numbers above.
    """

    def __init__(self, spec: Mapping[str, Any], layout: Layout, action_dim: int, where: str) -> None:
        super().__init__()
        if action_dim != 2:
            raise FilterError(f"{where}: a swept corridor needs the car's 2 actions, got {action_dim}")
        known = {"kind", *TERMS, *NUMBERS, "offset_rate", "speed_drift"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise FilterError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        p = {k: _number(spec.get(k, v), f"{where} {k}") for k, v in NUMBERS.items()}
        for k in ("max_range", "half_width", "lookahead", "dt", "brake", "steer_gain"):
            if not p[k] > 0:
                raise FilterError(f"{where}: {k} must be > 0, got {p[k]}")
        for k in ("rate", "lateral_rate"):
            if not 0.0 < p[k] <= 1.0:
                raise FilterError(f"{where}: {k} must be in (0, 1], got {p[k]}")
        offset_rate = spec.get("offset_rate", OFFSET_RATE)
        if not isinstance(offset_rate, list | tuple) or len(offset_rate) != 2:
            raise FilterError(f"{where}: offset_rate must be two numbers, got {offset_rate!r}")
        k_vpsi, k_vleft = (_number(v, f"{where} offset_rate") for v in offset_rate)
        speed_drift = spec.get("speed_drift", SPEED_DRIFT)
        if not isinstance(speed_drift, list | tuple) or len(speed_drift) != 2:
            raise FilterError(f"{where}: speed_drift must be two numbers [c0, c1], got {speed_drift!r}")
        c0, c1 = (_number(v, f"{where} speed_drift") for v in speed_drift)
        names = {"rays": "range_rays", "waypoints": "route_waypoints", "velocity": "ego_velocity"}
        names.update({"lane": "lane_error", "rates": "range_rate"})
        names.update({k: str(spec[k]) for k in TERMS if spec.get(k) is not None})
        cols = {}
        for k in TERMS:
            if k == "rates" and (("rates" in spec and spec["rates"] is None) or not _has(layout, names[k])):
                if spec.get("rates") is not None:
                    raise FilterError(f"{where}: the policy observation has no term {names[k]!r}")
                continue  # `rates: null`, or no range_rate in this observation: standing obstacles
            try:
                cols[k] = term_slice(layout, names[k])
            except FilterError as e:
                raise FilterError(f"{where}: {e}") from None
            if cols[k][2] == 0.0:
                raise FilterError(
                    f"{where}: observation term {names[k]!r} has scale 0, its raw value is lost"
                )
        rays = cols["rays"][1] - cols["rays"][0]
        if "rates" in cols and cols["rates"][1] - cols["rates"][0] != rays:
            raise FilterError(f"{where}: {names['rates']!r} has a different width than {names['rays']!r}")
        if (cols["waypoints"][1] - cols["waypoints"][0]) % 2 or cols["waypoints"][1] == cols["waypoints"][0]:
            raise FilterError(f"{where}: {names['waypoints']!r} must hold (x, y) pairs")
        if cols["velocity"][1] - cols["velocity"][0] < 2 or cols["lane"][1] - cols["lane"][0] < 2:
            raise FilterError(f"{where}: velocity needs (forward, left) and lane (offset, heading error)")

        fov = math.radians(p["fov_deg"])
        angles = torch.zeros(1) if rays == 1 else torch.linspace(-fov / 2, fov / 2, rays)
        self.register_buffer("cos", torch.cos(angles))
        self.register_buffer("sin", torch.sin(angles))
        self.rays = rays
        self.has_rates = "rates" in cols
        self.ray_cols = (cols["rays"][0], cols["rays"][1], cols["rays"][2])
        self.rate_cols = cols.get("rates", (0, 0, 1.0))
        self.wp_cols = cols["waypoints"]
        self.vel_cols = cols["velocity"]
        self.lane_cols = cols["lane"]
        self.p = {k: float(v) for k, v in p.items()}
        self.width = p["half_width"] + p["margin"]
        self.k_vpsi, self.k_vleft = float(k_vpsi), float(k_vleft)
        self.c0, self.c1 = float(c0), float(c1)
        self.num_rows = 3
        self.inactive = INACTIVE
        self.bound = BOUND

    def _raw(self, obs: torch.Tensor, cols: tuple[int, int, float]) -> torch.Tensor:
        return obs[:, cols[0] : cols[1]] / cols[2]

    def path_offset(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(e, x, r): each hit's lateral offset from the car's path (m, left +), its distance ahead of
        the ray origin and its range, all (B, R)."""
        r = self._raw(obs, self.ray_cols) * self.p["max_range"]
        x, y = r * self.cos, r * self.sin
        xc = x + self.p["origin_ahead"]  # in the car-centre frame, where the waypoints are
        wp = self._raw(obs, self.wp_cols).reshape(obs.shape[0], -1, 2)
        offset = self._raw(obs, self.lane_cols)[:, 0:1]
        px = torch.cat([torch.zeros_like(offset), wp[..., 0]], 1)  # (B, K + 1): the lane's centre line
        py = torch.cat([-offset, wp[..., 1]], 1)
        # Piecewise-linear interpolation as a sum of ramps: exact while the centre line's x increases.
        seg = (px[:, 1:] - px[:, :-1]).clamp(min=1.0e-3)[:, None]  # (B, 1, K)
        t = ((xc[..., None] - px[:, None, :-1]) / seg).clamp(0.0, 1.0)
        slope_end = (py[:, -1] - py[:, -2]) / seg[:, 0, -1]
        beyond = (xc - px[:, -1:]).clamp(min=0.0) * slope_end[:, None]  # straight on past the last one
        lane_y = py[:, :1] + (t * (py[:, 1:] - py[:, :-1])[:, None]).sum(-1) + beyond
        return y - (lane_y + offset), x, r

    def per_ray(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each ray's braking and lateral row, (B, R) each: ``h_*``, ``b_*`` (the bound of
        ``gain * a >= b``), ``gain_*`` (on throttle and on steering), ``on_*`` (the row applies) and
        ``side`` / ``side_near`` (+1 for a hit on the left of the path / of the car, -1 on the right)."""
        p = self.p
        e, x, r = self.path_offset(obs)
        vel = self._raw(obs, self.vel_cols)
        lane = self._raw(obs, self.lane_cols)
        v, v_left, psi = vel[:, 0:1], vel[:, 1:2], lane[:, 1:2]
        hit = r < p["max_range"] * 0.999
        inside = e.abs() < self.width

        # Braking rows: time to the hit in the corridor.
        rate = self._raw(obs, self.rate_cols) if self.has_rates else -v * self.cos
        h_brake = r - p["standoff"] + p["headway"] * rate
        drift_brake = rate * p["dt"] - p["headway"] * self.cos * (self.c0 + self.c1 * v)
        # Lateral rows: a hit beside the corridor stays beside it.
        side = torch.where(e >= 0, 1.0, -1.0)
        u = self.k_vpsi * v * psi + self.k_vleft * v_left  # lateral motion across the lane per step
        h_side = side * e - self.width - side * (p["horizon"] / p["dt"]) * u
        # A hit in the margin, beyond the car's half width but within the corridor, is passed, not run
        # into: it gets both rows (the lateral one then pushes it out), unless such hits lie on both
        # sides of the path (something across it, like a car ahead: braking only).
        y, xc = r * self.sin, x + p["origin_ahead"]
        # Rays past 90 degrees (a fan wider than 180) see beside the car's front half, which steering
        # swings towards or away from a hit; hits beside its rear half or behind it are left alone.
        near = hit & (x <= p["lookahead"]) & (xc >= 0)
        band = near & inside & (e.abs() >= p["half_width"])
        blocked = (band & (e > 0)).any(1, keepdim=True) & (band & (e < 0)).any(1, keepdim=True)
        # Near rows: the same in the car's own frame, for hits within ``near`` m: the car's nose does
        # not turn with the lane, so a yawed car brings it closer to a hit beside it than the lane's
        # frame says. y' = y - (v_left + w xc) dt, and the steering sets the yaw rate w within a step.
        omega = vel[:, 2:3]
        side_n = torch.where(y >= 0, 1.0, -1.0)
        slip = v_left + omega * xc  # how fast the hit moves right in the car's frame, m/s
        h_near = side_n * y - self.width - side_n * p["horizon"] * slip
        drift_near = -side_n * slip * p["dt"] + side_n * p["horizon"] * omega * xc
        return {
            "h_brake": h_brake,
            "b_brake": -p["rate"] * h_brake - drift_brake,
            "gain_brake": -p["headway"] * p["brake"] * self.cos.expand_as(r),
            "on_brake": hit & inside & (self.cos > 0.2),  # ahead: braking does not help behind
            "side": side,
            "h_side": h_side,
            "b_side": -p["lateral_rate"] * h_side + side * u,
            "gain_side": -side * p["horizon"] * p["steer_gain"] * v * v,
            "on_side": near & (~inside | band & ~blocked),
            "side_near": side_n,
            "h_near": h_near,
            "b_near": -p["lateral_rate"] * h_near - drift_near,
            "gain_near": -side_n * p["horizon"] * xc * (p["steer_gain"] / p["dt"]) * v,
            "on_near": near & (y.abs() >= p["half_width"]) & (x <= p["near"]) & ~blocked,
        }

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Three rows: throttle <= the tightest braking bound, steering <= the tightest bound of the
        hits on the left, steering >= that of the hits on the right. Each ray's row acts on one action
        alone, so these bounds are the whole per-ray constraint set, exactly, at any ray count."""
        rows = self.per_ray(obs)
        big, off = self.bound, self.inactive
        brake_hi = _upper(rows["gain_brake"], rows["b_brake"], rows["on_brake"], big)
        gain = torch.cat([rows["gain_side"], rows["gain_near"]], 1)
        bound = torch.cat([rows["b_side"], rows["b_near"]], 1)
        on = torch.cat([rows["on_side"], rows["on_near"]], 1)
        h_lat = torch.cat([rows["h_side"], rows["h_near"]], 1)
        # Rows with an upper bound on the steering (steering left lowers their h) and with a lower one;
        # a row steering cannot move (at a standstill) goes by its side, so that the saturated
        # steering points away from its hit.
        still = gain.abs() <= 1.0e-6
        left_side = torch.cat([rows["side"], rows["side_near"]], 1) > 0
        left = on & ((gain < 0) & ~still | still & left_side)
        right = on & ~left
        steer_hi = _upper(gain, bound, left, big)
        steer_lo = -_upper(-gain, bound, right, big)
        h = torch.stack(
            [
                torch.where(rows["on_brake"], rows["h_brake"], off).amin(1),
                torch.where(left, h_lat, off).amin(1),
                torch.where(right, h_lat, off).amin(1),
            ],
            1,
        )
        b = torch.stack([-brake_hi, -steer_hi, steer_lo], 1)
        one = torch.ones_like(brake_hi)
        zero = torch.zeros_like(brake_hi)
        g = torch.stack(
            [torch.stack([zero, -one], 1), torch.stack([-one, zero], 1), torch.stack([one, zero], 1)], 1
        )
        return g, b, h


def _upper(gain: torch.Tensor, b: torch.Tensor, on: torch.Tensor, big: float) -> torch.Tensor:
    """(B,) the tightest upper bound on one action from rows ``gain * a >= b`` with ``gain <= 0``:
    a <= b / gain. A row whose gain is ~0 is met by any action or by none: no bound, or ``-big``
    (the solver then saturates and flags the row infeasible); no row: ``big``."""
    usable = gain < -1.0e-6
    bound = torch.where(usable, b / torch.where(usable, gain, -1.0), torch.where(b > 0, -big, big))
    return torch.where(on, bound, big).amin(1).clamp(-big, big)


def _has(layout: Layout, name: str) -> bool:
    return any(t["name"] == name for t in layout)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise FilterError(f"{where}: expected a finite number, got {value!r}")
    return float(value)
