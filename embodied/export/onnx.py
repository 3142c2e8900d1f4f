"""Export a run: policy.onnx + policy.ts + observation.onnx + deploy.yaml, each checked before it lands.

observation.onnx computes the policy's observation terms from robot signals (observation_graph.py);
it is written and checked first, so the deploy.yaml text embedded in the policy files already holds
its sha256. The deploy.yaml text is embedded in the ONNX file (``metadata_props["deploy_yaml"]``) and
in the TorchScript file (extra file ``deploy.yaml``). The embedded copies carry
``policy.onnx_sha256: null``: a file cannot contain its own hash. Only the ``deploy.yaml`` on disk
holds the digest of the final ``policy.onnx`` (taken after the metadata was embedded).

The ONNX graph comes from torch's TorchScript-based exporter (``dynamo=False``): the torch.export
one needs the onnxscript package. Both it and ``torch.jit`` warn that they are deprecated; those
warnings (only those) are silenced here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from embodied.export.action_modes import ActionInterface, action_interface
from embodied.export.graph import ExportedPolicy, ExportError, check_pipeline
from embodied.export.observation_graph import (
    OUTPUT_PREFIX,
    ObservationGraph,
    random_signals,
    record_signals,
)
from embodied.task_env import OBS_CLIP

log = logging.getLogger(__name__)

OPSET = 17
SCHEMA_VERSION = 2
PARITY_TOL = 1e-5
FILES = {
    "onnx": "policy.onnx",
    "torchscript": "policy.ts",
    "observation": "observation.onnx",
    "deploy": "deploy.yaml",
}
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # obs (B, D) -> (targets, actions)
Signals = Mapping[str, torch.Tensor]  # {robot signal: (B, width)}
ObsRunner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]  # signals -> {term: (B, dim)}


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        for msg in (
            r"`torch\.jit\.\w+` is deprecated",
            r"You are using the legacy TorchScript-based ONNX export",
            r"The feature will be removed",
        ):
            warnings.filterwarnings("ignore", message=msg, category=DeprecationWarning)
        yield


def _f32(values: Any) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (0.9, not 0.8999...)."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


def _f64(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def deploy_manifest(
    task_cfg: Mapping[str, Any], env: Any, policy: ExportedPolicy, action: ActionInterface | None = None
) -> dict[str, Any]:
    """The deploy.yaml content (schema v2, docs/deploy_schema.md) for ``policy`` on ``env``'s robot.

    The ``observation`` section is added by ``export_policy``, which writes that file. ``action``
    (default: the task's own, embodied/export/action_modes.py) names the action mode.
    """
    if isinstance(task_cfg, DictConfig):
        task_cfg = OmegaConf.to_container(task_cfg, resolve=True)
    action = action_interface(env, task_cfg) if action is None else action
    info, backend = env.backend.info, env.backend
    spec = env.obs_spec["policy"]
    if spec.kind != "vector" or spec.dim != policy.obs_dim:
        raise ExportError(f"the policy takes {policy.obs_dim} floats, the env's policy group is {spec}")
    observations = [{"history": 1, **term} for term in env.obs_layout("policy")]
    width = sum(t["dim"] * t["history"] for t in observations)
    if width != policy.obs_dim:
        raise ExportError(f"observation terms add up to {width}, the policy takes {policy.obs_dim}")
    joint_mode = action.mode == "joint_position"
    # The joints the policy observes (an arm's, without its gripper; none for a car), in actuator order.
    observed = _observed_joints(env) if not joint_mode else len(info.actuated_joints)
    if joint_mode and len(info.actuated_joints) != policy.action_dim:
        raise ExportError(
            f"{len(info.actuated_joints)} actuated joints, the policy gives {policy.action_dim}"
        )
    commands = {  # ranges only: zero_prob and other sampling settings stay in training
        str(k): _f64(v)
        for k, v in (task_cfg.get("commands") or {}).items()
        if isinstance(v, list | tuple) and len(v) == 2
    }
    j = slice(0, observed)
    joints = {
        "names": [str(n) for n in info.actuated_joints[j]],
        "default_positions": _f64(info.home_qpos[info.qpos_adr][j]),
        "kp": _f64(info.kp[j]),
        "kd": _f64(info.kd[j]),
        "torque_limits": _f64(info.force_range[j, 1]),
        "position_limits": [_f64(r) for r in info.joint_range[j]],
    }
    section = {
        "mode": action.mode,
        **action.params,
        "offset": _f32(policy.offset),
        "scale": _f32(policy.scale),
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "task": str(task_cfg["name"]),
        "policy": {
            "onnx": FILES["onnx"],
            "onnx_sha256": None,
            "torchscript": FILES["torchscript"],
            "input": {"name": "obs", "group": "policy", "dtype": "float32", "dim": policy.obs_dim},
            "outputs": {action.output: {"dim": policy.action_dim}, "actions": {"dim": policy.action_dim}},
        },
        **({"joints": joints} if observed else {}),
        "control": {
            "dt": float(env.dt),
            "physics_dt": float(backend.physics_dt),
            "decimation": int(backend.decimation),
        },
        "action": section,
        "observations": observations,
        "safety_filters": list(policy.filters.names),
        "safety_params": policy.filters.params,
        "commands": commands,
        "obs_clip": float(OBS_CLIP),
    }


def _observed_joints(env: Any) -> int:
    """How many of the actuated joints (the first ones) the task's state calls its joints."""
    pos = getattr(env.state, "joint_pos", None)
    return 0 if pos is None else int(pos.shape[-1])


def dump_yaml(manifest: Mapping[str, Any]) -> str:
    """YAML text in the schema's order, with flow-style leaves (``[0.1, 0.8]``, ``{dim: 12}``)."""
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=None, width=120)


def onnx_runner(path: Path) -> Runner:
    """A single-threaded onnxruntime session for ``path`` as a Runner."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    names = [o.name for o in sess.get_outputs()]  # (the mode's command output, "actions")

    def run(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        targets, actions = sess.run(names, {"obs": obs})
        return targets, actions

    return run


def torchscript_runner(path: Path) -> Runner:
    """A loaded TorchScript file as a Runner."""
    with _quiet_deprecations():
        module = torch.jit.load(str(path), map_location="cpu")
    return torch_runner(module)


def torch_runner(module: torch.nn.Module) -> Runner:
    """A torch module obs (B, D) -> (targets, actions) as a Runner (no grad)."""

    def run(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            targets, actions = module(torch.from_numpy(obs))
        return targets.numpy(), actions.numpy()

    return run


def check_parity(
    reference: ExportedPolicy,
    runners: Mapping[str, Runner],
    obs_sets: Mapping[str, torch.Tensor],
    tol: float = PARITY_TOL,
) -> dict[str, float]:
    """Max |runner - reference| over both outputs, per "<runner>/<obs set>"; ExportError above ``tol``.

    Both outputs are compared in action units: the joint targets are ``offset + scale * actions``, so
    their difference is divided by ``scale`` per dimension where it is above 1 (a car's wheel-speed
    target at 6 m/s per unit of action would otherwise ask 1.7e-6 of the actions, below what two
    float32 runtimes agree to). A scale below 1 is not divided by: the bound stays absolute there.
    """
    ref = torch_runner(reference)
    per_unit = np.maximum(np.abs(reference.scale.detach().cpu().numpy()), 1.0).astype(np.float32)
    diffs: dict[str, float] = {}
    for set_name, obs in obs_sets.items():
        x = np.ascontiguousarray(obs.detach().cpu().numpy(), dtype=np.float32)
        expected = ref(x)
        for name, run in runners.items():
            got = run(x)
            shapes = [np.shape(g) for g in got], [np.shape(e) for e in expected]
            if shapes[0] != shapes[1]:
                raise ExportError(f"{name} gives output shapes {shapes[0]}, torch {shapes[1]}")
            gaps = [np.abs(g - e) for g, e in zip(got, expected, strict=True)]
            gaps[0] = gaps[0] / per_unit  # joint targets, in action units
            diffs[f"{name}/{set_name}"] = max(float(gap.max()) for gap in gaps)
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    if bad:
        worst = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise ExportError(f"exported policy disagrees with torch beyond {tol:g}: {worst}")
    return diffs


def trace_to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> None:
    """Trace ``module`` on ``example`` into ``path`` at OPSET; every input and output batched on dim 0
    unless ``dynamic_axes`` says otherwise."""
    axes = dict(dynamic_axes) if dynamic_axes else {k: {0: "batch"} for k in (*inputs, *outputs)}
    with _quiet_deprecations():
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
        )


def _write_onnx(
    policy: ExportedPolicy, path: Path, embedded_yaml: str, output: str = "joint_targets"
) -> None:
    trace_to_onnx(policy, (torch.zeros(1, policy.obs_dim),), path, ["obs"], [output, "actions"])
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "deploy_yaml", embedded_yaml
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_torchscript(policy: ExportedPolicy, path: Path, embedded_yaml: str) -> None:
    with _quiet_deprecations():
        scripted = torch.jit.script(policy)
        torch.jit.save(scripted, str(path), _extra_files={FILES["deploy"]: embedded_yaml})


@dataclass
class ObservationExport:
    """The observation graph to write as observation.onnx and the sets it is checked on.

    checks: {set name: (signals {input: (B, width)}, expected {term: (B, dim)} or None)}; None
    compares against the torch graph itself (e.g. on random inputs).
    """

    graph: ObservationGraph
    checks: Mapping[str, tuple[Signals, Mapping[str, torch.Tensor] | None]]


def write_observation_onnx(graph: ObservationGraph, path: Path, layout_yaml: str = "") -> None:
    """``graph`` as an ONNX file: one input per robot signal, one output "obs/<term>" per term.

    ``layout_yaml`` (the observation terms as deploy.yaml lists them) goes into
    ``metadata_props["observations"]``.
    """
    example = tuple(torch.zeros(1, graph.widths[k]) for k in graph.inputs)
    trace_to_onnx(graph, example, path, list(graph.inputs), list(graph.outputs))
    model = onnx.load(str(path))
    if layout_yaml:
        entry = model.metadata_props.add()
        entry.key, entry.value = "observations", layout_yaml
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def observation_runner(path: Path) -> ObsRunner:
    """A single-threaded onnxruntime session of an observation.onnx: signals -> {term: (B, dim)}."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    prefix = len(OUTPUT_PREFIX)

    def run(signals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = sess.run(outputs, {k: signals[k] for k in inputs})
        return {name[prefix:]: v for name, v in zip(outputs, values, strict=True)}

    return run


def check_observation_parity(
    graph: ObservationGraph,
    runners: Mapping[str, ObsRunner],
    checks: Mapping[str, tuple[Signals, Mapping[str, torch.Tensor] | None]],
    tol: float = PARITY_TOL,
) -> dict[str, float]:
    """Max |runner - expected| over all terms, per "<runner>/<set>"; ExportError above ``tol``.

    ``expected`` None means the torch graph's own output; the torch graph is checked too, as
    runner "torch", wherever an expectation is given.
    """
    diffs: dict[str, float] = {}
    worst: dict[str, str] = {}
    for set_name, (signals, expected) in checks.items():
        torch_out = graph.run(signals)
        ref = {k: v.detach().cpu().numpy() for k, v in (expected or torch_out).items()}
        x = {k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32) for k, v in signals.items()}
        all_runners: dict[str, ObsRunner] = dict(runners)
        if expected is not None:
            all_runners["torch"] = lambda _x, out=torch_out: {k: v.numpy() for k, v in out.items()}
        for name, run in all_runners.items():
            got = run(x)
            if set(got) != set(ref):
                raise ExportError(f"{name} gives observation terms {sorted(got)}, torch {sorted(ref)}")
            per_term = {}
            for term, e in ref.items():
                if np.shape(got[term]) != np.shape(e):
                    raise ExportError(
                        f"{name} gives term {term!r} shape {np.shape(got[term])}, torch {np.shape(e)}"
                    )
                per_term[term] = float(np.abs(got[term] - e).max())
            key = f"{name}/{set_name}"
            diffs[key] = max(per_term.values())
            worst[key] = max(per_term, key=per_term.__getitem__)
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    if bad:
        text = ", ".join(f"{k} {v:.3g} (term {worst[k]!r})" for k, v in bad.items())
        raise ExportError(f"exported observation graph disagrees with the torch terms beyond {tol:g}: {text}")
    return diffs


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    """Hex sha256 digest of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_policy(
    policy: ExportedPolicy,
    out_dir: Path,
    manifest: Mapping[str, Any],
    check_obs: Mapping[str, torch.Tensor],
    tol: float = PARITY_TOL,
    *,
    observation: ObservationExport | None = None,
) -> dict[str, float]:
    """Write policy.onnx, policy.ts, observation.onnx and deploy.yaml into ``out_dir``; returns the diffs.

    Everything is written and checked in a staging folder beside ``out_dir`` first; only if ONNX
    Runtime and TorchScript agree with ``policy`` within ``tol`` on every set in ``check_obs``
    ((B, D) each), and observation.onnx with the torch terms on every set of ``observation.checks``,
    are the files moved in, each by an atomic rename, deploy.yaml last. A refused export
    (ExportError) leaves ``out_dir`` as it was. Without ``observation`` no observation.onnx is
    written and deploy.yaml has no ``observation`` section: such a folder is for benchmarks, the
    deploy runner refuses it.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", suffix=".tmp", dir=out_dir.parent))
    try:
        manifest = dict(manifest)
        manifest["policy"] = {**manifest["policy"], "onnx_sha256": None}
        diffs: dict[str, float] = {}
        keys = ["torchscript", "onnx", "deploy"]
        if observation is not None:
            section, obs_diffs = _stage_observation(observation, stage, manifest, tol)
            diffs |= {f"observation/{k}": v for k, v in obs_diffs.items()}
            keys.insert(1, "observation")
            items = list(manifest.items())
            at = [k for k, _ in items].index("policy") + 1  # the schema's order: right after policy
            manifest = dict([*items[:at], ("observation", section), *items[at:]])
        embedded = dump_yaml(manifest)
        onnx_path, ts_path = stage / FILES["onnx"], stage / FILES["torchscript"]
        outputs = manifest["policy"].get("outputs") or {}
        output = next((k for k in outputs if k != "actions"), "joint_targets")  # the mode's command
        _write_onnx(policy, onnx_path, embedded, output)
        _write_torchscript(policy, ts_path, embedded)
        runners = {"onnxruntime": onnx_runner(onnx_path), "torchscript": torchscript_runner(ts_path)}
        diffs = check_parity(policy, runners, check_obs, tol) | diffs
        manifest["policy"]["onnx_sha256"] = sha256(onnx_path)
        (stage / FILES["deploy"]).write_text(dump_yaml(manifest), encoding="utf-8")
        out_dir.mkdir(exist_ok=True)
        for key in keys:  # deploy.yaml last: its hashes name the new files
            _fsync(stage / FILES[key])
            os.replace(stage / FILES[key], out_dir / FILES[key])
        _fsync(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return diffs


def _stage_observation(
    observation: ObservationExport, stage: Path, manifest: Mapping[str, Any], tol: float
) -> tuple[dict[str, Any], dict[str, float]]:
    """Write and check observation.onnx in ``stage``; returns its deploy.yaml section and the diffs."""
    graph = observation.graph
    terms = [str(t["name"]) for t in manifest.get("observations", [])]
    if terms != graph.names:
        raise ExportError(f"the observation graph computes terms {graph.names}, deploy.yaml lists {terms}")
    path = stage / FILES["observation"]
    write_observation_onnx(graph, path, dump_yaml({"observations": manifest["observations"]}))
    diffs = check_observation_parity(
        graph, {"onnxruntime": observation_runner(path)}, observation.checks, tol
    )
    section = {
        "onnx": FILES["observation"],
        "onnx_sha256": sha256(path),
        "inputs": {k: graph.widths[k] for k in graph.inputs},
    }
    return section, diffs


@torch.no_grad()
def record_observations(env: Any, policy: torch.nn.Module, steps: int = 50, seed: int = 0) -> torch.Tensor:
    """obs["policy"] of ``steps`` steps of ``env`` driven by ``policy(obs)``'s mean action: (steps * N, D)."""
    obs, seen = env.reset(seed=seed), []
    for _ in range(steps):
        seen.append(obs["policy"].cpu())
        obs = env.step(policy(obs)).obs
    return torch.cat(seen)


def export_from_env(
    env: Any,
    policy: torch.nn.Module,
    task_cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    steps: int = 50,
    seed: int = 0,
    tol: float = PARITY_TOL,
) -> dict[str, float]:
    """Export a trained ``policy`` (``actor_module()``, ``policy(obs)``) of ``env`` to ``out_dir``.

    The policy graph is checked on 256 random observations and on ``steps`` steps of ``env``
    driven by the policy; the observation graph on the robot signals of those same steps (against
    the training terms on the training state) and on 256 random signal sets (against the torch
    graph). A disagreement beyond ``tol``, or a policy observation the graph cannot build from
    robot signals, raises ExportError before anything is written.
    """
    if isinstance(task_cfg, DictConfig):
        task_cfg = OmegaConf.to_container(task_cfg, resolve=True)
    action = action_interface(env, task_cfg)
    exported = ExportedPolicy.from_policy(policy, action.offset, action.scale, env.filters)
    manifest = deploy_manifest(task_cfg, env, exported, action)
    graph = ObservationGraph.from_env(env)
    rec = record_signals(env, policy, graph, steps=steps, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    random_obs = torch.randn(256, exported.obs_dim, generator=gen)
    checks = {"recorded": (rec.signals, rec.terms), "random": (random_signals(graph, 256, seed), None)}
    check_pipeline(exported, rec.obs, rec.applied, env.filters.names, tol)
    return export_policy(
        exported,
        out_dir,
        manifest,
        {"random": random_obs, "recorded": rec.obs},
        tol,
        observation=ObservationExport(graph, checks),
    )


def export_run(run_dir: Path, checkpoint: Path | None = None) -> Path:
    """Export a run's (latest or given) checkpoint to ``<run>/exported/``; returns that folder.

    See ``export_from_env`` for the checks (50 steps x 4 envs of the run's own task).
    """
    from embodied.workflow import build_env, load_policy, load_run

    run_dir, cfg = load_run(str(run_dir))
    env = build_env(cfg, num_envs=4)
    try:
        ac, _ = load_policy(run_dir, cfg, env, str(checkpoint) if checkpoint else None)
        if hasattr(ac, "chunk_from_embedding"):  # a VLA policy: image + instruction + proprio graphs
            from embodied.export.vla import export_vla

            diffs = export_vla(env, ac, cfg.task, run_dir / "exported")
        else:
            diffs = export_from_env(env, ac, cfg.task, run_dir / "exported")
    finally:
        env.close()
    log.info("exported %s (max |diff| vs torch: %s)", run_dir / "exported", diffs)
    return run_dir / "exported"
