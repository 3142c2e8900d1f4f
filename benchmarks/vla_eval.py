"""A VLA run on the multi-instruction arm: success, language swap, and hard constraints with and without
the safety filter; with ``--baseline``, the gain of RL fine-tuning over the pretrained run.

    python benchmarks/vla_eval.py --run RUN [--baseline PRETRAIN_RUN] [--num-envs 128] [--out vla_eval.json]

Every setting evaluates the run's newest checkpoint (``embodied.evaluate``: one episode per env from
the same seed; success is the task's metric over the last 0.5 s of the 8 s episode) with
``embodied.barrier_monitor.BarrierMonitor`` counting the states that break the task's barriers
(its hard constraints, ``barriers:`` with ``barrier_tolerance:``):

- ``filter``: ``safety.filters=[cbf]``; the intervention rate is the fraction of steps changed;
- ``no filter``: ``safety.filters=[]``, the same policy and seed;
- ``swapped``: the filter on and ``task.instructions.swap=true``: each episode's instruction names
  another goal than the one ``success`` measures; ``instruction_success`` is success on the named one.

Criteria (exit 1 when one fails): with the filter, 0 violating states; swapped, success on the
original goal <= 20 % and on the named goal >= 80 % of the unswapped success; with a baseline, the
run's success >= 90 % or >= the baseline's + 30 points.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless offscreen rendering; must precede mujoco

import torch
from env_throughput import command_line, machine_info, markdown_table, thread_info, write_json
from omegaconf import OmegaConf

from embodied.barrier_monitor import BarrierMonitor
from embodied.evaluate import evaluate
from embodied.workflow import build_env, load_policy, load_run, set_threads

SETTINGS = {
    "filter": ["safety.filters=[cbf]"],
    "no filter": ["safety.filters=[]"],
    "swapped": ["safety.filters=[cbf]", "task.instructions.swap=true"],
}


def run_setting(run: Path, overrides: list[str], num_envs: int, seed: int) -> dict[str, Any]:
    """Evaluate ``run`` with ``overrides`` merged into its config; the figures and the barrier counts."""
    _, cfg = load_run(str(run))
    cfg.merge_with_dotlist(["threads.torch=2", *overrides])
    set_threads(cfg)
    env = build_env(cfg, num_envs=num_envs, seed=seed)
    monitor = BarrierMonitor.for_task(env, cfg.task)
    if monitor is None:
        raise SystemExit(f"{run}: the task declares no barriers (barriers:) to count violations of")
    policy, ckpt = load_policy(run, cfg, env, None)
    ev = OmegaConf.to_container(cfg.task.get("eval") or {}, resolve=True)
    start = time.perf_counter()
    result = evaluate(env, monitor.watch(policy), seed=seed, warmup_s=float(ev.get("warmup_s", 0.0)))
    env.close()
    return {
        **result,
        "iteration": int(ckpt["iteration"]),
        "barriers": monitor.summary(),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def criteria(res: dict[str, dict[str, Any]], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    f, s = res["filter"], res["swapped"]
    out = [
        {
            "criterion": "violating states, filter on",
            "value": f["barriers"]["violating_states"],
            "need": "== 0",
        },
        {"criterion": "swapped: success on the original goal", "value": s["success"], "need": "<= 0.2"},
        {
            "criterion": "swapped: success on the named goal / unswapped success",
            "value": s["instruction_success"] / max(f["success"], 1e-9),
            "need": ">= 0.8",
        },
    ]
    out[0]["pass"] = out[0]["value"] == 0
    out[1]["pass"] = out[1]["value"] <= 0.2
    out[2]["pass"] = out[2]["value"] >= 0.8
    if base is not None:
        gain = f["success"] - base["success"]
        out.append(
            {
                "criterion": f"success {f['success']:.3f} vs pretrained {base['success']:.3f}: gain",
                "value": gain,
                "need": ">= 0.30 or success >= 0.90",
                "pass": gain >= 0.30 or f["success"] >= 0.90,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--baseline", default=None, help="the pretrained run the fine-tuning started from")
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    res = {name: run_setting(Path(a.run), o, a.num_envs, a.seed) for name, o in SETTINGS.items()}
    base = run_setting(Path(a.baseline), SETTINGS["filter"], a.num_envs, a.seed) if a.baseline else None
    rows = []
    for name, r in [*res.items(), *([("baseline (filter)", base)] if base else [])]:
        b = r["barriers"]
        rows.append(
            [
                name,
                f"{r['success']:.1%}",
                f"{r['instruction_success']:.1%}",
                f"{r.get('safety/intervention_rate', 0.0):.1%}",
                f"{b['violating_states']} / {b['states']} ({b['violation_rate']:.2%})",
                f"{r['mean_cost']:.2f}",
            ]
        )
    table = markdown_table(
        [
            "setting",
            "success",
            "success on the named goal",
            "intervention rate",
            "violating states",
            "cost/episode",
        ],
        rows,
    )
    crit = criteria(res, base)
    print(f"# VLA evaluation: {a.run} (iteration {res['filter']['iteration']})\n")
    print(f"command: `{command_line(__file__, argv)}`")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()))
    print(f"\n{table}\n")
    for c in crit:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['criterion']}: {c['value']:.3g} (need {c['need']})")
    write_json(
        a.out,
        {
            "command": command_line(__file__, argv),
            "machine": machine_info(),
            "threads": thread_info(),
            "results": res,
            "baseline": base,
            "criteria": crit,
        },
    )
    return 0 if all(c["pass"] for c in crit) else 1


if __name__ == "__main__":
    raise SystemExit(main())
