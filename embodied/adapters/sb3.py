"""A batched env as a stable-baselines3 ``VecEnv``: one numpy <-> torch conversion per step.

The N sub-envs are rows of one ``BatchedEnv``, which resets finished rows inside ``step``; the
observation before that reset goes to ``infos[i]["terminal_observation"]`` as SB3 expects.
Episode returns are not tracked here: wrap in ``VecMonitor`` for SB3's ``ep_rew_mean`` logs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from embodied.env import BatchedEnv
from embodied.registry import make_env
from embodied.task_env import OBS_CLIP

RENDER_MODES = ("rgb_array",)


class SB3VecEnv(VecEnv):
    """SB3 view of a ``BatchedEnv``: obs (N, D) float32 of the "policy" group, actions (N, A).

    Every sub-env shares the one batched object, so ``get_attr`` returns the same value for each,
    and ``set_attr`` / ``env_method`` act on the whole batch (they reject a subset of indices).
    ``infos[i]["cost"]`` holds each env's safety cost.
    """

    def __init__(
        self, env: BatchedEnv, *, render_mode: str | None = None, render_size: tuple[int, int] = (320, 240)
    ) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
        self.env = env
        self._render_mode = render_mode  # read back through get_attr("render_mode") by VecEnv.__init__
        self.render_size = render_size
        obs_space = spaces.Box(-OBS_CLIP, OBS_CLIP, (env.obs_spec["policy"].dim,), np.float32)
        action_space = spaces.Box(-1.0, 1.0, (env.action_dim,), np.float32)
        super().__init__(env.num_envs, obs_space, action_space)
        self.metadata["render_fps"] = 1.0 / env.dt  # VecVideoRecorder reads it
        self._actions: torch.Tensor | None = None

    # -- stepping ----------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Reset every env. The batch has one RNG: the first seed set by ``seed()`` seeds it."""
        if any(self._options):
            raise ValueError(f"{type(self).__name__} takes no reset options, got {self._options[0]}")
        seed = next((s for s in self._seeds if s is not None), None)
        obs = self.env.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return _to_numpy(obs["policy"], np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        """actions: (N, A) in [-1, 1]; the env clamps them."""
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.env.device)
        self._actions = a.reshape(self.num_envs, self.env.action_dim)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without a pending step_async()")
        out = self.env.step(self._actions)
        self._actions = None
        done = out.terminated | out.truncated
        infos: list[dict[str, Any]] = [{"cost": c} for c in out.cost.tolist()]
        finished = done.nonzero().flatten()
        if finished.numel() > 0:
            final = _to_numpy(out.info["final_obs"]["policy"][finished], np.float32)
            timeout = (out.truncated & ~out.terminated)[finished].tolist()
            for j, i in enumerate(finished.tolist()):
                infos[i]["terminal_observation"] = final[j]
                infos[i]["TimeLimit.truncated"] = timeout[j]
        return (
            _to_numpy(out.obs["policy"], np.float32),
            _to_numpy(out.reward, np.float32),
            _to_numpy(done, bool),
            infos,
        )

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One (H, W, 3) uint8 frame per env when render_mode is "rgb_array"."""
        if self.render_mode != "rgb_array":
            warnings.warn(f"render_mode is {self.render_mode!r}; get_images needs 'rgb_array'", stacklevel=2)
            return [None] * self.num_envs
        width, height = self.render_size
        frames = self.env.render(list(range(self.num_envs)), width=width, height=height)  # (N, 3, H, W)
        return list(frames.permute(0, 2, 3, 1).cpu().numpy())

    # -- attribute access (one shared object behind every index) -----------------------------
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = self._render_mode if attr_name == "render_mode" else getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._check_whole_batch(indices, "set_attr")
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call the batched env's method once; its result is returned for each index."""
        self._check_whole_batch(indices, "env_method")
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in range(self.num_envs)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """A batched env is never inside a gymnasium wrapper."""
        return [False for _ in self._get_indices(indices)]

    def _check_whole_batch(self, indices: VecEnvIndices, what: str) -> None:
        if sorted(self._get_indices(indices)) != list(range(self.num_envs)):
            raise ValueError(f"{what} acts on the whole batch (indices=None); the envs share one object")


def _to_numpy(t: torch.Tensor, dtype: type) -> np.ndarray:
    """A fresh numpy copy (SB3 keeps the arrays it is given; the env may reuse its tensors)."""
    return np.array(t.detach().cpu().numpy(), dtype=dtype)


def make_sb3_vec_env(
    task: str, num_envs: int, seed: int = 0, nthread: int = 1, **make_env_kwargs: Any
) -> SB3VecEnv:
    """Build a registered task's batched env and wrap it for stable-baselines3."""
    env = make_env(task, num_envs=num_envs, nthread=nthread, seed=seed, **make_env_kwargs)
    return SB3VecEnv(env)
