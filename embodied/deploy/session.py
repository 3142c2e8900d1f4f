"""One onnxruntime session per exported graph, single-threaded, with one-line load errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from embodied.deploy.manifest import DeployError, one_line


def load_session(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """An InferenceSession for ``path``; a file onnxruntime cannot read is a DeployError."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the robot's control loop shares few cores
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types for bad files/providers
        raise DeployError(one_line(f"cannot load {path} with onnxruntime: {e}")) from None
