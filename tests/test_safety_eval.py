"""safety-eval: filter settings compared on the same seeds and states; bad input is refused."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from embodied.cli import main
from embodied.safety_eval import interval, parse_setting, t975
from embodied.video import BLUE, BORDER, RED, CostVideo, overlay_interventions
from policies.safety import FILTERS

TINY = [
    "num_envs=4",
    "algo.num_steps_per_env=8",
    "train.max_iterations=2",
    "train.evaluate=false",
    "train.export=false",
    "train.video=false",
    "threads.torch=1",
    "policy.actor_hidden_dims=[16,16]",
    "policy.critic_hidden_dims=[16,16]",
]
# Short episodes; the task's metrics are read after the warm-up, as evaluate reads them.
EPISODE = {
    "driving_lane_follow": ["task.episode_length_s=3.0", "task.eval.warmup_s=2.0"],
    "arm_reach": ["task.episode_length_s=2.0", "task.eval.warmup_s=1.5"],
}
TIGHT_BOX = ["+safety.params.box.low=-0.05", "+safety.params.box.high=0.05"]


def _train(root: Path, task: str) -> Path:
    run = root / task
    assert main(["train", f"task={task}", *TINY, *EPISODE[task], f"run_dir={run}"]) == 0
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety_eval")
    return {task: _train(root, task) for task in EPISODE}


def _report(run: Path) -> dict:
    return json.loads((run / "safety" / "report.json").read_text())


def test_settings_share_seeds_and_states_and_only_a_binding_filter_intervenes(runs, capsys):
    run = runs["driving_lane_follow"]
    # rate with a huge max_delta never binds: it must reproduce `none` exactly (same initial states)
    args = [
        "filters=[none,box,rate]",
        "episodes=3",
        "seeds=[0,1]",
        *TIGHT_BOX,
        "+safety.params.rate.max_delta=5.0",
    ]
    assert main(["safety-eval", f"run={run}", *args, "video=true"]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("setting", "none", "box", "rate", "intervention rate"))
    r = _report(run)
    assert r["settings"] == ["none", "box", "rate"] and r["seeds"] == [0, 1] and r["episodes"] == 3
    assert r["checkpoint"].endswith(".pt") and r["command"].startswith("embodied safety-eval")
    res = r["results"]
    assert set(res) == {"none", "box", "rate"}
    for figures in res.values():
        m = figures["metrics"]
        for key in ("return", "cost_per_step", "violation_share", "intervention_rate", "correction"):
            assert m[key]["mean"] is not None and m[key]["half_width"] is not None, key
            assert len(m[key]["per_seed"]) == 2
        for term in ("collision", "lane_departure", "speed_over_limit"):
            assert f"cost_per_step/{term}" in m
        assert {"task/route_completion", "task/collision", "task/success"} <= set(m)
        total = sum(
            m[f"cost_per_step/{t}"]["mean"] for t in ("collision", "lane_departure", "speed_over_limit")
        )
        assert m["cost_per_step"]["mean"] == pytest.approx(total)
    none, box, rate = (res[s]["metrics"] for s in ("none", "box", "rate"))
    assert none["intervention_rate"]["mean"] == 0.0 and none["correction_when_intervened"]["mean"] is None
    assert box["intervention_rate"]["mean"] > 0.0 and box["correction"]["mean"] > 0.0
    assert box["correction_when_intervened"]["mean"] >= box["correction"]["mean"] > 0.0
    assert box["intervention_rate/box"] == box["intervention_rate"]
    assert rate["intervention_rate"]["mean"] == 0.0
    for key in ("return", "cost_per_step", "task/route_completion"):
        assert rate[key]["per_seed"] == none[key]["per_seed"], key
    assert res["box"]["params"] == {"box": {"low": -0.05, "high": 0.05}}
    out_dir = run / "safety"
    for name in ("report.md", "report.json", "report.png"):
        assert (out_dir / name).stat().st_size > 0
    md = (out_dir / "report.md").read_text()
    assert r["command"] in md and "\n| none |" in md and "\n| box | box |" in md and "±" in md
    worst = r["worst_episode"]
    assert worst["setting"] == "rate" and Path(worst["video"]) == out_dir / "worst_episode.mp4"
    assert (out_dir / "worst_episode.mp4").stat().st_size > 0
    assert worst["rerun_cost_events"] == worst["cost_events"]  # the re-run is the same episode


def test_arm_chain_reports_each_filter_and_one_seed_has_no_interval(runs):
    run = runs["arm_reach"]
    args = ["filters=[none,box+rate]", "episodes=2", "seeds=[3]", "video=false", *TIGHT_BOX]
    assert main(["safety-eval", f"run={run}", *args, "+safety.params.rate.max_delta=0.02"]) == 0
    r = _report(run)
    m = r["results"]["box+rate"]["metrics"]
    assert r["results"]["box+rate"]["filters"] == ["box", "rate"] and r["worst_episode"] is None
    assert m["intervention_rate"]["mean"] > 0.0 and m["correction"]["mean"] > 0.0
    assert m["intervention_rate/box"]["mean"] > 0.0 and "intervention_rate/rate" in m
    assert {"cost_per_step/arm_table_contact", "cost_per_step/joint_limit_violation"} <= set(m)
    assert {"task/success", "task/goal_distance"} <= set(m)
    assert all(v["half_width"] is None for v in m.values()), "one seed gives no interval"
    assert r["results"]["none"]["metrics"]["intervention_rate"]["mean"] == 0.0
    assert "(n/a)" in (run / "safety" / "report.md").read_text()
    assert not (run / "safety" / "worst_episode.mp4").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["filters=[none,nope]"], "unknown safety filter 'nope'"),
        (["episodes=0"], "episodes must be an integer >= 1"),
        (["seeds=[]"], "seeds must be a non-empty list"),
        (["filters=[none,box]", "+safety.params.rate.max_delta=0.1"], "filters in no setting"),
        (["bogus=1"], "unknown option 'bogus'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, capsys, args, needle):
    assert main(["safety-eval", f"run={runs['arm_reach']}", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["safety-eval", f"run={tmp_path}"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_interval_is_a_t_interval_and_none_with_one_seed():
    assert interval([1.0])["half_width"] is None and interval([None, None])["mean"] is None
    got = interval([1.0, 2.0, 4.0])
    sd = torch.tensor([1.0, 2.0, 4.0]).std().item()
    assert got["mean"] == pytest.approx(7 / 3) and got["half_width"] == pytest.approx(4.303 * sd / 3**0.5)
    assert interval([1.0, None, 3.0])["per_seed"] == [1.0, None, 3.0]
    assert parse_setting("none") == [] and parse_setting("box+cbf") == ["box", "cbf"]
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 29, 30, 31, 50, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3), df


def test_interventions_are_drawn_inside_the_cost_border_and_logged(tmp_path):
    frame = torch.full((3, 60, 80), 100, dtype=torch.uint8)
    assert torch.equal(overlay_interventions(frame, {"box": 0.0}), frame)
    hit = overlay_interventions(frame, {"box": 1.0})
    assert hit[:, BORDER, 40].tolist() == list(BLUE) and hit[:, 0, 40].tolist() == [100, 100, 100]
    video = CostVideo(fps=10)
    video.add(frame, None)
    info = {
        "metric/cost/collision": torch.tensor([0.0, 1.0]),
        "safety/intervened": torch.tensor([False, True]),
        "safety/box/intervened": torch.tensor([False, True]),
    }
    video.add(frame, info, env_id=1)
    assert video.frames[1][:, 0, 40].tolist() == list(RED) and video.frames[1][
        :, BORDER, 40
    ].tolist() == list(BLUE)
    path = video.write(tmp_path / "v.mp4")
    rows = list(csv.DictReader(path.with_suffix(".costs.csv").open()))
    assert [r["filter/box"] for r in rows] == ["0", "1"] and [r["collision"] for r in rows] == ["0", "1"]
    assert "filter/intervened" not in rows[0]


def test_cbf_and_a_critic_trained_on_the_spot(runs):
    pytest.importorskip("embodied.safety_critic")
    if not {"cbf", "critic"} <= set(FILTERS):
        pytest.skip("the cbf and critic filters are not registered")
    run = runs["arm_reach"]
    train = ["num_envs=4", "iterations=1", "steps_per_iteration=10", "epochs=1"]
    args = ["filters=[none,cbf,critic]", "episodes=2", "seeds=[0,1]", "video=false"]
    assert (
        main(["safety-eval", f"run={run}", *args, *(f"+safety.params.critic.train.{t}" for t in train)]) == 0
    )
    r = _report(run)
    assert r["critic"]["trained"] and Path(r["critic"]["path"]) == run / "safety" / "critic.pt"
    assert (run / "safety" / "critic.pt").is_file()
    assert set(r["results"]) == {"none", "cbf", "critic"}
    for s in ("cbf", "critic"):
        m = r["results"][s]["metrics"]
        assert m["intervention_rate"]["half_width"] is not None and f"intervention_rate/{s}" in m


def test_the_critic_without_its_trainer_is_a_one_line_error(runs, capsys, monkeypatch):
    if "critic" not in FILTERS:
        pytest.skip("the critic filter is not registered")
    monkeypatch.setitem(sys.modules, "embodied.safety_critic", None)  # as if not written yet
    assert (
        main(["safety-eval", f"run={runs['arm_reach']}", "filters=[critic]", "episodes=1", "seeds=[0]"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embodied.safety_critic" in err[0], err
