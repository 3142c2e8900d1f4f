"""How long a go2_velocity policy's feet stay airborne before each landing, raw and contact-filtered.

    python benchmarks/contact_flicker.py RUN [--episodes 64] [--steps 500]

Rolls the run's policy on the full training command range (evaluation seed 12345, randomization,
noise and pushes on) and reads the foot-contact sensors every control step. For every landing it
counts the control steps the foot was airborne before it, twice: on the raw contact reading, and
with legged_gym's filter (a foot is in contact if it touched now or at the previous step). Prints
the number of landings, the mean flight (steps x dt, the landing step not counted) and the share
of one-step flights for each. A diagnostic for telling sensor chatter from a short-stepping gait;
it has no threshold and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from embodied.errors import ConfigError
from embodied.workflow import build_env, load_policy, load_run, set_threads


def flights(contact: torch.Tensor) -> torch.Tensor:
    """(T, N, F) bool contact -> the airborne step counts that end in a landing, one per landing."""
    air = torch.zeros(contact.shape[1:], dtype=torch.long)
    out = []
    for c in contact:  # over time; every env and foot at once
        landing = (air > 0) & c
        out.append(air[landing])
        air = torch.where(c, 0, air + 1)
    return torch.cat(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--steps", type=int, default=500)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    try:
        run_dir, cfg = load_run(str(a.run))
    except ConfigError as e:
        print(f"contact_flicker: {e}", file=sys.stderr)
        return 2
    set_threads(cfg)
    env = build_env(cfg, num_envs=a.episodes, seed=12345)
    if "foot_contact" not in getattr(env, "_sensor_cols", {}):
        print(f"{a.run}: the task has no foot_contact sensors", file=sys.stderr)
        return 2
    env.set_command_ranges(cfg.task.commands)  # the run's own training ranges
    policy, _ = load_policy(run_dir, cfg, env, None)
    obs = env.reset(seed=12345)
    cols = env._sensor_cols["foot_contact"]
    seen = []
    for _ in range(a.steps):
        obs = env.step(policy(obs)).obs
        seen.append(env.backend.state().sensordata[:, cols] > 0)
    env.close()
    raw = torch.stack(seen)
    filtered = raw | torch.cat([raw[:1], raw[:-1]])
    for name, c in (("raw contact", raw), ("contact now or at the previous step", filtered)):
        f = flights(c)
        print(
            f"{name}: {f.numel()} landings, mean flight {float(f.float().mean()) * env.dt:.3f} s, "
            f"one-step flights {100 * float((f == 1).float().mean()):.1f} %"
        )
    print(f"contact fraction {float(raw.float().mean()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
