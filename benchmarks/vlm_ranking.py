"""Does a VLM reward rank success above failure? The sim-domain VLM on held-out seeds and prompts.

    python benchmarks/vlm_ranking.py --model <dir written by embodied vlm-train>
        [--tasks arm_push,driving_lane_follow,arm_reach] [--frames 2000] [--envs 32] [--out ranking.json]

For each task, frames from the mixed scripted controllers of embodied/rewards/sim_vlm_data.py on
seeds no training or held-out evaluation of ``vlm-train`` used (``BENCH_SEED``), are scored against
the task's *held-out* success paraphrases (caption templates and noun phrases never trained on):

- **ROC AUC**, success against failure frames. Arm tasks: the task's own success metric; driving
  (whose metric, the route done, is not in one frame): in the lane's centre (|offset| < 0.35 m)
  against drifting over the line or off the road, with the band between left out.
- **Spearman along a teacher rollout**: the success-seeking controller runs one episode per env; the
  score is rank-correlated with the task's progress (minus the goal distance; driving: minus
  |lane offset| while the car recovers from a 2 m drift). Reported per episode (the mean over envs,
  the thresholded figure) and pooled over all episodes' frames.
- The same AUC with the *training* paraphrases, for comparison.

Exits 1 when a task misses ROC AUC >= 0.90 or Spearman >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from embodied.rewards.captions import prompts_for, task_captions
from embodied.rewards.check import roc_auc, spearman
from embodied.rewards.sim_vlm import load_sim_vlm
from embodied.rewards.sim_vlm_data import teacher_rollout
from embodied.rewards.sim_vlm_train import BENCH_SEED, build_frameset, image_embeddings, render_frames

MIN_AUC, MIN_SPEARMAN = 0.90, 0.80


def goal_embedding(model, task: str, split: str) -> torch.Tensor:
    name, value = task_captions(task).success
    prompts = prompts_for(task, name, value, split)
    return F.normalize(model.encode_text(prompts).mean(0), dim=-1), prompts


def labels(task: str, data: dict, fs_success: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(known mask, success label) per frame."""
    if task.startswith("driving"):
        name, value = task_captions(task).success
        lane = data["facets"][name]
        return lane >= 0, lane == value
    return torch.ones_like(fs_success), fs_success


def rollout_spearman(model, task: str, goal: torch.Tensor, envs: int, seed: int) -> dict:
    from embodied.cli import compose
    from embodied.workflow import build_env

    env = build_env(
        compose([f"task={task}", "task.rgb.enabled=true", "sim.nthread=1"]), num_envs=envs, seed=seed
    )
    try:
        d = teacher_rollout(env, task, seed)
    finally:
        env.close()
    t, n = d["progress"].shape
    frames = d["frames"].flatten(0, 1)
    score = torch.cat([model.encode_images(f) @ goal for f in frames.split(256)]).view(t, n)
    per_env = [spearman(score[:, i], d["progress"][:, i]) for i in range(n)]
    per_env = [s for s in per_env if s == s]  # a constant progress gives NaN: left out
    return {
        "episodes": n,
        "steps": t,
        "spearman_per_episode_mean": float(torch.tensor(per_env).mean()) if per_env else float("nan"),
        "spearman_per_episode_min": float(min(per_env)) if per_env else float("nan"),
        "spearman_pooled": spearman(score.flatten(), d["progress"].flatten()),
        "success_at_end": float(d["success"][-1].float().mean()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", default="arm_push,driving_lane_follow,arm_reach")
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--envs", type=int, default=32)
    p.add_argument("--rollout-envs", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_sim_vlm(a.model)
    trained_on = set(model.config.get("tasks") or [])
    report, ok = {"model": str(a.model), "thresholds": {"roc_auc": MIN_AUC, "spearman": MIN_SPEARMAN}}, True
    for i, task in enumerate(t for t in a.tasks.split(",") if t):
        t0 = time.perf_counter()
        seed = BENCH_SEED + 1000 * i
        data = render_frames(task, a.frames, seed, a.envs)
        fs = build_frameset(model, {task: data})
        x = image_embeddings(model, fs, 0, fs.success.numel())
        known, lab = labels(task, data, fs.success)
        r: dict = {"seeds": data["seeds"], "frames": int(known.sum()), "positives": int(lab[known].sum())}
        r["trained_on_task"] = task in trained_on
        for split in ("heldout", "train"):
            goal, prompts = goal_embedding(model, task, split)
            r[f"roc_auc_{split}_prompts"] = roc_auc((x @ goal)[known], lab[known])
            r[f"{split}_prompts"] = len(prompts)
        goal, r["heldout_prompt_examples"] = goal_embedding(model, task, "heldout")
        r["heldout_prompt_examples"] = r["heldout_prompt_examples"][:3]
        r["rollout"] = rollout_spearman(model, task, goal, a.rollout_envs, seed + 500)
        r["seconds"] = time.perf_counter() - t0
        r["pass"] = (
            r["roc_auc_heldout_prompts"] >= MIN_AUC
            and r["rollout"]["spearman_per_episode_mean"] >= MIN_SPEARMAN
        )
        ok &= r["pass"]
        report[task] = r
        print(
            f"{task}: ROC AUC {r['roc_auc_heldout_prompts']:.3f} held-out prompts "
            f"({r['roc_auc_train_prompts']:.3f} training prompts) over {r['frames']} frames "
            f"({r['positives']} success); Spearman with progress "
            f"{r['rollout']['spearman_per_episode_mean']:.3f} "
            f"per episode (min {r['rollout']['spearman_per_episode_min']:.3f}, pooled "
            f"{r['rollout']['spearman_pooled']:.3f}) -> {'PASS' if r['pass'] else 'MISS'}",
            flush=True,
        )
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
