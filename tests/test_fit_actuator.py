"""``embodied fit-actuator`` on a robot whose actuator it does not see (go2, hidden DC motor + delay)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from embodied.actuator_fit import dc_motor_torque, fit_mlp, relative_error
from embodied.actuator_log import read_log, write_csv
from embodied.actuator_robot import HIDDEN_GO2, simulate_log
from embodied.cli import main as cli_main
from embodied.errors import ConfigError
from embodied.registry import make_env
from sim.actuators import load_mlp_actuator
from tests.test_cli import assert_one_line_error, embodied

TICKS = 6000
MAX_REL_ERROR = 0.10  # hidden constants recovered within 10 %
MAX_NRMSE = 0.10  # or held-out torques within a normalized RMSE of 0.1


@pytest.fixture(scope="module")
def hidden_log(tmp_path_factory) -> Path:
    """A 30 s log (200 Hz) of the hidden-actuator go2, as the robot would hand it over."""
    path = tmp_path_factory.mktemp("robot") / "go2.csv"
    write_csv(path, simulate_log(HIDDEN_GO2, ticks=TICKS, seed=1))
    return path


@pytest.fixture(scope="module")
def dc_fit(hidden_log) -> dict:
    out = hidden_log.with_name("fitted.yaml")
    assert cli_main(["fit-actuator", f"data={hidden_log}", "model=dc_motor", f"out={out}"]) == 0
    return yaml.safe_load(out.read_text()) | {"_path": str(out)}


def test_hidden_dc_motor_constants_are_recovered_within_10_percent(dc_fit):
    assert relative_error(dc_fit["tau_stall"], HIDDEN_GO2["tau_stall"]) <= MAX_REL_ERROR
    assert relative_error(dc_fit["w_free"], HIDDEN_GO2["w_free"]) <= MAX_REL_ERROR
    assert relative_error(dc_fit["kp"], [35.0] * 12) <= MAX_REL_ERROR  # the MJCF servo gains
    assert relative_error(dc_fit["kd"], [0.8] * 12) <= MAX_REL_ERROR
    assert round(dc_fit["delay_s"] / 0.005) == HIDDEN_GO2["delay_steps"]
    efforts = [23.7, 23.7, 45.43] * 4
    assert relative_error(dc_fit["effort_limit"], efforts) <= 0.02


def test_fitted_dc_motor_predicts_held_out_torques(dc_fit, hidden_log):
    assert dc_fit["fit"]["heldout_nrmse"] <= MAX_NRMSE
    # The same figure recomputed here from the written constants on the last 20 % of the log.
    log = read_log(hidden_log)
    d = round(dc_fit["delay_s"] / log.dt)
    held = torch.arange(int(0.8 * TICKS), TICKS)
    pred = dc_motor_torque(
        log.target[held - d] - log.pos[held],
        log.vel[held],
        dc_fit["kp"],
        dc_fit["kd"],
        dc_fit["tau_stall"],
        dc_fit["w_free"],
        dc_fit["effort_limit"],
    )
    meas = log.torque[held]
    nrmse = ((pred - meas).pow(2).mean(0).sqrt() / meas.std(0)).mean()
    assert float(nrmse) <= MAX_NRMSE


def test_fitted_yaml_is_what_a_task_config_names(dc_fit):
    env = make_env(
        "go2_velocity", num_envs=2, overrides={"actuator": {"model": "dc_motor", "path": dc_fit["_path"]}}
    )
    act = env.backend.actuator
    assert act.model == "dc_motor" and act.delay.tolist() == [2, 2]
    assert torch.allclose(act.nom_stall, torch.tensor(dc_fit["tau_stall"], dtype=torch.float64))
    env.step(torch.zeros(2, 12))
    env.close()


def test_mlp_fit_predicts_held_out_torques(hidden_log, tmp_path):
    log = read_log(hidden_log)
    result = fit_mlp(log, iterations=2000)
    assert result.nrmse <= MAX_NRMSE, result.nrmse_per_joint
    from sim.actuators import save_mlp_actuator

    save_mlp_actuator(tmp_path / "a.pt", result.net, {"heldout_nrmse": result.nrmse})
    net = load_mlp_actuator(tmp_path / "a.pt")
    assert net.history == 4 and net.num_joints == 12
    env = make_env(
        "go2_velocity", num_envs=2, overrides={"actuator": {"model": "mlp", "path": str(tmp_path / "a.pt")}}
    )
    assert torch.isfinite(env.step(torch.zeros(2, 12)).obs["policy"]).all()
    env.close()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    rows = list(csv.reader(src.open()))
    rows = edit(rows)
    with dst.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return dst


def test_log_missing_a_column_is_a_one_line_error(hidden_log, tmp_path):
    def drop_vel(rows):
        k = rows[0].index("FR_calf_joint.vel")
        return [r[:k] + r[k + 1 :] for r in rows]

    bad = _rewrite(hidden_log, tmp_path / "novel.csv", drop_vel)
    p = embodied("fit-actuator", f"data={bad}", "model=dc_motor")
    assert_one_line_error(p, "misses column 'FR_calf_joint.vel'")


def test_nan_rows_are_dropped_and_counted(hidden_log, tmp_path, capsys):
    def blank(rows):
        for i in range(100, 160):
            rows[i][3] = ""  # an empty cell reads as NaN
        rows[200][5] = "nan"
        return rows

    holes = _rewrite(hidden_log, tmp_path / "holes.csv", blank)
    log = read_log(holes)
    assert log.dropped == 61 and int((~log.valid).sum()) == 61
    # data rows 99..158 (CSV lines 101..160) are dropped; rows 159, 160 look back into them
    assert not log.usable(2)[99:161].any() and log.usable(2)[161]
    out = tmp_path / "holes.yaml"
    assert cli_main(["fit-actuator", f"data={holes}", "model=dc_motor", f"out={out}"]) == 0
    assert "61 of 6000 rows dropped for NaN values" in capsys.readouterr().out
    fit = yaml.safe_load(out.read_text())
    assert fit["fit"]["rows_dropped_nan"] == 61
    assert relative_error(fit["w_free"], HIDDEN_GO2["w_free"]) <= MAX_REL_ERROR


def test_a_log_mostly_of_nan_is_refused(hidden_log, tmp_path):
    def blank(rows):
        for r in rows[1 : len(rows) * 2 // 3]:
            r[1] = "nan"
        return rows

    with pytest.raises(ConfigError, match="rows hold NaN values; refusing"):
        read_log(_rewrite(hidden_log, tmp_path / "nan.csv", blank))


def test_parquet_log_reads_as_the_csv(hidden_log, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = list(csv.reader(hidden_log.open()))
    cols = {h: [float(r[i]) for r in rows[1:]] for i, h in enumerate(rows[0])}
    pq.write_table(pa.table(cols), tmp_path / "go2.parquet")
    a, b = read_log(hidden_log), read_log(tmp_path / "go2.parquet")
    assert a.joints == b.joints and torch.equal(a.torque, b.torque) and torch.equal(a.target, b.target)


def test_currents_need_a_torque_constant(hidden_log, tmp_path):
    def to_current(rows):
        rows[0] = [h.replace(".torque", ".current") for h in rows[0]]
        for r in rows[1:]:
            for k, h in enumerate(rows[0]):
                if h.endswith(".current"):
                    r[k] = repr(float(r[k]) / 0.5)
        return rows

    amps = _rewrite(hidden_log, tmp_path / "amps.csv", to_current)
    with pytest.raises(ConfigError, match="pass torque_constant"):
        read_log(amps)
    assert torch.allclose(read_log(amps, torque_constant=0.5).torque, read_log(hidden_log).torque)


def test_bad_options_are_one_line_errors(hidden_log):
    assert_one_line_error(embodied("fit-actuator", f"data={hidden_log}", "model=spring"), "dc_motor or mlp")
    assert_one_line_error(embodied("fit-actuator", "data=/nonexistent.csv", "model=mlp"), "does not exist")
    assert not math.isnan(relative_error([1.0], [1.0]))
