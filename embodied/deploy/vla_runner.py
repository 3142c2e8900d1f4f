"""Run an exported VLA policy without torch: tokenizer.json -> text_encoder.onnx -> policy.onnx.

Needs only numpy, pyyaml, onnxruntime and the ``tokenizers`` package. deploy.yaml (``kind: vla``,
written by embodied/export/vla.py) names both graphs with their sha256, their inputs and shapes,
the chunk length and how chunks execute, the known instructions, the proprioception terms, the
action mode and the safety filters inside policy.onnx:

    runner = VLARunner("runs/arm_multi/<date>/exported")
    e = runner.embed("push the red cube onto the blue pad")   # (384,), cached per instruction
    command, actions, chunk = runner.act(image, e, proprio)    # image (3, H, W) uint8, proprio (P,)

``act`` predicts a whole chunk (C, A) every call and returns its first action, filtered, as
``actions`` (and ``command = offset + scale * actions`` for the robot's controller): chunks execute
receding-horizon, so call it every control step and feed back nothing else (``last_action`` is a
proprioception term the robot reports itself).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml

from embodied.deploy.manifest import DeployError, one_line
from embodied.deploy.session import load_session

POLICY_INPUTS = ("rgb", "instruction_embedding", "proprio")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _get(d: object, path: str, where: Path) -> object:
    node = d
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise DeployError(f"{where}: missing required key {path!r}")
        node = node[key]
    return node


class VLARunner:
    """The exported pair of a VLA folder (or its deploy.yaml), checked against deploy.yaml on load."""

    def __init__(
        self, deploy_dir_or_yaml: str | Path, *, providers: tuple[str, ...] = ("CPUExecutionProvider",)
    ):
        path = Path(deploy_dir_or_yaml)
        path = path / "deploy.yaml" if path.is_dir() else path
        if not path.is_file():
            raise DeployError(f"{path}: no deploy.yaml there")
        try:
            m = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DeployError(one_line(f"{path}: not valid YAML ({e})")) from None
        if not isinstance(m, dict) or m.get("kind") != "vla":
            raise DeployError(f"{path}: not a VLA deploy manifest (kind: vla)")
        self.manifest, self.path = m, path
        inputs = _get(m, "policy.inputs", path)
        self.image_shape = tuple(int(s) for s in _get(inputs, "rgb.shape", path))
        self.embedding_dim = int(_get(inputs, "instruction_embedding.dim", path))
        self.proprio_dim = int(_get(inputs, "proprio.dim", path))
        self.chunk = int(_get(m, "policy.chunk.length", path))
        self.execute = str(_get(m, "policy.chunk.execute", path))
        if self.execute != "first":
            raise DeployError(f"{path}: policy.chunk.execute={self.execute!r}; this runner executes 'first'")
        self.outputs = list(_get(m, "policy.outputs", path))
        self.action_dim = int(_get(m, "policy.outputs.actions.dim", path))
        self.offset = np.asarray(_get(m, "action.offset", path), dtype=np.float32)
        self.scale = np.asarray(_get(m, "action.scale", path), dtype=np.float32)
        self.instructions = [str(t) for t in m.get("instructions") or []]
        self.policy = load_session(self._file("policy", path), providers)
        self.text = load_session(self._file("text_encoder", path), providers)
        self._check_graphs()
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DeployError("the VLA runner needs the tokenizers package to read tokenizer.json") from None
        tok_path = path.parent / str(_get(m, "text_encoder.tokenizer", path))
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises its own exception type for unreadable files
            raise DeployError(one_line(f"cannot read {tok_path}: {e}")) from None
        self.tokenizer.no_padding()  # one instruction at a time
        self.tokenizer.enable_truncation(int(_get(m, "text_encoder.max_length", path)))
        self.cache: dict[str, np.ndarray] = {}

    def _file(self, section: str, path: Path) -> Path:
        f = path.parent / str(_get(self.manifest, f"{section}.onnx", path))
        if not f.is_file():
            raise DeployError(f"{path}: {section}.onnx names {f.name}, which is not there")
        want = _get(self.manifest, f"{section}.onnx_sha256", path)
        if _sha256(f) != want:
            raise DeployError(f"{f}: sha256 differs from deploy.yaml {section}.onnx_sha256 (file changed?)")
        return f

    def _check_graphs(self) -> None:
        names = [i.name for i in self.policy.get_inputs()]
        if names != list(POLICY_INPUTS):
            raise DeployError(
                f"{self.path}: policy.onnx takes {names}, deploy.yaml expects {list(POLICY_INPUTS)}"
            )
        outs = [o.name for o in self.policy.get_outputs()]
        if outs != self.outputs:
            raise DeployError(f"{self.path}: policy.onnx gives {outs}, deploy.yaml lists {self.outputs}")
        text_in = [i.name for i in self.text.get_inputs()]
        if text_in != ["input_ids", "attention_mask"]:
            raise DeployError(
                f"{self.path}: text_encoder.onnx takes {text_in}, expected input_ids, attention_mask"
            )

    def embed(self, instruction: str) -> np.ndarray:
        """(dim,) float32 embedding of an instruction string, computed once per string."""
        if instruction not in self.cache:
            ids = np.asarray([self.tokenizer.encode(instruction).ids], dtype=np.int64)
            (e,) = self.text.run(["embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            self.cache[instruction] = e[0].astype(np.float32)
        return self.cache[instruction]

    def act(
        self, image: np.ndarray, instruction: str | np.ndarray, proprio: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(command (A,), actions (A,), chunk (C, A)) for one frame, or the same with a batch dim (B, ...).

        image: uint8 (3, H, W) or (B, 3, H, W); instruction: a string or embedding(s) (dim,) / (B, dim);
        proprio: float32 (P,) or (B, P), raw (the graph normalizes it).
        """
        single = np.ndim(image) == 3
        img = np.asarray(image)[None] if single else np.asarray(image)
        if img.dtype != np.uint8 or tuple(img.shape[1:]) != self.image_shape:
            raise DeployError(
                f"image: expected uint8 (B, {', '.join(map(str, self.image_shape))}), "
                f"got {img.dtype} {img.shape}"
            )
        emb = self.embed(instruction) if isinstance(instruction, str) else np.asarray(instruction, np.float32)
        emb = np.broadcast_to(emb, (img.shape[0], self.embedding_dim)).astype(np.float32)
        prop = np.asarray(proprio, dtype=np.float32).reshape(img.shape[0], -1)
        if prop.shape[1] != self.proprio_dim:
            raise DeployError(f"proprio: expected {self.proprio_dim} values per frame, got {prop.shape[1]}")
        feeds = {"rgb": np.ascontiguousarray(img), "instruction_embedding": emb, "proprio": prop}
        command, actions, chunk = self.policy.run(self.outputs, feeds)
        if not (np.all(np.isfinite(command)) and np.all(np.isfinite(chunk))):
            raise DeployError("policy.onnx returned non-finite actions; nothing should be sent")
        return (command[0], actions[0], chunk[0]) if single else (command, actions, chunk)
