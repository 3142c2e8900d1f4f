"""``embodied`` command line: train, eval, play, tasks. Bad input -> one line on stderr, exit 2."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embodied.errors import ConfigError
from embodied.registry import CONFIG_DIR, config_dirs, describe_tasks, load_plugins, task_names
from embodied.workflow import load_policy, load_run
from sim.backend import SimConfigError
from world_models.errors import WorldModelError

USAGE = """usage: embodied <command> [key=value ...]
  train   [task=go2_velocity sim=mujoco algo=ppo policy=mlp safety.filters=[...] key=value ...]
          [resume=<run dir>]
  eval    run=<run dir> [checkpoint=<file>] [num_envs=N] [seed=S] [video=true]
  play    run=<run dir> [checkpoint=<file>] [seconds=10] [num_envs=1]
  export  run=<run dir> [checkpoint=<file>]   writes exported/policy.onnx, policy.ts, observation.onnx,
          deploy.yaml
  sim2sim run=<run dir> [target=mujoco] [perturb=<preset>] [episodes=20] [seed=0]   PASS/FAIL, exit 1 on FAIL
  safety-eval run=<run dir> [filters=[none,box]] [episodes=16] [seeds=[0,1,2]] [checkpoint=<file>]
          [video=true] [+safety.params.<filter>.<key>=v ...]   each setting (none, a filter, a chain
          box+cbf) on the same seeds and initial states; writes <run>/safety/report.md/.json/.png
  train -m seed=1,2 [key=a,b ...]   Hydra multirun: one run directory per job (runs/multirun/<date-time>/<n>)
  compare <run dirs or globs> [metrics=[a,b]] [out=<dir>]   mean/spread curves per config over seeds
          (compare.png) and final figures with 95% t-intervals (compare.md)
  tasks   list the registered tasks
  vlm-check task=<task> reward=vlm reward.model=<dir> [reward.check_run=<teacher run>] [<override> ...]
          the VLM reward's sanity gate: ROC AUC success vs failure, Spearman with progress, correlation
          with the task reward; exit 2 below reward.min_auc (training runs it first)
  wm-train run=<run dir> [world_model.<key>=<value> ...] [seed=N]   fits the world model (configs/world_model)
          on the run's replay/ (train with replay.enabled=true); writes <run>/world_model/model.pt
  imagine run=<run dir> [futures=8] [horizon=50] [seed=0] [num_envs=4] [camera=<name or id>]
          the real rollout beside K imagined futures drawn as ghosts: <run>/world_model/futures.mp4, .png
  fit-actuator data=<log.csv|.parquet> model=dc_motor|mlp [out=<path>] [torque_constant=<N m/A>]
          fits an actuator model to a robot log (docs/actuator_log.md); use it with task.actuator.path
  demos   run=<run dir> episodes=N [out=<dir>] [num_envs=N] [seed=0] [state=<group>] [task.|sim.|safety.<k>=v]
          the run's policy with its camera on: whole episodes in LeRobot's layout v3.0 (docs/datasets.md)
  dataset-info data=<dataset dir>   episodes, frames, cameras, tasks and success of a LeRobot dataset
  vlm-train tasks=[arm_push,driving_lane_follow] frames=N [out=models/sim_vlm] [epochs=30]
          [eval_frames=1500] [num_envs=32] [seed=0] [threads=2]   trains the sim-domain VLM (frozen
          EfficientNet-lite0 + MiniLM, trained heads) on captioned frames of the tasks; a model
          directory reward=vlm reward.model=<dir> loads, with its held-out evaluation (eval.json)
  vla-pretrain data=<dataset dir> [epochs=20] [batch_size=256] [lr=3e-4] [val_fraction=0.1] [shift=4]
          [policy.<key>=v ...] [run_dir=<dir>]   behaviour cloning of policy=vla on the dataset's
          episodes (a held-out validation split); a run directory eval, play, export and
          `train train.init_from=<run>` read; resume=<run> continues it
Plugins: EMBODIED_PLUGINS=mod1,mod2 imports modules that register algorithms, policies, filters or
terms; EMBODIED_CONFIG_PATH=dir1:dir2 adds config directories (algo/, policy/, task/, ...)."""


def compose(overrides: list[str]) -> DictConfig:
    """Hydra composition of configs/config.yaml with command-line overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    for o in overrides:
        if o.startswith("task=") and o.split("=", 1)[1] not in task_names():
            raise ConfigError(
                f"unknown task {o.split('=', 1)[1]!r}; registered tasks: {', '.join(task_names())}"
            )
    extra = [f"file://{d}" for d in config_dirs()[1:]]
    if extra:
        overrides = [f"hydra.searchpath=[{','.join(extra)}]", *overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("config", overrides=overrides)


def _kv(args: list[str], allowed: dict[str, Any], command: str) -> dict[str, Any]:
    out = dict(allowed)
    for a in args:
        if "=" not in a:
            raise ConfigError(f"{command}: expected key=value, got {a!r}")
        k, v = a.split("=", 1)
        if k not in allowed:
            raise ConfigError(f"{command}: unknown option {k!r}; valid: {', '.join(allowed)}")
        if isinstance(allowed[k], bool):
            if v.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"{command}: {k} must be true or false, got {v!r}")
            out[k] = v.lower() in ("1", "true", "yes")
        elif allowed[k] is not None:
            try:
                out[k] = type(allowed[k])(v)
            except ValueError:
                raise ConfigError(f"{command}: {k} must be {type(allowed[k]).__name__}, got {v!r}") from None
        else:
            out[k] = v
    return out


def run_eval(run_dir: Path, cfg: DictConfig, *, checkpoint=None, num_envs=0, seed=12345, video=False) -> dict:
    """Evaluate a run's policy on the task's eval settings; saves eval.json (and videos/eval.mp4)."""
    from embodied.evaluate import check_thresholds, evaluate
    from embodied.workflow import build_env, set_threads

    set_threads(cfg)
    ev = OmegaConf.to_container(cfg.task.get("eval") or {}, resolve=True)
    env = build_env(cfg, num_envs=num_envs or int(ev.get("num_envs", 32)), seed=seed)
    if "commands" in ev and hasattr(env, "set_command_ranges"):
        env.set_command_ranges(ev["commands"])
    policy, ckpt = load_policy(run_dir, cfg, env, checkpoint)
    result = evaluate(
        env,
        policy,
        seed=seed,
        warmup_s=float(ev.get("warmup_s", 0.0)),
        video_path=run_dir / "videos" / "eval.mp4" if video else None,
    )
    env.close()
    result = {"task": str(cfg.task.name), "iteration": ckpt["iteration"], "seed": seed, **result}
    result["pass"] = check_thresholds(result, ev)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def cmd_train(args: list[str]) -> int:
    from embodied.distributed import DistributedFailure

    if args and args[0] in ("-m", "--multirun"):
        return _multirun(args[1:])
    try:
        return _train(args)
    except DistributedFailure as e:  # a rank died or a collective timed out: not bad input
        print(f"error: {e}", file=sys.stderr)
        return 1


def _new_run_dir(cfg: DictConfig) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / str(cfg.task.name) / stamp
    if (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} already holds a run; use resume={run_dir} to continue it")
    return run_dir


def _multirun(args: list[str]) -> int:
    """Hydra's multirun over the sweep in ``args`` (``seed=1,2 algo.learning_rate=3e-4,1e-3``): one
    run directory per job, ``runs/multirun/<date-time>/<job number>`` unless hydra.sweep.* says.
    Launcher plugins (e.g. hydra-submitit-launcher for SLURM) are chosen with ``hydra/launcher=...``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    failures: list[str] = []

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
    def job(cfg: DictConfig) -> int:
        cfg = cfg.copy()
        cfg.run_dir = HydraConfig.get().runtime.output_dir
        try:
            return cmd_train_config(cfg)
        except (ConfigError, SimConfigError) as e:  # this job fails; the sweep goes on
            failures.append(f"{cfg.run_dir}: {e}")
            return 2

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    given = {a.split("=", 1)[0] for a in args}
    hydra_args = [] if "hydra.sweep.dir" in given else [f"hydra.sweep.dir=runs/multirun/{stamp}"]
    if "hydra.sweep.subdir" not in given:
        hydra_args.append("hydra.sweep.subdir=${hydra.job.num}")
    extra = [f"file://{d}" for d in config_dirs()[1:]]
    if extra:
        hydra_args.append(f"hydra.searchpath=[{','.join(extra)}]")
    argv, sys.argv = sys.argv, ["embodied", "-m", *hydra_args, *args]
    try:
        job()
    finally:
        sys.argv = argv
    for f in failures:
        print(f"error: {f}", file=sys.stderr)
    return 2 if failures else 0


def cmd_train_config(cfg: DictConfig) -> int:
    """Train from an already composed config (a Hydra job's)."""
    return _train([], cfg=cfg)


def _train(args: list[str], cfg: DictConfig | None = None) -> int:
    from embodied import distributed as dd
    from embodied.checkpoint import latest_checkpoint, load_checkpoint, load_module_state
    from embodied.data.replay import ReplayWriter
    from embodied.logger import RunLogger, plot_learning_curve
    from embodied.runner import Runner
    from embodied.workflow import build_algo, build_env, build_policy, checkpoint_meta, set_threads

    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume:
        run_dir, cfg = load_run(resume)
        extra = [a for a in args if not a.startswith("resume=")]
        for a in extra:  # a resumed run may only be extended (or spread over processes), not reconfigured
            if not a.startswith(("train.", "dist.")):
                raise ConfigError(f"resume: only train.* and dist.* can change when resuming, got {a!r}")
        cfg.merge_with_dotlist(extra)
    elif cfg is None:
        cfg = compose(args)
    dcfg = dd.dist_config(OmegaConf.to_container(cfg.dist) if cfg.get("dist") is not None else None)
    world = dd.launched_world_size()
    if world == 1 and dcfg.nproc > 1:  # this process launches the ranks and trains nothing itself
        dd.backend_for(str(cfg.device))
        if resume:
            path = latest_checkpoint(run_dir)
            if path is not None:
                dd.check_resume_world(load_checkpoint(path), dcfg.nproc, dcfg.allow_resize, path)
        elif not cfg.run_dir:  # every rank must write to the one run directory chosen here
            args = [*args, f"run_dir={_new_run_dir(cfg)}"]
        else:
            _new_run_dir(cfg)
            if not args:  # a Hydra job: its overrides, with the job's run directory
                from hydra.core.hydra_config import HydraConfig

                args = [*HydraConfig.get().overrides.task, f"run_dir={cfg.run_dir}"]
        return dd.launch(["train", *args], dcfg.nproc)
    ctx = dd.init_from_env(str(cfg.device), dcfg.timeout_s)  # None with one process
    main_rank = ctx is None or ctx.is_main
    if ctx is not None and str(cfg.device).startswith("cuda"):
        cfg.device = str(ctx.device)
    if not resume:
        if ctx is None:
            run_dir = _new_run_dir(cfg)
        else:  # rank 0 decides, so that ranks started a second apart agree
            decided: list[str] = ["", ""]
            if ctx.is_main:
                try:
                    decided = [str(_new_run_dir(cfg)), ""]
                except ConfigError as e:
                    decided = ["", str(e)]
            decided = ctx.broadcast_object(decided)
            if decided[1]:
                raise ConfigError(decided[1])
            run_dir = Path(decided[0])

    set_threads(cfg)
    if ctx is None:
        torch.manual_seed(int(cfg.seed))
        env = build_env(cfg, groups=True)
    else:  # each rank its own envs and action noise
        total = cfg.num_envs if cfg.get("num_envs") is not None else cfg.task.num_envs
        num_envs, rank_seed = dd.rank_envs(int(total), int(cfg.seed), ctx, dcfg.envs)
        torch.manual_seed(rank_seed)
        env = build_env(cfg, num_envs=num_envs, seed=rank_seed, groups=True)
    policy = build_policy(cfg, env)
    init_from = cfg.train.get("init_from")
    if init_from and not resume:  # e.g. RL fine-tuning of a pretrained (behaviour-cloned) policy
        from embodied.workflow import init_policy

        source = init_policy(policy, Path(str(init_from)), cfg, env)
        if main_rank:
            print(f"policy initialized from {source}", file=sys.stderr)
    alg = build_algo(cfg, env, policy)
    vlm_check = None
    if not resume and main_rank:  # a VLM reward is checked before training spends on it
        from embodied.rewards.check import gate

        vlm_check = gate(cfg)
    observers = []
    replay = cfg.get("replay") or {}
    if replay.get("enabled", False) and main_rank:  # with several ranks: rank 0's transitions
        groups = replay.get("groups")
        observers.append(
            ReplayWriter(
                run_dir / "replay",
                env.obs_spec,
                env.num_envs,
                env.action_dim,
                env.dt,
                groups=None if groups is None else list(groups),
                shard_steps=int(replay.get("shard_steps", 24)),
                device=env.device,
            )
        )
    record = int((cfg.get("record") or {}).get("episodes", 0) or 0)
    if record > 0 and main_rank:  # whole training episodes as a LeRobot dataset (RL rollouts)
        from embodied.data.lerobot_record import rollout_recorder

        name = "rollouts" if not resume else f"rollouts_resumed_{time.strftime('%Y%m%d-%H%M%S')}"
        info = {"embodied": {"task": str(cfg.task.name), "run": str(run_dir), "source": "training"}}
        observers.append(
            rollout_recorder(
                run_dir / name,
                env,
                task=str(cfg.task.name),
                max_episodes=record,
                robot_type=str(cfg.task.name),
                info_extra=info,
            )
        )
    if main_rank:  # hard constraints: the states breaking the task's barriers, filter or not
        from embodied.barrier_monitor import BarrierMonitor

        monitor = BarrierMonitor.for_task(env, cfg.task, path=run_dir / "safety" / "barriers.json")
        if monitor is not None:
            observers.append(monitor)
    if not resume and main_rank:  # written once the config has built: a rejected config leaves no run
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if vlm_check is not None:
            (run_dir / "vlm").mkdir(exist_ok=True)
            (run_dir / "vlm" / "check.json").write_text(json.dumps(vlm_check, indent=2))
    start_it, start_steps = 0, 0
    if resume:
        path = latest_checkpoint(run_dir)
        if path is not None:
            ckpt = load_checkpoint(path, task=str(cfg.task.name), obs_spec=env.obs_spec)
            dd.check_resume_world(ckpt, world, dcfg.allow_resize, path)
            load_module_state(alg.policy, ckpt["policy"]["state"], f"checkpoint {path}")
            try:
                alg.load_state_dict(ckpt["algo"]["state"])
            except (ValueError, KeyError) as e:
                raise ConfigError(f"{path}: algorithm state does not fit ({e})") from None
            start_it, start_steps = int(ckpt["iteration"]), int(ckpt["total_steps"])
            if main_rank:
                print(f"resuming {run_dir} from {path.name} (iteration {start_it})", file=sys.stderr)
    if ctx is not None:
        ctx.attach(alg)  # sync hook, normalizer reduction, rank 0's weights on every rank
    logger = None
    if main_rank:
        logger = RunLogger(run_dir, purge_step=start_steps + 1 if resume else None)
        if resume:
            logger.truncate_after(start_steps)
    runner = Runner(
        env,
        alg,
        logger,
        run_dir,
        checkpoint_meta={**checkpoint_meta(cfg, env), "world_size": world},
        save_interval=int(cfg.train.save_interval),
        collect_threads=int(cfg.threads.get("torch_collect", cfg.threads.torch)),
        observers=observers,
        world_size=world,
        is_main=main_rank,
        reduce_stats=None if ctx is None else ctx.reduce_stats,
        random_episode_start=bool(cfg.train.get("random_episode_start", False)),
    )
    try:
        runner.learn(int(cfg.train.max_iterations), start_it, start_steps)
    except RuntimeError as e:
        if ctx is None or not dd.is_collective_failure(e):
            raise
        raise dd.DistributedFailure(dd.describe_failure(e)) from None
    env.close()
    if ctx is not None:
        ctx.close()
    if logger is None:  # the other ranks are done: rank 0 alone evaluates, records and exports
        return 0
    logger.close()
    plot_learning_curve(run_dir)
    if cfg.train.evaluate:
        result = run_eval(run_dir, cfg, video=bool(cfg.train.video))
        print(json.dumps(result, indent=2))
    if cfg.train.get("export", False):
        try:
            print(f"exported {_export(run_dir, None)}")
        except ConfigError as e:  # e.g. IK or gripper actions have no joint-target form
            print(f"export skipped: {e}", file=sys.stderr)
    print(f"run directory: {run_dir}")
    return 0


def _export(run_dir: Path, checkpoint: str | None) -> Path:
    from embodied.export import ExportError, export_run

    try:
        return export_run(run_dir, Path(checkpoint) if checkpoint else None)
    except ExportError as e:
        raise ConfigError(f"export refused: {e}") from None


def cmd_compare(args: list[str]) -> int:
    from embodied.compare import compare

    opts = [a for a in args if "=" in a and a.split("=", 1)[0] in ("metrics", "out")]
    paths = [a for a in args if a not in opts]
    if not paths:
        raise ConfigError("compare: give run directories or globs, e.g. embodied compare 'runs/multirun/*'")
    o = _kv(opts, {"metrics": "", "out": ""}, "compare")
    png, md = compare(paths, _list(o["metrics"]) or None, Path(o["out"]) if o["out"] else None)
    print(md.read_text())
    print(f"wrote {png}, {md}")
    return 0


def cmd_export(args: list[str]) -> int:
    o = _kv(args, {"run": "", "checkpoint": ""}, "export")
    run_dir, _ = load_run(o["run"])
    out = _export(run_dir, o["checkpoint"] or None)
    names = (
        "policy.onnx",
        "policy.ts",
        "observation.onnx",
        "text_encoder.onnx",
        "tokenizer.json",
        "deploy.yaml",
    )
    print("wrote " + ", ".join(str(out / n) for n in names if (out / n).is_file()))
    return 0


def cmd_eval(args: list[str]) -> int:
    o = _kv(args, {"run": "", "checkpoint": "", "num_envs": 0, "seed": 12345, "video": False}, "eval")
    run_dir, cfg = load_run(o["run"])
    result = run_eval(
        run_dir,
        cfg,
        checkpoint=o["checkpoint"] or None,
        num_envs=o["num_envs"],
        seed=o["seed"],
        video=o["video"],
    )
    print(json.dumps(result, indent=2))
    print(f"saved {run_dir / 'eval.json'}")
    return 0


def cmd_play(args: list[str]) -> int:
    from embodied.video import CostVideo
    from embodied.workflow import build_env, set_threads

    o = _kv(args, {"run": "", "checkpoint": "", "seconds": 10.0, "num_envs": 1, "seed": 0}, "play")
    run_dir, cfg = load_run(o["run"])
    set_threads(cfg)
    env = build_env(cfg, num_envs=o["num_envs"], seed=o["seed"])
    policy, _ = load_policy(run_dir, cfg, env, o["checkpoint"] or None)
    obs, info, video = env.reset(seed=o["seed"]), None, CostVideo(fps=round(1.0 / env.dt))
    with torch.no_grad():
        for _ in range(int(o["seconds"] / env.dt)):
            video.add(env.render([0], 320, 240)[0], info)
            out = env.step(policy(obs))
            obs, info = out.obs, out.info
    out = video.write(run_dir / "videos" / "play.mp4")
    env.close()
    print(f"wrote {out}")
    return 0


def cmd_sim2sim(args: list[str]) -> int:
    from embodied.sim2sim import sim2sim

    o = _kv(args, {"run": "", "target": "mujoco", "perturb": "nominal", "episodes": 0, "seed": 0}, "sim2sim")
    run_dir, _ = load_run(o["run"])
    r = sim2sim(
        run_dir, target=o["target"], preset_name=o["perturb"], episodes=o["episodes"] or None, seed=o["seed"]
    )
    if "summary" in r:  # an arm or car task: success / route completion (embodied/sim2sim_tasks.py)
        print(r["summary"])
        print(f"{r['verdict']} (needs {r['needs']}); see {r['out_dir']}")
        return 0 if r["verdict"] == "PASS" else 1
    print(
        f"sim2sim {r['target_engine']} perturb={r['preset']}: {r['episodes']} episodes, falls {r['falls']} "
        f"(training engine {r['training_engine_falls']}), tracking error {r['tracking_error']:.3f} m/s vs "
        f"{r['training_engine_tracking_error']:.3f} m/s in training (ratio {r['tracking_ratio']:.2f}), "
        f"limit hits {r['limit_hits']}"
    )
    th = r["thresholds"]
    need = f"falls <= {th['max_falls']}, ratio <= {th['max_tracking_ratio']}"
    print(f"{r['verdict']} (needs {need}); see {r['out_dir']}")
    return 0 if r["verdict"] == "PASS" else 1


def cmd_safety_eval(args: list[str]) -> int:
    from embodied.safety_eval import safety_eval
    from embodied.safety_report import compact_table

    overrides = [a.lstrip("+") for a in args if a.lstrip("+").startswith("safety.params.")]
    rest = [a for a in args if not a.lstrip("+").startswith("safety.params.")]
    allowed = {
        "run": "",
        "filters": "[none,box]",
        "episodes": "16",
        "seeds": "[0,1,2]",
        "checkpoint": "",
        "video": True,
    }
    o = _kv(rest, allowed, "safety-eval")
    try:
        episodes, seeds = int(o["episodes"]), [int(s) for s in _list(o["seeds"])]
    except ValueError:
        raise ConfigError(
            f"safety-eval: episodes and seeds must be integers, got {o['episodes']!r}, {o['seeds']!r}"
        ) from None
    run_dir, cfg = load_run(o["run"])
    params = OmegaConf.to_container(OmegaConf.from_dotlist(overrides)) if overrides else {}
    report = safety_eval(
        run_dir,
        cfg,
        _list(o["filters"]),
        episodes=episodes,
        seeds=seeds,
        checkpoint=o["checkpoint"] or None,
        video=o["video"],
        params=params.get("safety", {}).get("params", {}),
        command=" ".join(["embodied", "safety-eval", *(shlex.quote(a) for a in args)]),
    )
    print(compact_table(report))
    worst = report["worst_episode"]
    print(
        f"wrote {run_dir / 'safety'}/report.md, report.json, report.png"
        + (f", {worst['video']}" if worst else "")
    )
    return 0


def _list(text: str) -> list[str]:
    """``[a,b]`` or ``a`` -> its items, stripped."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_tasks(args: list[str]) -> int:
    rows = describe_tasks()
    width = max(len(r[0]) for r in rows)
    for name, family, desc in rows:
        print(f"{name:<{width}}  {family:<12}  {desc}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "play": cmd_play,
    "export": cmd_export,
    "sim2sim": cmd_sim2sim,
    "compare": cmd_compare,
    "safety-eval": cmd_safety_eval,
    "tasks": cmd_tasks,
    "vlm-check": lambda args: _lazy("embodied.cli_models", "cmd_vlm_check", args),
    "vlm-train": lambda args: _lazy("embodied.cli_models", "cmd_vlm_train", args),
    "wm-train": lambda args: _lazy("embodied.cli_models", "cmd_wm_train", args),
    "imagine": lambda args: _lazy("embodied.cli_models", "cmd_imagine", args),
    "fit-actuator": lambda args: _lazy("embodied.actuator_cli", "cmd_fit_actuator", args),
    "demos": lambda args: _lazy("embodied.demos", "cmd_demos", args),
    "dataset-info": lambda args: _lazy("embodied.demos", "cmd_dataset_info", args),
    "vla-pretrain": lambda args: _lazy("embodied.vla_pretrain", "cmd_vla_pretrain", args),
}


def _lazy(module: str, name: str, args: list[str]) -> int:
    """Commands kept in their own modules, imported when called (their dependencies are heavy)."""
    import importlib

    return getattr(importlib.import_module(module), name)(args)


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        load_plugins()
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, SimConfigError, WorldModelError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (HydraException, OmegaConfBaseException) as e:
        print("error: " + " ".join(line.strip() for line in str(e).strip().splitlines()[:2]), file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
