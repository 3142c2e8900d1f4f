"""Which policy observation transfers better: with base_lin_vel, or the signals a Go2 measures?

    python benchmarks/observation_transfer.py --lin-vel RUN --proprio RUN [--default lin-vel|proprio]
        [--checks mujoco:nominal,mujoco:mass_friction_latency,genesis:nominal] [--episodes 20]

``--lin-vel`` is a go2_velocity run (its policy reads base_lin_vel, which a real Go2 has only from a
state estimator); ``--proprio`` a go2_velocity_proprio run (IMU gyro, projected gravity, joints and
last action with 3 steps of history, the command; no base_lin_vel). Both are exported. Each goes
through ``embodied sim2sim`` for every target:preset in ``--checks``, on the same forward sweep.

Prints one markdown row per run and check: falls, tracking error on the target, the same in the
run's training engine, their ratio and the sim2sim verdict. "Transfers better" means fewer falls over
all checks, then the lower mean tracking error on the targets. Exits 1 when the run named by
``--default`` (the one configs/task/go2_velocity.yaml now is) is not the one that transfers better.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lin-vel", type=Path, required=True)
    ap.add_argument("--proprio", type=Path, required=True)
    ap.add_argument("--default", choices=("lin-vel", "proprio"), default="lin-vel")
    ap.add_argument("--checks", default="mujoco:nominal,mujoco:mass_friction_latency,genesis:nominal")
    ap.add_argument("--episodes", type=int, default=20)
    a = ap.parse_args()
    checks = [tuple(c.split(":", 1)) for c in a.checks.split(",")]
    if any(len(c) != 2 for c in checks):
        print(f"--checks takes target:preset,...; got {a.checks!r}", file=sys.stderr)
        return 2

    from embodied.sim2sim import sim2sim

    rows: dict[str, list[tuple[str, dict]]] = {}
    for name, run in (("lin-vel", a.lin_vel), ("proprio", a.proprio)):
        rows[name] = []
        for target, preset in checks:
            t0 = time.perf_counter()
            r = sim2sim(run, target=target, preset_name=preset, episodes=a.episodes, video=False)
            rows[name].append((f"{target} {preset}", r))
            print(f"# {name} {target}:{preset}: {run} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("| observation | check | falls | tracking error, target | training engine | ratio | sim2sim |")
    print("|---|---|---|---|---|---|---|")
    score = {}
    for name, results in rows.items():
        for check, r in results:
            train_err = r["training_engine_tracking_error"]
            print(
                f"| {name} | {check} | {r['falls']} / {r['episodes']} | {r['tracking_error']:.3f} m/s | "
                f"{train_err:.3f} m/s | {r['tracking_ratio']:.2f} | {r['verdict']} |"
            )
        falls = sum(r["falls"] for _, r in results)
        error = sum(r["tracking_error"] for _, r in results) / len(results)
        score[name] = (falls, error)
    better = min(score, key=lambda k: score[k])
    for name, (falls, error) in score.items():
        print(f"# {name}: {falls} falls over all checks, mean tracking error {error:.3f} m/s")
    ok = better == a.default
    print(f"{'PASS' if ok else 'FAIL'}  {better} transfers better; the default is {a.default}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
