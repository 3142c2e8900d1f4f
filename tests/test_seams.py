"""The registries are the only entry points: a toy algorithm, policy, filter and term registered from
here train through the Runner and the CLI; the transition stream reloads exactly; checkpoints keep
the policy apart from the algorithm and carry a format version."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from embodied.algorithms import ALGORITHMS, register_algorithm
from embodied.checkpoint import FORMAT, latest_checkpoint, load_checkpoint, save_checkpoint
from embodied.cli import main
from embodied.data.replay import ReplayWriter, load_replay
from embodied.errors import ConfigError
from embodied.registry import add_config_dir, make_env
from embodied.terms.namespaces import merge, register_term
from policies.distributions import gaussian_entropy, gaussian_log_prob, gaussian_sample
from policies.registry import POLICIES, register_policy
from policies.safety import FILTERS, FilterChain, SafetyFilter, register_filter

SHORT = [
    "num_envs=8",
    "train.evaluate=false",
    "train.export=false",
    "train.video=false",
    "task.episode_length_s=1.0",
]


# -- a toy policy: a linear Gaussian actor and a linear critic ------------------------------------
class LinearPolicy(nn.Module):
    """The smallest thing that meets the policy interface PPO and export use."""

    def __init__(self, obs_spec, num_actions: int, init_std: float = 0.5):
        super().__init__()
        self.actor_obs, self.critic_obs = "policy", "critic"
        self.obs_groups = ("policy", "critic")
        self.num_actor_obs = obs_spec["policy"].dim
        self.num_actions = num_actions
        self.actor = nn.Linear(self.num_actor_obs, num_actions)
        self.critic = nn.Linear(obs_spec["critic"].dim, 1)
        self.log_std = nn.Parameter(torch.full((num_actions,), float(init_std)).log())
        self.action_mean = self.action_std = None

    def forward(self, obs):
        return self.actor(obs["policy"])

    def actor_module(self) -> nn.Module:
        return self.actor

    def update_distribution(self, obs) -> None:
        self.action_mean = self.forward(obs)
        self.action_std = self.log_std.exp().expand_as(self.action_mean)

    def act(self, obs):
        self.update_distribution(obs)
        return gaussian_sample(self.action_mean, self.action_std)

    def act_inference(self, obs):
        return self.forward(obs)

    def get_actions_log_prob(self, actions):
        return gaussian_log_prob(actions, self.action_mean, self.action_std)

    @property
    def entropy(self):
        return gaussian_entropy(self.action_std)

    def evaluate(self, obs):
        return self.critic(obs["critic"]).squeeze(-1)

    def update_normalization(self, obs) -> None:
        pass


# -- a toy algorithm: reward-weighted regression of the mean action, no returns, no critic -----------
class RewardWeighted:
    """Moves the actor's mean towards the sampled actions of the better half of each batch."""

    def __init__(self, cfg: Mapping[str, Any], policy: nn.Module, env: Any):
        self.policy = policy
        self.num_steps_per_env = int(cfg.get("num_steps_per_env", 4))
        self.lr = float(cfg.get("lr", 0.05))
        self.opt = torch.optim.SGD(policy.parameters(), lr=self.lr)
        self.updates = 0
        self._batch: list[tuple[dict, torch.Tensor, torch.Tensor]] = []
        self._last: tuple[dict, torch.Tensor] | None = None

    def train_mode(self) -> None:
        self.policy.train()

    def eval_mode(self) -> None:
        self.policy.eval()

    @torch.no_grad()
    def act(self, obs):
        kept = {g: obs[g].clone() for g in self.policy.obs_groups}
        action = self.policy.act(kept)
        self._last = (kept, action)
        return action.clone()

    def process_env_step(self, out) -> None:
        obs, action = self._last
        self._batch.append((obs, action, out.reward.clone()))

    def update(self) -> dict[str, float]:
        obs = {g: torch.cat([b[0][g] for b in self._batch]) for g in self._batch[0][0]}
        actions = torch.cat([b[1] for b in self._batch])
        rewards = torch.cat([b[2] for b in self._batch])
        good = rewards >= rewards.median()
        loss = (self.policy.act_inference(obs)[good] - actions[good]).square().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self._batch.clear()
        self.updates += 1
        return {"toy/loss": loss.item(), "toy/updates": float(self.updates)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


class CapFilter(SafetyFilter):
    """Caps every action dimension at +-bound; reads the joint positions through the layout."""

    def __init__(self, layout, action_dim: int, bound: float = 0.1):
        super().__init__("test_cap")
        from policies.safety import term_slice

        self.joint = term_slice(layout, "joint_pos_rel")  # found by name: fails loudly if absent
        self.bound = bound

    def forward(self, obs, action):
        safe = action.clamp(-self.bound, self.bound)
        return safe, (safe != action).any(-1), {}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """The toy entries registered once, with their config files in a directory the CLI searches."""
    cfg = tmp_path_factory.mktemp("plugin_configs")
    (cfg / "algo").mkdir()
    (cfg / "policy").mkdir()
    (cfg / "algo" / "toy_rw.yaml").write_text("name: toy_rw\nnum_steps_per_env: 4\nlr: 0.05\n")
    (cfg / "policy" / "toy_linear.yaml").write_text("name: toy_linear\ninit_std: 0.5\n")
    register_algorithm("toy_rw", RewardWeighted)
    register_policy("toy_linear", LinearPolicy)
    register_filter("test_cap", CapFilter)
    add_config_dir(cfg)
    yield cfg


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_toy_algorithm_and_policy_train_through_the_cli(plugins, tmp_path):
    run = tmp_path / "toy"
    assert "toy_rw" in ALGORITHMS and "toy_linear" in POLICIES
    code = main(
        ["train", "algo=toy_rw", "policy=toy_linear", "train.max_iterations=3", f"run_dir={run}", *SHORT]
    )
    assert code == 0
    rows = _rows(run)
    assert [float(r["toy/updates"]) for r in rows] == [1.0, 2.0, 3.0]
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["algo"]["name"] == "toy_rw" and ckpt["algo"]["state"]["updates"] == 3
    assert ckpt["policy"]["name"] == "toy_linear" and set(ckpt["policy"]["state"]) == {
        "actor.weight",
        "actor.bias",
        "critic.weight",
        "critic.bias",
        "log_std",
    }
    # resumed, it goes on from its own state
    assert main(["train", f"resume={run}", "train.max_iterations=4"]) == 0
    assert load_checkpoint(latest_checkpoint(run))["algo"]["state"]["updates"] == 4


def test_ppo_trains_a_registered_policy_through_the_cli(plugins, tmp_path):
    run = tmp_path / "ppo_linear"
    assert main(["train", "policy=toy_linear", "train.max_iterations=2", f"run_dir={run}", *SHORT]) == 0
    rows = _rows(run)
    assert len(rows) == 2 and all(float(r["loss/value"]) > 0 for r in rows)
    w0 = torch.zeros(1)  # the actor's weights moved away from the checkpoint-free start
    state = load_checkpoint(latest_checkpoint(run))["policy"]["state"]
    assert state["actor.weight"].abs().sum() > w0


def test_unknown_registry_names_are_one_line_errors(plugins, capsys):
    assert main(["train", "safety.filters=[no_such_filter]", *SHORT]) == 2
    assert "unknown safety filter 'no_such_filter'" in capsys.readouterr().err
    assert main(["train", "algo.name=no_such_algo", *SHORT]) == 2
    assert "unknown algo 'no_such_algo'" in capsys.readouterr().err


def test_a_registered_filter_intervenes_in_training_and_evaluation(plugins, tmp_path):
    run = tmp_path / "capped"
    code = main(
        [
            "train",
            "safety.filters=[test_cap]",
            "+safety.params.test_cap.bound=0.1",
            "train.max_iterations=2",
            f"run_dir={run}",
            *SHORT,
        ]
    )
    assert code == 0
    rows = _rows(run)
    assert all(float(r["env/safety/test_cap/intervention_rate"]) > 0.5 for r in rows)  # std 1 >> 0.1
    assert main(["eval", f"run={run}", "num_envs=4"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert 0.0 < result["safety/test_cap/intervention_rate"] <= 1.0
    assert result["safety/intervention_rate"] == result["safety/test_cap/intervention_rate"]


def test_the_algorithm_stores_the_sampled_action_the_env_applies_the_filtered_one(plugins):
    from embodied.algorithms.ppo import PPO, PPOConfig
    from policies.actor_critic import ActorCritic

    env = make_env("go2_velocity", num_envs=8, overrides={"randomization": {}})
    env.set_filters(FilterChain([CapFilter(env.obs_layout("policy"), env.action_dim, bound=0.1)]))
    ppo = PPO(
        ActorCritic(env.obs_spec, env.action_dim), 8, PPOConfig(num_steps_per_env=2), "cpu", env.obs_spec
    )
    obs = env.reset()
    action = ppo.act(obs)
    out = env.step(action)
    ppo.process_env_step(out)
    assert action.abs().max() > 0.1
    assert torch.equal(ppo.storage.actions[0], action)
    assert out.info["applied_action"].abs().max() <= 0.1 + 1e-7
    assert torch.equal(out.info["safety/intervened"], (action.clamp(-1, 1).abs() > 0.1).any(-1))
    assert torch.equal(env.state.action, out.info["applied_action"])  # the robot's last action
    env.close()


def test_a_filter_reads_terms_by_name_and_refuses_a_missing_one():
    layout = [{"name": "joint_vel", "dim": 12, "scale": 0.05, "clip": None}]
    with pytest.raises(ValueError, match="no term 'joint_pos_rel'"):
        CapFilter(layout, 12)
    assert "test_cap" not in FILTERS or FILTERS["test_cap"] is CapFilter


# -- the transition stream ------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.steps = []

    def on_step(self, obs, action, out):
        self.steps.append(
            {
                "obs": {g: v.clone() for g, v in obs.items()},
                "next_obs": {g: v.clone() for g, v in out.info["final_obs"].items()},
                "action": action.clone(),
                "applied_action": out.info["applied_action"].clone(),
                "reward": out.reward.clone(),
                "cost": out.cost.clone(),
                "terminated": out.terminated.clone(),
                "truncated": out.truncated.clone(),
            }
        )


def test_replay_reloads_exactly_the_transitions_the_env_produced(tmp_path):
    from omegaconf import OmegaConf

    from embodied.cli import compose
    from embodied.logger import RunLogger
    from embodied.runner import Runner
    from embodied.workflow import build_algo, build_env, build_policy, checkpoint_meta

    cfg = compose(["num_envs=6", "task.episode_length_s=0.3", "algo.num_steps_per_env=5"])
    OmegaConf.set_struct(cfg, False)
    env = build_env(cfg)
    alg = build_algo(cfg, env, build_policy(cfg, env))
    recorder = Recorder()
    writer = ReplayWriter(
        tmp_path / "replay", env.obs_spec, env.num_envs, env.action_dim, env.dt, shard_steps=7
    )  # 7 does not divide the 15 steps: the last shard is flushed at close
    logger = RunLogger(tmp_path)
    runner = Runner(
        env, alg, logger, tmp_path, checkpoint_meta=checkpoint_meta(cfg, env), observers=[writer, recorder]
    )
    runner.learn(3)
    logger.close()
    env.close()
    data = load_replay(tmp_path / "replay")
    assert len(sorted((tmp_path / "replay").glob("shard_*.pt"))) == 3
    assert data["reward"].shape == (15, 6)
    for t, step in enumerate(recorder.steps):
        for g in env.obs_spec:
            assert torch.equal(data[f"obs/{g}"][t], step["obs"][g])
            assert torch.equal(data[f"next_obs/{g}"][t], step["next_obs"][g])
        for k in ("action", "applied_action", "reward", "cost", "terminated", "truncated"):
            assert torch.equal(data[k][t], step[k]), (k, t)
    assert bool(data["truncated"].any())  # 0.3 s episodes end inside the run: resets are in the data


def test_replay_of_other_data_is_refused(tmp_path):
    env = make_env("go2_velocity", num_envs=2)
    with pytest.raises(ConfigError, match="is not a replay directory"):
        load_replay(tmp_path)
    writer = ReplayWriter(tmp_path, env.obs_spec, 2, env.action_dim, env.dt, shard_steps=1)
    obs, action = env.reset(), torch.zeros(2, env.action_dim)
    writer.on_step(obs, action, env.step(action))
    with pytest.raises(ConfigError, match="holds replay of other data"):
        ReplayWriter(tmp_path, env.obs_spec, 3, env.action_dim, env.dt)
    (tmp_path / "shard_000000.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="is corrupt"):
        load_replay(tmp_path)
    env.close()


def test_a_rejected_replay_config_leaves_no_run_behind(tmp_path, capsys):
    run = tmp_path / "rejected"
    assert main(["train", "replay.enabled=true", "replay.groups=[nope]", f"run_dir={run}", *SHORT]) == 2
    assert "replay.groups ['nope'] are not observation groups" in capsys.readouterr().err
    assert not run.exists()


# -- checkpoints ----------------------------------------------------------------------------------
def test_a_checkpoint_of_another_format_is_a_one_line_error(tmp_path):
    path = tmp_path / "model_1.pt"
    torch.save({"format": "embodied-checkpoint-v1", "task": "go2_velocity", "algo": {}}, path)
    with pytest.raises(ConfigError, match=f"format embodied-checkpoint-v1; this version reads {FORMAT}"):
        load_checkpoint(path)
    save_checkpoint(path, {"task": "go2_velocity"})
    assert load_checkpoint(path)["format"] == FORMAT


# -- terms ----------------------------------------------------------------------------------------
class CountingReward:
    """A term with state: counts each env's steps since its reset (built once, with the env)."""

    built = 0

    def __init__(self, env, scale: float = 1.0):
        CountingReward.built += 1
        self.count = torch.zeros(env.num_envs, device=env.device)
        self.scale = scale

    def __call__(self, s):
        self.count += 1
        return self.count * self.scale

    def reset(self, mask):
        self.count = torch.where(mask, 0.0, self.count)


def test_a_term_class_is_built_once_and_reset_with_its_env():
    register_term("locomotion", "rewards", "test_counting", CountingReward)
    with pytest.raises(ConfigError, match="already exists in the locomotion namespace"):
        register_term("locomotion", "rewards", "test_counting", lambda s: s.action[:, 0])
    CountingReward.built = 0
    env = make_env(
        "go2_velocity", num_envs=2, overrides={"rewards": {"test_counting": {"weight": 1.0, "scale": 2.0}}}
    )
    assert CountingReward.built == 1
    term = next(t for t in env.rewards if t.name == "test_counting")
    zero = torch.zeros(2, env.action_dim)
    for _ in range(3):
        out = env.step(zero)
    assert torch.allclose(out.info["log/reward/test_counting"], torch.tensor(2.0 * 3 * env.dt))
    env.reset(torch.tensor([True, False]))
    assert term.fn.count.tolist() == [0.0, 3.0]
    env.close()


def test_two_terms_of_one_name_in_a_namespace_are_an_error():
    with pytest.raises(ConfigError, match="defined twice"):
        merge("rewards", {"a": lambda s: s}, {"a": lambda s: s})
    with pytest.raises(ConfigError, match="unknown reward term 'route_progress'"):
        make_env("go2_velocity", num_envs=2, overrides={"rewards": {"route_progress": {"weight": 1.0}}})
