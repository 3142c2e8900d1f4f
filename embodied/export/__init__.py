"""Export: one self-describing policy file (ONNX + TorchScript twin) and its deploy.yaml."""

from embodied.export.graph import ExportedPolicy, ExportError
from embodied.export.onnx import (
    OPSET,
    PARITY_TOL,
    check_parity,
    deploy_manifest,
    export_policy,
    export_run,
    onnx_runner,
    record_observations,
    sha256,
    torch_runner,
    torchscript_runner,
)

__all__ = [
    "OPSET",
    "PARITY_TOL",
    "ExportError",
    "ExportedPolicy",
    "check_parity",
    "deploy_manifest",
    "export_policy",
    "export_run",
    "onnx_runner",
    "record_observations",
    "sha256",
    "torch_runner",
    "torchscript_runner",
]
