"""The reward sanity gate: does a VLM reward rank success above failure before training spends on it?

Frames are rendered along rollouts of a teacher (a run's policy, ``reward.check_run``; or, for reach
tasks, a scripted hand-to-target controller; or random actions), each labelled by the task's own
success metric and its progress. The VLM term scores them, and three figures are reported:

- **ROC AUC** of the score for success against failure frames (Mann-Whitney U, ties counted half);
- **Spearman** correlation of the score with progress (time along the teacher's successful
  episodes, which approach the goal monotonically);
- the **correlation with the task reward** (Pearson over the same frames: EPIC's correlation
  without its canonicalization over transition distributions, which single frames cannot give).

Training with ``reward=vlm`` runs the gate first and refuses below ``reward.min_auc`` (0.75)
unless ``reward.skip_check=true``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from embodied.errors import ConfigError

Teacher = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) of a 1-D tensor, ties sharing the mean of their positions."""
    order = torch.argsort(x)
    sorted_x = x[order]
    pos = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    out = torch.empty_like(pos)
    out[order] = mean_rank[inverse]
    return out


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ConfigError(f"the sanity gate needs success and failure frames; got {pos} and {neg}")
    r = ranks(scores.double())
    return float((r[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.norm() * y.norm()).clamp_min(1e-12)
    return float((x @ y) / denom)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(ranks(x.double()), ranks(y.double()))


def scripted_reach(env: Any) -> Teacher | None:
    """Hand-to-target control for tasks whose policy sees ``ee_goal_error`` and act in hand deltas."""
    layout = env.obs_layout("policy")
    if getattr(env, "action_mode", None) != "ee_delta" or "ee_goal_error" not in [t["name"] for t in layout]:
        return None
    start = 0
    for t in layout:
        if t["name"] == "ee_goal_error":
            start += t["dim"] * (t.get("history", 1) - 1)  # its newest sample
            break
        start += t["dim"] * t.get("history", 1)
    step = float(env.cfg["ik"]["pos_scale"])

    def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        err = obs["policy"][:, start : start + 3]
        a = torch.zeros(obs["policy"].shape[0], env.action_dim, device=err.device)
        a[:, :3] = (err / step).clamp(-1.0, 1.0)
        return a

    return act


def collect(env: Any, teacher: Teacher | None, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """Frames (M, 3, H, W) uint8 with success, progress and task reward, over ``steps`` env steps."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    obs = env.reset(seed=seed)
    frames, success, progress, reward = [], [], [], []
    for _ in range(steps):
        if teacher is None:
            action = torch.rand(env.num_envs, env.action_dim, generator=g).to(env.device) * 2 - 1
        else:
            action = teacher(obs)
        out = env.step(action)
        ok = out.info.get("metric/success")
        if ok is None:
            raise ConfigError(f"task {env.cfg.get('name')} reports no success metric for the sanity gate")
        keep = ~(out.terminated | out.truncated)  # a finished env already shows its next episode
        frames.append(env.frames()[keep].cpu())
        success.append(ok.bool()[keep].cpu())
        progress.append((env.episode_length.float() / env.max_episode_length)[keep].cpu())
        reward.append(out.reward[keep].cpu())
        obs = out.obs
    return {
        "frames": torch.cat(frames),
        "success": torch.cat(success),
        "progress": torch.cat(progress),
        "reward": torch.cat(reward),
    }


def sanity_check(cfg: DictConfig, steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Build the task's env with its VLM term, collect labelled frames and score them."""
    from embodied.workflow import build_env, load_policy, load_run

    r = cfg.reward
    n = int(r.get("check_envs", 16))
    env = build_env(cfg, num_envs=n, seed=seed)
    term = next((t for t in env.rewards if t.name == "vlm"), None)
    if term is None:
        raise ConfigError("vlm-check needs reward=vlm")
    teacher, source = None, "random actions"
    if r.get("check_run"):
        run_dir, run_cfg = load_run(str(r.check_run))
        policy, _ = load_policy(run_dir, run_cfg, env, None)
        teacher, source = policy.act_inference, f"the policy of {run_dir}"
    elif (scripted := scripted_reach(env)) is not None:
        teacher, source = scripted, "a scripted hand-to-target controller"
    steps = int(steps or r.get("check_steps") or env.max_episode_length)
    data = collect(env, teacher, steps, seed)
    scores = torch.cat([term.fn.score_frames(f.to(env.device))[0].cpu() for f in data["frames"].split(256)])
    auc = roc_auc(scores, data["success"])
    report = {
        "task": str(cfg.task.name),
        "frames": int(scores.numel()),
        "success_frames": int(data["success"].sum()),
        "teacher": source,
        "roc_auc": auc,
        "spearman_progress": spearman(scores, data["progress"]),
        "reward_correlation": pearson(scores, data["reward"]),
        "min_auc": float(r.get("min_auc", 0.75)),
    }
    report["passed"] = auc >= report["min_auc"]
    env.close()
    return report


def gate(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any] | None:
    """Run the check before training with a VLM reward; a failed gate is a one-line ConfigError."""
    r = cfg.get("reward")
    if r is None or str(r.get("name", "none")) != "vlm" or bool(r.get("skip_check", False)):
        return None
    report = sanity_check(cfg)
    if out_dir is not None:
        import json

        (out_dir / "vlm").mkdir(parents=True, exist_ok=True)
        (out_dir / "vlm" / "check.json").write_text(json.dumps(report, indent=2))
    if not report["passed"]:
        raise ConfigError(
            f"the VLM reward failed its sanity gate on {report['task']}: ROC AUC {report['roc_auc']:.3f} < "
            f"{report['min_auc']} for success against failure frames; reward.skip_check=true trains anyway"
        )
    return report
