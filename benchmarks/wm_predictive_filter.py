"""World-model predictive filter on dense driving: fewer cost events than the box filter, route kept.

    python benchmarks/wm_predictive_filter.py RUN [--iterations 100] [--wm-epochs 30]
        [--episodes 32] [--seeds 0,1,2] [--param key=value ...]

Three steps, each run through the ``embodied`` command line and skipped when its output is already in
RUN (so a second call only re-evaluates):

1. ``embodied train task=driving_dense replay.enabled=true replay.groups=[policy]`` (PPO on the
   default reward, route progress; no cost terms in it) into RUN;
2. ``embodied wm-train run=RUN world_model.groups=[policy]``: the ensemble on the run's replay, its
   state the policy observation (the filter reads nothing else);
3. ``embodied safety-eval run=RUN filters=[none,box,predictive]`` with
   ``+safety.params.predictive.model=RUN/world_model/model.pt`` and the ``--param`` values.

Prints one markdown row per setting (cost events per step, all terms and each, the share of episodes
with an event, the intervention rate, route completion; mean over seeds ± 95 % interval) and exits 1
unless the predictive filter has fewer cost events per step than box and loses no more route
completion than box does (both against ``none``, by the means over seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TASK = "driving_dense"
SETTINGS = ("none", "box", "predictive")
TERMS = ("collision", "lane_departure", "speed_over_limit")
LIGHT = ["threads.torch=1", "threads.torch_collect=1", "sim.nthread=1"]
DEFAULTS = {
    "horizon": 10,
    "futures": 8,
    "candidates": 16,
    "noise": 0.5,
    "threshold": 0.2,
    "cost_threshold": 0.5,
}


def embodied(args: list[str]) -> float:
    """Run ``embodied <args>``; its wall time in seconds. A failing command ends the benchmark."""
    t0 = time.perf_counter()
    print("$ embodied " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "embodied", *args], check=False)
    if done.returncode != 0:
        raise SystemExit(f"embodied {args[0]} failed with exit code {done.returncode}")
    return time.perf_counter() - t0


def world_model_groups(path: Path) -> list[str] | None:
    """The observation groups the world model at ``path`` was trained on (None: no model there)."""
    if not path.is_file():
        return None
    import torch

    return sorted({t["group"] for t in torch.load(path, map_location="cpu", weights_only=True)["layout"]})


def _fmt(m: dict[str, Any] | None, digits: int = 4, pct: bool = False) -> str:
    if m is None or m.get("mean") is None:
        return "-"
    k = 100.0 if pct else 1.0
    hw = m.get("half_width")
    return f"{k * m['mean']:.{digits}f}" + ("" if hw is None else f" ± {k * hw:.{digits}f}")


def table(res: dict[str, dict[str, Any]]) -> str:
    cols = ["cost_per_step", *(f"cost_per_step/{t}" for t in TERMS), "violation_share"]
    cols += ["intervention_rate", "correction_when_intervened", "task/route_completion"]
    head = ["cost events/step", *(f"{t}/step" for t in TERMS), "episodes with an event"]
    head += ["intervention rate", "correction when intervened", "route completion %"]
    lines = ["| setting | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    for s, m in res.items():
        cells = [_fmt(m.get(c), 2 if c.startswith("task/") else 4, c.startswith("task/")) for c in cols]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--wm-epochs", type=int, default=30)
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--param", action="append", default=[], help="predictive filter key=value")
    a = ap.parse_args()
    run = Path(a.run)
    model = run / "world_model" / "model.pt"
    times: dict[str, float] = {}

    if not any((run / "checkpoints").glob("*.pt")):
        train = ["train", f"task={TASK}", f"train.max_iterations={a.iterations}", "replay.enabled=true"]
        train += ["replay.groups=[policy]", "train.evaluate=false", "train.export=false"]
        times["train"] = embodied([*train, "train.video=false", *LIGHT, f"run_dir={run}"])
    if world_model_groups(model) != ["policy"]:
        fit = [
            "world_model.groups=[policy]",
            f"world_model.epochs={a.wm_epochs}",
            "world_model.val_fraction=0.1",
        ]
        times["wm-train"] = embodied(["wm-train", f"run={run}", *fit])
    params = {**DEFAULTS, **dict(p.split("=", 1) for p in a.param), "model": str(model)}
    evaluate = ["safety-eval", f"run={run}", f"filters=[{','.join(SETTINGS)}]", f"episodes={a.episodes}"]
    evaluate += [f"seeds=[{a.seeds}]", "video=false"]
    times["safety-eval"] = embodied(
        [*evaluate, *(f"+safety.params.predictive.{k}={v}" for k, v in params.items())]
    )

    report = json.loads((run / "safety" / "report.json").read_text())
    res = {s: report["results"][s]["metrics"] for s in SETTINGS}
    print(table(res))
    print("wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    wm = json.loads((run / "world_model" / "metrics.json").read_text())
    print(
        f"world model: {wm['transitions']} transitions, {wm['fit']['epochs']} epochs, "
        f"one-step state RMSE {wm['val']['state_rmse_normalized']:.3f} of the data's std"
    )

    def mean(s: str, key: str) -> float:
        return float(res[s][key]["mean"])

    cost_box, cost_pred = mean("box", "cost_per_step"), mean("predictive", "cost_per_step")
    loss_box = mean("none", "task/route_completion") - mean("box", "task/route_completion")
    loss_pred = mean("none", "task/route_completion") - mean("predictive", "task/route_completion")
    fewer, kept = cost_pred < cost_box, loss_pred <= loss_box
    print(
        f"{'PASS' if fewer else 'FAIL'}  cost events per step: box {cost_box:.5f}, predictive {cost_pred:.5f}"
    )
    print(
        f"{'PASS' if kept else 'FAIL'}  route completion lost against none: box {100 * loss_box:.2f} points, "
        f"predictive {100 * loss_pred:.2f} points (need predictive <= box)"
    )
    return 0 if fewer and kept else 1


if __name__ == "__main__":
    sys.exit(main())
