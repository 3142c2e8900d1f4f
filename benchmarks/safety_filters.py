"""Safety filters on a driving run trained without costs: events cut, and route completion kept.

    python benchmarks/safety_filters.py RUN [--settings none,box,cbf] [--episodes 64] [--seeds 0,1,2]
        [--filter cbf] [--min-cut 10] [--max-completion-drop 0.10] [--current-barriers]

Runs ``embodied safety-eval`` on RUN (a driving run, e.g. ``task=driving_dense`` trained with the
default, speed-hungry reward) under each setting on the same seeds and initial states, and prints
one markdown row per setting: collision and lane-departure events per step, the share of episodes
with any violation, the intervention rate, the correction size and route completion, each the mean
over seeds with its 95 % interval. The report lands in RUN/safety/.

Exits 1 unless ``--filter`` cuts both collision and lane-departure events per step by at least
``--min-cut`` times against ``none`` (an event rate of 0 under the filter counts as met when the
unfiltered rate is above 0) and route completion falls by at most ``--max-completion-drop``.

``--current-barriers`` evaluates the barriers the task's config declares now (configs/task/) in place
of those saved in RUN/config.yaml at training time; the policy and every other key stay the run's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EVENTS = ("collision", "lane_departure")


def _cut(base: float, filtered: float) -> float:
    if filtered > 0:
        return base / filtered
    return float("inf") if base > 0 else float("nan")


def _fmt(m: dict[str, Any] | None, digits: int = 4) -> str:
    if m is None or m.get("mean") is None:
        return "-"
    hw = m.get("half_width")
    return f"{m['mean']:.{digits}f}" + ("" if hw is None else f" ± {hw:.{digits}f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--settings", default="none,box,cbf")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--filter", default="cbf")
    ap.add_argument("--min-cut", type=float, default=10.0)
    ap.add_argument("--max-completion-drop", type=float, default=0.10)
    ap.add_argument("--video", action="store_true")
    ap.add_argument("--current-barriers", action="store_true")
    a = ap.parse_args()

    from omegaconf import open_dict

    from embodied.cli import compose
    from embodied.safety_eval import safety_eval
    from embodied.workflow import load_run

    run_dir, cfg = load_run(a.run)
    if a.current_barriers:
        with open_dict(cfg):
            cfg.task.barriers = compose([f"task={cfg.task.name}"]).task.barriers
    settings = a.settings.split(",")
    if "none" not in settings or a.filter not in settings:
        raise SystemExit(f"--settings must include none and {a.filter}")
    report = safety_eval(
        run_dir,
        cfg,
        settings,
        episodes=a.episodes,
        seeds=[int(s) for s in a.seeds.split(",")],
        video=a.video,
        command=" ".join(["python", *sys.argv]),
    )
    res = {s: report["results"][s]["metrics"] for s in settings}
    cols = [*(f"cost_per_step/{e}" for e in EVENTS), "violation_share", "intervention_rate", "correction"]
    cols.append("task/route_completion")
    print("| setting | " + " | ".join(c.split("/")[-1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s in settings:
        print(f"| {s} | " + " | ".join(_fmt(res[s].get(c)) for c in cols) + " |")

    ok = True
    for e in EVENTS:
        key = f"cost_per_step/{e}"
        base, filt = res["none"][key]["mean"], res[a.filter][key]["mean"]
        cut = _cut(base, filt)
        met = cut >= a.min_cut if cut == cut else False
        ok &= met
        print(
            f"{'PASS' if met else 'FAIL'}  {e} events per step: {base:.5f} -> {filt:.5f} "
            f"({cut:.1f}x, need >= {a.min_cut:g}x)"
        )
    drop = res["none"]["task/route_completion"]["mean"] - res[a.filter]["task/route_completion"]["mean"]
    met = drop <= a.max_completion_drop
    ok &= met
    print(
        f"{'PASS' if met else 'FAIL'}  route completion drop {100 * drop:.1f} points "
        f"(need <= {100 * a.max_completion_drop:g})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
