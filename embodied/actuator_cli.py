"""``embodied fit-actuator data=<log> model=dc_motor|mlp [out=<path>]``: fit and write an actuator model.

dc_motor writes a YAML of constants (``task.actuator.model=dc_motor task.actuator.path=<yaml>``);
mlp writes a torch file (``task.actuator.model=mlp task.actuator.path=<pt>``). Both print the
held-out normalized RMSE and how many NaN rows were dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from embodied.actuator_fit import FitResult, fit_dc_motor, fit_mlp
from embodied.actuator_log import read_log
from embodied.errors import ConfigError
from sim.actuators import save_mlp_actuator

OPTIONS: dict[str, Any] = {
    "data": "",
    "model": "",
    "out": "",
    "torque_constant": "",
    "max_delay": "10",
    "history": "4",
    "iterations": "2000",
    "seed": "0",
}


def _int(opts: dict[str, Any], key: str, lo: int) -> int:
    try:
        v = int(opts[key])
    except ValueError:
        raise ConfigError(f"fit-actuator: {key} must be an integer, got {opts[key]!r}") from None
    if v < lo:
        raise ConfigError(f"fit-actuator: {key} must be >= {lo}, got {v}")
    return v


def write_dc_motor(path: Path, result: FitResult, data: str, joints: list[str]) -> None:
    """The constants as a YAML a task's ``actuator.path`` names, with the fit's figures beside them."""

    def short(v: Any) -> Any:  # 6 significant digits: the fit is not more precise than that
        return [float(f"{x:.6g}") for x in v] if isinstance(v, list) else float(f"{v:.6g}")

    doc = {
        **{k: v if k == "model" else short(v) for k, v in result.constants.items()},
        "fit": {
            "log": data,
            "joints": list(joints),
            "rows_used": result.rows_used,
            "rows_dropped_nan": result.rows_dropped,
            "heldout_nrmse": round(result.nrmse, 5),
            "heldout_nrmse_per_joint": [round(v, 5) for v in result.nrmse_per_joint],
            "notes": result.notes,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    os.replace(tmp, path)


def cmd_fit_actuator(args: list[str]) -> int:
    from embodied.cli import _kv

    opts = _kv(args, OPTIONS, "fit-actuator")  # every option a string here, converted below
    if not opts["data"]:
        raise ConfigError("fit-actuator: data=<log.csv or log.parquet> is required")
    if opts["model"] not in ("dc_motor", "mlp"):
        raise ConfigError(f"fit-actuator: model must be dc_motor or mlp, got {opts['model']!r}")
    kt = None
    if opts["torque_constant"]:
        try:
            kt = float(opts["torque_constant"])
        except ValueError:
            raise ConfigError(
                f"fit-actuator: torque_constant must be a number, got {opts['torque_constant']!r}"
            ) from None
    log = read_log(opts["data"], torque_constant=kt)
    data = Path(opts["data"])
    if opts["model"] == "dc_motor":
        result = fit_dc_motor(log, max_delay=_int(opts, "max_delay", 0))
        out = Path(opts["out"]) if opts["out"] else data.with_name(f"{data.stem}.dc_motor.yaml")
        write_dc_motor(out, result, str(data), log.joints)
        use = f"task.actuator.model=dc_motor task.actuator.path={out}"
    else:
        result = fit_mlp(
            log,
            history=_int(opts, "history", 1),
            iterations=_int(opts, "iterations", 1),
            seed=_int(opts, "seed", 0),
        )
        out = Path(opts["out"]) if opts["out"] else data.with_name(f"{data.stem}.mlp.pt")
        info = {k: v for k, v in result.constants.items() if k != "model"}
        info |= {"log": str(data), "heldout_nrmse": result.nrmse, "rows_dropped_nan": result.rows_dropped}
        save_mlp_actuator(out, result.net, info)
        use = f"task.actuator.model=mlp task.actuator.path={out}"
    print(
        f"{log.dropped} of {log.time.shape[0]} rows dropped for NaN values; "
        f"fitted on {result.rows_used} rows of {len(log.joints)} joints"
    )
    if result.model == "dc_motor":
        c = result.constants
        print(
            f"delay {c['delay_s'] * 1000:.1f} ms "
            f"({round(c['delay_s'] / log.dt)} ticks of {log.dt * 1000:g} ms)"
        )
        for j, name in enumerate(log.joints):
            print(
                f"  {name}: kp {c['kp'][j]:.3g} kd {c['kd'][j]:.3g} tau_stall {c['tau_stall'][j]:.4g} N m "
                f"w_free {c['w_free'][j]:.4g} rad/s effort {c['effort_limit'][j]:.4g} N m"
            )
        for note in result.notes:
            print(f"  note: {note}")
    print(f"held-out normalized RMSE {result.nrmse:.4f} (last 20 % of the log)")
    print(f"wrote {out}; use it with {use}")
    return 0
