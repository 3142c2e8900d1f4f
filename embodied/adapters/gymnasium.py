"""One env of a batched task as a ``gymnasium.Env``: obs is the "policy" group, cost is in info.

The batched env resets a finished env inside ``step``; this adapter returns the observation from
before that reset (``info["final_obs"]``), so a gymnasium user sees the usual last observation and
then calls ``reset()`` as always.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from embodied.env import Obs
from embodied.registry import make_env, task_names
from embodied.task_env import OBS_CLIP

GYM_NAMESPACE = "embodied"
ENTRY_POINT = "embodied.adapters.gymnasium:GymnasiumEnv"


class GymnasiumEnv(gym.Env[np.ndarray, np.ndarray]):
    """A registered task with ``num_envs=1`` behind gymnasium's API.

    observation: (D,) float32 in [-100, 100] (the env clips observations there);
    action: (A,) float32 in [-1, 1]; info["cost"] is the step's safety cost.
    """

    # gymnasium.make reads the class-level metadata; __init__ adds this task's render_fps.
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}  # noqa: RUF012

    def __init__(
        self,
        task: str,
        *,
        seed: int = 0,
        render_mode: str | None = None,
        render_width: int = 320,
        render_height: int = 240,
        **make_env_kwargs: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.task = task
        self.render_mode = render_mode
        self.render_size = (int(render_width), int(render_height))
        self.env = make_env(task, num_envs=1, nthread=1, seed=seed, **make_env_kwargs)
        self.metadata = {**type(self).metadata, "render_fps": 1.0 / self.env.dt}
        self.observation_space = spaces.Box(
            -OBS_CLIP, OBS_CLIP, (self.env.obs_spec["policy"].dim,), np.float32
        )
        self.action_space = spaces.Box(-1.0, 1.0, (self.env.action_dim,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode; the same seed gives the same initial state and command."""
        super().reset(seed=seed)
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)}")
        return _policy_obs(self.env.reset(seed=seed)), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """action: (A,) in [-1, 1] (clamped by the env). On the last step obs is the final one."""
        a = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.env.device).reshape(1, -1)
        out = self.env.step(a)
        terminated, truncated = bool(out.terminated[0]), bool(out.truncated[0])
        obs = out.info["final_obs"] if terminated or truncated else out.obs
        info: dict[str, Any] = {"cost": float(out.cost[0])}
        info.update({k: float(v[0]) for k, v in out.info.items() if k.startswith("metric/")})
        return _policy_obs(obs), float(out.reward[0]), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """(H, W, 3) uint8 frame when render_mode is "rgb_array", else None."""
        if self.render_mode is None:
            return None
        width, height = self.render_size
        frame = self.env.render([0], width=width, height=height)  # (1, 3, H, W) uint8
        return frame[0].permute(1, 2, 0).cpu().numpy().copy()

    def close(self) -> None:
        self.env.close()


def _policy_obs(obs: Obs) -> np.ndarray:
    """(1, D) "policy" tensor -> a fresh (D,) float32 array (users keep what we return)."""
    return np.array(obs["policy"][0].detach().cpu().numpy(), dtype=np.float32)


def gymnasium_id(task: str) -> str:
    """The gymnasium id of a registered task, e.g. "embodied/go2_velocity-v0"."""
    return f"{GYM_NAMESPACE}/{task}-v0"


def register_gymnasium_envs() -> list[str]:
    """Register every task as ``embodied/<task>-v0`` (idempotent); returns the ids.

    The batched env already truncates at its time limit, so no ``TimeLimit`` wrapper is added.
    """
    ids = []
    for task in task_names():
        env_id = gymnasium_id(task)
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"task": task})
        ids.append(env_id)
    return ids
