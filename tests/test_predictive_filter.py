"""The world-model predictive filter: intervenes on a state headed for cost, leaves a safe one alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from embodied.export.graph import ExportedPolicy, ExportError
from policies.safety import FILTERS, FilterChain, FilterError, build_chain
from world_models import Ensemble, StateLayout, WorldModel, save_world_model
from world_models.filter import PredictiveFilter

LAYOUT = [{"name": "x", "dim": 1, "scale": 1.0, "clip": None}]
SHARP = 50.0  # slope of the cost ramp: cost ~ 1 once the next x is 0.02 past 1


def toy_ensemble() -> Ensemble:
    """Exact toy dynamics x' = x + 0.5 a, step cost ~ 1[x' > 1], never terminal, near-zero noise.

    One silu layer: silu(z) - silu(-z) = z carries the action through exactly, and
    silu(k v) - silu(k v - 1) with v = x' - 1 is a ramp from 0 to 1 over v in [0, 1/k].
    """
    ens = Ensemble(1, 1, members=2, elites=2, hidden=(4,), min_logvar=-20.0, max_logvar=-19.0)
    w1 = torch.tensor([[0.0, 0.0, SHARP, SHARP], [1.0, -1.0, 0.5 * SHARP, 0.5 * SHARP]])  # rows: x, a
    b1 = torch.tensor([0.0, 0.0, -SHARP, -SHARP - 1.0])
    w2 = torch.zeros(4, 7)  # columns: delta, reward, cost, 3 log-variances, termination logit
    w2[0, 0], w2[1, 0] = 0.5, -0.5
    w2[2, 2], w2[3, 2] = 1.0, -1.0
    b2 = torch.zeros(7)
    b2[3:6], b2[6] = -20.0, -20.0
    with torch.no_grad():
        ens.weights[0].copy_(w1.expand(2, -1, -1))
        ens.biases[0].copy_(b1.expand(2, 1, -1))
        ens.weights[1].copy_(w2.expand(2, -1, -1))
        ens.biases[1].copy_(b2.expand(2, 1, -1))
    return ens.eval()


def write_model(path: Path, groups: dict | None = None, ens: Ensemble | None = None) -> str:
    layout = StateLayout.from_groups(groups or {"policy": LAYOUT})
    save_world_model(path, WorldModel(ens or toy_ensemble(), layout, "toy", 0.1))
    return str(path)


class Constant(nn.Module):
    """A policy that always outputs ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def act_inference(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.full((obs["policy"].shape[0], 1), self.value)


def make(tmp_path: Path, **kw) -> PredictiveFilter:
    params = {"horizon": 3, "futures": 4, "candidates": 32, "noise": 1.0, "threshold": 0.2, "seed": 0}
    return PredictiveFilter(LAYOUT, 1, model=write_model(tmp_path / "model.pt"), **{**params, **kw})


def test_predictive_filter_intervenes_before_a_predicted_cost_and_leaves_safe_rows(tmp_path):
    f = make(tmp_path)
    f.bind_policy(Constant(-1.0))  # after the first step the policy brakes: only that step matters
    obs = torch.tensor([[0.8], [-1.0]])  # 0.8 + 0.5 * 1.0 = 1.3 is past 1; -1 + 0.5 = -0.5 is not
    action = torch.tensor([[1.0], [1.0]])
    safe, hit, info = f(obs, action)
    assert hit.tolist() == [True, False]
    assert safe[1].item() == 1.0  # the safe row passes bit for bit
    assert 0.8 + 0.5 * safe[0].item() <= 1.0 + 0.5 / SHARP  # the next x stays below the cost ramp's half
    assert info["risk"][0] > 0.9 and info["risk"][1] == 0.0
    assert info["risk_safe"][0] <= 0.2 and not info["infeasible"].any()


def test_unbound_filter_repeats_the_proposal_and_a_bound_policy_changes_the_verdict(tmp_path):
    f = make(tmp_path)
    obs, action = torch.tensor([[0.2]]), torch.tensor([[0.6]])  # x: 0.5, 0.8, 1.1 when repeated
    _, hit, _ = f(obs, action)
    assert hit.item()
    f.bind_policy(Constant(0.0))  # the policy holds x after the first step: 0.5 stays safe
    safe, hit, _ = f(obs, action)
    assert not hit.item() and torch.equal(safe, action)


def test_rows_where_no_candidate_is_safe_are_flagged_infeasible(tmp_path):
    f = make(tmp_path)
    f.bind_policy(Constant(-1.0))
    safe, hit, info = f(torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.0], [0.0]]))  # x' >= 1.5 anyway
    assert hit.tolist() == [True, False]
    assert info["infeasible"].tolist() == [True, False]
    assert safe[0].item() == 0.0  # every candidate is equally sure to cost: the nearest, the proposal
    assert info["risk_safe"][0] > 0.2


def test_a_model_of_another_observation_layout_is_a_one_line_error(tmp_path):
    critic = [*LAYOUT, {"name": "privileged", "dim": 1, "scale": 1.0, "clip": None}]
    path = write_model(tmp_path / "critic.pt", {"critic": critic}, Ensemble(2, 1, members=2, elites=2))
    with pytest.raises(FilterError, match=r"world_model.groups=\[policy\]") as e:
        PredictiveFilter(LAYOUT, 1, model=path)
    assert "\n" not in str(e.value)
    other = [{"name": "y", "dim": 1, "scale": 1.0, "clip": None}]
    with pytest.raises(FilterError, match="'x'") as e:
        PredictiveFilter(other, 1, model=write_model(tmp_path / "model.pt"))
    assert "\n" not in str(e.value)
    with pytest.raises(FilterError, match="no world model"):
        PredictiveFilter(LAYOUT, 1, model=str(tmp_path / "missing.pt"))
    with pytest.raises(FilterError, match=r"predictive\.horizon must be an integer >= 1"):
        PredictiveFilter(LAYOUT, 1, model=str(tmp_path / "model.pt"), horizon=0)
    with pytest.raises(FilterError, match="predicts 1 actions, this env has 2"):
        PredictiveFilter(LAYOUT, 2, model=str(tmp_path / "model.pt"))
    with pytest.raises(FilterError, match=r"predictive\.precision must be one of \['bfloat16', 'float32'\]"):
        PredictiveFilter(LAYOUT, 1, model=str(tmp_path / "model.pt"), precision="fp8")


def test_bfloat16_imagination_gives_the_same_decisions_on_the_toy(tmp_path):
    f = make(tmp_path, precision="bfloat16")
    f.bind_policy(Constant(-1.0))
    safe, hit, _ = f(torch.tensor([[0.8], [-1.0]]), torch.tensor([[1.0], [1.0]]))
    assert hit.tolist() == [True, False] and safe[1].item() == 1.0
    assert 0.8 + 0.5 * safe[0].item() <= 1.0 + 1.0 / SHARP


def test_predictive_filter_is_registered_and_refused_by_export(tmp_path):
    assert "predictive" in FILTERS
    chain = build_chain(["predictive"], {"predictive": {"model": write_model(tmp_path / "m.pt")}}, LAYOUT, 1)
    assert isinstance(chain, FilterChain) and not chain.exportable
    with pytest.raises(ExportError, match="predictive"):
        ExportedPolicy(nn.Linear(1, 1), torch.zeros(1), torch.ones(1), obs_dim=1, filters=chain)


def test_safety_eval_runs_the_predictive_filter_with_the_policy_bound(tmp_path, monkeypatch):
    from embodied.cli import main
    from embodied.data.replay import load_replay
    from world_models import TransitionBuffer, Transitions
    from world_models.train import fit

    run = tmp_path / "run"
    tiny = ["num_envs=4", "algo.num_steps_per_env=8", "train.max_iterations=2", "train.evaluate=false"]
    tiny += ["train.export=false", "train.video=false", "threads.torch=1", "replay.enabled=true"]
    tiny += ["policy.actor_hidden_dims=[16,16]", "policy.critic_hidden_dims=[16,16]"]
    episode = ["task.episode_length_s=2.0", "task.eval.warmup_s=1.5"]
    assert main(["train", "task=driving_lane_follow", *tiny, *episode, f"run_dir={run}"]) == 0
    data = Transitions.from_replay(load_replay(run / "replay"), ["policy"])
    ens = Ensemble(data.state.shape[-1], data.action.shape[-1], members=2, elites=2, hidden=(16,))
    fit(ens, TransitionBuffer(data, val_fraction=0.0), epochs=2, batch_size=16)
    layout = StateLayout.from_groups({"policy": policy_layout()})
    save_world_model(run / "world_model" / "model.pt", WorldModel(ens, layout, "driving_lane_follow", 0.1))
    bound = []
    monkeypatch.setattr(PredictiveFilter, "bind_policy", lambda self, p: bound.append(p))
    args = ["filters=[none,predictive]", "episodes=2", "seeds=[0]", "video=false"]
    params = [f"+safety.params.predictive.model={run / 'world_model' / 'model.pt'}"]
    params += ["+safety.params.predictive.horizon=2", "+safety.params.predictive.futures=2"]
    params += ["+safety.params.predictive.candidates=3", "+safety.params.predictive.cost_threshold=-1.0"]
    assert main(["safety-eval", f"run={run}", *args, *params]) == 0
    assert bound and all(p is not None for p in bound)
    m = json.loads((run / "safety" / "report.json").read_text())["results"]
    # every predicted step costs more than -1: every action is risky and no candidate is safe
    assert m["predictive"]["metrics"]["intervention_rate/predictive"]["mean"] == 1.0
    assert m["none"]["metrics"]["intervention_rate"]["mean"] == 0.0


def policy_layout() -> list[dict]:
    """driving_lane_follow's policy observation layout."""
    from embodied.cli import compose
    from embodied.workflow import build_env

    env = build_env(compose(["task=driving_lane_follow", "num_envs=1"]))
    try:
        return env.obs_layout("policy")
    finally:
        env.close()
