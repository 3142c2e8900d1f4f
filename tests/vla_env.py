"""A small instructed camera env for the VLA tests: arm_reach with frames and an instruction group.

Until a multi-instruction task exists in the tests' budget, ``InstructedEnv`` adds
``obs["instruction"]`` (N, 1) int64 (one of ``instructions``, fixed per env) to any env, so the VLA
policy, PPO and the export run on a real rendered task.
"""

from __future__ import annotations

from typing import Any

import torch

from embodied.cli import compose
from embodied.env import StepOut
from embodied.workflow import build_env
from policies.spec import TensorSpec

INSTRUCTIONS = ["reach the green ball", "touch the green sphere with the hand"]
VLA_TINY = [
    "policy=vla",
    "policy.proprio_obs=policy",
    "policy.channels=16",
    "policy.visual_dim=64",
    "policy.lang_dim=16",
    "policy.hidden_dims=[64]",
    "policy.critic_hidden_dims=[32]",
    "policy.chunk=3",
    "policy.bins=16",
]


class InstructedEnv:
    """``env`` with an instruction group: env i always gets instruction ``i % len(instructions)``."""

    def __init__(self, env: Any, instructions: list[str]):
        self.env, self.instructions = env, list(instructions)
        self.obs_spec = {**env.obs_spec, "instruction": TensorSpec((1,), torch.int64, "instruction")}
        n = len(self.instructions)
        self.index = (torch.arange(env.num_envs, device=env.device) % n).view(-1, 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def _add(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**obs, "instruction": self.index.clone()}

    def reset(self, mask: torch.Tensor | None = None, *, seed: int | None = None) -> dict[str, torch.Tensor]:
        return self._add(self.env.reset(mask, seed=seed))

    def step(self, action: torch.Tensor) -> StepOut:
        out = self.env.step(action)
        out.obs = self._add(out.obs)
        if "final_obs" in out.info:
            out.info["final_obs"] = self._add(out.info["final_obs"])
        return out


def vla_cfg(*overrides: str, num_envs: int = 4, size: int = 48):
    """A composed config: arm_reach with size x size frames and the tiny VLA policy."""
    return compose(
        [
            "task=arm_reach",
            f"num_envs={num_envs}",
            "task.rgb.enabled=true",
            f"task.rgb.width={size}",
            f"task.rgb.height={size}",
            "threads.torch=1",
            *VLA_TINY,
            *overrides,
        ]
    )


def instructed_env(cfg: Any, num_envs: int | None = None) -> InstructedEnv:
    return InstructedEnv(build_env(cfg, num_envs=num_envs), INSTRUCTIONS)
