"""Data-parallel training over torch.distributed (gloo, 2 processes on this CPU).

Equivalence: two ranks of N/2 envs against one process of N. Every env draws its initial states and
its action noise from its *global* index (tables made alike in every process), so the two ranks
together hold exactly the envs of the single process. With ``num_mini_batches=1`` each rank's
minibatch is its whole rollout, of equal size on both ranks, so the mean of the two ranks' mean-loss
gradients (the all-reduce) is the gradient of the single process's mean loss; the advantage
standardization and the normalizer moments are pooled over ranks. The minibatch order of the
permutation does not change a full-batch mean beyond rounding.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import policies.actor_critic as actor_critic_module
from embodied.algorithms.lagrange import LagrangeConfig
from embodied.algorithms.ppo import PPO, PPOConfig
from embodied.algorithms.ppo_lagrangian import PPOLagrangian
from embodied.env import StepOut
from tests.test_cli import ROOT, assert_one_line_error, embodied
from tests.test_ppo import SPEC

N, T, ITERS, EPISODE = 8, 8, 2, 5
CFG = {"num_steps_per_env": T, "num_learning_epochs": 2, "num_mini_batches": 1, "learning_rate": 1e-3}
TINY = [
    "algo.num_steps_per_env=8",
    "task.episode_length_s=0.1",
    "task.eval.num_envs=2",
    "policy.actor_hidden_dims=[32,32]",
    "policy.critic_hidden_dims=[32,32]",
    "threads.torch=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GlobalPointMass:
    """tests/test_ppo.py's PointMass1D, for envs ``offset .. offset + num_envs`` of a global table:
    initial positions (total, episodes) and action noise (steps, total) depend on the global index only.
    The cost is 1 outside |x| < 1, so PPO-Lagrangian has something to constrain."""

    obs_spec = SPEC
    action_dim = 1
    dt = 0.1

    def __init__(self, num_envs: int, offset: int, total: int = N) -> None:
        g = torch.Generator().manual_seed(123)
        self.x0 = (torch.rand(total, 64, generator=g) * 3.0 - 1.5)[offset : offset + num_envs]
        self.noise = torch.randn(ITERS * T + 1, total, 1, generator=g)[:, offset : offset + num_envs]
        self.num_envs, self.device = num_envs, torch.device("cpu")
        self.episode = torch.zeros(num_envs, dtype=torch.long)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.x = self.x0[:, 0].clone()
        self.steps = 0

    def _obs(self) -> dict[str, torch.Tensor]:
        time_left = 1.0 - self.t.float() / EPISODE
        return {"policy": self.x[:, None].clone(), "critic": torch.stack([self.x, time_left], -1)}

    def sample(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mu + sigma * self.noise[self.steps]

    def step(self, action: torch.Tensor) -> StepOut:
        self.x = self.x + self.dt * action.clamp(-1.0, 1.0)[:, 0]
        self.t, self.steps = self.t + 1, self.steps + 1
        reward, cost = 1.0 - self.x.square(), (self.x.abs() > 1.0).float()
        terminated, truncated = self.x.abs() > 2.0, self.t >= EPISODE
        final_obs = self._obs()
        done = terminated | truncated
        self.episode = self.episode + done.long()
        x0 = self.x0.gather(1, self.episode[:, None] % self.x0.shape[1])[:, 0]
        self.x, self.t = torch.where(done, x0, self.x), torch.where(done, 0, self.t)
        return StepOut(self._obs(), reward, cost, terminated, truncated, {"final_obs": final_obs})


def _train(num_envs: int, offset: int, ctx=None, lagrangian: bool = False) -> list[dict]:
    """ITERS PPO (or PPO-Lag) iterations; after each: flat parameters, normalizer moments, lr."""
    torch.manual_seed(0)
    env = GlobalPointMass(num_envs, offset)
    original = actor_critic_module.gaussian_sample
    actor_critic_module.gaussian_sample = env.sample  # the noise of the env's global rows
    try:
        return _iterations(env, num_envs, ctx, lagrangian)
    finally:
        actor_critic_module.gaussian_sample = original


def _iterations(env: GlobalPointMass, num_envs: int, ctx, lagrangian: bool) -> list[dict]:
    ac = actor_critic_module.ActorCritic(SPEC, 1, actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16))
    cfg = PPOConfig(**CFG)
    if lagrangian:
        lag = LagrangeConfig(cost_limit=0.5, lambda_init=0.1)
        alg = PPOLagrangian(ac, num_envs, cfg, lag, obs_spec=SPEC, cost_critic_hidden_dims=(16,))
    else:
        alg = PPO(ac, num_envs, cfg, obs_spec=SPEC)
    if ctx is not None:
        ctx.attach(alg)
    obs, out = env._obs(), []
    for _ in range(ITERS):
        for _ in range(T):
            step = env.step(alg.act(obs))
            alg.process_env_step(step)
            obs = step.obs
        alg.compute_returns(obs)
        alg.update()
        norm = ac.actor_normalizer
        out.append(
            {
                "params": torch.cat([p.detach().reshape(-1) for p in alg.policy.parameters()]),
                "moments": (int(norm.count), norm.mean.clone(), norm.var.clone()),
                "lr": alg.learning_rate,
                "multiplier": alg.multiplier.value if lagrangian else None,
            }
        )
    return out


def _rank(rank: int, port: int, out_dir: str) -> None:
    from embodied.distributed import init_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    ctx = init_from_env("cpu", timeout_s=60)
    results = {
        alg: _train(N // 2, rank * N // 2, ctx, alg == "ppo_lagrangian") for alg in ("ppo", "ppo_lagrangian")
    }
    ctx.close()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_rank, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("alg", ["ppo", "ppo_lagrangian"])
def test_parameters_are_bitwise_identical_on_both_ranks_after_each_update(two_ranks, alg):
    r0, r1 = two_ranks[0][alg], two_ranks[1][alg]
    for it in range(ITERS):
        assert torch.equal(r0[it]["params"], r1[it]["params"]), f"iteration {it + 1}"
        assert r0[it]["lr"] == r1[it]["lr"], "the adaptive-KL learning rate agrees"
        assert r0[it]["multiplier"] == r1[it]["multiplier"], "the Lagrange multiplier agrees"
    assert not torch.equal(r0[0]["params"], r0[1]["params"]), "the updates moved the parameters"


@pytest.fixture(scope="module")
def single() -> list[dict]:
    return _train(N, 0)


def test_one_update_matches_a_single_process_with_all_envs(two_ranks, single):
    torch.testing.assert_close(two_ranks[0]["ppo"][0]["params"], single[0]["params"], atol=1e-5, rtol=0)
    assert two_ranks[0]["ppo"][0]["lr"] == pytest.approx(single[0]["lr"])


def test_normalizer_moments_equal_the_single_process_ones(two_ranks, single):
    for it in range(ITERS):
        (n_d, mean_d, var_d), (n_s, mean_s, var_s) = two_ranks[0]["ppo"][it]["moments"], single[it]["moments"]
        assert n_d == n_s == (it + 1) * T * N
        torch.testing.assert_close(mean_d, mean_s, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(var_d, var_s, atol=1e-5, rtol=1e-5)


def _rank_env(rank: int, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
    }


def test_killing_one_rank_ends_the_other_with_one_line_within_the_timeout(tmp_path):
    run, port, timeout_s = tmp_path / "run", _free_port(), 30
    args = [*TINY, "num_envs=4", "train.save_interval=1", "train.max_iterations=100000"]
    args += ["train.evaluate=false", f"run_dir={run}", f"dist.timeout_s={timeout_s}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "embodied", "train", *args],
            cwd=ROOT,
            env=_rank_env(r, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoints" / "model_2.pt").exists():
            assert procs[0].poll() is None, procs[0].stderr.read()
            time.sleep(0.1)
        assert (run / "checkpoints" / "model_2.pt").exists(), "training got going on both ranks"
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        _, err = procs[0].communicate(timeout=timeout_s + 15)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.time() - killed < timeout_s + 5
    assert procs[0].returncode == 1, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "dist: a peer rank failed" in lines[0], err[-2000:]


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("dist_e2e") / "run"
    p = embodied(
        "train",
        *TINY,
        "num_envs=8",
        "dist.nproc=2",
        "train.max_iterations=2",
        "train.save_interval=1",
        "train.video=false",
        "train.export=false",
        f"run_dir={run}",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return run


def test_embodied_train_with_two_processes_writes_one_run_from_rank_0(dist_run):
    from embodied.checkpoint import load_checkpoint

    assert sorted(p.name for p in (dist_run / "checkpoints").glob("*.pt")) == ["model_1.pt", "model_2.pt"]
    assert len(list(dist_run.glob("events.out.tfevents.*"))) == 1, "one logger: rank 0's"
    rows = list(csv.DictReader((dist_run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [8 * 8 * 2, 2 * 8 * 8 * 2], "steps count both ranks' envs"
    ckpt = load_checkpoint(dist_run / "checkpoints" / "model_2.pt", task="go2_velocity")
    assert ckpt["world_size"] == 2
    assert (dist_run / "eval.json").is_file()


def test_resume_with_another_world_size_is_refused(dist_run):
    p = embodied("train", f"resume={dist_run}", "dist.nproc=1", "train.max_iterations=3")
    assert_one_line_error(p, "trained with 2 process(es)", "dist.allow_resize=true")


@pytest.mark.parametrize(
    ("override", "needle"),
    [("dist.nproc=0", "dist.nproc must be an integer >= 1"), ("dist.envs=half", "dist.envs must be one of")],
)
def test_bad_dist_config_is_one_line(override, needle):
    assert_one_line_error(embodied("train", override), needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="NCCL is available on this machine")
def test_nccl_without_cuda_is_one_line():
    assert_one_line_error(embodied("train", "dist.nproc=2", "device=cuda"), "asks for NCCL")
