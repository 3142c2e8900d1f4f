"""Robot actuator logs (docs/actuator_log.md): one row per tick, CSV or Parquet, read into torch.

Columns: ``time`` (s), and per joint ``<joint>.target``, ``<joint>.pos``, ``<joint>.vel`` and
either ``<joint>.torque`` (N m) or ``<joint>.current`` (A, with a torque constant). Rows holding a
NaN are dropped and counted; every sample whose history reaches into a dropped row is left out of
the fit (``ActuatorLog.valid``). A missing column, a non-uniform clock or a log that is mostly NaN
is a one-line ConfigError.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from embodied.errors import ConfigError

FIELDS = ("target", "pos", "vel")
MAX_NAN_FRACTION = 0.5


@dataclass
class ActuatorLog:
    """(T, J) tensors in joint order, float64; ``valid`` (T,) marks rows without NaN."""

    joints: list[str]
    time: torch.Tensor  # (T,)
    target: torch.Tensor  # (T, J) rad
    pos: torch.Tensor  # (T, J) rad
    vel: torch.Tensor  # (T, J) rad/s
    torque: torch.Tensor  # (T, J) N m
    valid: torch.Tensor  # (T,) bool
    dropped: int  # rows dropped for NaN values
    dt: float  # s per tick

    def usable(self, lags: int) -> torch.Tensor:
        """(T,) bool: rows t whose rows t - lags .. t are all valid (histories and delays need them)."""
        ok = self.valid.clone()
        for k in range(1, lags + 1):
            ok[k:] &= self.valid[:-k]
        ok[:lags] = False
        return ok


def _read_columns(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        raise ConfigError(f"actuator log {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("reading a Parquet log needs pyarrow (pip install pyarrow)") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises many kinds on a bad file
            raise ConfigError(
                f"actuator log {path} is not a readable Parquet file ({type(e).__name__})"
            ) from None
        return {name: table.column(name).to_pylist() for name in table.column_names}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ConfigError(f"actuator log {path} is empty") from None
        rows = list(reader)
    cols: dict[str, list[float]] = {h.strip(): [] for h in header}
    names = list(cols)
    for i, row in enumerate(rows, start=2):
        if len(row) != len(names):
            raise ConfigError(f"actuator log {path} line {i}: {len(row)} fields, header has {len(names)}")
        for name, cell in zip(names, row, strict=True):
            try:
                cols[name].append(float(cell) if cell.strip() else math.nan)
            except ValueError:
                raise ConfigError(
                    f"actuator log {path} line {i}: {name} = {cell!r} is not a number"
                ) from None
    return cols


def read_log(path: str | Path, torque_constant: float | None = None) -> ActuatorLog:
    """The log at ``path``; ``torque_constant`` (N m / A) turns ``<joint>.current`` columns into torque."""
    path = Path(path)
    cols = _read_columns(path)
    if "time" not in cols:
        raise ConfigError(f"actuator log {path} misses column 'time'")
    joints = [c[: -len(".target")] for c in cols if c.endswith(".target")]
    if not joints:
        raise ConfigError(f"actuator log {path} has no '<joint>.target' column")
    series: dict[str, list[torch.Tensor]] = {k: [] for k in (*FIELDS, "torque")}
    for j in joints:
        for field in FIELDS:
            if f"{j}.{field}" not in cols:
                raise ConfigError(f"actuator log {path} misses column '{j}.{field}'")
            series[field].append(torch.tensor(cols[f"{j}.{field}"], dtype=torch.float64))
        if f"{j}.torque" in cols:
            series["torque"].append(torch.tensor(cols[f"{j}.torque"], dtype=torch.float64))
        elif f"{j}.current" in cols:
            if torque_constant is None:
                raise ConfigError(
                    f"actuator log {path} gives '{j}.current': pass torque_constant=<N m per A>"
                )
            series["torque"].append(torch.tensor(cols[f"{j}.current"], dtype=torch.float64) * torque_constant)
        else:
            raise ConfigError(f"actuator log {path} misses column '{j}.torque' (or '{j}.current')")
    t = torch.tensor(cols["time"], dtype=torch.float64)
    data = {k: torch.stack(v, dim=1) for k, v in series.items()}
    valid = torch.isfinite(t) & torch.stack([torch.isfinite(v).all(dim=1) for v in data.values()]).all(dim=0)
    n, dropped = int(t.shape[0]), int((~valid).sum())
    if n < 10:
        raise ConfigError(f"actuator log {path} has {n} rows; a fit needs many more")
    if dropped > MAX_NAN_FRACTION * n:
        raise ConfigError(f"actuator log {path}: {dropped} of {n} rows hold NaN values; refusing to fit")
    steps = (t[1:] - t[:-1])[valid[1:] & valid[:-1]]
    dt = float(steps.median()) if steps.numel() else math.nan
    if not dt > 0 or float((steps - dt).abs().max()) > 0.01 * dt + 1e-9:
        raise ConfigError(f"actuator log {path}: time must advance by one constant tick per row")
    data = {k: torch.where(valid[:, None], v, 0.0) for k, v in data.items()}
    return ActuatorLog(
        joints, t, data["target"], data["pos"], data["vel"], data["torque"], valid, dropped, dt
    )


def write_csv(path: str | Path, log: ActuatorLog) -> None:
    """Write ``log`` in the documented layout (used to hand simulated logs to the fitter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["time"] + [f"{j}.{f}" for j in log.joints for f in (*FIELDS, "torque")]
    per = {"target": log.target, "pos": log.pos, "vel": log.vel, "torque": log.torque}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(log.time.shape[0]):
            row = [repr(float(log.time[i]))]
            for j in range(len(log.joints)):
                row += [repr(float(per[k][i, j])) for k in (*FIELDS, "torque")]
            w.writerow(row)
