"""Vision-language-action policy: camera frame + instruction + proprioception -> a chunk of actions.

    rgb (N, 3, H, W) uint8 --vision encoder--> tokens (N, T, Cv)
    instruction (N, 1) int64 --table (I, 384), frozen MiniLM--> e (N, 384)
    tokens conditioned on e: FiLM (tokens * (1 + gamma(e)) + beta(e)) or cross-attention (queries
    from e over the tokens) -> visual (N, Dv)
    [visual, normalized proprio (N, P), lang(e)] --MLP--> h --head--> chunk of C actions (N, C, A)
    value: an MLP on the normalized ``critic`` group (or on h with ``value_from=features``)

**Chunks are executed receding-horizon**: every env step the policy predicts a whole chunk and the
env executes its first action; the next step predicts again. ``act`` returns that first action
(N, A) and ``get_actions_log_prob`` is the exact log-probability of its A tokens, so PPO / GRPO
train on exactly what was executed, one decision per step, with the algorithms unchanged. Steps 2..C
of the chunk are learned by behaviour cloning (``bc_loss`` on whole chunks, which also smooths the
first action) and are exported for inspection; an open-loop chunk queue would need the log-prob
of a C-step decision taken every C steps, which the per-step rollout storage does not hold.

The instruction strings (``instructions``, the env's ``env.instructions``) are embedded once by the
frozen MiniLM (``policies.text_encoder``), cached per string, into the buffer
``instruction_table`` (I, 384) that the checkpoint keeps: a loaded policy needs no MiniLM for its
known instructions. ``chunk_from_embedding`` is the embedding-input path the export traces.

PPO's adaptive learning rate reads a Gaussian KL of ``action_mean`` / ``action_std``: for the token
head these are the mean and std of each dimension's tempered bin distribution (a moment-matched
KL, good enough for the schedule; the loss itself uses the exact log-probs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from policies.action_tokens import (
    GaussianChunkHead,
    TokenHead,
    sample_tokens,
    token_entropy,
    token_log_prob,
    tokenize,
)
from policies.distributions import gaussian_entropy, gaussian_log_prob, gaussian_sample
from policies.mlp import MLP, make_activation
from policies.normalizer import EmpiricalNormalizer
from policies.spec import TensorSpec
from policies.vision import build_vision_encoder

TEXT_DIM = 384  # MiniLM-L6 sentence embedding


def instruction_digest(texts: Sequence[str]) -> torch.Tensor:
    """(I,) int64: the first 8 bytes of each string's sha256 (checks a checkpoint's instruction order)."""
    values = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little", signed=True) for t in texts]
    return torch.tensor(values, dtype=torch.int64)


class VLAError(ValueError):
    """The VLA policy cannot be built or loaded as configured (one line)."""


class FiLM(nn.Module):
    """Feature-wise modulation of tokens (B, T, C) by a condition (B, E): x * (1 + gamma) + beta."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * channels)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(cond).unsqueeze(1).chunk(2, dim=-1)
        return tokens * (1.0 + gamma) + beta


class CrossAttention(nn.Module):
    """M queries from the condition (B, E) attend over tokens (B, T, C): (B, M * D)."""

    def __init__(self, cond_dim: int, channels: int, dim: int = 64, queries: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, dim) * 0.1)
        self.q = nn.Linear(cond_dim, dim)
        self.k = nn.Linear(channels, dim)
        self.v = nn.Linear(channels, dim)
        self.q_norm, self.k_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)  # O(1) logits from the start
        self.scale = dim**-0.5

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(self.q(cond).unsqueeze(1) + self.queries)  # (B, M, D)
        k = self.k_norm(self.k(tokens))
        attn = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)  # (B, M, T)
        return (attn @ self.v(tokens)).flatten(1)


class VLAPolicy(nn.Module):
    """Registered as ``policy=vla`` (configs/policy/vla.yaml); keeps the ActorCritic interface."""

    __jit_unused_properties__ = ["action_mean", "action_std", "entropy"]  # noqa: RUF012

    def __init__(
        self,
        obs_spec: Mapping[str, TensorSpec],
        num_actions: int,
        instructions: Sequence[str] | None = None,
        encoder: str = "cnn",
        backbone: str | None = None,
        freeze_backbone: bool = True,
        channels: int = 64,
        conditioning: str = "film",
        visual_dim: int = 256,
        lang_dim: int = 64,
        hidden_dims: Sequence[int] = (256, 256),
        critic_hidden_dims: Sequence[int] = (256, 128),
        activation: str = "elu",
        head: str = "tokens",
        chunk: int = 4,
        bins: int = 32,
        temperature: float = 1.0,
        init_noise_std: float = 0.5,
        value_from: str = "critic",
        normalize_obs: bool = True,
        text_encoder: str | None = None,
        rgb_obs: str = "rgb",
        proprio_obs: str = "proprio",
        instruction_obs: str = "instruction",
        critic_obs: str = "critic",
    ):
        super().__init__()
        groups = sorted(obs_spec)
        need = {rgb_obs: "rgb", instruction_obs: "instruction", proprio_obs: "vector"}
        if value_from == "critic":
            need[critic_obs] = "vector"
        for group, kind in need.items():
            spec = obs_spec.get(group)
            if spec is None or spec.kind != kind:
                raise VLAError(
                    f"policy=vla needs the {kind} observation group {group!r} (camera frames: "
                    f"task.rgb.enabled=true; a multi-instruction task gives 'instruction'); "
                    f"this task gives {groups}"
                )
        checks = {  # key: (value, valid)
            "head": (head, head in ("tokens", "gaussian")),
            "conditioning": (conditioning, conditioning in ("film", "cross_attention")),
            "value_from": (value_from, value_from in ("critic", "features")),
            "chunk": (chunk, int(chunk) >= 1),
            "temperature": (temperature, float(temperature) > 0),
        }
        for key, (value, ok) in checks.items():
            if not ok:
                raise VLAError(f"policy.{key}={value!r} is invalid")
        if not instructions:
            raise VLAError("policy=vla needs the task's instruction strings (env.instructions is empty)")
        self.rgb_obs, self.proprio_obs, self.instruction_obs = rgb_obs, proprio_obs, instruction_obs
        self.actor_obs, self.critic_obs = proprio_obs, critic_obs if value_from == "critic" else proprio_obs
        self.obs_groups = tuple(dict.fromkeys((rgb_obs, proprio_obs, instruction_obs, self.critic_obs)))
        self.image_shape = tuple(int(s) for s in obs_spec[rgb_obs].shape)
        self.num_actor_obs = obs_spec[proprio_obs].dim
        self.num_critic_obs = obs_spec[self.critic_obs].dim
        self.num_actions, self.chunk, self.head_kind = int(num_actions), int(chunk), head
        self.temperature, self.value_from, self.normalize_obs = float(temperature), value_from, normalize_obs
        self.conditioning, self.text_encoder_path = conditioning, text_encoder
        self.instructions = [str(t) for t in instructions]
        self.register_buffer("instruction_table", torch.zeros(len(self.instructions), TEXT_DIM))
        self.register_buffer("instruction_ready", torch.tensor(False))
        self.register_buffer("instruction_digest", instruction_digest(self.instructions))
        self._register_load_state_dict_pre_hook(self._check_instructions)
        self._table_ok = False
        self._missing: list[int] | None = None  # rows a checkpoint did not provide

        self.encoder = build_vision_encoder(encoder, self.image_shape, channels, backbone, freeze_backbone)
        c, t = self.encoder.channels, self.encoder.num_tokens
        if conditioning == "film":
            self.condition: nn.Module = FiLM(TEXT_DIM, c)
            pooled = t * c
        else:
            self.condition = CrossAttention(TEXT_DIM, c)
            pooled = self.condition.queries.numel()
        self.visual = nn.Sequential(nn.Linear(pooled, visual_dim), make_activation(activation))
        self.lang = nn.Sequential(nn.Linear(TEXT_DIM, lang_dim), make_activation(activation))
        self.proprio_normalizer: nn.Module = (
            EmpiricalNormalizer(self.num_actor_obs) if normalize_obs else nn.Identity()
        )
        width = int(hidden_dims[-1]) if hidden_dims else visual_dim + self.num_actor_obs + lang_dim
        trunk_in = visual_dim + self.num_actor_obs + lang_dim
        self.trunk = (
            nn.Sequential(MLP(trunk_in, hidden_dims[:-1], width, activation), make_activation(activation))
            if hidden_dims
            else nn.Identity()
        )
        if head == "tokens":
            self.head: nn.Module = TokenHead(width, self.chunk, self.num_actions, int(bins))
        else:
            self.head = GaussianChunkHead(width, self.chunk, self.num_actions, init_noise_std)
        self.critic_normalizer: nn.Module = (
            EmpiricalNormalizer(self.num_critic_obs)
            if normalize_obs and value_from == "critic"
            else nn.Identity()
        )
        critic_in = self.num_critic_obs if value_from == "critic" else width
        self.critic = MLP(critic_in, critic_hidden_dims, 1, activation)
        self._dist: tuple[torch.Tensor, ...] | None = None

    # --- instructions ------------------------------------------------------------------------------
    def instruction_embeddings(self) -> torch.Tensor:
        """The (I, 384) table, embedded by the frozen MiniLM on first use (a loaded checkpoint has it).

        Only the rows no checkpoint provided (``adapt_checkpoint_state``) are embedded.
        """
        if not self._table_ok and not bool(self.instruction_ready):  # the flag spares a device sync
            from policies.text_encoder import TextEncoder

            rows = self._missing if self._missing is not None else list(range(len(self.instructions)))
            enc = TextEncoder(self.text_encoder_path)
            table = enc.embed([self.instructions[i] for i in rows]).to(self.instruction_table)
            self.instruction_table[rows] = table
            self.instruction_ready.fill_(True)
            self._missing = None
        self._table_ok = True
        return self.instruction_table

    def adapt_checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's state with its instruction table mapped onto this task's instruction list.

        Rows of instructions the checkpoint knows are kept (no MiniLM needed); the others (held-out
        paraphrases, another split) are embedded by MiniLM on first use.
        """
        saved, table = state.get("instruction_digest"), state.get("instruction_table")
        if saved is None or table is None or torch.equal(saved.cpu(), self.instruction_digest.cpu()):
            return state
        known = {int(d): i for i, d in enumerate(saved.tolist())}
        ready = bool(state.get("instruction_ready", torch.tensor(False)))
        new = torch.zeros_like(self.instruction_table, device=table.device)
        missing = []
        for i, d in enumerate(self.instruction_digest.tolist()):
            if ready and int(d) in known:
                new[i] = table[known[int(d)]]
            else:
                missing.append(i)
        self._missing = missing
        out = dict(state)
        out["instruction_table"], out["instruction_digest"] = new, self.instruction_digest.clone()
        out["instruction_ready"] = torch.tensor(not missing)
        return out

    def set_instruction_embeddings(self, table: torch.Tensor) -> None:
        """Use ``table`` (I, 384) as the instructions' embeddings (e.g. computed once elsewhere)."""
        if tuple(table.shape) != tuple(self.instruction_table.shape):
            raise VLAError(
                f"instruction table {tuple(table.shape)}, expected {tuple(self.instruction_table.shape)}"
            )
        self.instruction_table.copy_(table)
        self.instruction_ready.fill_(True)
        self._table_ok = True

    def embed(self, index: torch.Tensor) -> torch.Tensor:
        """Instruction indices (N, 1) or (N,) int64 -> embeddings (N, 384)."""
        return self.instruction_embeddings()[index.reshape(-1).long()]

    def _check_instructions(self, state: dict, prefix: str, *args: Any) -> None:
        """Load hook: a checkpoint's instruction table must be of this task's instruction list."""
        saved = state.get(prefix + "instruction_digest")
        if saved is not None and not torch.equal(saved.cpu(), self.instruction_digest.cpu()):
            raise VLAError(
                f"the checkpoint's {saved.numel()} instruction strings are not this task's "
                f"{len(self.instructions)} ({self.instructions[0]!r}, ...): its embedding table would "
                "map instructions to the wrong goals"
            )
        ready = state.get(prefix + "instruction_ready")
        self._table_ok = bool(ready) if ready is not None else self._table_ok

    # --- the network -------------------------------------------------------------------------------
    def visual_features(self, rgb: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W), embeddings (N, 384) -> instruction-conditioned visual features (N, Dv)."""
        tokens = self.encoder(rgb)
        if self.conditioning == "film":
            pooled = torch.relu(self.condition(tokens, emb)).flatten(1)
        else:
            pooled = self.condition(tokens, emb)
        return self.visual(pooled)

    def features_from(self, rgb: torch.Tensor, emb: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """The shared features h (N, F) the heads read; proprio (N, P) raw (normalized here)."""
        x = torch.cat([self.visual_features(rgb, emb), self.proprio_normalizer(proprio), self.lang(emb)], -1)
        return self.trunk(x)

    def features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embed(obs[self.instruction_obs])
        return self.features_from(obs[self.rgb_obs], emb, obs[self.proprio_obs])

    def chunk_from_embedding(
        self, rgb: torch.Tensor, emb: torch.Tensor, proprio: torch.Tensor
    ) -> torch.Tensor:
        """Greedy chunk (N, C, A) from uint8 frames, instruction embeddings (N, 384) and raw proprio."""
        out = self.head(self.features_from(rgb, emb, proprio))
        return self.head.greedy(out) if self.head_kind == "tokens" else out

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic first action (N, A) of the greedy chunk (evaluation, deployment)."""
        return self.act_chunk_inference(obs)[:, 0]

    def act_chunk_inference(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Greedy chunk (N, C, A)."""
        emb = self.embed(obs[self.instruction_obs])
        return self.chunk_from_embedding(obs[self.rgb_obs], emb, obs[self.proprio_obs])

    def act_inference(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.forward(obs)

    # --- the distribution of the executed (first) action ---------------------------------------------
    def update_distribution(self, obs: Mapping[str, torch.Tensor]) -> None:
        """Compute and keep the distribution of the chunk's first action (and the shared features)."""
        out = self.head(self.features(obs))
        if self.head_kind == "tokens":
            self._dist = (out[:, 0],)  # (N, A, K) logits
        else:
            mu = out[:, 0]
            self._dist = (mu, self.head.std(mu))

    def act(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample the first action (N, A) at ``temperature``; its distribution is kept for log-probs."""
        self.update_distribution(obs)
        if self.head_kind == "tokens":
            return self.head.decode(sample_tokens(self._last()[0], self.temperature, generator))
        mu, sigma = self._last()
        return gaussian_sample(mu, sigma)

    def get_actions_log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Exact log-prob (N,) of first actions (N, A) under the last distribution (sum over dims)."""
        if self.head_kind == "tokens":
            logits = self._last()[0]
            tokens = tokenize(actions, logits.shape[-1])
            return token_log_prob(logits, tokens, self.temperature).sum(-1)
        mu, sigma = self._last()
        return gaussian_log_prob(actions, mu, sigma)

    def _last(self) -> tuple[torch.Tensor, ...]:
        if self._dist is None:
            raise AttributeError("no action distribution yet: call act() or update_distribution() first")
        return self._dist

    @property
    def action_mean(self) -> torch.Tensor:
        """(N, A) mean of the last first-action distribution (of the decoded bins for tokens)."""
        d = self._last()
        return self.head.moments(d[0], self.temperature)[0] if self.head_kind == "tokens" else d[0]

    @property
    def action_std(self) -> torch.Tensor:
        """(N, A) std of the last first-action distribution."""
        d = self._last()
        return self.head.moments(d[0], self.temperature)[1] if self.head_kind == "tokens" else d[1]

    @property
    def entropy(self) -> torch.Tensor:
        """(N,) entropy of the last first-action distribution, summed over action dims."""
        d = self._last()
        if self.head_kind == "tokens":
            return token_entropy(d[0], self.temperature).sum(-1)
        return gaussian_entropy(d[1])

    def clear_distribution(self) -> None:
        """Forget the last distribution (its tensors are not graph leaves: a deep copy needs them gone)."""
        self._dist = None

    # --- whole chunks (behaviour cloning, chunk-level RL) ---------------------------------------------
    def chunk_log_prob(self, obs: Mapping[str, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
        """Exact log-prob (N, C) of each step of chunks (N, C, A) (sum over dims), at ``temperature``."""
        out = self.head(self.features(obs))
        if self.head_kind == "tokens":
            return token_log_prob(out, tokenize(chunk, out.shape[-1]), self.temperature).sum(-1)
        return gaussian_log_prob(chunk, out, self.head.log_std.exp().expand_as(out))

    def bc_loss(
        self, obs: Mapping[str, torch.Tensor], chunk: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Behaviour-cloning loss of target chunks (N, C, A); ``mask`` (N, C) marks valid steps.

        Tokens: cross-entropy per token (temperature 1); Gaussian: squared error of the means.
        """
        out = self.head(self.features(obs))
        if self.head_kind == "tokens":
            per_step = -token_log_prob(out, tokenize(chunk, out.shape[-1]), 1.0).mean(-1)
        else:
            per_step = (out - chunk).square().mean(-1)
        if mask is None:
            return per_step.mean()
        m = mask.to(per_step.dtype)
        return (per_step * m).sum() / m.sum().clamp_min(1.0)

    # --- value and normalization ---------------------------------------------------------------------
    def evaluate(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Values (N,) from the critic group (or the shared features with ``value_from=features``)."""
        if self.value_from == "critic":
            return self.critic(self.critic_normalizer(obs[self.critic_obs])).squeeze(-1)
        return self.critic(self.features(obs)).squeeze(-1)

    def update_normalization(self, obs: Mapping[str, torch.Tensor]) -> None:
        if self.normalize_obs:
            self.proprio_normalizer.update(obs[self.proprio_obs])
            if self.value_from == "critic":
                self.critic_normalizer.update(obs[self.critic_obs])


def build_vla(obs_spec: Mapping[str, TensorSpec], action_dim: int, **cfg: Any) -> VLAPolicy:
    """``policy=vla``: the builder the registry calls (``instructions`` come from the env)."""
    for key in ("hidden_dims", "critic_hidden_dims"):
        if key in cfg:
            cfg[key] = tuple(int(v) for v in cfg[key])
    return VLAPolicy(obs_spec, action_dim, **cfg)
