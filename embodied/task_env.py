"""What every task shares: the action pipeline, term evaluation, auto-reset, final_obs, blow-ups.

A task subclasses ``TaskEnv`` and supplies: how an action becomes actuator controls, the batched
state its term functions read (read without side effects), the trackers that advance once per
step (air time, last action), which initial states to reset to, and per-episode bookkeeping.
Rewards, costs, terminations and observations are config-weighted terms from the family's own
namespace (``embodied.terms.namespaces``).

One action pipeline: sanitize (NaN -> 0, clamp) -> safety filters -> disturbances and latency ->
actuator control. One step order: physics -> read state -> advance trackers (only envs that
stepped) -> rewards, costs, terminations (frames on demand, cached) -> auto-reset -> observe.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from embodied.env import Obs, StepOut
from embodied.errors import ConfigError
from embodied.terms import Term, build_terms, weighted_sum
from embodied.terms.namespaces import family_terms
from policies.safety import FilterChain
from policies.spec import ObsSpec, TensorSpec
from sim.backend import SimBackend, SimConfigError
from sim.randomize import (
    ACTUATOR_DELAY,
    ACTUATOR_RANGES,
    RANGES,
    PhysicsParams,
    check_config,
    sample_physics,
)
from sim.render import Marker

OBS_CLIP = 100.0


@dataclass(frozen=True)
class Markers:
    """One visual-only shape per env (``pos`` (N, 3) torch, world frame); see ``sim.render.Marker``."""

    pos: torch.Tensor
    kind: str = "sphere"
    size: tuple[float, float, float] = (0.02, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = (0.1, 0.8, 0.2, 1.0)


class TaskEnv:
    """BatchedEnv over a SimBackend; subclasses implement the ``_`` hooks below."""

    def __init__(self, cfg: Mapping[str, Any], backend: SimBackend, seed: int = 0) -> None:
        self.cfg = cfg
        self.backend = backend
        self.num_envs = backend.num_envs
        self.device = backend.device
        self.dt = backend.physics_dt * backend.decimation
        self.max_episode_length = math.ceil(float(cfg["episode_length_s"]) / self.dt)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.episode_length = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        tables = family_terms(str(cfg.get("family")))
        self.rewards = build_terms(cfg.get("rewards"), tables["rewards"], "reward", context=self)
        self.costs = build_terms(cfg.get("costs"), tables["costs"], "cost", context=self)
        self.terminations = build_terms(
            cfg.get("terminations"), tables["terminations"], "termination", context=self
        )
        groups = cfg.get("observations") or {}
        if "policy" not in groups:
            raise ConfigError("task config needs an observations.policy group")
        reserved = ("scale", "clip", "noise", "history")
        self.obs_terms = {
            g: build_terms(
                spec, tables["observations"], f"observation ({g})", reserved=reserved, context=self
            )
            for g, spec in groups.items()
        }
        for g, terms in self.obs_terms.items():
            for t in terms:
                h = t.meta.get("history", 1)
                if isinstance(h, bool) or not isinstance(h, int) or h < 1:
                    raise ConfigError(f"observations.{g}.{t.name}.history must be an integer >= 1, got {h!r}")
        # Terms with history > 1: the last `history` samples (N, H, d), oldest first, per (group, term).
        # After a reset an env's history is filled with its first sample, as the deploy runner does.
        self._obs_history: dict[tuple[str, int], torch.Tensor] = {}
        self._history_refill = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.filters = FilterChain()  # the safety-filter stage: empty unless set_filters is called
        self.intervention_penalty = 0.0
        self.unstable_total = torch.zeros((), dtype=torch.long, device=self.device)
        self.nan_action_total = torch.zeros((), dtype=torch.long, device=self.device)
        # A task whose policy acts in other coordinates (IK, gripper) sets action_dim before this.
        self.action_dim = int(getattr(self, "action_dim", backend.info.nu))
        self._init_randomization(dict(cfg.get("randomization") or {}))
        self.camera = cfg.get("camera", -1)
        # Camera observations: obs["rgb"] (N, 3, H, W) uint8, rendered only when enabled.
        rgb = dict(cfg.get("rgb") or {})
        unknown = sorted(set(rgb) - {"enabled", "width", "height", "camera", "observe"})
        if unknown:
            raise ConfigError(f"unknown rgb keys {unknown}; known: enabled, width, height, camera, observe")
        self.rgb_shape: tuple[int, int, int] | None = None
        if rgb.get("enabled", False):
            self.rgb_shape = (3, int(rgb.get("height", 84)), int(rgb.get("width", 84)))
            if min(self.rgb_shape) < 1:
                raise ConfigError(f"rgb width and height must be >= 1, got {rgb}")
        self.rgb_camera = self.camera if rgb.get("camera") is None else rgb["camera"]
        # observe=false: frames are drawn only when a term asks (a VLM reward every k steps), not into obs.
        self.rgb_observe = self.rgb_shape is not None and bool(rgb.get("observe", True))
        self._rgb_last: tuple[torch.Tensor, torch.Tensor] | None = None  # (time, qpos) key, frames
        self.state = self._read_state(torch.zeros(self.num_envs, self.action_dim, device=self.device))
        obs = self._check_terms()
        self.obs_spec: ObsSpec = {g: TensorSpec((int(obs[g].shape[-1]),)) for g in self.obs_terms}
        if self.rgb_observe:
            self.obs_spec["rgb"] = TensorSpec(self.rgb_shape, torch.uint8, "rgb")
        self._reset(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._obs = self._observe(self.state)

    # -- hooks ---------------------------------------------------------------------------------
    def _action_to_ctrl(self, action: torch.Tensor) -> torch.Tensor:
        """(N, A) in [-1, 1] -> (N, nu) actuator controls."""
        raise NotImplementedError

    def _read_state(self, action: torch.Tensor) -> Any:
        """The batched state term functions read, after ``action`` (N, A) was applied.

        Free of side effects: called again after resets, so it must not advance any tracker.
        """
        raise NotImplementedError

    def _advance(self, s: Any) -> None:
        """Advance per-step trackers (air time, last action) from the state of a physics step.

        Called once per ``step`` with the state every env stepped into, never after a reset.
        """

    def _reset_state(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial (qpos (N, nq), qvel (N, nv)); rows where mask is false are ignored."""
        raise NotImplementedError

    def _on_reset(self, mask: torch.Tensor) -> None:
        """Per-episode task bookkeeping (commands, targets) for envs where mask is true."""

    def _disturb(self) -> None:
        """Random external disturbances before a physics step (pushes); none by default."""

    def _metrics(self, s: Any) -> dict[str, torch.Tensor]:
        """Per-env (N,) evaluation metrics of this step, reported as info["metric/<name>"]."""
        return {}

    # -- contract ------------------------------------------------------------------------------
    def reset(self, mask: torch.Tensor | None = None, *, seed: int | None = None) -> Obs:
        if seed is not None:
            self.generator.manual_seed(seed)
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._reset(mask.to(self.device))
        self._obs = self._observe(self.state)
        return self._obs

    def set_filters(self, chain: FilterChain, intervention_penalty: float = 0.0) -> None:
        """Install the safety-filter stage (built against ``obs_layout("policy")`` and ``action_dim``).

        ``intervention_penalty``: reward paid per second times the size of the filters' correction
        ``|applied - proposed|`` (so a policy learns to propose safe actions), logged as
        ``log/reward/safety_intervention``; 0 leaves the reward alone.
        """
        if not math.isfinite(intervention_penalty) or intervention_penalty < 0:
            raise ConfigError(f"safety.intervention_penalty must be >= 0, got {intervention_penalty}")
        self.filters = chain
        self.intervention_penalty = float(intervention_penalty)

    def frames(self) -> torch.Tensor:
        """(N, 3, H, W) uint8 camera frames of the current state (the ``rgb`` config), cached.

        Terms that score images (a VLM reward) call this; ``obs["rgb"]`` reuses the same frames.
        """
        if self.rgb_shape is None:
            raise ConfigError("this task renders no frames: set rgb.enabled=true in its config")
        _, h, w = self.rgb_shape
        sim = self.backend.state()
        markers = self.markers()
        key = torch.cat([sim.time[:, None], sim.qpos, *(m.pos for m in markers)], dim=1)
        last = self._rgb_last
        # Only envs whose (time, qpos) changed since the last frames are drawn again: after an
        # auto-reset the other envs' final frames are still current, so a done step costs one
        # full render plus one of the reset envs, not two full renders.
        stale = (key != last[0]).any(dim=1) if last is not None else None
        if stale is None or bool(stale.all()):
            ids = list(range(self.num_envs))
            rgb = self.backend.render(ids, w, h, self.rgb_camera, self._marker_rows(markers, ids))
        elif bool(stale.any()):
            rgb = last[1].clone()
            ids = stale.nonzero().flatten().tolist()
            rgb[ids] = self.backend.render(ids, w, h, self.rgb_camera, self._marker_rows(markers, ids))
        else:
            return last[1]
        self._rgb_last = (key, rgb)
        return rgb

    def step(self, action: torch.Tensor) -> StepOut:
        if action.shape != (self.num_envs, self.action_dim):
            raise ValueError(
                f"action must have shape {(self.num_envs, self.action_dim)}, got {tuple(action.shape)}"
            )
        # 1. Sanitize: NaN/inf actions become 0 (the default pose) and are counted, never simulated.
        bad = ~torch.isfinite(action).all(dim=-1)
        self.nan_action_total += bad.sum()
        action = torch.nan_to_num(action.to(self.device, torch.float32), 0.0, 0.0, 0.0).clamp(-1.0, 1.0)
        # 2. Safety filters, on the observation the policy acted on. The algorithm keeps the action
        # it sampled; the filtered one is what the robot gets (and sees as its last action).
        log: dict[str, torch.Tensor] = {}
        safety: dict[str, torch.Tensor] = {}
        correction = None
        if len(self.filters):
            proposed = action
            action, intervened, finfo = self.filters(self._obs["policy"], action)
            action = action.clamp(-1.0, 1.0)
            correction = torch.linalg.vector_norm(action - proposed, dim=-1)
            safety["safety/intervened"] = intervened
            safety["safety/correction"] = correction  # |applied - proposed| over the whole chain
            for k, v in finfo.items():
                safety[f"safety/{k}"] = v
                if k.endswith("/intervened"):
                    log[f"log/safety/{k.removesuffix('/intervened')}/intervention_rate"] = v.float().mean()
                else:  # magnitudes, and whatever else a filter reports (the cbf's infeasible rows)
                    log[f"log/safety/{k}"] = v.float().mean()
            log["log/safety/intervention_rate"] = intervened.float().mean()
        # 3. Disturbances and latency, 4. actuator control.
        self._disturb()
        unstable = self.backend.step(self._action_to_ctrl(self._delay(action)))
        self.unstable_total += unstable.sum()
        self.episode_length += 1
        s = self.state = self._read_state(action)
        self._advance(s)

        reward = weighted_sum(self.rewards, s, self.num_envs, self.device, self.dt, log, "log/reward")
        for t in self.rewards:  # model-backed terms report what they scored (a VLM's similarities)
            extra = getattr(t.fn, "extra_logs", None) if t.stateful else None
            if extra is not None:
                log.update({f"log/{k}": v for k, v in extra().items()})
        if correction is not None and self.intervention_penalty > 0.0:
            penalty = -self.intervention_penalty * self.dt * correction
            log["log/reward/safety_intervention"] = penalty.mean()
            reward = reward + penalty
        cost_terms: dict[str, torch.Tensor] = {}
        cost = weighted_sum(self.costs, s, self.num_envs, self.device, 1.0, log, "log/cost", cost_terms)
        terminated = unstable.clone()
        for t in self.terminations:
            hit = t(s)
            log[f"log/termination/{t.name}"] = hit.float().mean()
            terminated |= hit
        # A blown-up env's state is garbage: no reward from it, and it is reset like a fall.
        reward = torch.where(unstable, 0.0, reward)
        truncated = (self.episode_length >= self.max_episode_length) & ~terminated
        obs = self._observe(s, advance=True)
        done = terminated | truncated
        log.update(self._dr_log)
        log["log/sim/unstable_resets"] = unstable.sum()
        log["log/sim/nan_actions"] = bad.sum()
        # Per-env metrics, including each cost term, so evaluation and videos can report cost events.
        metrics = {**self._metrics(s), **{f"cost/{k}": v for k, v in cost_terms.items()}}
        info = {
            "final_obs": obs,
            "applied_action": action,  # after sanitizing and filters, before latency (N, A)
            **log,
            **safety,
            **{f"metric/{k}": v for k, v in metrics.items()},
        }
        if bool(done.any()):
            self._reset(done)
            obs = self._observe(self.state)
        self._obs = obs
        return StepOut(obs, reward, cost, terminated, truncated, info)

    def close(self) -> None:
        self.backend.close()

    def render(
        self, env_ids: list[int], width: int = 320, height: int = 240, camera: str | int | None = None
    ) -> torch.Tensor:
        """(n, 3, H, W) uint8 frames of the chosen envs from ``camera`` (default: the task's)."""
        cam = self.camera if camera is None else camera
        return self.backend.render(env_ids, width, height, cam, self._marker_rows(self.markers(), env_ids))

    def markers(self) -> list[Markers]:
        """Visual-only shapes of the current episode (goals, targets, pads), drawn into every frame.

        None by default; a task whose goal is not a body of its model draws it here, so that what a
        camera policy or a VLM reward sees shows the goal the task's success is measured against.
        """
        return []

    @staticmethod
    def _marker_rows(markers: list[Markers], env_ids: list[int]) -> list[Marker]:
        ids = torch.as_tensor(env_ids, dtype=torch.long)
        return [
            Marker(m.pos[ids.to(m.pos.device)].double().cpu().numpy(), m.kind, m.size, m.rgba)
            for m in markers
        ]

    def robot_qpos_columns(self) -> torch.Tensor:
        """(q,) long: the qpos columns that draw the robot (the ``robot_qpos`` observation term).

        Every column by default; a task whose scene holds more than the robot names its own.
        """
        return torch.arange(self.backend.info.nq, device=self.device)

    def obs_layout(self, group: str = "policy") -> list[dict[str, Any]]:
        """Each observation term of a group in order: name, dim (of one sample), scale, clip, history
        (samples stacked oldest first: the term is dim * history wide), as export and deploy read it."""
        return [
            {
                "name": t.name,
                "dim": int(t(self.state).shape[-1]),
                "scale": float(t.meta.get("scale", 1.0)),
                "clip": None if t.meta.get("clip") is None else float(t.meta["clip"]),
                "history": int(t.meta.get("history", 1)),
            }
            for t in self.obs_terms[group]
        ]

    @staticmethod
    def _resolve_sensors(backend: SimBackend, patterns: Mapping[str, str]) -> dict[str, torch.Tensor]:
        """Sensor groups given as regexes over the model's sensor names -> sensordata columns."""
        cols: dict[str, torch.Tensor] = {}
        for group, pattern in patterns.items():
            names = [s for s in backend.sensor_names if re.fullmatch(pattern, s)]
            if not names:
                raise ConfigError(f"sensors.{group}: no sensor of the model matches {pattern!r}")
            idx: list[int] = []
            for name in names:
                sl = backend.sensor(name)
                idx.extend(range(sl.start, sl.stop))
            cols[group] = torch.tensor(idx, device=backend.device)
        return cols

    def action_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(offset, scale), each (A,): actuator control = offset + scale * clamp(action, -1, 1)."""
        raise NotImplementedError

    # -- internals -----------------------------------------------------------------------------
    def _init_randomization(self, r: dict[str, Any]) -> None:
        """Physics factors (sim/randomize.py) and action latency, resampled per env at reset."""
        try:
            check_config(r, known=("latency_steps", "push"))
        except SimConfigError as e:
            raise ConfigError(str(e)) from None
        self.rand_cfg = r
        n, dev = self.num_envs, self.device
        physics_keys = (*RANGES, *ACTUATOR_RANGES, ACTUATOR_DELAY, "com_offset")
        self._randomize_physics = any(k in r for k in physics_keys)
        if self._randomize_physics and not hasattr(self.backend, "set_physics"):
            raise ConfigError(f"the {type(self.backend).__name__} cannot randomize physics (no set_physics)")
        self.physics = PhysicsParams.nominal(
            n, self.backend.info.nbody if self._randomize_physics else 1, dev
        )
        lo, hi = (int(v) for v in r.get("latency_steps", (0, 0)))
        if not 0 <= lo <= hi:
            raise ConfigError(
                f"randomization.latency_steps must be [lo, hi] with 0 <= lo <= hi, got [{lo}, {hi}]"
            )
        self.latency_range = (lo, hi)
        self.latency = torch.zeros(n, dtype=torch.long, device=dev)
        self._action_buf = torch.zeros(n, hi + 1, self.action_dim, device=dev)
        self._dr_log: dict[str, torch.Tensor] = {}

    def _delay(self, action: torch.Tensor) -> torch.Tensor:
        """The action each env's actuators receive: ``latency`` control steps old."""
        if self.latency_range[1] == 0:
            return action
        self._action_buf = torch.cat([action[:, None], self._action_buf[:, :-1]], dim=1)
        return self._action_buf[torch.arange(self.num_envs, device=self.device), self.latency]

    def _resample_randomization(self, mask: torch.Tensor) -> None:
        n, g, dev = self.num_envs, self.generator, self.device
        if self._randomize_physics:
            new = sample_physics(self.rand_cfg, n, self.physics.mass_scale.shape[1], g, dev)
            for name in PhysicsParams.__dataclass_fields__:
                cur, fresh = getattr(self.physics, name), getattr(new, name)
                m = mask.view(-1, *([1] * (cur.dim() - 1)))
                setattr(self.physics, name, torch.where(m, fresh, cur))
            self.backend.set_physics(mask, self.physics)
            self._dr_log = {f"log/dr/{k}": v for k, v in self.physics.configured_means(self.rand_cfg).items()}
        lo, hi = self.latency_range
        if hi > 0:
            lat = torch.randint(lo, hi + 1, (n,), generator=g, device=dev)
            self.latency = torch.where(mask, lat, self.latency)
            self._action_buf = torch.where(mask[:, None, None], 0.0, self._action_buf)
            self._dr_log["log/dr/latency_steps"] = self.latency.float().mean()

    def randomize_episode_lengths(self) -> None:
        """Start every env at a uniform random step of its episode (rsl_rl's init_at_random_ep_len).

        Called once when training starts: the envs' time limits then fall on different steps, so
        the learning curve does not dip every ``max_episode_length`` steps when all of them reset.
        """
        self.episode_length = torch.randint(
            0, self.max_episode_length, (self.num_envs,), generator=self.generator, device=self.device
        )

    def _reset(self, mask: torch.Tensor) -> None:
        self._resample_randomization(mask)
        qpos, qvel = self._reset_state(mask)
        self.backend.reset(mask, qpos, qvel)
        self.episode_length.masked_fill_(mask, 0)
        self._on_reset(mask)
        for t in (*self.rewards, *self.costs, *self.terminations):
            t.reset(mask)
        self._history_refill |= mask
        self.state = self._read_state(torch.where(mask[:, None], 0.0, self.state.action))

    def _observe(self, s: Any, advance: bool = False) -> Obs:
        """The observation groups of state ``s``. ``advance``: ``s`` is a new step's state, so the
        histories take its sample; otherwise only the envs reset since the last call refill theirs."""
        out = {}
        for group, terms in self.obs_terms.items():
            parts = []
            for i, t in enumerate(terms):
                v = t(s)
                noise = float(t.meta.get("noise", 0.0))
                if noise > 0.0:
                    v = (
                        v
                        + (torch.rand(v.shape, generator=self.generator, device=self.device) * 2 - 1) * noise
                    )
                v = v * float(t.meta.get("scale", 1.0))
                clip = t.meta.get("clip")
                v = v.clamp(-clip, clip) if clip is not None else v
                history = int(t.meta.get("history", 1))
                parts.append(v if history == 1 else self._stack(group, i, v, history, advance))
            out[group] = torch.nan_to_num(torch.cat(parts, dim=-1), 0.0, OBS_CLIP, -OBS_CLIP).clamp(
                -OBS_CLIP, OBS_CLIP
            )
        if self.rgb_observe:
            out["rgb"] = self.frames()
        self._history_refill.zero_()
        return out

    def _stack(self, group: str, index: int, v: torch.Tensor, history: int, advance: bool) -> torch.Tensor:
        """(N, history * d): the term's last ``history`` samples, oldest first; ``v`` (N, d) is the newest."""
        fill = v[:, None].expand(-1, history, -1)
        buf = self._obs_history.get((group, index))
        if buf is None:
            buf = fill
        else:
            if advance:
                buf = torch.cat([buf[:, 1:], v[:, None]], 1)
            buf = torch.where(self._history_refill[:, None, None], fill, buf)
        self._obs_history[(group, index)] = buf
        return buf.flatten(1)

    def _check_terms(self) -> Obs:
        """Evaluate every term once, so a term that needs data this model lacks fails at build time."""
        s = self.state
        for kind, terms in (
            ("reward", self.rewards),
            ("cost", self.costs),
            ("termination", self.terminations),
        ):
            for t in terms:
                self._try(kind, t, s)
        for group, terms in self.obs_terms.items():
            for t in terms:
                self._try(f"observation ({group})", t, s)
        return self._observe(s)

    @staticmethod
    def _try(kind: str, t: Term, s: Any) -> None:
        try:
            t(s)
        except (TypeError, AttributeError) as e:
            raise ConfigError(
                f"{kind} term {t.name!r} needs data this robot model does not provide ({e})"
            ) from None
