"""Vision-language backends behind one interface: ``encode_images`` and ``encode_text``.

``encode_images(frames)`` takes (N, 3, H, W) uint8 camera frames and ``encode_text(prompts)`` a list
of strings; both return L2-normalized embeddings (N, D) in one shared space, on the backend's device.

``sim`` is the sim-domain VLM trained in-project (``embodied vlm-train``; embodied/rewards/sim_vlm.py);
``auto`` (the default) picks it for a directory that ``vlm-train`` wrote, and ``transformers`` else.

``TransformersVLM`` loads a transformers ``CLIPModel`` or ``SiglipModel`` from a local directory (or
a hub id where the machine can download): never with ``trust_remote_code``, and from safetensors
where the directory has them. Images are resized to the model's input size and normalized with the
directory's preprocessor statistics (or the model family's defaults) in torch, batched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from embodied.errors import ConfigError

# Image statistics of each family when a directory has no preprocessor_config.json.
DEFAULT_STATS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class VLMBackend(Protocol):
    device: torch.device

    def encode_images(self, frames: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor: ...


def _is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists()


class TransformersVLM:
    """A CLIP or SigLIP dual encoder loaded by path with transformers."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        try:
            from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel
        except ImportError:
            raise ConfigError("reward.backend=transformers needs the transformers package") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one line per error, no loading bars in the run's output
        hf_logging.set_verbosity_error()
        path = str(path)
        local = _is_local(path)
        if local and not (Path(path).expanduser() / "config.json").is_file():
            raise ConfigError(f"reward.model {path} holds no model (no config.json there)")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=local)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or ["unreadable"])[0]
            raise ConfigError(f"reward.model {path} is not a loadable model ({first[:160]})") from None
        families = {"clip": CLIPModel, "siglip": SiglipModel}
        if config.model_type not in families:
            raise ConfigError(
                f"reward.model {path} is a {config.model_type!r} model; the VLM reward loads clip or siglip"
            )
        self.family = config.model_type
        has_safetensors = local and any(Path(path).expanduser().glob("*.safetensors"))
        try:
            self.model = families[self.family].from_pretrained(
                path, trust_remote_code=False, local_files_only=local, use_safetensors=has_safetensors or None
            )
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=False, local_files_only=local
            )
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or ["unreadable"])[0]
            raise ConfigError(f"reward.model {path} could not be loaded ({first[:160]})") from None
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.image_size = int(config.vision_config.image_size)
        self.max_length = int(config.text_config.max_position_embeddings)
        mean, std = DEFAULT_STATS[self.family]
        pre = Path(path).expanduser() / "preprocessor_config.json"
        if local and pre.is_file():
            stats = json.loads(pre.read_text())
            mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> the model's normalized (N, 3, S, S) float input."""
        x = frames.to(self.device, torch.float32) / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=self.pixel_values(frames))
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        kwargs = {"input_ids": enc["input_ids"].to(self.device)}
        if self.family == "clip" and "attention_mask" in enc:
            kwargs["attention_mask"] = enc["attention_mask"].to(self.device)
        out = self.model.get_text_features(**kwargs)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return F.normalize(emb.float(), dim=-1)


def _sim(path: str | Path, device: str | torch.device) -> VLMBackend:
    from embodied.rewards.sim_vlm import load_sim_vlm

    return load_sim_vlm(path, device)


BACKENDS = {"transformers": TransformersVLM, "sim": _sim}


def detect_backend(model: str) -> str:
    """``auto``: a directory written by ``embodied vlm-train`` is ``sim``; anything else ``transformers``."""
    from embodied.rewards.sim_vlm import MODEL_TYPE, read_config

    cfg = read_config(model) if _is_local(model) else None
    return "sim" if cfg is not None and cfg.get("model_type") == MODEL_TYPE else "transformers"


def build_backend(name: str, model: str | None, device: str | torch.device) -> VLMBackend:
    """The backend ``name`` (or ``auto``: by the model directory) loading ``model``; unknown names and
    missing paths are ConfigErrors."""
    if name not in BACKENDS and name != "auto":
        raise ConfigError(f"unknown reward.backend {name!r}; known: auto, {', '.join(sorted(BACKENDS))}")
    if not model:
        raise ConfigError(
            "reward.model must name a model directory (embodied vlm-train writes one; or a CLIP/SigLIP "
            "directory or hub id) for the VLM reward"
        )
    if _is_local(str(model)) and not Path(str(model)).expanduser().exists():
        raise ConfigError(f"reward.model {model} does not exist")
    if name == "auto":
        name = detect_backend(str(model))
    return BACKENDS[name](model, device)
