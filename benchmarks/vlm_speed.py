"""P6: frames scored per second by the VLM reward, rendering included, and its training overhead.

    python benchmarks/vlm_speed.py --model <vlm-train dir> [--task arm_reach] [--envs 64]
        [--every 4] [--train-envs 256] [--iterations 6] [--out vlm_speed.json]

1. **Scoring throughput.** The task's env with its camera on (``--envs`` envs, 84 x 84, MuJoCo's
   offscreen renderer) steps under random actions; each round renders every env's frame and the
   reward term scores it (``VLMReward.score_frames``: image tower, cosine to the prompts). Frames/s
   counts rendering plus scoring; physics is timed apart and reported.
2. **Training overhead.** Two PPO runs of ``--iterations`` iterations on the same task, envs and
   seed: the task's reward terms alone (no camera), and the same with ``reward=vlm`` at
   ``reward.every`` (camera frames drawn only for the term: ``task.rgb.observe=false``). The median
   samples/s of the iterations after the first (``perf/samples_per_s``) gives the overhead,
   baseline / with-VLM - 1. Both runs are measured here, in turn, by this one script.

Exits 1 when scoring is below 300 frames/s or the overhead above 50 %.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from embodied.cli import compose
from embodied.cli import main as cli
from embodied.workflow import build_env

MIN_FPS, MAX_OVERHEAD = 300.0, 0.5


def scoring(model: str, task: str, envs: int, rounds: int, threads: int) -> dict:
    cfg = compose(
        [
            f"task={task}",
            "task.rgb.enabled=true",
            "reward=vlm",
            f"reward.model={model}",
            f"sim.nthread={threads}",
        ]
    )
    env = build_env(cfg, num_envs=envs, seed=0)
    term = next(t for t in env.rewards if t.name == "vlm").fn
    gen = torch.Generator().manual_seed(0)
    env.reset(seed=0)
    times = {"physics": 0.0, "render": 0.0, "score": 0.0}
    for r in range(rounds + 2):  # two warm-up rounds
        t0 = time.perf_counter()
        env.backend.step(torch.rand(envs, env.backend.info.nu, generator=gen) * 2 - 1)
        t1 = time.perf_counter()
        frames = env.frames()
        t2 = time.perf_counter()
        term.score_frames(frames)
        t3 = time.perf_counter()
        if r >= 2:
            times["physics"] += t1 - t0
            times["render"] += t2 - t1
            times["score"] += t3 - t2
    env.close()
    n = rounds * envs
    return {
        "envs": envs,
        "frames": n,
        "frame_size": list(env.rgb_shape),
        "render_fps": n / times["render"],
        "score_fps": n / times["score"],
        "render_and_score_fps": n / (times["render"] + times["score"]),
        "physics_s_per_round": times["physics"] / rounds,
    }


def train_rate(args: list[str], run: Path) -> dict:
    t0 = time.perf_counter()
    assert cli([*args, f"run_dir={run}"]) == 0, "training failed"
    wall = time.perf_counter() - t0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["perf/samples_per_s"]) for r in rows[1:]]
    return {"samples_per_s_median": statistics.median(rates), "samples_per_s": rates, "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--task", default="arm_reach")
    p.add_argument("--envs", type=int, default=64)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--train-envs", type=int, default=256)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    report: dict = {"model": a.model, "task": a.task, "threads": a.threads}
    report["scoring"] = s = scoring(a.model, a.task, a.envs, a.rounds, a.threads)
    print(
        f"scoring {s['envs']} envs at {s['frame_size'][1]}x{s['frame_size'][2]}: "
        f"render {s['render_fps']:.0f} frames/s, score {s['score_fps']:.0f} frames/s, "
        f"both {s['render_and_score_fps']:.0f} frames/s",
        flush=True,
    )
    common = [
        "train",
        f"task={a.task}",
        f"num_envs={a.train_envs}",
        f"train.max_iterations={a.iterations}",
        "train.evaluate=false",
        "train.export=false",
        "train.video=false",
        "seed=1",
        f"threads.torch={a.threads}",
    ]
    vlm = [
        "task.rgb.enabled=true",
        "task.rgb.observe=false",
        "reward=vlm",
        f"reward.model={a.model}",
        f"reward.every={a.every}",
        "reward.skip_check=true",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        base = train_rate(common, Path(tmp) / "base")
        with_vlm = train_rate([*common, *vlm], Path(tmp) / "vlm")
    overhead = base["samples_per_s_median"] / with_vlm["samples_per_s_median"] - 1.0
    report["training"] = {"every": a.every, "envs": a.train_envs, "baseline": base, "vlm": with_vlm}
    report["training"]["overhead"] = overhead
    ok = s["render_and_score_fps"] >= MIN_FPS and overhead <= MAX_OVERHEAD
    report["pass"] = ok
    print(
        f"PPO on {a.task}, {a.train_envs} envs: {base['samples_per_s_median']:.0f} samples/s "
        f"without the VLM term, "
        f"{with_vlm['samples_per_s_median']:.0f} with it (every={a.every}): overhead {100 * overhead:.0f} % "
        f"-> {'PASS' if ok else 'MISS'} (>= {MIN_FPS:.0f} frames/s, <= {100 * MAX_OVERHEAD:.0f} %)"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
