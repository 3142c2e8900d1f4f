"""Does a policy trained on the fitted actuator transfer better than one trained on the ideal servo?

    python benchmarks/actuator_transfer.py --ideal RUN --fitted RUN [--preset hidden_dc_motor]
        [--episodes 20]

Both runs are go2_velocity policies with an export. ``--ideal`` was trained with the MJCF servos (the
default); ``--fitted`` with ``task.actuator.model=dc_motor task.actuator.path=<yaml>`` from
``embodied fit-actuator`` on the hidden robot's log (benchmarks/actuator_fit.py). Each goes through
``embodied sim2sim target=mujoco perturb=<preset>``, whose robot carries the hidden DC motor and delay
(configs/sim2sim.yaml), on the same forward-speed sweep.

Prints one markdown row per run: falls, tracking error on the hidden robot, the same in the run's own
training engine, and their ratio. Exits 1 unless the fitted run falls no more often than the ideal
one and tracks the hidden robot's commands with a lower error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ideal", type=Path, required=True)
    ap.add_argument("--fitted", type=Path, required=True)
    ap.add_argument("--preset", default="hidden_dc_motor")
    ap.add_argument("--episodes", type=int, default=20)
    a = ap.parse_args()

    from embodied.sim2sim import sim2sim

    rows = {}
    for name, run in (("ideal servo", a.ideal), ("fitted dc_motor", a.fitted)):
        t0 = time.perf_counter()
        r = sim2sim(run, target="mujoco", preset_name=a.preset, episodes=a.episodes, video=False)
        rows[name] = r
        print(f"# {name}: {run} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(
        "| policy trained on | falls | tracking error, hidden robot | own training engine | ratio | sim2sim |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['falls']} / {r['episodes']} | {r['tracking_error']:.3f} m/s | "
            f"{r['training_engine_tracking_error']:.3f} m/s | {r['tracking_ratio']:.2f} | {r['verdict']} |"
        )
    ideal, fitted = rows["ideal servo"], rows["fitted dc_motor"]
    ok = fitted["falls"] <= ideal["falls"] and fitted["tracking_error"] < ideal["tracking_error"]
    print(
        f"{'PASS' if ok else 'FAIL'}  fitted: falls {fitted['falls']}, error {fitted['tracking_error']:.3f}; "
        f"ideal: falls {ideal['falls']}, error {ideal['tracking_error']:.3f} "
        "(need fewer or equal falls and a lower error)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
