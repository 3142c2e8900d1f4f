"""The policy observation as a graph of robot signals, built from the very term functions training uses.

Training evaluates each observation term on the task's state (``LocoState``); on a robot there is
no such state, only signals (joint encoders, an IMU, a velocity estimate, the command, the last
action). ``SignalState`` gives the terms the fields they read, computed from those signals with the
same torch code the task uses (projected gravity through ``embodied.math.quat_rotate_inverse``);
``ObservationGraph`` applies each term and its scale and clip from ``env.obs_layout("policy")``, as
the env does, and is exported as observation.onnx (inputs: the signals it reads; outputs:
``obs/<term>``). The robot-side runner keeps only history stacking and the final clip.

Observation noise is a training-time augmentation and stays out. A term that reads a field no robot
signal provides (contacts, base height, the joint state of a non-actuated body), or a stateful term
class, cannot be built: ``ObservationGraph`` refuses it with an ExportError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embodied.deploy.manifest import OBS_OUTPUT_PREFIX as OUTPUT_PREFIX
from embodied.deploy.manifest import PERCEPTION_PREFIX, SIGNALS, one_line, signal_width
from embodied.export.graph import ExportError
from embodied.math import quat_rotate_inverse
from embodied.terms import Term

# The state fields the observation terms read -> the robot signal that gives each one.
FIELDS = {
    "base_lin_vel": "base_lin_vel",
    "base_ang_vel": "imu_gyro",  # a gyro measures the base angular velocity in the base frame
    "projected_gravity": "imu_quat",  # computed: see SignalState.projected_gravity
    "command": "command",
    "joint_pos": "joint_pos",
    "joint_vel": "joint_vel",
    "action": "last_action",  # terms read the action of the step just taken as `action`
    "ee_pos": "ee_pos",  # an arm's forward kinematics
    "goal_pos": "goal_pos",  # an arm's target point (its command)
    "gait_time": "time",  # the runner counts control ticks since reset, as training counts steps
}
# Terms a robot's state estimation or perception stack hands over whole (input
# "perception/<term>", unscaled): the graph only scales and clips them. Per task family.
PERCEPTION = {
    "driving": (
        "ego_velocity",
        "steering_angle",
        "lane_error",
        "road_edges",
        "route_waypoints",
        "range_rays",
        "range_rate",
        "speed_limit",
    ),
}
CONSTANTS = ("default_joint_pos", "gait_period")  # robot and task facts, baked into the graph
# Where the same signals sit on a training state, for recording them (the inverse of FIELDS).
TRAINING_SIGNALS = {
    "base_lin_vel": "base_lin_vel",
    "imu_gyro": "base_ang_vel",
    "imu_quat": "base_quat",
    "command": "command",
    "joint_pos": "joint_pos",
    "joint_vel": "joint_vel",
    "last_action": "action",
    "ee_pos": "ee_pos",
    "goal_pos": "goal_pos",
    "time": "gait_time",
}


class _NoSignal(AttributeError):
    def __init__(self, field: str):
        super().__init__(f"no robot signal gives the state field {field!r}")
        self.field = field


class SignalState:
    """The fields observation terms read, computed from robot signals {name: (B, width)}.

    ``used`` lists the signals read so far, in order; reading a field no signal gives raises an
    AttributeError naming it.
    """

    def __init__(
        self,
        signals: Mapping[str, torch.Tensor],
        constants: Mapping[str, torch.Tensor],
        gravity: torch.Tensor | None = None,
    ):
        self._signals = signals
        self._constants = constants
        self._gravity = torch.tensor([0.0, 0.0, -1.0]) if gravity is None else gravity  # (3,) world
        self.used: list[str] = []

    def _signal(self, name: str) -> torch.Tensor:
        if name not in self.used:
            self.used.append(name)
        return self._signals[name]

    @property
    def projected_gravity(self) -> torch.Tensor:
        """(B, 3) world gravity direction in the base frame, exactly as LocoState computes it.

        The quaternion is not normalized: this is the formula training evaluated on MuJoCo's
        quaternions (unit to float precision), so the robot gets the same numbers for the same
        reading. A reading of norm k != 1 is not a pure rotation ((1 - k^2) g + k^2 R^T g); the
        deploy runner refuses readings off unit norm (QUAT_NORM_TOL) instead of hiding a broken IMU
        stream by rescaling it.
        """
        q = self._signal("imu_quat")
        return quat_rotate_inverse(q, self._gravity.to(q.dtype).expand_as(q[:, 1:]))

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in FIELDS:
            return self._signal(FIELDS[name])
        if name in self._constants:
            return self._constants[name]
        raise _NoSignal(name)


def _widths(num_joints: int, action_dim: int) -> dict[str, int]:
    return {k: signal_width(k, num_joints, action_dim) for k in SIGNALS}


class ObservationGraph(nn.Module):
    """Robot signals (B, width) each, in ``inputs`` order -> one (B, dim) tensor per term.

    Each output is ``clip(scale * term(state), -clip, clip)`` with the term's scale and clip from
    the layout, the env's own arithmetic. Built once with probe inputs: the terms decide which
    signals become inputs.
    """

    def __init__(
        self,
        terms: Sequence[Term],
        layout: Sequence[Mapping[str, Any]],
        *,
        num_joints: int,
        constants: Mapping[str, torch.Tensor] | None = None,
        action_dim: int | None = None,
        perception: Sequence[str] = (),
    ):
        super().__init__()
        names = [t.name for t in terms]
        if names != [str(t["name"]) for t in layout]:
            raise ExportError(
                f"observation terms {names} differ from the layout {[t['name'] for t in layout]}"
            )
        for t in terms:
            if t.stateful:
                raise ExportError(
                    f"observation term {t.name!r} is a stateful {type(t.fn).__name__}; "
                    "the observation graph is built only from pure term functions"
                )
        self.terms = list(terms)
        self.post = [
            (float(t.get("scale", 1.0)), None if t.get("clip") is None else float(t["clip"])) for t in layout
        ]
        self.num_joints = int(num_joints)
        consts = {
            k: torch.as_tensor(v, dtype=torch.float32).detach().cpu().clone()
            for k, v in (constants or {}).items()
        }
        for k in consts:
            if k not in CONSTANTS:
                raise ExportError(f"unknown observation-graph constant {k!r}; known: {', '.join(CONSTANTS)}")
            self.register_buffer(k, consts[k])
        self.register_buffer("gravity", torch.tensor([0.0, 0.0, -1.0]))
        self.widths = _widths(self.num_joints, self.num_joints if action_dim is None else int(action_dim))
        # Terms given whole by the robot: the graph passes them through (scale and clip only).
        self.passthrough = [t.name in perception for t in self.terms]
        for t, through in zip(layout, self.passthrough, strict=True):
            if through:
                self.widths[PERCEPTION_PREFIX + str(t["name"])] = int(t["dim"])
        probe = SignalState({k: torch.zeros(2, w) for k, w in self.widths.items()}, consts)
        for t, layout_term, through in zip(self.terms, layout, self.passthrough, strict=True):
            if through:
                continue
            try:
                value = t(probe)
            except _NoSignal as e:
                raise ExportError(
                    f"observation term {t.name!r} reads {e.field!r}, which no robot signal provides "
                    f"(the deploy runner gives {', '.join([*FIELDS, *consts])}); this task's policy "
                    "observation cannot be built on a robot"
                ) from None
            except (AttributeError, TypeError, ValueError, RuntimeError, IndexError) as e:
                raise ExportError(
                    one_line(f"observation term {t.name!r} cannot be built from robot signals: {e}")
                ) from None
            if tuple(value.shape) != (2, int(layout_term["dim"])):
                raise ExportError(
                    f"observation term {t.name!r} gives shape {tuple(value.shape[1:])} from robot signals, "
                    f"the layout says ({layout_term['dim']},)"
                )
        self.inputs: list[str] = [k for k in SIGNALS if k in probe.used]  # SIGNALS order
        self.inputs += [
            PERCEPTION_PREFIX + t.name for t, p in zip(self.terms, self.passthrough, strict=True) if p
        ]
        self.outputs: list[str] = [OUTPUT_PREFIX + n for n in names]
        self.eval()

    @classmethod
    def from_env(cls, env: Any, group: str = "policy") -> ObservationGraph:
        """The graph of ``env``'s observation group, its constants taken from the env's training state."""
        terms = getattr(env, "obs_terms", {}).get(group)
        if terms is None:
            raise ExportError(f"the env has no observation terms for group {group!r}")
        constants = {k: getattr(env.state, k) for k in CONSTANTS if getattr(env.state, k, None) is not None}
        pos = getattr(env.state, "joint_pos", None)  # the joints the task observes (an arm: no gripper)
        family = str(getattr(env, "cfg", {}).get("family"))
        return cls(
            terms,
            env.obs_layout(group),
            num_joints=len(env.backend.info.actuated_joints) if pos is None else int(pos.shape[-1]),
            constants=constants,
            action_dim=int(env.action_dim),
            perception=PERCEPTION.get(family, ()),
        )

    @property
    def names(self) -> list[str]:
        """Term names, in output order."""
        return [t.name for t in self.terms]

    def state(self, signals: Mapping[str, torch.Tensor]) -> SignalState:
        """The SignalState of signals {input name: (B, width)}."""
        return SignalState(
            signals, {k: getattr(self, k) for k in CONSTANTS if hasattr(self, k)}, self.gravity
        )

    def forward(self, *signals: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """signals (B, width) in ``inputs`` order -> each term (B, dim), in ``names`` order."""
        given = dict(zip(self.inputs, signals, strict=True))
        terms = [
            _Given(PERCEPTION_PREFIX + t.name) if p else t
            for t, p in zip(self.terms, self.passthrough, strict=True)
        ]
        return apply_terms(terms, self.post, _GivenState(self.state(given), given))

    def run(self, signals: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{term name: (B, dim)} for signals {input name: (B, width)} (no grad)."""
        with torch.no_grad():
            return dict(zip(self.names, self(*(signals[k] for k in self.inputs)), strict=True))


def apply_terms(
    terms: Sequence[Term], post: Sequence[tuple[float, float | None]], state: Any
) -> tuple[torch.Tensor, ...]:
    """Each term on ``state``, times its scale, clipped: the env's per-term arithmetic (no noise)."""
    out = []
    for t, (scale, clip) in zip(terms, post, strict=True):
        v = t(state) * scale
        out.append(v.clamp(-clip, clip) if clip is not None else v)
    return tuple(out)


class _Given:
    """A term the robot hands over whole: reads its input signal."""

    def __init__(self, signal: str):
        self.signal = signal

    def __call__(self, state: _GivenState) -> torch.Tensor:
        return state.given[self.signal]


class _GivenState:
    """A SignalState plus the passed-through signals."""

    def __init__(self, state: SignalState, given: Mapping[str, torch.Tensor]):
        self.state, self.given = state, given

    def __getattr__(self, name: str) -> torch.Tensor:
        return getattr(self.state, name)


def training_signals(graph: ObservationGraph, s: Any) -> dict[str, torch.Tensor]:
    """The graph's inputs read off a training state: raw fields, and each passed-through term."""
    out = {}
    for k in graph.inputs:
        if k.startswith(PERCEPTION_PREFIX):
            term = graph.terms[graph.names.index(k[len(PERCEPTION_PREFIX) :])]
            out[k] = term(s).float().cpu()
        else:
            out[k] = getattr(s, TRAINING_SIGNALS[k]).float().cpu()
    return out


@dataclass
class SignalRecord:
    """What a rollout showed the policy, three ways, row-aligned.

    obs: (B, D) the env's policy observation; signals: {input: (B, width)} read off the training
    state; terms: {term: (B, dim)} the training terms on that state, scaled and clipped; applied:
    (B, A) the action the env's pipeline (sanitize, safety filters) sent on for that observation.
    """

    obs: torch.Tensor
    signals: dict[str, torch.Tensor]
    terms: dict[str, torch.Tensor]
    applied: torch.Tensor | None = None


@torch.no_grad()
def record_signals(
    env: Any, policy: nn.Module, graph: ObservationGraph, steps: int = 50, seed: int = 0
) -> SignalRecord:
    """``steps`` steps of ``env`` driven by ``policy(obs)``: (steps * N) rows of each view."""
    obs, seen, applied = env.reset(seed=seed), [], []
    for _ in range(steps):
        s = env.state  # the state this observation was computed from (after any auto-reset)
        seen.append(
            (
                obs["policy"].cpu(),
                training_signals(graph, s),
                [v.cpu() for v in apply_terms(graph.terms, graph.post, s)],
            )
        )
        out = env.step(policy(obs))
        applied.append(out.info["applied_action"].cpu())
        obs = out.obs
    return SignalRecord(
        obs=torch.cat([o for o, _, _ in seen]),
        signals={k: torch.cat([sig[k] for _, sig, _ in seen]) for k in graph.inputs},
        terms={n: torch.cat([t[i] for _, _, t in seen]) for i, n in enumerate(graph.names)},
        applied=torch.cat(applied),
    )


def random_signals(graph: ObservationGraph, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Standard-normal inputs for ``graph`` {input: (batch, width)}: the quaternions are not unit
    (norm about 2), so the check also covers the graph's unnormalized rotation."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, graph.widths[k], generator=gen) for k in graph.inputs}
