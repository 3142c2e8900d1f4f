"""Robot-side deployment: read deploy.yaml, observation.onnx and policy.onnx and drive a robot.

No torch, no training code. `DeployRunner` and `ObservationBuilder` (need onnxruntime) and
`MujocoRobot` (needs mujoco) and `BackendRobot` (a simulated robot on any engine: torch and the
engine) load on first use, so a robot that only validates a manifest needs
neither.
"""

from __future__ import annotations

from typing import Any

from embodied.deploy.manifest import DeployError, Manifest, ObsTerm, load_manifest
from embodied.deploy.robot import RobotInterface, RobotReading

_LAZY = {
    "DeployRunner": "embodied.deploy.runner",
    "ObservationBuilder": "embodied.deploy.observations",
    "MujocoRobot": "embodied.deploy.mujoco_robot",
    "Perturbation": "embodied.deploy.mujoco_robot",
    "BaseState": "embodied.deploy.mujoco_robot",
    "BackendRobot": "embodied.deploy.backend_robot",
    "VLARunner": "embodied.deploy.vla_runner",
}

__all__ = [
    "BackendRobot",
    "BaseState",
    "DeployError",
    "DeployRunner",
    "Manifest",
    "MujocoRobot",
    "ObsTerm",
    "ObservationBuilder",
    "Perturbation",
    "RobotInterface",
    "RobotReading",
    "VLARunner",
    "load_manifest",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embodied.deploy' has no attribute {name!r}")
