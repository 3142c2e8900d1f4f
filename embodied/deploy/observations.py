"""The policy's observation vector on the robot: robot signals -> observation.onnx -> history -> clip.

The terms themselves (what each one computes, its scale and clip) live in ``observation.onnx``,
exported from the very torch term functions training uses (embodied/export/observation_graph.py);
nothing here re-implements one. What stays in numpy is what is not a term: checking the readings,
stacking each term's last `history` values oldest-first, and clipping the concatenation to
+-obs_clip (docs/deploy_schema.md). Right after `reset()` a history is filled with the first value it
sees, so the first observation holds no zeros that training never showed the policy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from embodied.deploy.manifest import (
    OBS_OUTPUT_PREFIX,
    PERCEPTION_PREFIX,
    SIGNALS,
    DeployError,
    Manifest,
    signal_width,
)
from embodied.deploy.robot import RobotReading
from embodied.deploy.session import load_session

# Training reads MuJoCo's quaternions, which are unit to float precision, and observation.onnx
# rotates gravity by the quaternion as given: a norm k gives (1 - k^2) g + k^2 R(q/k)^T g, off the
# unit-quaternion value by at most 2 |k^2 - 1|. A reading further than this from unit norm is
# refused rather than silently rescaled: it means a broken IMU driver or transport, not sensor
# noise. 5e-3 bounds the projected-gravity error at about 0.02.
QUAT_NORM_TOL = 5e-3


def _vector(v: object, n: int, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (n,):
        raise DeployError(f"{what} must have shape ({n},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DeployError(f"{what} has non-finite values: {a.tolist()}")
    return a


class ObservationBuilder:
    """Builds the (D,) float32 observation the manifest describes by running observation.onnx.

    Keeps per-term histories; the graph's inputs and outputs are checked against deploy.yaml at load.
    """

    def __init__(self, manifest: Manifest, *, providers: Sequence[str] = ("CPUExecutionProvider",)):
        self.manifest = manifest
        self.terms = manifest.observations
        self.dim = manifest.obs_dim
        self.num_joints = manifest.num_joints
        self.obs_clip = manifest.obs_clip
        self.session = load_session(manifest.observation_path, providers)
        self.inputs = self._check_graph()
        self.outputs = [OBS_OUTPUT_PREFIX + t.name for t in self.terms]
        self._history: list[deque[np.ndarray]] = [deque(maxlen=t.history) for t in self.terms]
        self.ticks = 0  # observations built since reset: the `time` signal is ticks * control.dt

    def _check_graph(self) -> dict[str, int]:
        """{input name: width} of observation.onnx, after checking it against deploy.yaml."""
        m, path = self.manifest, self.manifest.observation_path
        inputs = {}
        for i in self.session.get_inputs():
            if i.name.startswith(PERCEPTION_PREFIX) and i.name in m.observation.inputs:
                want = m.observation.inputs[i.name]
            elif i.name not in SIGNALS:
                raise DeployError(f"{path}: input {i.name!r} is not a robot signal ({', '.join(SIGNALS)})")
            else:
                want = signal_width(i.name, self.num_joints, m.action_dim)
            if i.type != "tensor(float)" or len(i.shape) != 2 or i.shape[1] != want:
                raise DeployError(
                    f"{path}: input {i.name!r} is {i.type} {list(i.shape)}; expected tensor(float) "
                    f"[batch, {want}]"
                )
            inputs[i.name] = want
        if inputs != m.observation.inputs:
            raise DeployError(
                f"{path}: graph inputs {inputs} differ from deploy.yaml observation.inputs "
                f"{m.observation.inputs}"
            )
        outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        for t in self.terms:
            name = OBS_OUTPUT_PREFIX + t.name
            if name not in outputs:
                raise DeployError(
                    f"{path}: no output {name!r} for term {t.name!r} (outputs: {sorted(outputs)})"
                )
            shape = outputs[name]
            if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != t.dim):
                raise DeployError(f"{path}: output {name!r} has shape {shape}; deploy.yaml says dim {t.dim}")
        return inputs

    def reset(self) -> None:
        """Forget all histories (call at episode start)."""
        for h in self._history:
            h.clear()
        self.ticks = 0

    def time(self) -> np.ndarray:
        """(1,) the `time` signal: seconds since reset, counted in control ticks as training counts steps."""
        return np.array([self.ticks * self.manifest.control.dt])

    def signals(
        self, reading: RobotReading, command: np.ndarray, last_action: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The graph's inputs, each (1, width) float32, from a checked reading in policy joint order."""
        j = self.num_joints
        values = {
            "joint_pos": lambda: _vector(reading.joint_pos, j, "reading.joint_pos"),
            "joint_vel": lambda: _vector(reading.joint_vel, j, "reading.joint_vel"),
            "imu_quat": lambda: self._quat(reading.imu_quat),
            "imu_gyro": lambda: _vector(reading.imu_gyro, 3, "reading.imu_gyro"),
            "base_lin_vel": lambda: self._lin_vel(reading.base_lin_vel),
            "command": lambda: _vector(command, 3, "command"),
            "last_action": lambda: _vector(last_action, self.manifest.action_dim, "last_action"),
            "time": self.time,
        }
        return {name: values[name]().astype(np.float32)[None] for name in self.inputs}

    def signals_of(
        self, given: dict[str, np.ndarray], command: np.ndarray | None, last_action: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The graph's inputs, each (1, width) float32, from a robot's named signals (arm, car).

        ``given``: what the robot measures or perceives ({signal: (width,)}, policy joint order);
        ``command`` is the task's command (an arm's goal point, as signal ``goal_pos``).
        """
        out = {}
        for name, width in self.inputs.items():
            if name == "last_action":
                value = last_action
            elif name == "goal_pos":
                value = command
            elif name == "time":
                value = self.time()
            elif name in given:
                value = given[name]
            else:
                raise DeployError(
                    f"the policy observation needs robot signal {name!r}, which the robot does not give"
                )
            out[name] = _vector(value, width, name).astype(np.float32)[None]
        return out

    @staticmethod
    def _quat(q: object) -> np.ndarray:
        q = _vector(q, 4, "reading.imu_quat")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > QUAT_NORM_TOL:
            raise DeployError(
                f"reading.imu_quat {q.tolist()} has norm {norm:.4g}; expected a unit quaternion (w, x, y, z) "
                f"within {QUAT_NORM_TOL:g}"
            )
        return q

    @staticmethod
    def _lin_vel(v: object) -> np.ndarray:
        if v is None:
            raise DeployError(
                "the policy observation needs base_lin_vel from a state estimator, "
                "but the robot's reading has base_lin_vel=None"
            )
        return _vector(v, 3, "reading.base_lin_vel")

    def terms_of(self, signals: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Each term (B, dim), scaled and clipped by observation.onnx, in deploy.yaml order, for
        float32 signals {input: (B, width)}."""
        return self.session.run(self.outputs, {k: signals[k] for k in self.inputs})

    def build(self, reading: RobotReading, command: np.ndarray, last_action: np.ndarray) -> np.ndarray:
        """Observation (D,) float32 from a reading in policy joint order, command (3,), last action (A,)."""
        return self.stack(self.signals(reading, command, last_action))

    def stack(self, signals: dict[str, np.ndarray]) -> np.ndarray:
        """Observation (D,) float32 from the graph's inputs: terms, histories, clip."""
        values = [v[0] for v in self.terms_of(signals)]
        bad = [t.name for t, v in zip(self.terms, values, strict=True) if not np.all(np.isfinite(v))]
        if bad:  # checked before any history takes the value in
            raise DeployError(f"observation terms {bad} are not finite for this reading")
        parts = []
        for value, hist, term in zip(values, self._history, self.terms, strict=True):
            if not hist:
                hist.extend([value] * term.history)
            else:
                hist.append(value)
            parts.extend(hist)  # oldest first
        obs = np.concatenate(parts)
        self.ticks += 1
        if self.obs_clip is not None:
            obs = np.clip(obs, -self.obs_clip, self.obs_clip)
        return obs.astype(np.float32)
