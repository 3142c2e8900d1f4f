"""Training the sim-domain VLM's heads (``embodied vlm-train``) and its held-out evaluation.

1. Frames: ``collect_frames`` along mixed-controller rollouts of each task, on training seeds
   (``seed + i``); the held-out evaluation renders other seeds (``HELDOUT_SEED + i``).
2. The frozen trunk's tapped maps are computed once per frame and kept (fp16).
3. The heads are trained with a multi-positive InfoNCE loss, symmetric, in batches: a frame's
   positives are every training caption it matches (``captions.match_matrix``), its negatives the
   captions it contradicts (other tasks' captions included); captions about a facet that does not
   apply to a frame are left out of its softmax. The text side sees the frozen MiniLM embeddings of
   the whole training caption bank, jittered by a little Gaussian noise (paraphrases land nearby).
4. Evaluation uses only held-out seeds and held-out caption templates: per task, ROC AUC of the
   success prompts' cosine for success against failure frames, and the accuracy of picking each
   facet's value by its held-out prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from embodied.errors import ConfigError
from embodied.rewards.captions import Caption, caption_bank, match_matrix, prompts_for, task_captions
from embodied.rewards.check import roc_auc
from embodied.rewards.sim_vlm import SimVLM
from embodied.rewards.sim_vlm_data import collect_frames

HELDOUT_SEED = 10_000
BENCH_SEED = 20_000


@dataclass
class FrameSet:
    """Frames' frozen features with their labels, tasks concatenated."""

    maps: list[torch.Tensor]  # per tap (M, C, H, W) fp16
    task: list[str]  # (M,) task per frame, as runs of equal names
    facets: list[dict[str, torch.Tensor]]  # per task run
    success: torch.Tensor  # (M,) bool, the task's own metric
    bounds: list[tuple[str, int, int]]  # (task, start, stop) runs


def render_frames(task: str, frames: int, seed: int, num_envs: int, threads: int = 1) -> dict[str, Any]:
    """At least ``frames`` labelled frames of ``task`` from rollouts on seeds ``seed``, ``seed + 1``, ..."""
    from embodied.cli import compose
    from embodied.workflow import build_env

    task_captions(task)
    cfg = compose([f"task={task}", "task.rgb.enabled=true", f"sim.nthread={threads}"])
    env = build_env(cfg, num_envs=num_envs, seed=seed)
    parts: list[dict[str, Any]] = []
    got, i = 0, 0
    try:
        while got < frames:
            d = collect_frames(env, task, env.max_episode_length, seed=seed + i, every=2)
            parts.append(d)
            got += d["frames"].shape[0]
            i += 1
    finally:
        env.close()
    keep = torch.randperm(got, generator=torch.Generator().manual_seed(seed))[:frames].sort().values
    return {
        "frames": torch.cat([p["frames"] for p in parts])[keep],
        "success": torch.cat([p["success"] for p in parts])[keep],
        "facets": {k: torch.cat([p["facets"][k] for p in parts])[keep] for k in parts[0]["facets"]},
        "seeds": list(range(seed, seed + i)),
    }


@torch.no_grad()
def frozen_features(model: SimVLM, frames: torch.Tensor, batch: int = 128) -> list[torch.Tensor]:
    """The trunk's tapped maps of (M, 3, H, W) uint8 frames, fp16 on the CPU."""
    out: list[list[torch.Tensor]] = []
    for chunk in frames.split(batch):
        out.append([m.half().cpu() for m in model.features(chunk)])
    return [torch.cat([o[i] for o in out]) for i in range(len(out[0]))]


def build_frameset(model: SimVLM, data: dict[str, dict[str, Any]]) -> FrameSet:
    maps, tasks, facets, success, bounds, start = [], [], [], [], [], 0
    for task, d in data.items():
        n = d["frames"].shape[0]
        maps.append(frozen_features(model, d["frames"]))
        tasks += [task] * n
        facets.append(d["facets"])
        success.append(d["success"])
        bounds.append((task, start, start + n))
        start += n
    return FrameSet(
        [torch.cat([m[i] for m in maps]) for i in range(len(maps[0]))],
        tasks,
        facets,
        torch.cat(success),
        bounds,
    )


def targets(fs: FrameSet, bank: list[Caption]) -> torch.Tensor:
    """(M, K) int8 match matrix of every frame against every caption (1 pos, 0 neg, -1 left out)."""
    return torch.cat(
        [match_matrix(f, task, bank) for (task, _, _), f in zip(fs.bounds, fs.facets, strict=True)]
    )


def multi_positive_nce(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """InfoNCE with several positives, both directions. logits (B, K); match (B, K) int8 as ``targets``."""
    pos, valid = match == 1, match >= 0
    neg_inf = torch.finfo(logits.dtype).min

    def side(lg: torch.Tensor, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rows = p.any(1) & (v & ~p).any(1)
        if not bool(rows.any()):
            return lg.sum() * 0.0
        num = torch.logsumexp(lg.masked_fill(~p, neg_inf), 1)
        den = torch.logsumexp(lg.masked_fill(~v, neg_inf), 1)
        return (den - num)[rows].mean()

    return 0.5 * (side(logits, pos, valid) + side(logits.T, pos.T, valid.T))


def train_heads(
    model: SimVLM,
    fs: FrameSet,
    bank: list[Caption],
    *,
    epochs: int = 30,
    batch: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    text_noise: float = 0.01,
    seed: int = 0,
    log: Any = None,
) -> list[float]:
    """Train ``model.heads`` in place; returns the mean loss of each epoch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = model.heads.train()
    text = model.text_encoder.embed([c.text for c in bank]).cpu()
    match = targets(fs, bank)
    m = match.shape[0]
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, m // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(m, generator=g)
        total, count = 0.0, 0
        for i in range(max(1, m // batch)):
            idx = order[i * batch : (i + 1) * batch]
            img = heads.image([t[idx].float() for t in fs.maps])
            noisy = F.normalize(text + text_noise * torch.randn(text.shape, generator=g), dim=-1)
            txt = heads.text(noisy)
            loss = multi_positive_nce(heads.scale() * img @ txt.T, match[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()), count + 1
        history.append(total / count)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
    heads.eval()
    return history


@torch.no_grad()
def image_embeddings(model: SimVLM, fs: FrameSet, start: int, stop: int, batch: int = 512) -> torch.Tensor:
    out = [
        model.heads.image([t[i : min(i + batch, stop)].float() for t in fs.maps])
        for i in range(start, stop, batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: SimVLM, fs: FrameSet, split: str = "heldout") -> dict[str, Any]:
    """Per task, with the ``split``'s captions: success ROC AUC (facet labels and the task's metric) and
    per-facet accuracy of the value whose prompts score highest."""
    report: dict[str, Any] = {}
    for (task, a, b), facets in zip(fs.bounds, fs.facets, strict=True):
        x = image_embeddings(model, fs, a, b)
        tc = task_captions(task)
        name, value = tc.success
        goal = F.normalize(model.encode_text(prompts_for(task, name, value, split)).mean(0), dim=-1)
        score = x @ goal
        lab = facets[name]
        known = lab >= 0
        r: dict[str, Any] = {"frames": b - a, "success_prompts": len(prompts_for(task, name, value, split))}
        r["roc_auc_facet"] = roc_auc(score[known], lab[known] == value)
        if not task.startswith("driving"):  # driving's own success (the route done) is not in one frame
            r["roc_auc_metric"] = roc_auc(score, fs.success[a:b])
        acc = {}
        for facet, v in facets.items():
            values = sorted({val for c in caption_bank(task, split) for f, val in c.facets if f == facet})
            protos = [prompts_for(task, facet, u, split) for u in values]
            if any(not p for p in protos) or len(values) < 2:
                continue
            emb = torch.stack([F.normalize(model.encode_text(p).mean(0), dim=-1) for p in protos])
            pred = torch.tensor(values)[(x @ emb.T).argmax(1)]
            ok = torch.isin(v, torch.tensor(values))
            if bool(ok.any()):
                acc[facet] = float((pred[ok] == v[ok]).float().mean())
        r["facet_accuracy"] = acc
        report[task] = r
    return report


def parse_tasks(tasks: Sequence[str]) -> list[str]:
    out = [t for t in tasks if t]
    if not out:
        raise ConfigError("vlm-train: tasks=[...] must name at least one task")
    for t in out:
        task_captions(t)
    return out


def train_sim_vlm(
    tasks: Sequence[str],
    frames: int,
    *,
    eval_frames: int = 1500,
    epochs: int = 30,
    num_envs: int = 32,
    seed: int = 0,
    model_config: dict[str, Any] | None = None,
    log: Any = print,
) -> tuple[SimVLM, dict[str, Any]]:
    """Render, extract, train and evaluate; returns the model and its report (``eval.json``)."""
    from embodied.rewards.sim_vlm import new_config

    tasks = parse_tasks(tasks)
    t0 = time.perf_counter()
    model = SimVLM(new_config(tasks=list(tasks), **(model_config or {})))
    train_data, held_data = {}, {}
    for i, task in enumerate(tasks):
        train_data[task] = render_frames(task, frames, seed + 1000 * i, num_envs)
        held_data[task] = render_frames(task, eval_frames, HELDOUT_SEED + 1000 * i, num_envs)
        log(f"{task}: {frames} training frames (seeds {train_data[task]['seeds']}), {eval_frames} held-out")
    t_render = time.perf_counter() - t0
    train_fs, held_fs = build_frameset(model, train_data), build_frameset(model, held_data)
    t_features = time.perf_counter() - t0 - t_render
    bank = [c for t in tasks for c in caption_bank(t, "train")]
    history = train_heads(model, train_fs, bank, epochs=epochs, seed=seed, log=log)
    t_train = time.perf_counter() - t0 - t_render - t_features
    report = {
        "tasks": list(tasks),
        "frames_per_task": frames,
        "training_seeds": {t: d["seeds"] for t, d in train_data.items()},
        "heldout_seeds": {t: d["seeds"] for t, d in held_data.items()},
        "training_captions": len(bank),
        "epochs": epochs,
        "loss_first_last": [history[0], history[-1]],
        "seconds": {"render": t_render, "features": t_features, "train": t_train},
        "heldout": evaluate(model, held_fs, "heldout"),
        "heldout_frames_train_captions": evaluate(model, held_fs, "train"),
    }
    return model, report
