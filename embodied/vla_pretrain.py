"""``embodied vla-pretrain data=<dataset>``: behaviour cloning of ``policy=vla`` on a LeRobot dataset.

The dataset (``embodied demos``, or any LeRobot v3 dataset with the task's camera, state and action
sizes) gives per frame: the camera image, ``observation.state`` (the task's ``proprio`` group), the
executed action (``applied_action`` where recorded, else ``action``) and the episode's task string,
which must be one of the task's instructions. Each frame's target is the chunk of the next C
actions of its episode (steps past the episode's end masked out).

Episodes are split into training and held-out validation sets (``val_fraction``); the validation
loss and first-action token accuracy are logged each epoch to metrics.csv / TensorBoard. Each
epoch's checkpoint goes to ``checkpoints/model_<epoch>.pt`` in the run format (``resume=<run>``
continues from the newest), so ``embodied eval|play|export run=<dir>`` and ``embodied train
train.init_from=<dir>`` (RL fine-tuning) read the run directory like any other.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from embodied.errors import ConfigError

OPTIONS: dict[str, Any] = {
    "data": "",
    "epochs": 20,
    "batch_size": 256,
    "lr": 3.0e-4,
    "weight_decay": 1.0e-4,
    "val_fraction": 0.1,
    "shift": 4,  # random-shift augmentation (pixels), 0: none
    "camera": "",  # the dataset's video key; empty: its only camera
    "success_only": False,  # train and validate on the episodes that ended in success only
    "evaluate": True,
}


def split_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The command's own options (typed as OPTIONS) and the Hydra overrides (everything else)."""
    own, overrides = {}, []
    for a in args:
        key, sep, value = a.partition("=")
        if not sep:
            raise ConfigError(f"vla-pretrain: expected key=value, got {a!r}")
        if key in OPTIONS:
            default = OPTIONS[key]
            try:
                if isinstance(default, bool):
                    own[key] = value.lower() in ("1", "true", "yes")
                else:
                    own[key] = type(default)(value)
            except ValueError:
                raise ConfigError(
                    f"vla-pretrain: {key} must be a {type(default).__name__}, got {value!r}"
                ) from None
        else:
            overrides.append(a)
    o = {**OPTIONS, **own}
    finite = math.isfinite
    checks = {  # key: (valid, what it must be)
        "epochs": (o["epochs"] >= 1, ">= 1"),
        "batch_size": (o["batch_size"] >= 1, ">= 1"),
        "shift": (o["shift"] >= 0, ">= 0"),
        "lr": (finite(o["lr"]) and o["lr"] > 0, "a finite number > 0"),
        "weight_decay": (finite(o["weight_decay"]) and o["weight_decay"] >= 0, "a finite number >= 0"),
    }
    for key, (ok, need) in checks.items():
        if not ok:
            raise ConfigError(f"vla-pretrain: {key} must be {need}, got {o[key]}")
    return o, overrides


def chunk_targets(actions: torch.Tensor, ends: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks (F, C, A) of the next C actions of each frame's episode, and their mask (F, C).

    actions: (F, A) in frame order; ends: (F,) the index one past each frame's episode's last frame.
    A step past the episode's end repeats its last action and is masked out.
    """
    idx = torch.arange(actions.shape[0]).unsqueeze(1) + torch.arange(chunk).unsqueeze(0)
    mask = idx < ends.unsqueeze(1)
    idx = torch.minimum(idx, (ends - 1).unsqueeze(1))
    return actions[idx], mask


def random_shift(rgb: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ's augmentation: each uint8 image (B, 3, H, W) padded by edge pixels and cropped back at a
    random offset of at most ``pad`` pixels."""
    if pad <= 0:
        return rgb
    b, _, h, w = rgb.shape
    x = torch.nn.functional.pad(rgb.float(), (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy.unsqueeze(1) + torch.arange(h)).to(rgb.device)  # (B, H)
    cols = (dx.unsqueeze(1) + torch.arange(w)).to(rgb.device)  # (B, W)
    bi = torch.arange(b, device=rgb.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)
    return out.permute(0, 3, 1, 2).to(torch.uint8)


def split_episodes(num_episodes: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode indices (train, val): a seeded permutation, at least one of each when there are two."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"vla-pretrain: val_fraction must be in [0, 1), got {fraction}")
    perm = torch.randperm(num_episodes, generator=torch.Generator().manual_seed(seed))
    n_val = round(fraction * num_episodes)
    if fraction > 0 and num_episodes >= 2:
        n_val = min(max(n_val, 1), num_episodes - 1)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class BCData:
    """The dataset's frames, states, instruction indices and chunk targets, checked against the env."""

    def __init__(self, data: Any, env: Any, policy: Any, camera: str) -> None:
        keys = data.video_keys
        if not keys:
            raise ConfigError(f"{data.root} has no camera video; policy=vla learns from frames")
        key = f"observation.images.{camera}" if camera else keys[0]
        if (camera and key not in keys) or (not camera and len(keys) > 1):
            raise ConfigError(f"{data.root}: choose camera=<name> among {keys}")
        cols = data.columns
        self.state = cols["observation.state"].float()
        act_key = "applied_action" if "applied_action" in cols else "action"
        actions = cols[act_key].float()
        shape = tuple(policy.image_shape)
        frames_shape = tuple(int(s) for s in data.info["features"][key]["shape"])  # (H, W, 3)
        if (frames_shape[2], frames_shape[0], frames_shape[1]) != shape:
            raise ConfigError(
                f"{data.root}: frames are {frames_shape[0]}x{frames_shape[1]}, the task's camera gives "
                f"{shape[1]}x{shape[2]} (set task.rgb.width/height to match)"
            )
        if self.state.shape[1] != policy.num_actor_obs:
            raise ConfigError(
                f"{data.root}: observation.state has {self.state.shape[1]} dims, the task's "
                f"{policy.proprio_obs!r} group {policy.num_actor_obs}"
            )
        if actions.shape[1] != env.action_dim:
            raise ConfigError(
                f"{data.root}: {act_key} has {actions.shape[1]} dims, the task {env.action_dim}"
            )
        index = {t: i for i, t in enumerate(policy.instructions)}
        unknown = sorted({t for t in data.tasks if t not in index})
        if unknown:
            raise ConfigError(
                f"{data.root}: task string {unknown[0]!r} is not one of the task's "
                f"{len(index)} instructions (e.g. {policy.instructions[0]!r})"
            )
        task_to_instr = torch.tensor([index[t] for t in data.tasks], dtype=torch.long)
        self.instruction = task_to_instr[cols["task_index"].long().reshape(-1)].unsqueeze(1)
        ep = cols["episode_index"].long().reshape(-1)
        ep_ids = torch.tensor(data.episodes["episode_index"], dtype=torch.long)
        ep_end = torch.tensor(data.episodes["dataset_to_index"], dtype=torch.long)
        order = torch.empty(int(ep_ids.max()) + 1, dtype=torch.long)
        order[ep_ids] = torch.arange(len(ep_ids))
        self.episode = order[ep]  # row of the episodes table
        self.chunks, self.mask = chunk_targets(actions, ep_end[self.episode], policy.chunk)
        self.frames = data.frames(key)
        self.camera = key
        self.action_key = act_key
        self.num_episodes = len(ep_ids)

    def rows(self, episodes: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(self.num_episodes, dtype=torch.bool)
        keep[episodes] = True
        return keep[self.episode].nonzero().squeeze(1)

    def batch(self, rows: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], ...]:
        obs = {"rgb": self.frames[rows], "proprio": self.state[rows], "instruction": self.instruction[rows]}
        obs = {k: v.to(device) for k, v in obs.items()}
        return obs, self.chunks[rows].to(device), self.mask[rows].to(device)


def _obs(policy: Any, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        policy.rgb_obs: obs["rgb"],
        policy.proprio_obs: obs["proprio"],
        policy.instruction_obs: obs["instruction"],
    }


@torch.no_grad()
def validate(policy: Any, data: BCData, rows: torch.Tensor, batch_size: int, device: torch.device) -> dict:
    """Mean BC loss over ``rows`` and the first action's per-dimension token accuracy (tokens head)."""
    from policies.action_tokens import tokenize

    if len(rows) == 0:
        return {}
    loss_sum, hits, n = 0.0, 0.0, 0
    for part in rows.split(batch_size):
        obs, chunk, mask = data.batch(part, device)
        o = _obs(policy, obs)
        loss_sum += float(policy.bc_loss(o, chunk, mask)) * len(part)
        if policy.head_kind == "tokens":
            out = policy.head(policy.features(o))  # (B, C, A, K)
            hits += float(
                (out[:, 0].argmax(-1) == tokenize(chunk[:, 0], out.shape[-1])).float().mean(-1).sum()
            )
        n += len(part)
    result = {"pretrain/val_loss": loss_sum / n}
    if policy.head_kind == "tokens":
        result["pretrain/val_token_accuracy"] = hits / n
    return result


def pretrain(
    cfg: DictConfig, o: dict[str, Any], run_dir: Path, resume: bool, data: Any | None = None
) -> dict[str, Any]:
    """Behaviour cloning into ``run_dir`` (``data``: the loaded dataset, else read from ``o["data"]``);
    returns the summary written to ``pretrain.json``."""
    from embodied.checkpoint import latest_checkpoint, load_checkpoint, load_module_state, save_checkpoint
    from embodied.data.lerobot_read import load_lerobot
    from embodied.logger import RunLogger, plot_learning_curve
    from embodied.workflow import build_env, build_policy, checkpoint_meta, set_threads

    set_threads(cfg)
    torch.manual_seed(int(cfg.seed))
    data = load_lerobot(o["data"]) if data is None else data
    env = build_env(cfg, num_envs=1)
    policy = build_policy(cfg, env)
    if not hasattr(policy, "bc_loss"):
        raise ConfigError(f"vla-pretrain trains policy=vla, not policy={cfg.policy.name}")
    device = torch.device(env.device)
    meta = checkpoint_meta(cfg, env)
    bc = BCData(data, env, policy, o["camera"])
    env.close()
    if not resume:  # written once the dataset fits the task: a rejected dataset leaves no run
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "pretrain_args.json").write_text(json.dumps(o, indent=2))  # resume: the new epochs
    train_eps, val_eps = split_episodes(bc.num_episodes, float(o["val_fraction"]), int(cfg.seed))
    if o["success_only"]:
        ok = data.episodes.get("success")
        if ok is None:
            raise ConfigError(f"{o['data']}: success_only=true, but the episodes record no success")
        keep = torch.tensor([bool(v) for v in ok])
        train_eps, val_eps = train_eps[keep[train_eps]], val_eps[keep[val_eps]]
        if len(train_eps) == 0:
            raise ConfigError(f"{o['data']}: no training episode ended in success")
    train_rows, val_rows = bc.rows(train_eps), bc.rows(val_eps)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
    start_epoch, steps = 0, 0
    if resume and (path := latest_checkpoint(run_dir)) is not None:
        ckpt = load_checkpoint(path, task=str(cfg.task.name), obs_spec=None)
        load_module_state(policy, ckpt["policy"]["state"], f"checkpoint {path}")
        opt.load_state_dict(ckpt["algo"]["state"]["optimizer"])
        start_epoch, steps = int(ckpt["iteration"]), int(ckpt["total_steps"])
        print(f"resuming {run_dir} from {path.name} (epoch {start_epoch})", file=sys.stderr)
    else:
        if policy.normalize_obs:  # the training frames' statistics (the critic's come from RL)
            policy.proprio_normalizer.train()
            policy.proprio_normalizer.update(bc.state[train_rows].to(device))
    policy.instruction_embeddings()  # MiniLM once, before timing
    logger = RunLogger(run_dir, purge_step=steps + 1 if resume else None)
    if resume:
        logger.truncate_after(steps)
    gen = torch.Generator().manual_seed(int(cfg.seed) + start_epoch)
    batch = int(o["batch_size"])
    history = []
    start = time.perf_counter()
    for epoch in range(start_epoch + 1, int(o["epochs"]) + 1):
        policy.train()
        policy.proprio_normalizer.eval()  # the statistics are the training set's, fixed
        perm = train_rows[torch.randperm(len(train_rows), generator=gen)]
        total, n, t0 = 0.0, 0, time.perf_counter()
        for part in perm.split(batch):
            obs, chunk, mask = bc.batch(part, device)
            obs["rgb"] = random_shift(obs["rgb"], int(o["shift"]), gen)
            loss = policy.bc_loss(_obs(policy, obs), chunk, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += float(loss) * len(part)
            n += len(part)
        steps += n
        policy.eval()
        row = {"pretrain/train_loss": total / max(n, 1), "perf/samples_per_s": n / (time.perf_counter() - t0)}
        row.update(validate(policy, bc, val_rows, batch, device))
        logger.log(steps, row)
        history.append({"epoch": epoch, **row})
        print(json.dumps({"epoch": epoch, **{k: round(v, 4) for k, v in row.items()}}), file=sys.stderr)
        payload = {
            **meta,
            "iteration": epoch,
            "total_steps": steps,
            "policy": {"name": meta["policy_name"], "state": policy.state_dict()},
            "algo": {"name": "bc", "state": {"optimizer": opt.state_dict()}},
        }
        save_checkpoint(run_dir / "checkpoints" / f"model_{epoch}.pt", payload)
    logger.close()
    plot_learning_curve(run_dir, keys=("pretrain/train_loss", "pretrain/val_loss"))
    summary = {
        "data": str(Path(o["data"]).resolve()),
        "camera": bc.camera,
        "action": bc.action_key,
        "episodes": {"train": len(train_eps), "val": len(val_eps), "success_only": bool(o["success_only"])},
        "frames": {"train": len(train_rows), "val": len(val_rows)},
        "epochs": int(o["epochs"]),
        "wall_s": round(time.perf_counter() - start, 1),
        "history": history,
    }
    return summary


def cmd_vla_pretrain(args: list[str]) -> int:
    from embodied.cli import _new_run_dir, compose, run_eval
    from embodied.data.lerobot_read import load_lerobot
    from embodied.workflow import load_run

    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    data = None
    o, overrides = split_args([a for a in args if not a.startswith("resume=")])
    if resume:
        run_dir, cfg = load_run(resume)
        args_path = run_dir / "pretrain_args.json"
        if not args_path.is_file():
            raise ConfigError(f"{run_dir} is not a vla-pretrain run (no pretrain_args.json)")
        epochs = o["epochs"] if any(a.startswith("epochs=") for a in args) else None
        o = json.loads(args_path.read_text())
        if epochs is not None:  # a resumed run may only be extended
            o["epochs"] = epochs
    else:
        if not o["data"]:
            raise ConfigError("vla-pretrain: data=<LeRobot dataset directory> is required")
        data = load_lerobot(o["data"])  # a one-line error for a path that is not a dataset
        info = data.info
        task = next((a.split("=", 1)[1] for a in overrides if a.startswith("task=")), None)
        task = task or (info.get("embodied") or {}).get("task")
        if not task:
            raise ConfigError(f"{o['data']}: the dataset names no task; give task=<name>")
        rest = [a for a in overrides if not a.startswith(("task=", "policy="))]
        policy = next((a for a in overrides if a.startswith("policy=")), "policy=vla")
        cfg = compose([f"task={task}", policy, "task.rgb.enabled=true", *rest])
        run_dir = _new_run_dir(cfg)
    summary = pretrain(cfg, o, run_dir, resume=bool(resume), data=None if resume else data)
    if o["evaluate"]:
        summary["eval"] = run_eval(run_dir, cfg)
    (run_dir / "pretrain.json").write_text(json.dumps(summary, indent=2))
    final = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({"final": final, "eval": summary.get("eval", {})}, indent=2))
    print(f"run directory: {run_dir}")
    return 0
