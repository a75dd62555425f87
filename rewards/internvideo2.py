"""InternVideo2-Stage2 1B: video-text retrieval model, the clip-level reward of T2V-Turbo (VC2).

Our implementation, key-compatible with the released ``InternVideo2-stage2_1b-224p-f4.pt``,
in plain PyTorch: attention is ``F.scaled_dot_product_attention``; no flash-attn or fused kernels.

Architecture (the ``"1b"`` config):

- vision (``vision_encoder``): a 40-block ViT-1B (width 1408, 16 heads) over 8 frames of 224x224.
  ``patch_embed`` is a Conv3d with kernel (1, 14, 14); tokens are ordered (frame, patch), a class
  token is prepended and the learned ``pos_embed`` added (``img_pos_embed`` for a single frame).
  Blocks: ``x + ls1 * attn(RMSNorm(x))``, ``x + ls2 * mlp(RMSNorm(x))``; attention has a bias-free
  ``qkv`` and RMSNorm on q and k over the **full** width, before the head split. The video
  feature is ``clip_projector`` (attention pooling: the mean token queries all tokens), then
  ``vision_proj``. ``clip_decoder``/``final_clip_decoder`` (distillation heads of stage 1) and
  ``clip_pos_embed``/``clip_img_pos_embed`` are in the checkpoint and held here for strict
  loading; the reward never runs them.
- text (``text_encoder``): transformers' ``BertModel`` (BERT-large, no pooler). Text features
  run layers ``[0, fusion_layer)`` only; the layers from ``fusion_layer`` on add cross-attention
  to the video tokens (key/value width 1408) for the stage-2 matching head, are held for strict
  loading, and are not run. The feature is the [CLS] row, then ``text_proj``.

The released model ran its MLPs through flash-attn's ``FusedMLP``, whose GELU is the tanh
approximation; the repository's plain MLP uses exact GELU. ``gelu_approximate`` picks one
(``"tanh"`` in the ``"1b"`` config, to match the released reward; ``"none"`` in ``"tiny"``, as
its fixture was made with the plain MLP).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.bert.modeling_bert import BertLayer

from rewards.viclip import read_state_dict, resolve_config

logger = logging.getLogger(__name__)

#: The fields that differ between sizes: (section, field) -> value of the "1b" model, of "tiny".
_SIZED_FIELDS: dict[tuple[str, str], tuple] = {
    ("vision", "image_size"): (224, 32),
    ("vision", "patch_size"): (14, 8),
    ("vision", "width"): (1408, 32),
    ("vision", "depth"): (40, 3),
    ("vision", "heads"): (16, 4),
    ("vision", "mlp_dim"): (6144, 139),
    ("vision", "clip_embed_dim"): (768, 24),
    ("vision", "attn_pool_heads"): (16, 4),
    ("vision", "clip_return_layer"): (6, 2),
    ("vision", "clip_teacher_embed_dim"): (3200, 40),
    ("vision", "clip_teacher_final_dim"): (768, 24),
    ("vision", "gelu_approximate"): ("tanh", "none"),
    ("text", "vocab_size"): (30522, 1024),
    ("text", "hidden_size"): (1024, 32),
    ("text", "num_hidden_layers"): (24, 3),
    ("text", "num_attention_heads"): (16, 4),
    ("text", "intermediate_size"): (4096, 64),
    ("text", "max_position_embeddings"): (512, 64),
    ("text", "fusion_layer"): (19, 2),
    ("text", "encoder_width"): (1408, 32),
    ("top", "embed_dim"): (512, 16),
}
#: The fields every size shares.
_SHARED_FIELDS: dict[str, dict] = {
    "vision": {"num_frames": 8},
    "text": {"type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0},
    "top": {"max_text_length": 40},
}


def _sized_config(column: int) -> dict:
    sections = {section: dict(fields) for section, fields in _SHARED_FIELDS.items()}
    for (section, field), values in _SIZED_FIELDS.items():
        sections[section][field] = values[column]
    return {"vision": sections["vision"], "text": sections["text"], **sections["top"]}


#: ``{"vision": InternVideo2VisionEncoder kwargs, "text": BertConfig kwargs (+ fusion_layer,
#: encoder_width), "embed_dim", "max_text_length"}`` per size.
INTERNVIDEO2_CONFIGS: dict[str, dict] = {name: _sized_config(column) for column, name in enumerate(("1b", "tiny"))}

INTERNVIDEO2_CHECKPOINT_HELP = (
    "the released weights are `InternVideo2-stage2_1b-224p-f4.pt` from "
    "https://huggingface.co/OpenGVLab/InternVideo2-Stage2_1B-224p-f4; download it and pass its local path"
)

#: Checkpoint entries the model has no use for (the stage-2 matching head, the MLM head, the
#: contrastive temperature); dropped on load.
UNUSED_CHECKPOINT_PREFIXES = ("itm_head.", "text_encoder.cls.", "temp")
#: Model entries a stage-2 checkpoint may lack; they are never run by the reward.
OPTIONAL_MODEL_PREFIXES = ("vision_encoder.clip_decoder.", "vision_encoder.final_clip_decoder.")


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv3d(3, width, (1, patch_size, patch_size), (1, patch_size, patch_size))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, T * h * w, width), frame-major."""
        return self.proj(video).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention with a bias-free packed ``qkv`` and q/k RMSNorm over the full width."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)
        self.q_norm = RMSNorm(width)
        self.k_norm = RMSNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, gelu_approximate: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, gelu_approximate: str):
        super().__init__()
        self.norm1 = RMSNorm(width)
        self.attn = Attention(width, heads)
        self.ls1 = LayerScale(width)
        self.norm2 = RMSNorm(width)
        self.mlp = Mlp(width, mlp_dim, gelu_approximate)
        self.ls2 = LayerScale(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PoolingCrossAttention(nn.Module):
    """Cross-attention with separate bias-free q/k/v projections plus free biases, and an output
    projection to ``out_dim``."""

    def __init__(self, width: int, heads: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.k_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        batch = query.shape[0]

        def heads(t: torch.Tensor, weight: nn.Linear, bias: torch.Tensor) -> torch.Tensor:
            return F.linear(t, weight.weight, bias).view(batch, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query, self.q, self.q_bias), heads(key, self.k, self.k_bias),
                                             heads(value, self.v, self.v_bias))
        return self.proj(out.transpose(1, 2).flatten(2))


class AttentionPooling(nn.Module):
    """The mean token (LayerNormed) attends over all tokens: (B, N, width) -> (B, out_dim)."""

    def __init__(self, width: int, heads: int, out_dim: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(width, eps=1e-5)
        self.norm1_k = nn.LayerNorm(width, eps=1e-5)
        self.norm1_v = nn.LayerNorm(width, eps=1e-5)
        self.cross_attn = PoolingCrossAttention(width, heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.norm1_q(x.mean(dim=1, keepdim=True))
        return self.cross_attn(query, self.norm1_k(x), self.norm1_v(x)).squeeze(1)


class ClipDecoder(nn.Module):
    """Stage-1 distillation head ``norm(head(x))``; held for strict loading only."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.head = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


class InternVideo2VisionEncoder(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int, mlp_dim: int,
                 num_frames: int, clip_embed_dim: int, attn_pool_heads: int, clip_return_layer: int,
                 clip_teacher_embed_dim: int, clip_teacher_final_dim: int, gelu_approximate: str = "none"):
        super().__init__()
        if gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"`gelu_approximate` must be 'none' or 'tanh', got {gelu_approximate!r}")
        self.image_size, self.num_frames = image_size, num_frames
        self.patches_per_frame = (image_size // patch_size) ** 2
        video_tokens = num_frames * self.patches_per_frame + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, video_tokens, width))
        self.img_pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, width))
        self.clip_pos_embed = nn.Parameter(torch.zeros(1, video_tokens, width))
        self.clip_img_pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, width))
        self.patch_embed = PatchEmbed(patch_size, width)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_dim, gelu_approximate) for _ in range(depth)])
        self.clip_projector = AttentionPooling(width, attn_pool_heads, clip_embed_dim)
        self.clip_decoder = nn.ModuleList(
            [ClipDecoder(width, clip_teacher_embed_dim) for _ in range(clip_return_layer)]
        )
        self.final_clip_decoder = ClipDecoder(clip_embed_dim, clip_teacher_final_dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` (B, T, 3, H, W), normalised -> pooled features (B, clip_embed_dim).

        ``T`` is the model's ``num_frames``, or 1 (an image, with ``img_pos_embed``)."""
        batch, frames, _, height, width = video.shape
        if frames not in (1, self.num_frames) or height != self.image_size or width != self.image_size:
            raise ValueError(
                f"InternVideo2 takes (B, {self.num_frames} or 1, 3, {self.image_size}, {self.image_size}) videos, "
                f"got {tuple(video.shape)}; load the checkpoint with num_frames={frames} to use {frames} frames"
            )
        tokens = self.patch_embed(video.permute(0, 2, 1, 3, 4))
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        x = x + (self.img_pos_embed if frames == 1 else self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.clip_projector(x)


class TextModeBertEncoder(nn.Module):
    """BERT's ``encoder`` for text features: holds all layers, runs ``[0, fusion_layer)``.

    Layers below ``fusion_layer`` are transformers ``BertLayer``s; from ``fusion_layer`` on they
    are ``BertLayer``s with a ``crossattention`` block whose key/value read ``encoder_width``
    (video) features. Those are the stage-2 fusion layers, needed only for video-text matching.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        fusion_config = BertConfig(**{**config.to_dict(), "is_decoder": True, "add_cross_attention": True})
        layers = []
        for index in range(config.num_hidden_layers):
            if index < config.fusion_layer:
                layers.append(BertLayer(config, layer_idx=index))
                continue
            layer = BertLayer(fusion_config, layer_idx=index)
            cross = layer.crossattention.self
            cross.key = nn.Linear(config.encoder_width, cross.all_head_size)
            cross.value = nn.Linear(config.encoder_width, cross.all_head_size)
            layers.append(layer)
        self.layer = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, use_cache: bool | None = None, **kwargs):
        if encoder_hidden_states is not None:
            raise NotImplementedError("only text features are implemented; the fusion layers are held for loading")
        for layer in self.layer[: self.config.fusion_layer]:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states)


class InternVideo2TextEncoder(BertModel):
    """transformers' ``BertModel`` (no pooler) whose encoder runs the text layers only, with
    ``embeddings.position_ids`` persistent as in the released checkpoint."""

    def __init__(self, config: BertConfig):
        super().__init__(config, add_pooling_layer=False)
        self.encoder = TextModeBertEncoder(config)
        self.embeddings.register_buffer("position_ids", self.embeddings.position_ids, persistent=True)


class InternVideo2(nn.Module):
    """InternVideo2-Stage2 video and text towers. Features come back in float32."""

    def __init__(self, vision: dict, text: dict, embed_dim: int, max_text_length: int):
        super().__init__()
        self.max_text_length = max_text_length
        self.vision_encoder = InternVideo2VisionEncoder(**vision)
        self.text_encoder = InternVideo2TextEncoder(BertConfig(**text))
        self.vision_proj = nn.Linear(vision["clip_embed_dim"], embed_dim)
        self.text_proj = nn.Linear(text["hidden_size"], embed_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_proj.weight.dtype

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Video features (B, D) of ``video`` (B, T, 3, H, W) normalised with ImageNet mean/std."""
        features = self.vision_proj(self.vision_encoder(video.to(self.dtype))).float()
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        """Text features (B, D) of BERT ids ``[CLS] ... [SEP]`` padded with 0; the mask defaults to
        ``input_ids != pad_token_id``."""
        if attention_mask is None:
            attention_mask = (input_ids != self.text_encoder.config.pad_token_id).long()
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = self.text_proj(hidden[:, 0]).float()
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Cosine similarity (B,) of each video with its text."""
        video_features = self.encode_video(video, normalize=True)
        return (video_features * self.encode_text(input_ids, attention_mask, normalize=True)).sum(-1)


def interpolate_temporal_pos_embed(pos_embed: torch.Tensor, num_frames: int, patches_per_frame: int) -> torch.Tensor:
    """Resample a (1, 1 + T * P, C) position embedding to ``num_frames`` frames.

    The class row is kept; the patch rows, viewed (T, P, C), are linearly interpolated along time
    (``F.interpolate(mode="linear", align_corners=False)``) for every patch and channel.
    """
    cls_row, grid = pos_embed[:, :1], pos_embed[:, 1:]
    channels = grid.shape[-1]
    if grid.shape[1] % patches_per_frame:
        raise ValueError(f"{grid.shape[1]} patch rows are not a whole number of {patches_per_frame}-patch frames")
    frames = grid.shape[1] // patches_per_frame
    if frames == num_frames:
        return pos_embed
    series = grid.reshape(frames, patches_per_frame * channels).T.unsqueeze(1)  # (P*C, 1, T)
    series = F.interpolate(series.float(), size=num_frames, mode="linear", align_corners=False).to(grid.dtype)
    grid = series.squeeze(1).T.reshape(1, num_frames * patches_per_frame, channels)
    return torch.cat([cls_row, grid], dim=1)


def convert_released_state_dict(released: dict[str, torch.Tensor], model: InternVideo2) -> dict[str, torch.Tensor]:
    """Map a released checkpoint's ``'module'`` dict to this model's keys.

    ``text_encoder.bert.X`` becomes ``text_encoder.X``; ``pos_embed`` and ``clip_pos_embed`` are
    interpolated in time to the model's frame count (the 1B checkpoint has 4); entries in
    ``UNUSED_CHECKPOINT_PREFIXES`` are dropped; other keys are kept as they are.
    """
    converted, dropped = {}, []
    for key, value in released.items():
        if key.startswith("text_encoder.bert."):
            key = "text_encoder." + key[len("text_encoder.bert."):]
        elif key.startswith(UNUSED_CHECKPOINT_PREFIXES):
            dropped.append(key)
            continue
        if key in ("vision_encoder.pos_embed", "vision_encoder.clip_pos_embed"):
            vision = model.vision_encoder
            value = interpolate_temporal_pos_embed(value, vision.num_frames, vision.patches_per_frame)
        converted[key] = value
    if dropped:
        logger.info("InternVideo2: ignoring %d unused checkpoint entries (%s)", len(dropped), ", ".join(sorted(dropped)[:5]))
    return converted


def build_internvideo2(config: str | dict = "1b", num_frames: int | None = None,
                       gelu_approximate: str | None = None) -> InternVideo2:
    """Build InternVideo2 with random weights from a name in ``INTERNVIDEO2_CONFIGS`` or a dict;
    ``num_frames`` and ``gelu_approximate`` override the config's vision settings."""
    resolved = resolve_config(config, INTERNVIDEO2_CONFIGS, "InternVideo2")
    if num_frames is not None:
        resolved["vision"]["num_frames"] = num_frames
    if gelu_approximate is not None:
        resolved["vision"]["gelu_approximate"] = gelu_approximate
    return InternVideo2(**resolved)


def load_internvideo2(checkpoint: str | os.PathLike, config: str | dict = "1b", num_frames: int | None = None,
                      gelu_approximate: str | None = None, dtype: torch.dtype = torch.float32,
                      allow_pickle: bool = False) -> InternVideo2:
    """Build InternVideo2 and load ``checkpoint``; returns the model in eval mode, frozen.

    ``checkpoint`` is the released ``.pt`` (``{'module': state_dict}`` with the original key names
    and 4-frame position embeddings, converted by ``convert_released_state_dict``), or a state
    dict in this model's key names (``torch.save`` or ``.safetensors``), whose position embeddings
    are also resampled if their frame count differs. The load is strict, except that the unused
    ``OPTIONAL_MODEL_PREFIXES`` heads may be absent (they then keep their random values).
    """
    state_dict = read_state_dict(checkpoint, "module", INTERNVIDEO2_CHECKPOINT_HELP, allow_pickle)
    model = build_internvideo2(config, num_frames, gelu_approximate)
    state_dict = convert_released_state_dict(state_dict, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    absent_heads = [key for key in missing if key.startswith(OPTIONAL_MODEL_PREFIXES)]
    missing = [key for key in missing if key not in absent_heads]
    if missing or unexpected:
        raise RuntimeError(
            f"InternVideo2 checkpoint {os.fspath(checkpoint)!r} does not match the model: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    if absent_heads:
        logger.info("InternVideo2: the checkpoint has no stage-1 decoder heads (%d keys); unused", len(absent_heads))
    return model.to(dtype).eval().requires_grad_(False)
