"""A reward term scored by a vision-language model on the env's camera frames, from prompts in config.

    reward=vlm reward.model=<dir> reward.prompts.goal=["the cube is on the green target"]
    reward.mode=goal_baseline reward.every=4

Modes (x: the frame's embedding, all embeddings L2-normalized; a prompt list is averaged and
re-normalized):
- ``goal``: cos(x, g).
- ``goal_baseline`` (VLM-RMs): with d = g - b and P = alpha d d^T / |d|^2 + (1 - alpha) I, the
  reward is 1 - 0.5 |(x - g) P|^2; alpha = 1 keeps only the goal-baseline direction.
- ``contrastive`` (VLM-RL): cos(x, positive) - cos(x, negative), optionally multiplied by a state
  term of the task (``state_term``: a reward-term name of the task's family, e.g. a speed term).

Text embeddings are computed once. Frames are scored every ``every`` control steps, batched over
envs; the score is held in between (an env that resets keeps its held score until the next scoring
step, at most ``every - 1`` steps). The term is logged as ``log/reward/vlm``; the raw similarities
as ``log/vlm/goal``, ``log/vlm/baseline``, ``log/vlm/negative`` and ``log/vlm/score``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from embodied.errors import ConfigError
from embodied.rewards.backends import VLMBackend, build_backend

MODES = ("goal", "goal_baseline", "contrastive")
GATE_KEYS = ("skip_check", "min_auc", "check_run", "check_envs", "check_steps")
NEEDS = {"goal": ("goal",), "goal_baseline": ("goal", "baseline"), "contrastive": ("goal", "negative")}


def _prompt_lists(prompts: Mapping[str, Any] | None, mode: str) -> dict[str, list[str]]:
    prompts = dict(prompts or {})
    unknown = sorted(set(prompts) - {"goal", "baseline", "negative"})
    if unknown:
        raise ConfigError(f"unknown reward.prompts key(s) {unknown}; known: goal, baseline, negative")
    out: dict[str, list[str]] = {}
    for key in NEEDS[mode]:
        value = prompts.get(key)
        items = [value] if isinstance(value, str) else list(value or [])
        if not items or not all(isinstance(p, str) and p.strip() for p in items):
            raise ConfigError(f"reward.prompts.{key} must be a non-empty list of prompts for mode={mode}")
        out[key] = items
    return out


def goal_baseline_reward(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """VLM-RMs: 1 - 0.5 |(x - g) P|^2 with P = alpha d d^T / |d|^2 + (1 - alpha) I, d = g - b."""
    d = g - b
    d = d / d.norm().clamp_min(1e-8)
    r = x - g
    along = (r @ d)[:, None] * d  # (N, D): alpha * (r . d) d + (1 - alpha) r  is r P
    proj = alpha * along + (1.0 - alpha) * r
    return 1.0 - 0.5 * proj.square().sum(-1)


class VLMReward:
    """A stateful reward term (``cls(env, **params)``, called on the env's state each step)."""

    def __init__(
        self,
        env: Any,
        *,
        backend: str = "auto",
        model: str | None = None,
        mode: str = "goal",
        prompts: Mapping[str, Any] | None = None,
        alpha: float = 0.5,
        every: int = 1,
        state_term: str | None = None,
        encoder: VLMBackend | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown reward.mode {mode!r}; known: {', '.join(MODES)}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"reward.every must be an integer >= 1, got {every!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"reward.alpha must be in [0, 1], got {alpha}")
        if getattr(env, "rgb_shape", None) is None:
            raise ConfigError("reward=vlm scores camera frames: enable them with task.rgb.enabled=true")
        if state_term is not None and mode != "contrastive":
            raise ConfigError("reward.state_term scales the contrastive mode only")
        self.env, self.mode, self.alpha, self.every = env, mode, float(alpha), int(every)
        lists = _prompt_lists(prompts, mode)
        self.encoder = encoder if encoder is not None else build_backend(backend, model, env.device)
        self.text = {k: F.normalize(self.encoder.encode_text(v).mean(0), dim=-1) for k, v in lists.items()}
        self.state_fn = None
        if state_term is not None:
            from embodied.terms.namespaces import family_terms

            table = family_terms(str(env.cfg.get("family")))["rewards"]
            if state_term not in table:
                raise ConfigError(
                    f"unknown reward.state_term {state_term!r}; known: {', '.join(sorted(table))}"
                )
            self.state_fn = table[state_term]
        self.calls = 0
        n = env.num_envs
        self.score = torch.zeros(n, device=env.device)
        self.sims = {k: torch.zeros(n, device=env.device) for k in self.text}

    def score_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, 3, H, W) uint8 -> the mode's score (N,) and the raw cosine similarities per prompt set."""
        x = self.encoder.encode_images(frames).to(self.score.device)
        sims = {k: x @ t.to(x.device) for k, t in self.text.items()}
        if self.mode == "goal":
            score = sims["goal"]
        elif self.mode == "goal_baseline":
            score = goal_baseline_reward(
                x, self.text["goal"].to(x.device), self.text["baseline"].to(x.device), self.alpha
            )
        else:
            score = sims["goal"] - sims["negative"]
        return score, sims

    def __call__(self, state: Any) -> torch.Tensor:
        if self.calls % self.every == 0:
            self.score, self.sims = self.score_frames(self.env.frames())
        self.calls += 1
        if self.state_fn is not None:
            return self.score * self.state_fn(state)
        return self.score

    def extra_logs(self) -> dict[str, torch.Tensor]:
        """Batch means of the raw similarities, logged as ``log/vlm/<name>``."""
        return {"vlm/score": self.score.mean(), **{f"vlm/{k}": v.mean() for k, v in self.sims.items()}}


def add_vlm_reward(env: Any, reward_cfg: Mapping[str, Any]) -> None:
    """Append the VLM term (``reward=vlm``) to ``env``'s reward terms, with its weight."""
    from embodied.terms import Term

    cfg = dict(reward_cfg)
    cfg.pop("name", None)
    weight = float(cfg.pop("weight", 1.0))
    for key in GATE_KEYS:  # the sanity gate's settings (embodied/rewards/check.py)
        cfg.pop(key, None)
    known = {"backend", "model", "mode", "prompts", "alpha", "every", "state_term"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(
            f"unknown reward key(s) {unknown}; known: {', '.join(sorted(known | {'weight', *GATE_KEYS}))}"
        )
    env.rewards.append(Term("vlm", VLMReward(env, **cfg), weight))
