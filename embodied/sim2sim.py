"""Sim-to-sim check: the exported policy, through the robot-side deploy runner, in a perturbed
target simulator, against the same command sweep in the training engine. PASS or FAIL.
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

from embodied.errors import ConfigError

TARGETS = ("mujoco", "genesis", "mjwarp")  # mujoco: MujocoRobot; the others: BackendRobot
RANGED = ("mass_scale", "friction_scale", "motor_strength")


def episode_perturbations(preset: Mapping[str, Any], episodes: int, seed: int) -> list[dict[str, float]]:
    """One perturbation per episode: ranges are sampled, and the first episodes take the corners.
    A preset's ``actuator`` (the target robot's actuator model) is not a perturbation: see run_target."""
    preset = {k: v for k, v in preset.items() if k != "actuator"}
    ranged = {k: tuple(float(x) for x in v) for k, v in preset.items() if k in RANGED}
    fixed = {k: float(v) for k, v in preset.items() if k not in RANGED}
    corners = [{}]
    for k, (lo, hi) in ranged.items():
        corners = [{**c, k: v} for c in corners for v in ((lo, hi) if lo != hi else (lo,))]
    rng = np.random.default_rng(seed)
    out = []
    for e in range(episodes):
        sample = (
            corners[e]
            if e < len(corners)
            else {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in ranged.items()}
        )
        out.append({**fixed, **sample})
    return out


def _sweep(cfg: Mapping[str, Any], episodes: int) -> np.ndarray:
    """(episodes, 3) commands: each component spread evenly over its range."""
    cols = [
        np.linspace(*map(float, cfg["commands"][k]), episodes)
        for k in ("lin_vel_x", "lin_vel_y", "ang_vel_yaw")
    ]
    return np.stack(cols, axis=1)


def _fell(quat: np.ndarray, height: float, fall: Mapping[str, Any]) -> bool:
    _, x, y, _ = quat
    up_z = 1.0 - 2.0 * (x * x + y * y)  # body z axis, world z component
    return up_z < math.cos(float(fall["max_tilt"])) or height < float(fall["min_height"])


def run_target(
    run_dir: Path,
    run_cfg: DictConfig,
    s2s: Mapping[str, Any],
    preset: Mapping[str, Any],
    *,
    episodes: int,
    seed: int,
    video_path: Path | None,
) -> dict[str, Any]:
    """The exported policy through DeployRunner and a simulated robot of the target engine (MujocoRobot,
    or BackendRobot for genesis / mjwarp, and for any engine when the preset names the robot's
    ``actuator``, a sim/actuators.py model such as a DC motor the policy never trained with): one
    robot per episode."""
    from embodied.deploy import DeployRunner, MujocoRobot, Perturbation, load_manifest
    from embodied.deploy.backend_robot import BackendRobot
    from sim.assets import resolve_model_path

    exported = run_dir / "exported"
    manifest = load_manifest(exported / "deploy.yaml")
    model = resolve_model_path(run_cfg.task.model)
    commands, perts = _sweep(s2s, episodes), episode_perturbations(preset, episodes, seed)
    steps, warmup = (
        round(float(s2s["episode_s"]) / manifest.control.dt),
        round(float(s2s["warmup_s"]) / manifest.control.dt),
    )
    errors, fell, lengths, measured, hits, frames = [], [], [], [], {}, []
    engine = str(s2s.get("target_engine", "mujoco"))
    actuator = preset.get("actuator")
    for e in range(episodes):
        common = dict(
            physics_dt=manifest.control.physics_dt,
            decimation=manifest.control.decimation,
            perturb=Perturbation.from_dict(perts[e]),
            seed=seed + e,
        )
        if engine == "mujoco" and actuator is None:
            robot = MujocoRobot(model, **common)
        else:
            robot = BackendRobot(engine, model, actuator=actuator, **common)
        runner = DeployRunner(exported, robot)
        cmd, err, vx, down = commands[e].astype(np.float32), [], [], False
        for t in range(steps):
            runner.step(cmd)
            robot.advance()
            base = robot.base_state()
            if t >= warmup:
                err.append(float(np.linalg.norm(cmd[:2] - base.lin_vel_base[:2])))
                vx.append(float(base.lin_vel_base[0]))
            if video_path is not None and e == 0:
                frames.append(robot.render(320, 240))
            if _fell(base.quat, float(base.pos[2]), s2s["fall"]):
                down = True
                break
        for k, v in robot.limit_hits().items():
            hits[k] = hits.get(k, 0) + int(v)
        robot.close()
        errors.append(float(np.mean(err)) if err else float("nan"))
        measured.append(float(np.mean(vx)) if vx else float("nan"))
        fell.append(down)
        lengths.append(t + 1)
    if frames:
        from embodied.video import write_video

        write_video(
            video_path,
            torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2),
            fps=round(1 / manifest.control.dt),
        )
    return {
        "commands": commands.tolist(),
        "perturbations": perts,
        "tracking_error": errors,
        "fell": fell,
        "measured_vx": measured,
        "steps": lengths,
        "limit_hits": hits,
    }


@torch.no_grad()
def run_training_engine(
    run_dir: Path, run_cfg: DictConfig, s2s: Mapping[str, Any], *, episodes: int
) -> dict[str, Any]:
    """The same sweep in the training env (nominal: no randomization, no observation noise)."""
    from embodied.workflow import build_env, load_policy, silence_policy_noise

    cfg = run_cfg.copy()
    cfg.task.episode_length_s = float(s2s["episode_s"]) + 1.0  # no time limit inside the sweep
    cfg.task.randomization = {}
    silence_policy_noise(cfg)
    env = build_env(cfg, num_envs=episodes, seed=0)
    policy, _ = load_policy(run_dir, cfg, env, None)
    obs = env.reset(seed=0)
    env.command = torch.as_tensor(_sweep(s2s, episodes), dtype=torch.float32, device=env.device)
    steps, warmup = round(float(s2s["episode_s"]) / env.dt), round(float(s2s["warmup_s"]) / env.dt)
    active = torch.ones(episodes, dtype=torch.bool)
    err_sum, vx_sum, count = torch.zeros(episodes), torch.zeros(episodes), 0
    fell = torch.zeros(episodes, dtype=torch.bool)
    for t in range(steps):
        out = env.step(policy(obs))
        if t >= warmup:
            err_sum += out.info["metric/lin_vel_error"] * active
            vx_sum += env.state.base_lin_vel[:, 0] * active
            count += 1
        fell |= active & out.terminated
        active &= ~(out.terminated | out.truncated)
        obs = out.obs
    env.close()
    return {
        "tracking_error": (err_sum / max(count, 1)).tolist(),
        "measured_vx": (vx_sum / max(count, 1)).tolist(),
        "fell": fell.tolist(),
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmd = [c[0] for c in report["target"]["commands"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(cmd, cmd, "k--", lw=1, label="commanded")
    a.plot(cmd, report["training_engine"]["measured_vx"], "o-", label="training engine")
    a.plot(
        cmd, report["target"]["measured_vx"], "s-", label=f"{report['target_engine']} ({report['preset']})"
    )
    for c, v, f in zip(cmd, report["target"]["measured_vx"], report["target"]["fell"], strict=True):
        if f:
            a.plot([c], [v], "rx", ms=10)
    a.set_xlabel("commanded vx (m/s)")
    a.set_ylabel("measured vx (m/s)")
    a.legend(fontsize=8)
    b.plot(cmd, report["training_engine"]["tracking_error"], "o-", label="training engine")
    b.plot(cmd, report["target"]["tracking_error"], "s-", label="target")
    b.set_xlabel("commanded vx (m/s)")
    b.set_ylabel("tracking error (m/s)")
    b.legend(fontsize=8)
    fig.suptitle(
        f"sim2sim {report['verdict']}: falls {report['falls']}, error ratio {report['tracking_ratio']:.2f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sim2sim(
    run_dir: Path,
    *,
    target: str,
    preset_name: str,
    episodes: int | None = None,
    seed: int = 0,
    video: bool | None = None,
    config_path: Path | None = None,
) -> dict[str, Any]:
    """Run the check and write ``<run>/sim2sim/<target>_<preset>/`` (report.json, tracking.png, video)."""
    from embodied.registry import CONFIG_DIR

    s2s = OmegaConf.to_container(OmegaConf.load(config_path or CONFIG_DIR / "sim2sim.yaml"), resolve=True)
    if target not in TARGETS:
        raise ConfigError(f"unknown sim2sim target {target!r}; available: {', '.join(TARGETS)}")
    presets = s2s["presets"]
    if preset_name not in presets:
        raise ConfigError(f"unknown perturbation preset {preset_name!r}; presets: {', '.join(presets)}")
    if not (run_dir / "exported" / "deploy.yaml").is_file():
        raise ConfigError(f"{run_dir} has no exported policy; run `embodied export run={run_dir}` first")
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    episodes = int(episodes or s2s["episodes"])
    out_dir = run_dir / "sim2sim" / f"{target}_{preset_name}"
    if str(run_cfg.task.get("family")) in ("manipulation", "driving"):
        from embodied.sim2sim_tasks import sim2sim_task

        if target != "mujoco":
            raise ConfigError(
                f"sim2sim target={target} drives locomotion policies; arm and car runs are checked in mujoco"
            )

        if "actuator" in (presets[preset_name] or {}):
            raise ConfigError(f"preset {preset_name!r} sets the robot's actuator: it drives locomotion runs")
        perts = episode_perturbations(presets[preset_name] or {}, episodes, seed)
        return sim2sim_task(run_dir, run_cfg, s2s, preset_name, perts, seed=seed, out_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    want_video = s2s.get("video", True) if video is None else video
    tgt = run_target(
        run_dir,
        run_cfg,
        {**s2s, "target_engine": target},
        presets[preset_name] or {},
        episodes=episodes,
        seed=seed,
        video_path=out_dir / "episode0.mp4" if want_video else None,
    )
    ref = run_training_engine(run_dir, run_cfg, s2s, episodes=episodes)
    measured = [e for e in tgt["tracking_error"] if not math.isnan(e)]  # NaN: fell before warm-up ended
    err_t = float(np.mean(measured)) if measured else float("inf")
    err_r = float(np.mean(ref["tracking_error"]))
    th = s2s["thresholds"]
    report = {
        "run": str(run_dir),
        "target_engine": target,
        "preset": preset_name,
        "episodes": episodes,
        "seed": seed,
        "falls": int(sum(tgt["fell"])),
        "training_engine_falls": int(sum(ref["fell"])),
        "tracking_error": err_t,
        "training_engine_tracking_error": err_r,
        "tracking_ratio": err_t / max(err_r, 1e-6),
        "limit_hits": tgt["limit_hits"],
        "thresholds": th,
        "target": tgt,
        "training_engine": ref,
    }
    ok = report["falls"] <= int(th["max_falls"]) and report["tracking_ratio"] <= float(
        th["max_tracking_ratio"]
    )
    report["verdict"] = "PASS" if ok else "FAIL"
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot(report, out_dir / "tracking.png")
    report["out_dir"] = str(out_dir)
    return report
