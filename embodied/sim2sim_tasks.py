"""Sim-to-sim for the arm and car families: the exported files through the deploy runner, against
the torch policy in the training env, scored by the task's own metric (success, route completion).

The simulated robot (``EnvRobot``) is one env of the run's task in MuJoCo behind the deploy
runner's ``SignalRobot`` interface: it reports the signals deploy.yaml names, computed from its
physics state (an arm: joint encoders and forward kinematics; a car: the perception terms, as a
car's localization and perception stack would), and runs the action mode's controller on the
command it is sent (the task's own damped-least-squares IK for ``ee_delta``; Ackermann steering
and wheel-speed control for ``car_controls``). The perturbation presets of configs/sim2sim.yaml
become the env's physics randomization and action latency (rounded up to whole control steps);
the keys a family cannot apply are listed in the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from embodied.deploy.manifest import PERCEPTION_PREFIX, Manifest
from embodied.registry import make_env

FAMILIES = ("manipulation", "driving")


def _randomization(task: Mapping[str, Any], pert: Mapping[str, float]) -> tuple[dict[str, Any], list[str]]:
    """A perturbation as the task's randomization config, and the keys this family cannot apply."""
    physics = task.get("family") == "manipulation"  # driving randomizes latency only (its config)
    dt = float(task["physics_dt"]) * int(task.get("decimation", 1))
    r: dict[str, Any] = {}
    skipped = []
    for k, v in pert.items():
        if k == "latency_s":  # whole control steps, at least the latency asked for
            steps = math.ceil(float(v) / dt - 1e-9)
            r["latency_steps"] = [steps, steps]
        elif physics and k in ("mass_scale", "motor_strength"):
            r[k] = [float(v), float(v)]
        elif physics and k == "friction_scale":
            r["friction"] = [float(v), float(v)]
        else:
            skipped.append(k)
    return r, skipped


class EnvRobot:
    """One env of an arm or car task as a ``SignalRobot`` (embodied/deploy/robot.py)."""

    def __init__(
        self, task: Mapping[str, Any], manifest: Manifest, *, seed: int, perturb: Mapping[str, float]
    ):
        cfg = dict(task)
        cfg["randomization"], self.skipped = _randomization(task, perturb)
        self.env = make_env(cfg, num_envs=1, seed=seed)
        self.obs = self.env.reset(seed=seed)  # what the torch policy reads in the reference runs
        self.joint_names = list(manifest.joints.names)
        self.offset = np.asarray(manifest.action.offset, dtype=np.float64)
        self.scale = np.asarray(manifest.action.scale, dtype=np.float64)
        self.terms = {t.name: t for t in self.env.obs_terms["policy"]}
        self.perceived = [
            k[len(PERCEPTION_PREFIX) :]
            for k in manifest.observation.inputs
            if k.startswith(PERCEPTION_PREFIX)
        ]
        self.action = np.zeros(len(self.offset))
        self.info: dict[str, torch.Tensor] = {}
        self.done = False

    def read_signals(self) -> dict[str, np.ndarray]:
        s = self.env.state
        out: dict[str, np.ndarray] = {}
        for k in ("joint_pos", "joint_vel", "ee_pos"):
            if getattr(s, k, None) is not None:
                out[k] = s.__getattribute__(k)[0].double().cpu().numpy()
        for name in self.perceived:
            out[PERCEPTION_PREFIX + name] = self.terms[name](s)[0].double().cpu().numpy()
        return out

    def command(self) -> np.ndarray | None:
        """The task command the runner is given: an arm's goal point; a car has none."""
        goal = getattr(self.env.state, "goal_pos", None)
        return (
            None
            if goal is None or self.env.cfg.get("family") == "driving"
            else goal[0].double().cpu().numpy()
        )

    def write_command(self, command: np.ndarray) -> None:
        # The controller of the mode consumes the command; in simulation that is the task's own.
        self.action = np.clip((np.asarray(command, dtype=np.float64) - self.offset) / self.scale, -1.0, 1.0)

    def advance(self) -> None:
        out = self.env.step(torch.as_tensor(self.action, dtype=torch.float32)[None])
        self.info, self.obs = out.info, out.obs
        self.done = bool((out.terminated | out.truncated)[0])

    def close(self) -> None:
        self.env.close()


def _score(family: str, rows: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """An episode's figures from its per-step metrics."""
    late = rows[warmup:] or rows[-1:]
    out = {"steps": len(rows)}
    if family == "driving":
        out["route_completion"] = max(r["route_completion"] for r in rows)
        out["success"] = float(rows[-1]["success"])
        out["collision"] = float(max(r["collision"] for r in rows))
    else:
        out["success"] = float(np.mean([r["success"] for r in late]) >= 0.5)
    return out


def _episode(robot: EnvRobot, act, family: str, warmup: int) -> dict[str, float]:
    rows = []
    for _ in range(robot.env.max_episode_length):
        act()
        robot.advance()
        rows.append(
            {k.removeprefix("metric/"): float(v[0]) for k, v in robot.info.items() if k.startswith("metric/")}
        )
        if robot.done:
            break
    return _score(family, rows, warmup)


def sim2sim_task(
    run_dir: Path,
    run_cfg: DictConfig,
    s2s: Mapping[str, Any],
    preset_name: str,
    perts: list[dict[str, float]],
    *,
    seed: int,
    out_dir: Path,
) -> dict[str, Any]:
    """The check for an arm or car run; writes report.json into ``out_dir``."""
    from embodied.deploy import DeployRunner, load_manifest
    from embodied.workflow import build_env, load_policy

    task = OmegaConf.to_container(run_cfg.task, resolve=True)
    family = str(task["family"])
    exported = run_dir / "exported"
    manifest = load_manifest(exported / "deploy.yaml")
    dt = float(task["physics_dt"]) * int(task.get("decimation", 1))
    warmup = round(float((task.get("eval") or {}).get("warmup_s", 0.0)) / dt)
    ref_env = build_env(run_cfg, num_envs=1, seed=seed)
    policy, _ = load_policy(run_dir, run_cfg, ref_env, None)
    ref_env.close()
    target, reference, skipped = [], [], set()
    for e, pert in enumerate(perts):
        robot = EnvRobot(task, manifest, seed=seed + e, perturb=pert)
        skipped |= set(robot.skipped)
        runner = DeployRunner(exported, robot)
        target.append(_episode(robot, lambda r=runner, b=robot: r.step(b.command()), family, warmup))
        robot.close()
        ref = EnvRobot(task, manifest, seed=seed + e, perturb={})  # the same episode, torch policy

        def act(ref: EnvRobot = ref) -> None:
            with torch.no_grad():
                ref.action = policy(ref.obs)[0].double().cpu().numpy()

        reference.append(_episode(ref, act, family, warmup))
        ref.close()
    th = (s2s.get("tasks") or {}).get(family, {})
    rate = float(np.mean([r["success"] for r in target]))
    ref_rate = float(np.mean([r["success"] for r in reference]))
    report: dict[str, Any] = {
        "run": str(run_dir),
        "family": family,
        "target_engine": "mujoco",
        "preset": preset_name,
        "episodes": len(perts),
        "seed": seed,
        "success_rate": rate,
        "training_engine_success_rate": ref_rate,
        "perturbations": perts,
        "not_applied": sorted(skipped),
        "applied_as": _randomization(task, perts[0])[0] if perts else {},  # the first episode's
        "thresholds": th,
        "target": target,
        "training_engine": reference,
    }
    ok = rate >= float(th.get("min_success", 0.9)) and rate >= ref_rate - float(
        th.get("max_success_drop", 0.1)
    )
    summary = f"success {rate:.0%} (training engine {ref_rate:.0%})"
    if family == "driving":
        comp = float(np.mean([r["route_completion"] for r in target]))
        ref_comp = float(np.mean([r["route_completion"] for r in reference]))
        coll = float(np.mean([r["collision"] for r in target]))
        report |= {
            "route_completion": comp,
            "training_engine_route_completion": ref_comp,
            "collision_rate": coll,
        }
        ok = ok and comp >= float(th.get("min_route_completion", 0.95))
        summary += f", route completion {comp:.1%} (training engine {ref_comp:.1%}), collisions {coll:.0%}"
    report["verdict"] = "PASS" if ok else "FAIL"
    report["summary"] = (
        f"sim2sim mujoco perturb={preset_name} ({family}, through the deploy runner): {len(perts)} episodes, "
        + summary
        + (f"; not applied for this family: {', '.join(sorted(skipped))}" if skipped else "")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    report["out_dir"] = str(out_dir)
    report["needs"] = ", ".join(f"{k} {v}" for k, v in th.items()) or "defaults"
    return report
