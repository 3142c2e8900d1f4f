"""``embodied fit-actuator`` on a robot whose actuator it does not see: recovered constants and
held-out torque error.

    python benchmarks/actuator_fit.py [--ticks 6000] [--seed 1] [--out fit.json]

The robot: go2 in MuJoCo (200 Hz physics) whose hidden actuator is a DC motor with other constants
than the training default (ideal PD) plus 2 physics steps of delay (``HIDDEN_GO2`` in
embodied/actuator_robot.py), driven by random targets; its log (one row per tick, CSV, with
measurement noise) goes through the CLI's own fitting code for ``dc_motor`` and ``mlp``.

Acceptance (issue 15): the hidden constants within 10 %, or held-out normalized RMSE <= 0.1.
Exits 1 when the dc_motor fit meets neither, or the mlp fit misses the RMSE bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from embodied.actuator_fit import fit_dc_motor, fit_mlp, relative_error
from embodied.actuator_log import read_log, write_csv
from embodied.actuator_robot import HIDDEN_GO2, simulate_log

MAX_REL_ERROR, MAX_NRMSE = 0.10, 0.10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=6000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "go2.csv"
        write_csv(path, simulate_log(HIDDEN_GO2, ticks=a.ticks, seed=a.seed))
        log = read_log(path)
    t0 = time.perf_counter()
    dc = fit_dc_motor(log)
    t_dc = time.perf_counter() - t0
    t0 = time.perf_counter()
    mlp = fit_mlp(log)
    t_mlp = time.perf_counter() - t0
    c = dc.constants
    err = {k: relative_error(c[k], HIDDEN_GO2[k]) for k in ("tau_stall", "w_free")}
    delay_fit = round(c["delay_s"] / log.dt)
    print(f"go2 hidden actuator, {a.ticks} ticks of {log.dt * 1000:g} ms, seed {a.seed}")
    print("| constant | joint | hidden | fitted |")
    print("|---|---|---|---|")
    for j, name in enumerate(log.joints[:3]):  # the other legs repeat these motors
        for k in ("tau_stall", "w_free"):
            print(f"| {k} | {name} | {HIDDEN_GO2[k][j]:g} | {c[k][j]:.3f} |")
    print(f"| delay (physics steps) | all | {HIDDEN_GO2['delay_steps']} | {delay_fit} |")
    print()
    print("| model | max rel. error tau_stall / w_free (12 joints) | held-out NRMSE | fit time |")
    print("|---|---|---|---|")
    print(f"| dc_motor | {err['tau_stall']:.2%} / {err['w_free']:.2%} | {dc.nrmse:.4f} | {t_dc:.1f} s |")
    print(f"| mlp | - | {mlp.nrmse:.4f} | {t_mlp:.1f} s |")
    dc_ok = (
        max(err.values()) <= MAX_REL_ERROR and delay_fit == HIDDEN_GO2["delay_steps"]
    ) or dc.nrmse <= MAX_NRMSE
    ok = dc_ok and mlp.nrmse <= MAX_NRMSE
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "constants": c,
                    "rel_error": err,
                    "delay_steps": delay_fit,
                    "dc_nrmse": dc.nrmse,
                    "mlp_nrmse": mlp.nrmse,
                },
                indent=2,
            )
        )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
