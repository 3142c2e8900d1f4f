"""Export a VLA policy: policy.onnx + text_encoder.onnx + tokenizer.json + deploy.yaml, each checked.

    policy.onnx:        rgb (B, 3, H, W) uint8, instruction_embedding (B, 384) float32,
                        proprio (B, P) float32 (raw, normalized inside)
                        -> <command> (B, A), actions (B, A), chunk (B, C, A)
    text_encoder.onnx:  input_ids (B, T) int64, attention_mask (B, T) int64 -> embedding (B, 384)

The policy graph is the training modules' greedy path (``VLAPolicy.chunk_from_embedding``) followed
by the env's action pipeline: clamp -> safety filters -> clamp -> command affine. **The filters
act on the chunk's first action**, the one executed now (chunks run receding-horizon, see
policies/vla.py): the filters read the current observation (``last_action`` included), and the
state the later actions of the chunk would meet is not known when the chunk is made, so filtering
them against the current observation would not be the filter the env applies. ``chunk`` is the
clamped, unfiltered greedy chunk, for logging and inspection; ``actions`` / ``<command>`` are what
the robot executes. The env's filters read its ``policy`` group; the graph feeds them ``proprio``,
so where the two layouts differ the chain is rebuilt (same filters, same parameters) on the
proprio layout, refused when a filter reads a term proprio lacks, and in every case checked against
the actions the env's own pipeline applied on the recorded steps (``check_applied``).

The text encoder is the frozen MiniLM traced as is; the robot tokenizes with the ``tokenizers``
package and ``tokenizer.json`` (no torch). Everything is staged and checked (ONNX Runtime against
torch within ``PARITY_TOL`` on recorded and random inputs; the ``tokenizers`` ids against the
training tokenizer's) before the files are moved in, deploy.yaml last.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from embodied.export.action_modes import ActionInterface, action_interface
from embodied.export.graph import ExportError
from embodied.export.onnx import _f32, _fsync, dump_yaml, sha256, trace_to_onnx
from policies.safety import FilterChain, FilterError, build_chain

PARITY_TOL = 1e-4
VLA_FILES = {
    "policy": "policy.onnx",
    "text_encoder": "text_encoder.onnx",
    "tokenizer": "tokenizer.json",
    "deploy": "deploy.yaml",
}
POLICY_INPUTS = ("rgb", "instruction_embedding", "proprio")
TEXT_INPUTS = ("input_ids", "attention_mask")


class VLAExportGraph(nn.Module):
    """Frozen deployment graph of a VLA policy: (rgb, embedding, proprio) -> (command, actions, chunk)."""

    def __init__(
        self, policy: nn.Module, offset: torch.Tensor, scale: torch.Tensor, filters: FilterChain | None = None
    ):
        super().__init__()
        policy.clear_distribution()
        self.policy = copy.deepcopy(policy).cpu().eval()
        chain = FilterChain() if filters is None else filters
        if not chain.exportable:
            names = [f.name for f in chain.filters if not f.exportable]
            raise ExportError(f"safety filters {names} cannot be exported into the policy graph")
        self.filters = copy.deepcopy(chain).cpu()
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32).detach().cpu().clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).detach().cpu().clone())
        self.chunk, self.action_dim = int(policy.chunk), int(policy.num_actions)
        self.proprio_dim, self.image_shape = int(policy.num_actor_obs), tuple(policy.image_shape)
        if tuple(self.offset.shape) != (self.action_dim,):
            raise ExportError(
                f"the action affine has {tuple(self.offset.shape)}, the policy gives {self.action_dim}"
            )
        self.eval()
        self.requires_grad_(False)

    def forward(
        self, rgb: torch.Tensor, instruction_embedding: torch.Tensor, proprio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chunk = self.policy.chunk_from_embedding(rgb, instruction_embedding, proprio).clamp(-1.0, 1.0)
        actions, _, _ = self.filters(proprio, chunk[:, 0])
        actions = actions.clamp(-1.0, 1.0)
        return self.offset + self.scale * actions, actions, chunk


class TextEncoderGraph(nn.Module):
    """The frozen text encoder's traceable path: (input_ids, attention_mask) -> embedding (B, dim)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)


def vla_action(env: Any, task_cfg: Mapping[str, Any]) -> ActionInterface:
    """The task's action interface; an ee_delta arm with a gripper gets its binary last dimension."""
    if not getattr(env, "use_gripper", False) or str(task_cfg.get("action_mode")) != "ee_delta":
        return action_interface(env, task_cfg)
    free = env.ik_orientation == "free"
    scale = [env.ik_pos_scale] * 3 + ([env.ik_rot_scale] * 3 if free else []) + [1.0]
    s = torch.tensor(scale, dtype=torch.float32)
    params = {
        "frame": "base",
        "orientation": env.ik_orientation,
        "units": "m per control step" + (", rad (rotation vector) per control step" if free else ""),
        "gripper": "last dimension: >= 0 opens, < 0 closes (binary)",
    }
    return ActionInterface("ee_delta", torch.zeros_like(s), s, params)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def write_policy_onnx(graph: VLAExportGraph, path: Path, output: str, embedded_yaml: str = "") -> None:
    example = (
        torch.zeros(1, *graph.image_shape, dtype=torch.uint8),
        torch.zeros(1, 384),
        torch.zeros(1, graph.proprio_dim),
    )
    trace_to_onnx(graph, example, path, list(POLICY_INPUTS), [output, "actions", "chunk"])
    _embed_metadata(path, embedded_yaml)


def write_text_encoder_onnx(encoder: nn.Module, path: Path) -> None:
    example = (torch.ones(1, 8, dtype=torch.int64), torch.ones(1, 8, dtype=torch.int64))
    axes = {k: {0: "batch", 1: "tokens"} for k in TEXT_INPUTS} | {"embedding": {0: "batch"}}
    with warnings.catch_warnings():
        # transformers' mask code branches on shapes; traced once, the graph keeps the general path
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*opset9.index.*|.*index.*", category=UserWarning)
        trace_to_onnx(TextEncoderGraph(encoder).eval(), example, path, list(TEXT_INPUTS), ["embedding"], axes)
    _embed_metadata(path, "")


def _embed_metadata(path: Path, embedded_yaml: str) -> None:
    model = onnx.load(str(path))
    if embedded_yaml:
        entry = model.metadata_props.add()
        entry.key, entry.value = "deploy_yaml", embedded_yaml
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _worst(name: str, got: list[np.ndarray], want: list[np.ndarray]) -> float:
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise ExportError(f"{name} gives shape {g.shape}, torch {w.shape}")
    return max(float(np.abs(g.astype(np.float64) - w).max()) for g, w in zip(got, want, strict=True))


def check_policy_parity(
    graph: VLAExportGraph, path: Path, sets: Mapping[str, Mapping[str, torch.Tensor]], tol: float = PARITY_TOL
) -> dict[str, float]:
    """Max |onnxruntime - torch| over the three outputs per input set; ExportError above ``tol``."""
    sess, diffs = _session(path), {}
    names = [o.name for o in sess.get_outputs()]
    for set_name, inputs in sets.items():
        with torch.inference_mode():
            want = [t.numpy() for t in graph(*(inputs[k] for k in POLICY_INPUTS))]
        got = sess.run(names, {k: inputs[k].numpy() for k in POLICY_INPUTS})
        diffs[f"policy/{set_name}"] = _worst("policy.onnx", got, want)
    return _refuse(diffs, tol)


def check_text_parity(
    encoder: Any, path: Path, texts: list[str], tok_path: Path, tol: float = PARITY_TOL
) -> dict:
    """text_encoder.onnx (fed ``tokenizers`` ids) against the torch encoder on ``texts``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()  # one instruction at a time: no pad tokens
    tok.enable_truncation(int(encoder.max_length))
    sess, diffs = _session(path), {}
    with torch.inference_mode():
        want = encoder.encode(texts).cpu().numpy()
    for i, text in enumerate(texts):
        enc = tok.encode(text)
        ref = encoder.tokenize([text])["input_ids"][0].tolist()
        if enc.ids != ref:
            raise ExportError(
                f"tokenizer.json gives ids {enc.ids[:8]}... for {text!r}, training {ref[:8]}..."
            )
        ids = np.asarray([enc.ids], dtype=np.int64)
        (got,) = sess.run(["embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        diffs[f"text/{i}"] = _worst("text_encoder.onnx", [got[0]], [want[i]])
    worst = max(diffs.values()) if diffs else 0.0
    return _refuse({"text_encoder": worst}, tol)


def _refuse(diffs: dict[str, float], tol: float) -> dict[str, float]:
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    if bad:
        text = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise ExportError(f"exported VLA graph disagrees with torch beyond {tol:g}: {text}")
    return diffs


@torch.no_grad()
def record_vla_inputs(env: Any, policy: nn.Module, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """Graph inputs of ``steps`` steps of ``env`` driven by the greedy policy: {input: (steps * N, ...)}."""
    obs, seen = env.reset(seed=seed), {k: [] for k in (*POLICY_INPUTS, "applied")}
    for _ in range(steps):
        seen["rgb"].append(obs[policy.rgb_obs].cpu())
        seen["instruction_embedding"].append(policy.embed(obs[policy.instruction_obs]).cpu())
        seen["proprio"].append(obs[policy.proprio_obs].float().cpu())
        out = env.step(policy(obs))
        if "applied_action" in out.info:  # what the env's sanitize + filter stage sent on
            seen["applied"].append(out.info["applied_action"].float().cpu())
        obs = out.obs
    return {k: torch.cat(v) for k, v in seen.items() if v}


def proprio_filters(chain: FilterChain, env: Any, group: str) -> FilterChain:
    """The env's filter chain reading ``group`` instead of ``policy`` (rebuilt where the layouts differ)."""
    layout = env.obs_layout(group)
    if not len(chain) or layout == env.obs_layout("policy"):
        return chain
    try:
        return build_chain(chain.names, chain.params, layout, env.action_dim)
    except FilterError as e:
        raise ExportError(
            f"the safety filters {chain.names} cannot read the VLA's {group!r} observation group ({e})"
        ) from None


def check_applied(graph: VLAExportGraph, recorded: Mapping[str, torch.Tensor], tol: float = 1e-5) -> float:
    """Max |graph actions - env applied actions| on recorded steps; ExportError above ``tol``.

    The env applied sanitize + its filters to the greedy first action: a filter missing from the
    graph, added to it or reading other columns shows up here.
    """
    if "applied" not in recorded:
        raise ExportError("the rollout recorded no applied actions to check the graph's filters against")
    with torch.inference_mode():
        actions = graph(*(recorded[k] for k in POLICY_INPUTS))[1]
    gap = float((actions - recorded["applied"]).abs().max())
    if not gap <= tol:
        raise ExportError(
            f"the exported graph's actions differ from the env's by {gap:.3g} (the env runs filters "
            f"{graph.filters.names or 'none'}): the graph's filter stage is not the env's"
        )
    return gap


def vla_manifest(
    task_cfg: Mapping[str, Any],
    env: Any,
    graph: VLAExportGraph,
    action: ActionInterface,
    text_encoder: Any,
    instructions: list[str],
) -> dict[str, Any]:
    """deploy.yaml of a VLA export (``kind: vla``; docs in embodied/deploy/vla_runner.py)."""
    policy = graph.policy
    backend = env.backend
    a, c = graph.action_dim, graph.chunk
    return {
        "schema_version": 2,
        "kind": "vla",
        "task": str(task_cfg["name"]),
        "policy": {
            "onnx": VLA_FILES["policy"],
            "onnx_sha256": None,
            "inputs": {
                "rgb": {"dtype": "uint8", "shape": list(graph.image_shape), "group": policy.rgb_obs},
                "instruction_embedding": {"dtype": "float32", "dim": 384},
                "proprio": {"dtype": "float32", "dim": graph.proprio_dim, "group": policy.proprio_obs},
            },
            "outputs": {action.output: {"dim": a}, "actions": {"dim": a}, "chunk": {"shape": [c, a]}},
            "chunk": {
                "length": c,
                "execute": "first",  # receding horizon: the first action each step, then predict again
                "filtered": "first",  # the safety filters act on the executed (first) action
            },
        },
        "text_encoder": {
            "onnx": VLA_FILES["text_encoder"],
            "onnx_sha256": None,
            "tokenizer": VLA_FILES["tokenizer"],
            "max_length": int(text_encoder.max_length),
            "dim": int(text_encoder.dim),
            "inputs": {k: "int64" for k in TEXT_INPUTS},
            "output": "embedding",
        },
        "instructions": list(instructions),
        "proprio_terms": [{"history": 1, **t} for t in env.obs_layout(policy.proprio_obs)],
        "control": {
            "dt": float(env.dt),
            "physics_dt": float(backend.physics_dt),
            "decimation": int(backend.decimation),
        },
        "action": {
            "mode": action.mode,
            **action.params,
            "offset": _f32(action.offset.cpu()),
            "scale": _f32(action.scale.cpu()),
        },
        "safety_filters": list(graph.filters.names),
        "safety_params": graph.filters.params,
    }


def export_vla(
    env: Any,
    policy: nn.Module,
    task_cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    steps: int = 20,
    seed: int = 0,
    tol: float = PARITY_TOL,
) -> dict[str, float]:
    """Export a trained VLA ``policy`` of ``env`` to ``out_dir``; returns the parity diffs.

    Checked on ``steps`` steps of ``env`` driven by the greedy policy and on 64 random inputs; a
    disagreement beyond ``tol`` raises ExportError before anything is written.
    """
    from policies.text_encoder import TextEncoder

    if isinstance(task_cfg, DictConfig):
        task_cfg = OmegaConf.to_container(task_cfg, resolve=True)
    filters = proprio_filters(getattr(env, "filters", None) or FilterChain(), env, policy.proprio_obs)
    action = vla_action(env, task_cfg)
    graph = VLAExportGraph(policy, action.offset, action.scale, filters)
    recorded = record_vla_inputs(env, policy, steps, seed)
    applied_gap = check_applied(graph, recorded)
    text = TextEncoder(policy.text_encoder_path)
    gen = torch.Generator().manual_seed(seed)
    n = 64
    random = {
        "rgb": torch.randint(0, 256, (n, *graph.image_shape), dtype=torch.uint8, generator=gen),
        "instruction_embedding": torch.nn.functional.normalize(torch.randn(n, 384, generator=gen), dim=-1),
        "proprio": torch.randn(n, graph.proprio_dim, generator=gen),
    }
    manifest = vla_manifest(task_cfg, env, graph, action, text, policy.instructions)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", suffix=".tmp", dir=out_dir.parent))
    try:
        paths = {k: stage / v for k, v in VLA_FILES.items()}
        shutil.copyfile(text.path / "tokenizer.json", paths["tokenizer"])
        write_text_encoder_onnx(text, paths["text_encoder"])
        diffs = check_text_parity(text, paths["text_encoder"], policy.instructions, paths["tokenizer"], tol)
        table = policy.instruction_embeddings().cpu().numpy()
        diffs["text_encoder/table"] = float(
            np.abs(text.encode(policy.instructions).cpu().numpy() - table).max()
        )
        _refuse({"text_encoder/table": diffs["text_encoder/table"]}, tol)
        manifest["text_encoder"]["onnx_sha256"] = sha256(paths["text_encoder"])
        write_policy_onnx(graph, paths["policy"], action.output, dump_yaml(manifest))
        diffs |= check_policy_parity(graph, paths["policy"], {"recorded": recorded, "random": random}, tol)
        diffs["filters/applied"] = applied_gap
        manifest["policy"]["onnx_sha256"] = sha256(paths["policy"])
        paths["deploy"].write_text(dump_yaml(manifest), encoding="utf-8")
        out_dir.mkdir(exist_ok=True)
        for key in ("tokenizer", "text_encoder", "policy", "deploy"):  # deploy.yaml last
            _fsync(paths[key])
            os.replace(paths[key], out_dir / VLA_FILES[key])
        _fsync(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return diffs
