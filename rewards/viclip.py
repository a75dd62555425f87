"""ViCLIP: a CLIP whose vision tower attends jointly over all patches of all frames.

Our implementation, key-compatible with the released ``ViClip-InternVid-10M-FLT.pth``
(a ``torch.save`` dict whose ``'model'`` entry is the state dict, no key prefix). T2V-Turbo uses
it as the clip-level reward of its ModelScope setting.

Architecture (the ``"l14"`` config):

- vision: a ViT-L/14 on 8 frames of 224x224. ``conv1`` is a bias-free Conv3d with kernel
  (1, 14, 14), applied per frame. Patch tokens get the spatial ``positional_embedding`` and, per
  patch, the ``temporal_positional_embedding`` of their frame; they are ordered (patch, frame),
  i.e. all frames of patch 0 first. Optional ``tubelet_size`` k (default 1, the released layout):
  the kernel is (k, p, p), so a token covers k consecutive frames and sees motion inside it (the
  mini world's reward: 2 frames x 8 px). One frame-independent class token is prepended, then
  ``ln_pre``, 24 pre-LN blocks (QuickGELU), ``ln_post`` and the class row times ``proj``.
- text: CLIP's causal text transformer with a context of **32** tokens (not 77); the feature is
  the row of the end-of-text token (the largest id) times ``text_projection``.
- ``temp``: the scalar contrastive temperature (kept for strict loading; scores are cosines).

Architecture is data: ``VICLIP_CONFIGS`` holds one dict per size (``"l14"`` real, ``"tiny"`` the
reference fixture's) and ``build_viclip`` builds any of them.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from t2v_turbo.fileio import torch_load

logger = logging.getLogger(__name__)

VICLIP_CONFIGS: dict[str, dict] = {
    "l14": {
        "vision": {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 24, "heads": 16,
                   "output_dim": 768, "num_frames": 8},
        "text": {"context_length": 32, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12,
                 "output_dim": 768},
    },
    "tiny": {
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 4,
                   "output_dim": 24, "num_frames": 8},
        "text": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2,
                 "output_dim": 24},
    },
}

VICLIP_CHECKPOINT_HELP = (
    "the released ViCLIP-L/14 weights are `ViClip-InternVid-10M-FLT.pth` from "
    "https://huggingface.co/OpenGVLab/ViCLIP (InternVid); download it and pass its local path"
)


def resolve_config(config: str | dict, registry: dict[str, dict], model_name: str) -> dict:
    """A deep copy of ``registry[config]``, or of ``config`` itself when it is a dict."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    if config not in registry:
        raise KeyError(f"unknown {model_name} config {config!r}; known configs: {sorted(registry)}")
    return copy.deepcopy(registry[config])


def read_state_dict(path: str | os.PathLike, container_key: str, help_text: str,
                    allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file.

    A ``torch.save`` file may hold the state dict itself or a dict with the state dict under
    ``container_key`` (``'model'`` for ViCLIP, ``'module'`` for InternVideo2). It is read with
    ``weights_only=True``; a file that needs arbitrary unpickling is refused naming the file and the
    opt-in (``allow_pickle: true`` in the reward's args), and read in full only with
    ``allow_pickle=True`` (that runs any code the file holds). A ``.safetensors`` file holds the state dict, with
    bare keys or with the ``state_dict.`` prefix of the project's reference fixtures (other
    prefixes such as ``input.``/``output.`` are then ignored).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: looked for the file {path!r}; {help_text}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        tensors = load_file(path)
        prefix = "state_dict."
        if any(key.startswith(prefix) for key in tensors):
            return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        return tensors
    payload = torch_load(path, allow_pickle, opt_in="allow_pickle: true in the reward's args")
    if isinstance(payload, dict) and container_key in payload:
        payload = payload[container_key]
    if not isinstance(payload, dict) or not all(isinstance(value, torch.Tensor) for value in payload.values()):
        raise ValueError(f"{path!r} holds no state dict (expected a dict of tensors, or one under {container_key!r})")
    return payload


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation the OpenAI CLIP family was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` (batch first)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ViCLIPVisionTransformer(nn.Module):
    """Joint space-time ViT: one sequence of (patches x frames) tokens plus a class token."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, num_frames: int, tubelet_size: int = 1):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"`image_size` {image_size} is not a multiple of `patch_size` {patch_size}")
        if tubelet_size < 1 or num_frames % tubelet_size:
            raise ValueError(f"`num_frames` {num_frames} is not a multiple of `tubelet_size` {tubelet_size}")
        self.image_size, self.num_frames = image_size, num_frames
        num_patches = (image_size // patch_size) ** 2
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_patches + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames // tubelet_size, width))
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        kernel = (tubelet_size, patch_size, patch_size)
        self.conv1 = nn.Conv3d(3, width, kernel, kernel, bias=False)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` (B, T, 3, H, W), normalised -> projected class-token features (B, output_dim)."""
        batch, frames, _, height, width = video.shape
        if frames != self.num_frames or height != self.image_size or width != self.image_size:
            raise ValueError(
                f"ViCLIP takes (B, {self.num_frames}, 3, {self.image_size}, {self.image_size}) videos, "
                f"got {tuple(video.shape)}"
            )
        patches = self.conv1(video.permute(0, 2, 1, 3, 4))  # (B, C, T / tubelet, h, w)
        patches = patches.flatten(3).permute(0, 2, 3, 1)  # (B, T / tubelet, N, C)
        patches = patches + self.positional_embedding[1:]
        patches = patches + self.temporal_positional_embedding.unsqueeze(2)
        tokens = patches.transpose(1, 2).flatten(1, 2)  # (B, N*T, C), patch-major
        cls = (self.class_embedding + self.positional_embedding[0]).expand(batch, 1, -1)
        x = self.ln_pre(torch.cat([cls, tokens], dim=1))
        x = self.ln_post(self.transformer(x))
        return x[:, 0] @ self.proj


class ViCLIPTextTransformer(nn.Module):
    """CLIP's causal text transformer; the feature is the end-of-text row times ``text_projection``."""

    def __init__(self, context_length: int, vocab_size: int, width: int, heads: int, layers: int, output_dim: int):
        super().__init__()
        self.context_length = context_length
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        self.text_projection = nn.Parameter(width**-0.5 * torch.randn(width, output_dim))
        self.transformer = Transformer(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.ln_final = nn.LayerNorm(width)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``token_ids`` (B, L <= context_length), end-of-text = largest id -> (B, output_dim)."""
        length = token_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"ViCLIP's text context is {self.context_length} tokens, got {length}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        causal_mask = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        x = self.ln_final(self.transformer(x, causal_mask))
        end_of_text = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        return end_of_text @ self.text_projection


class ViCLIP(nn.Module):
    """ViCLIP video and text towers. Features come back in float32 whatever the weights' dtype."""

    def __init__(self, vision: dict, text: dict):
        super().__init__()
        self.temp = nn.Parameter(torch.tensor(0.01))
        self.vision_encoder = ViCLIPVisionTransformer(**vision)
        self.text_encoder = ViCLIPTextTransformer(**text)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_encoder.proj.dtype

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Video features (B, D) of ``video`` (B, T, 3, H, W) normalised with ImageNet mean/std."""
        features = self.vision_encoder(video.to(self.dtype)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features (B, D) of CLIP BPE ids ``[49406] + bpe + [49407]``, zero padded to 32."""
        features = self.text_encoder(token_ids.long()).float()
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, video: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B,) of each video with its text."""
        return (self.encode_video(video, normalize=True) * self.encode_text(token_ids, normalize=True)).sum(-1)


def build_viclip(config: str | dict = "l14") -> ViCLIP:
    """Build ViCLIP with random weights from a config name in ``VICLIP_CONFIGS`` or a config dict."""
    return ViCLIP(**resolve_config(config, VICLIP_CONFIGS, "ViCLIP"))


def load_viclip(checkpoint: str | os.PathLike, config: str | dict = "l14", dtype: torch.dtype = torch.float32,
                allow_pickle: bool = False) -> ViCLIP:
    """Build ViCLIP and load ``checkpoint`` strictly; returns the model in eval mode, frozen.

    ``checkpoint`` is the released ``.pth`` (state dict under ``'model'``), a bare ``torch.save``
    state dict, or a ``.safetensors`` file (see ``read_state_dict``, also for ``allow_pickle``).
    """
    state_dict = read_state_dict(checkpoint, "model", VICLIP_CHECKPOINT_HELP, allow_pickle)
    model = build_viclip(config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(dtype).eval().requires_grad_(False)
