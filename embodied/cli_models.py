"""``embodied`` commands for learned models: ``wm-train``, ``imagine`` (world models), ``vlm-train``
(the sim-domain VLM) and ``vlm-check`` (the VLM reward's sanity gate). Bad input -> ConfigError,
printed as one line by ``embodied.cli``."""

from __future__ import annotations

import torch

from embodied.cli import _kv, compose
from embodied.errors import ConfigError
from embodied.workflow import load_policy, load_run


def cmd_vlm_check(args: list[str]) -> int:
    from embodied.rewards.check import sanity_check

    cfg = compose(args)
    if str(cfg.reward.get("name", "none")) != "vlm":
        raise ConfigError("vlm-check needs reward=vlm (and reward.model=<dir>)")
    torch.set_num_threads(int(cfg.threads.torch))
    r = sanity_check(cfg)
    print(
        f"{r['task']}: {r['frames']} frames ({r['success_frames']} success) from {r['teacher']}: "
        f"ROC AUC {r['roc_auc']:.3f}, Spearman with progress {r['spearman_progress']:.3f}, "
        f"correlation with the task reward {r['reward_correlation']:.3f}"
    )
    if not r["passed"]:
        raise ConfigError(
            f"the VLM reward failed its sanity gate: ROC AUC {r['roc_auc']:.3f} < {r['min_auc']}"
        )
    return 0


VLM_TRAIN = {
    "tasks": "",
    "frames": 0,
    "out": "models/sim_vlm",
    "epochs": 30,
    "eval_frames": 1500,
    "num_envs": 32,
    "seed": 0,
    "threads": 2,
}


def cmd_vlm_train(args: list[str]) -> int:
    """Train the sim-domain VLM's heads on captioned frames of the tasks; write a loadable model dir."""
    import json
    import time
    from pathlib import Path

    from embodied.cli import _list
    from embodied.rewards.sim_vlm import save_sim_vlm
    from embodied.rewards.sim_vlm_train import parse_tasks, train_sim_vlm

    o = _kv(args, VLM_TRAIN, "vlm-train")
    tasks = parse_tasks(_list(o["tasks"]))
    for key in ("frames", "epochs", "eval_frames", "num_envs", "threads"):
        if o[key] < 1:
            raise ConfigError(f"vlm-train: {key} must be >= 1, got {o[key]}")
    out = Path(o["out"]).expanduser()
    if (out / "config.json").exists():
        raise ConfigError(f"vlm-train: {out} already holds a model; choose another out=")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"vlm-train: out={out} is a file")
    torch.set_num_threads(o["threads"])
    t0 = time.perf_counter()
    model, report = train_sim_vlm(
        tasks,
        o["frames"],
        eval_frames=o["eval_frames"],
        epochs=o["epochs"],
        num_envs=o["num_envs"],
        seed=o["seed"],
    )
    report["seconds"]["total"] = time.perf_counter() - t0
    report["command"] = "embodied vlm-train " + " ".join(args)
    save_sim_vlm(out, model)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    for task, r in report["heldout"].items():
        metric = f", vs the task's metric {r['roc_auc_metric']:.3f}" if "roc_auc_metric" in r else ""
        print(f"{task}: held-out ROC AUC {r['roc_auc_facet']:.3f}{metric}; facets {r['facet_accuracy']}")
    print(f"wrote {out} (config.json, heads.safetensors, eval.json) in {report['seconds']['total']:.0f} s")
    return 0


def cmd_wm_train(args: list[str]) -> int:
    from embodied.world_model import train_world_model

    run = [a for a in args if a.startswith("run=")]
    rest = [a for a in args if not a.startswith("run=")]
    path, fig = train_world_model(run[-1].split("=", 1)[1] if run else "", rest)
    f = fig["fit"]
    print(
        f"world model: {fig['transitions']} transitions ({fig['episodes']} episodes), "
        f"state {fig['state_dim']}, "
        f"{f['epochs']} epochs in {f['seconds']:.1f} s, validation RMSE {fig['val']['state_rmse']:.4g} "
        f"({fig['val']['state_rmse_normalized']:.3f} in training std)"
    )
    print(f"wrote {path}, {path.parent / 'metrics.json'}")
    return 0


def cmd_imagine(args: list[str]) -> int:
    from embodied.wm_video import imagine_run
    from embodied.workflow import build_env, set_threads
    from embodied.world_model import load_run_model, world_model_dir

    allowed = {"run": "", "futures": 8, "horizon": 50, "seed": 0, "num_envs": 4, "camera": ""}
    try:
        o = _kv(args, allowed, "imagine")
    except ValueError:
        raise ConfigError("imagine: futures, horizon, seed and num_envs must be integers") from None
    if o["futures"] < 1 or o["horizon"] < 1 or o["num_envs"] < 1:
        raise ConfigError(
            f"imagine: futures K, horizon H and num_envs must be >= 1, got K={o['futures']}, "
            f"H={o['horizon']}, num_envs={o['num_envs']}"
        )
    run_dir, cfg = load_run(o["run"])
    set_threads(cfg)
    if o["camera"]:
        cfg.task.camera = int(o["camera"]) if o["camera"].lstrip("-").isdigit() else o["camera"]
    env = build_env(cfg, num_envs=o["num_envs"], seed=o["seed"])
    try:
        model = load_run_model(run_dir, cfg, env)
        policy, _ = load_policy(run_dir, cfg, env, None)
        r = imagine_run(
            env,
            policy,
            model,
            world_model_dir(run_dir),
            futures=o["futures"],
            horizon=o["horizon"],
            seed=o["seed"],
        )
    finally:
        env.close()
    print(
        f"{o['futures']} futures over {o['horizon']} steps; final-step state RMSE {r['state_rmse_final']:.4g}"
    )
    print(f"wrote {r['video']} ({r['frames']} frames), {r['plot']}")
    return 0
