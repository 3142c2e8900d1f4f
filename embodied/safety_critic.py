"""Train the learned safety critic Q_c(s, a) that the ``critic`` filter (policies/safety/critic.py) reads.

Q_c(s, a) is the discounted cost-to-go of taking action a in state s and following the run's policy
afterwards: ``E[c_0 + gamma c_1 + gamma^2 c_2 + ...]``. It is fitted by fitted Q evaluation with
TD(0) targets from a target network,

    y = c + gamma * (1 - terminated) * Q_target(s', clamp(pi(s'), -1, 1)),

where ``s'`` is the observation after the step before any reset (``info["final_obs"]``), so a time
limit bootstraps and only a true terminal cuts the sum, and ``pi`` is the policy's deterministic
action (what the exported graph and the robot run). The data come from the policy plus Gaussian
exploration noise, with a fraction of fully random actions so that unsafe actions are seen, on the
batched env with no safety filter installed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from embodied.checkpoint import atomic_torch_save
from embodied.env import BatchedEnv, Obs
from embodied.errors import ConfigError
from policies.safety import FilterChain
from policies.safety.critic import SafetyCritic, critic_payload

Policy = Callable[[Obs], torch.Tensor]  # obs groups -> deterministic action (N, A)
EVAL_CHUNK = 65536  # rows per target-network call: bounds the memory of a large buffer


def train_safety_critic(
    env: BatchedEnv,
    policy: Policy,
    out_path: str | Path,
    *,
    iterations: int = 10,
    steps_per_iteration: int = 50,
    gamma: float = 0.9,
    noise_std: float = 0.3,
    random_fraction: float = 0.2,
    seed: int = 0,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 1024,
    hidden_dims: Sequence[int] = (64, 64),
    activation: str = "elu",
) -> Path:
    """Collect iterations x steps_per_iteration x num_envs transitions, fit Q_c; returns ``out_path``.

    Each iteration collects a segment of steps, then runs ``epochs`` passes of minibatch Adam over
    everything collected so far, the target network copied from Q_c at the start of every pass.
    The observation normalizer is set once, from the first segment. The env is reset with ``seed``
    and its safety filters are removed while collecting and restored afterwards. The file (written
    atomically) holds the weights, the normalizer, ``env.obs_layout("policy")``, the action size,
    gamma and the training figures ``final_loss`` (mean TD loss of the last pass), ``cost_fraction``
    (the fraction of collected steps with a cost), ``steps``, ``mean_q``.
    """
    for name, value in (("iterations", iterations), ("steps_per_iteration", steps_per_iteration)):
        _check_int(name, value)
    _check_int("epochs", epochs)
    _check_int("batch_size", batch_size)
    if not 0.0 <= gamma < 1.0:
        raise ConfigError(f"safety critic gamma must be in [0, 1), got {gamma}")
    if not (math.isfinite(noise_std) and noise_std >= 0.0):
        raise ConfigError(f"safety critic noise_std must be >= 0, got {noise_std}")
    if not 0.0 <= random_fraction <= 1.0:
        raise ConfigError(f"safety critic random_fraction must be in [0, 1], got {random_fraction}")
    if not (math.isfinite(lr) and lr > 0.0):
        raise ConfigError(f"safety critic lr must be > 0, got {lr}")

    dev, n, a_dim = env.device, env.num_envs, env.action_dim
    obs_dim = int(env.obs_spec["policy"].shape[0])
    layout = env.obs_layout("policy")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = SafetyCritic(obs_dim, a_dim, hidden_dims, activation).to(dev)
    target = copy.deepcopy(critic).requires_grad_(False)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    gen = torch.Generator(device=dev).manual_seed(seed)

    total = iterations * steps_per_iteration
    buf = {
        "obs": torch.zeros(total, n, obs_dim, device=dev),
        "action": torch.zeros(total, n, a_dim, device=dev),
        "cost": torch.zeros(total, n, device=dev),
        "terminated": torch.zeros(total, n, dtype=torch.bool, device=dev),
        "next_obs": torch.zeros(total, n, obs_dim, device=dev),
        "next_action": torch.zeros(total, n, a_dim, device=dev),
    }
    previous = getattr(env, "filters", None)
    penalty = float(getattr(env, "intervention_penalty", 0.0))
    if previous is not None:
        env.set_filters(FilterChain())
    loss = float("nan")
    try:
        obs = env.reset(seed=seed)
        for it in range(iterations):
            rows = slice(it * steps_per_iteration, (it + 1) * steps_per_iteration)
            obs = _collect(env, policy, obs, buf, rows, noise_std, random_fraction, gen)
            if it == 0:
                first = buf["obs"][rows].reshape(-1, obs_dim)
                critic.obs_mean.copy_(first.mean(0))
                critic.obs_std.copy_(first.std(0, correction=0) + 1e-2)
            seen = {k: v[: rows.stop].flatten(0, 1) for k, v in buf.items()}
            loss = _fit(critic, target, opt, seen, gamma, epochs, batch_size, gen)
    finally:
        if previous is not None:
            env.set_filters(previous, penalty)

    with torch.no_grad():
        flat = {k: v.flatten(0, 1) for k, v in buf.items()}
        q = _chunked(critic, flat["obs"], flat["action"])
    figures = {
        "final_loss": loss,
        "cost_fraction": float((flat["cost"] > 0).float().mean()),
        "steps": int(flat["cost"].numel()),
        "mean_q": float(q.mean()),
    }
    config = {
        "iterations": iterations,
        "steps_per_iteration": steps_per_iteration,
        "num_envs": n,
        "noise_std": noise_std,
        "random_fraction": random_fraction,
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
    }
    return atomic_torch_save(out_path, critic_payload(critic, layout, gamma, figures, config))


@torch.no_grad()
def _collect(
    env: BatchedEnv,
    policy: Policy,
    obs: Obs,
    buf: dict[str, torch.Tensor],
    rows: slice,
    noise_std: float,
    random_fraction: float,
    gen: torch.Generator,
) -> Obs:
    """Step the env over ``rows`` of the buffer with the exploring policy; returns the last obs."""
    n, a_dim, dev = env.num_envs, env.action_dim, env.device
    for t in range(rows.start, rows.stop):
        mean = policy(obs).clamp(-1.0, 1.0)
        noisy = mean + noise_std * torch.randn(n, a_dim, generator=gen, device=dev)
        uniform = 2.0 * torch.rand(n, a_dim, generator=gen, device=dev) - 1.0
        pick = torch.rand(n, generator=gen, device=dev) < random_fraction
        out = env.step(torch.where(pick[:, None], uniform, noisy).clamp(-1.0, 1.0))
        final = out.info["final_obs"]
        buf["obs"][t] = obs["policy"]
        buf["action"][t] = out.info["applied_action"]
        buf["cost"][t] = out.cost
        buf["terminated"][t] = out.terminated
        buf["next_obs"][t] = final["policy"]
        buf["next_action"][t] = policy(final).clamp(-1.0, 1.0)
        obs = out.obs
    return obs


def _fit(
    critic: SafetyCritic,
    target: SafetyCritic,
    opt: torch.optim.Optimizer,
    data: dict[str, torch.Tensor],
    gamma: float,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
) -> float:
    """``epochs`` passes of minibatch TD(0) regression; returns the mean loss of the last pass."""
    m = data["cost"].shape[0]
    not_done = (~data["terminated"]).float()
    mean_loss = float("nan")
    for _ in range(epochs):
        target.load_state_dict(critic.state_dict())
        with torch.no_grad():
            y = data["cost"] + gamma * not_done * _chunked(target, data["next_obs"], data["next_action"])
        total = torch.zeros((), device=y.device)
        perm = torch.randperm(m, generator=gen, device=y.device)
        batches = perm.split(batch_size)
        for idx in batches:
            loss = torch.nn.functional.mse_loss(critic(data["obs"][idx], data["action"][idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        mean_loss = float(total / len(batches))
    return mean_loss


def _chunked(critic: SafetyCritic, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q_c over many rows (M, ...) -> (M,), ``EVAL_CHUNK`` rows at a time."""
    return torch.cat(
        [critic(o, a) for o, a in zip(obs.split(EVAL_CHUNK), action.split(EVAL_CHUNK), strict=True)]
    )


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"safety critic {name} must be an integer >= 1, got {value!r}")
