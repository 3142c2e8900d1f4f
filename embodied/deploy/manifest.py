"""`deploy.yaml` (schema v2, docs/deploy_schema.md): load, validate, and check both ONNX files' hashes."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embodied.errors import ConfigError

SCHEMA_VERSION = 2
JOINT_WIDE = "num_joints"
ACTION_WIDE = "action_dim"
# The robot signals observation.onnx may take as inputs, with their width (JOINT_WIDE: one per
# joint, in policy joint order; ACTION_WIDE: one per policy action). The export side
# (embodied.export.observation_graph) maps each to the training-state fields the terms read.
SIGNALS: dict[str, int | str] = {
    "base_lin_vel": 3,  # base frame, m/s, from a state estimator
    "imu_gyro": 3,  # base angular velocity, base frame, rad/s
    "imu_quat": 4,  # base orientation, w x y z
    "command": 3,  # vx, vy, yaw rate
    "joint_pos": JOINT_WIDE,  # rad
    "joint_vel": JOINT_WIDE,  # rad/s
    "last_action": ACTION_WIDE,  # the previous `actions` output of policy.onnx (zeros at start)
    "time": 1,  # s since the episode started: the runner's ticks times control.dt (a gait clock)
    "ee_pos": 3,  # end-effector position in the action frame, m (the arm's forward kinematics)
    "goal_pos": 3,  # the task's target point in the action frame, m (the arm's command)
}
# A term no raw signal gives (a car's lane error, route waypoints, range rays) is handed over by
# the robot's perception stack, unscaled, as input "perception/<term>" of the term's width.
PERCEPTION_PREFIX = "perception/"
OBS_OUTPUT_PREFIX = "obs/"  # observation.onnx names the output of term <name> "obs/<name>"
COMMAND_KEYS = ("lin_vel_x", "lin_vel_y", "ang_vel_yaw")
# action.mode -> the policy.onnx output holding what the robot is sent (docs/deploy_schema.md).
ACTION_MODES = {
    "joint_position": "joint_targets",  # PD position targets, rad, joints.names order
    "ee_delta": "ee_delta",  # end-effector displacement per control step, in action.frame
    "car_controls": "car_controls",  # (steering angle rad, left +; speed m/s)
}


class DeployError(ConfigError):
    """A deploy manifest, policy file or robot cannot be used as given (one-line message)."""


def one_line(text: object) -> str:
    """Collapse any whitespace (newlines included) so an error message stays on one line."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class ObsTerm:
    name: str  # observation.onnx computes it as output "obs/<name>"
    dim: int  # width of one sample
    scale: float | tuple[float, ...]  # applied inside observation.onnx; listed for reference
    clip: float | None  # applied inside observation.onnx; None: no per-term clipping
    history: int  # samples stacked oldest-first (by the runner)

    @property
    def width(self) -> int:
        """Width of this term in the observation vector: dim * history."""
        return self.dim * self.history


@dataclass(frozen=True)
class PolicySpec:
    onnx: str  # file name relative to deploy.yaml
    onnx_sha256: str
    torchscript: str | None
    input_name: str
    input_dim: int
    joint_targets_dim: int
    actions_dim: int


@dataclass(frozen=True)
class ObservationGraphSpec:
    onnx: str  # file name relative to deploy.yaml
    onnx_sha256: str
    inputs: dict[str, int]  # robot signal name (SIGNALS) -> width


@dataclass(frozen=True)
class JointsSpec:
    names: tuple[str, ...]  # policy (= actuator) order; every list below follows it
    default_positions: tuple[float, ...]
    kp: tuple[float, ...]
    kd: tuple[float, ...]
    torque_limits: tuple[float, ...]
    position_limits: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ControlSpec:
    dt: float
    physics_dt: float
    decimation: int


@dataclass(frozen=True)
class ActionSpec:
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    mode: str = "joint_position"  # a key of ACTION_MODES
    params: dict[str, Any] = field(default_factory=dict)  # the mode's own keys (frame, limits, ...)

    @property
    def output(self) -> str:
        """The policy.onnx output that holds what the robot is sent in this mode."""
        return ACTION_MODES[self.mode]


@dataclass(frozen=True)
class Manifest:
    path: Path  # the deploy.yaml it was read from
    schema_version: int
    task: str
    policy: PolicySpec
    observation: ObservationGraphSpec
    joints: JointsSpec
    control: ControlSpec
    action: ActionSpec
    observations: tuple[ObsTerm, ...]
    commands: dict[str, tuple[float, float]]  # lin_vel_x, lin_vel_y, ang_vel_yaw -> (low, high)
    obs_clip: float | None
    safety_filters: tuple[str, ...]  # the filters inside policy.onnx, applied by running it
    safety_params: dict[str, Any] = field(default_factory=dict)  # each filter's parameters, for the record

    @property
    def onnx_path(self) -> Path:
        return self.path.parent / self.policy.onnx

    @property
    def observation_path(self) -> Path:
        return self.path.parent / self.observation.onnx

    @property
    def num_joints(self) -> int:
        return len(self.joints.names)

    @property
    def action_dim(self) -> int:
        return len(self.action.offset)

    @property
    def obs_dim(self) -> int:
        return sum(t.width for t in self.observations)


_MISSING = object()


class _Reader:
    """Typed access to the parsed YAML by key path ("joints.kp", "observations[2].clip")."""

    def __init__(self, path: Path, root: Any = None):
        self.path, self.root = path, root

    def fail(self, msg: str) -> DeployError:
        return DeployError(one_line(f"{self.path}: {msg}"))

    def get(self, path: str, *, required: bool = True) -> Any:
        node, where = self.root, ""
        for tok in re.findall(r"\[\d+\]|[^.\[\]]+", path):
            if tok.startswith("["):
                i = int(tok[1:-1])
                node = node[i] if isinstance(node, list) and i < len(node) else _MISSING
                where += tok
            else:
                if node is not _MISSING and not isinstance(node, dict):
                    raise self.fail(f"{where or 'top level'} must be a mapping, got {type(node).__name__}")
                node = _MISSING if node is _MISSING else node.get(tok, _MISSING)
                where = f"{where}.{tok}" if where else tok
            if node is _MISSING:
                if required:
                    raise self.fail(f"missing required key {where!r}")
                return None
        return node

    def num(self, path: str, *, positive: bool = False, nullable: bool = False) -> float | None:
        v = self.get(path)
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(f"{path} must be a finite number, got {v!r}")
        if positive and v <= 0:
            raise self.fail(f"{path} must be > 0, got {v!r}")
        return float(v)

    def integer(self, path: str) -> int:
        v = self.get(path)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise self.fail(f"{path} must be an integer >= 1, got {v!r}")
        return v

    def text(self, path: str, *, required: bool = True) -> str | None:
        v = self.get(path, required=required)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(f"{path} must be a non-empty string, got {v!r}")
        return v

    def nums(self, path: str, n: int, *, positive: bool = False, what: str = "joints.names") -> tuple:
        v = self.get(path)
        if not isinstance(v, list) or len(v) != n:
            got = f"{len(v)} entries" if isinstance(v, list) else repr(v)
            raise self.fail(f"{path} must be a list of {n} numbers ({what} has {n}), got {got}")
        return tuple(self.num(f"{path}[{i}]", positive=positive) for i in range(n))

    def pair(self, path: str) -> tuple[float, float]:
        lo, hi = self.nums(path, 2, what="[low, high]")
        if lo > hi:
            raise self.fail(f"{path} has low {lo} > high {hi}")
        return lo, hi


def sha256_of(path: str | Path) -> str:
    """Hex sha256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a deploy.yaml (schema v2); raise DeployError with a one-line message."""
    path = Path(path)
    r = _Reader(path)
    if not path.is_file():
        raise r.fail("deploy.yaml not found")
    try:
        r.root = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise r.fail(f"not valid YAML: {e}") from None
    version = r.get("schema_version")
    if version != SCHEMA_VERSION:
        raise r.fail(f"unknown deploy.yaml schema_version {version}; this runner reads {SCHEMA_VERSION}")
    mode = r.get("action.mode", required=False) or "joint_position"
    if mode not in ACTION_MODES:
        raise r.fail(f"unknown action.mode {mode!r}; this runner knows {', '.join(ACTION_MODES)}")
    joints = _joints(r) if mode != "car_controls" or r.get("joints", required=False) else _NO_JOINTS
    n = len(joints.names)
    a = _action_dim(r, mode, n)
    control = ControlSpec(
        dt=r.num("control.dt", positive=True),
        physics_dt=r.num("control.physics_dt", positive=True),
        decimation=r.integer("control.decimation"),
    )
    if not math.isclose(control.dt, control.physics_dt * control.decimation, rel_tol=1e-6):
        raise r.fail(
            f"control.dt {control.dt} != physics_dt {control.physics_dt} * decimation {control.decimation}"
        )
    m = Manifest(
        path=path,
        schema_version=version,
        task=r.text("task"),
        policy=_policy(r, a, ACTION_MODES[mode]),
        observation=_observation_graph(r, n, a),
        joints=joints,
        control=control,
        action=ActionSpec(
            offset=r.nums("action.offset", a, what="the policy's actions"),
            scale=r.nums("action.scale", a, what="the policy's actions"),
            mode=mode,
            params={k: v for k, v in r.get("action").items() if k not in ("offset", "scale", "mode")},
        ),
        observations=_observations(r, n),
        commands=_commands(r, mode),
        obs_clip=r.num("obs_clip", positive=True, nullable=True),
        safety_filters=_names(r, "safety_filters"),
        safety_params=_safety_params(r),
    )
    if m.obs_dim != m.policy.input_dim:
        widths = " + ".join(f"{t.name} {t.width}" for t in m.observations)
        raise r.fail(
            f"observation terms sum to {m.obs_dim} ({widths}) but policy.input.dim is {m.policy.input_dim}"
        )
    for name, width in m.observation.inputs.items():
        term = name[len(PERCEPTION_PREFIX) :]
        if name.startswith(PERCEPTION_PREFIX) and not any(
            t.name == term and t.dim == width for t in m.observations
        ):
            raise r.fail(f"observation.inputs.{name}: no observation term {term!r} of dim {width}")
    _check_hash(r, "policy.onnx", m.onnx_path, m.policy.onnx_sha256)
    _check_hash(r, "observation.onnx", m.observation_path, m.observation.onnx_sha256)
    return m


_NO_JOINTS = JointsSpec((), (), (), (), (), ())


def _commands(r: _Reader, mode: str) -> dict[str, tuple[float, float]]:
    """Velocity-command ranges: required for a legged robot, whatever ranges a task has otherwise."""
    if mode == "joint_position":
        return {k: r.pair(f"commands.{k}") for k in COMMAND_KEYS}
    node = r.get("commands", required=False) or {}
    if not isinstance(node, dict):
        raise r.fail(f"commands must be a mapping of ranges, got {node!r}")
    return {str(k): r.pair(f"commands.{k}") for k in node}


def _action_dim(r: _Reader, mode: str, n: int) -> int:
    """The policy's action width: one per joint in joint_position mode, else action.offset's length."""
    if mode == "joint_position":
        return n
    offset = r.get("action.offset")
    if not isinstance(offset, list) or not offset:
        raise r.fail(f"action.offset must be a non-empty list of numbers, got {offset!r}")
    return len(offset)


def _joints(r: _Reader) -> JointsSpec:
    names = r.get("joints.names")
    if not isinstance(names, list) or not names or not all(isinstance(x, str) and x for x in names):
        raise r.fail(f"joints.names must be a non-empty list of names, got {names!r}")
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise r.fail(f"joints.names repeats {dup}")
    n = len(names)
    limits = r.get("joints.position_limits")
    if not isinstance(limits, list) or len(limits) != n:
        raise r.fail(f"joints.position_limits must be a list of {n} [low, high] pairs (joints.names has {n})")
    return JointsSpec(
        names=tuple(names),
        default_positions=r.nums("joints.default_positions", n),
        kp=r.nums("joints.kp", n),
        kd=r.nums("joints.kd", n),
        torque_limits=r.nums("joints.torque_limits", n, positive=True),
        position_limits=tuple(r.pair(f"joints.position_limits[{i}]") for i in range(n)),
    )


def _policy(r: _Reader, n: int, output: str = "joint_targets") -> PolicySpec:
    """``n``: the action width; ``output``: the action mode's output name."""
    dims = {k: r.integer(f"policy.outputs.{k}.dim") for k in (output, "actions")}
    for k, dim in dims.items():
        if dim != n:
            what = "joints.names has" if output == "joint_targets" else "action.offset has"
            raise r.fail(f"policy.outputs.{k}.dim is {dim} but {what} {n} entries")
    return PolicySpec(
        onnx=r.text("policy.onnx"),
        onnx_sha256=r.text("policy.onnx_sha256").lower(),
        torchscript=r.text("policy.torchscript", required=False),  # the robot side reads only the ONNX file
        input_name=r.text("policy.input.name"),
        input_dim=r.integer("policy.input.dim"),
        joint_targets_dim=dims[output],
        actions_dim=dims["actions"],
    )


def _observation_graph(r: _Reader, n: int, a: int | None = None) -> ObservationGraphSpec:
    if r.get("observation", required=False) is None:
        raise r.fail(
            "missing required key 'observation' (observation.onnx computes the policy observation); "
            "export the run with `embodied export`"
        )
    inputs = r.get("observation.inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise r.fail(f"observation.inputs must be a mapping of robot signals to widths, got {inputs!r}")
    for name in inputs:
        if name.startswith(PERCEPTION_PREFIX):
            r.integer(f"observation.inputs.{name}")  # its width is checked against the term's dim
            continue
        if name not in SIGNALS:
            raise r.fail(f"observation.inputs: unknown robot signal {name!r}; known: {', '.join(SIGNALS)}")
        width = r.integer(f"observation.inputs.{name}")
        want = signal_width(name, n, n if a is None else a)
        if width != want:
            raise r.fail(f"observation.inputs.{name} is {width}, expected {want}")
    return ObservationGraphSpec(
        onnx=r.text("observation.onnx"),
        onnx_sha256=r.text("observation.onnx_sha256").lower(),
        inputs={str(k): int(v) for k, v in inputs.items()},
    )


def signal_width(name: str, num_joints: int, action_dim: int) -> int:
    """Width of a robot signal of SIGNALS for a robot of ``num_joints`` and a policy of ``action_dim``."""
    w = SIGNALS[name]
    return num_joints if w == JOINT_WIDE else action_dim if w == ACTION_WIDE else int(w)


def _observations(r: _Reader, n: int) -> tuple[ObsTerm, ...]:
    terms = r.get("observations")
    if not isinstance(terms, list) or not terms:
        raise r.fail("observations must be a non-empty list of terms")
    out: list[ObsTerm] = []
    for i in range(len(terms)):
        at = f"observations[{i}]"
        name = r.text(f"{at}.name")
        if any(t.name == name for t in out):
            raise r.fail(f"{at}: observation term {name!r} appears twice")
        dim = r.integer(f"{at}.dim")
        per_element = isinstance(r.get(f"{at}.scale"), list)
        scale = r.nums(f"{at}.scale", dim, what=f"{at}.dim") if per_element else r.num(f"{at}.scale")
        clip = r.num(f"{at}.clip", positive=True, nullable=True)
        out.append(ObsTerm(name=name, dim=dim, scale=scale, clip=clip, history=r.integer(f"{at}.history")))
    return tuple(out)


def _safety_params(r: _Reader) -> dict[str, Any]:
    v = r.get("safety_params", required=False)
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(p, dict) for p in v.values()):
        raise r.fail("safety_params must map each safety filter's name to its parameters")
    return dict(v)


def _names(r: _Reader, path: str) -> tuple[str, ...]:
    v = r.get(path, required=False)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise r.fail(f"{path} must be a list of names, got {v!r}")
    return tuple(v)


def _check_hash(r: _Reader, key: str, file: Path, expected: str) -> None:
    """``key`` ("policy.onnx") names the deploy.yaml entry whose file and digest these are."""
    if not file.is_file():
        raise r.fail(f"{key} {str(file)!r} not found")
    got = sha256_of(file)
    if got != expected:
        raise DeployError(
            f"{key} hash {got} of {file} does not match deploy.yaml {key.split('.')[0]}.onnx_sha256 "
            f"{expected}: the file was replaced or corrupted; re-export it"
        )
