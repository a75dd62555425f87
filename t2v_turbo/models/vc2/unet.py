"""The VideoCrafter2 (VC2) video UNet, written for this toolkit.

VC2 is a 2D latent-diffusion UNet made temporal: every residual block ends with a stack of
temporal (1D over frames) convolutions, and every spatial transformer is followed by a temporal
transformer that attends over frames at each pixel. An extra temporal transformer (``init_attn``)
runs right after the input convolution, and an fps embedding is added to the timestep embedding.
T2V-Turbo adds the guidance-embedding layer ``time_cond_proj`` (v1) and, in v2, the
motion-conditioning layers ``motion_cond_proj`` / ``combine_proj``.

The module and parameter names reproduce the released checkpoints' state-dict keys exactly
(``model.diffusion_model.*`` in VC2's ``model.ckpt``, the bare keys of T2V-Turbo's UNet files),
so those files load with ``strict=True``; ``tests/test_vc2_unet.py`` checks names, shapes, order
and parameter count against ``vc2_unet_manifest.json``.

Layout conventions:

- the public forward takes ``x`` as (B, C, T, H, W); internally frames are folded into the batch,
  ``(B*T, C, H, W)``, and unfolded only by the temporal layers;
- the text context and the embeddings are repeated per frame (``repeat_interleave``);
- timestep and fps embeddings are sinusoidal with the order [cos, sin] (see
  :func:`timestep_embedding`); the guidance embedding fed to ``timestep_cond`` is computed
  outside with LCM's convention ([sin, cos], see ``t2v_turbo.diffusion.solver.guidance_scale_embedding``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: VideoCrafter2's UNet (``configs/inference_t2v_512_v2.0.yaml``) with T2V-Turbo's guidance layer
VC2_UNET_CONFIG: dict[str, Any] = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=(4, 2, 1),
    num_res_blocks=2,
    channel_mult=(1, 2, 4, 4),
    num_head_channels=64,
    transformer_depth=1,
    context_dim=1024,
    use_linear=True,
    temporal_conv=True,
    temporal_attention=True,
    temporal_length=16,
    addition_attention=True,
    fps_cond=True,
    time_cond_proj_dim=256,
    motion_cond_proj_dim=None,
)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of integer timesteps (or fps values), shape (B, dim), order [cos, sin].

    freq_i = exp(-ln(max_period) · i / half) for i < half = dim // 2 (denominator ``half``,
    not ``half - 1`` as in the guidance embedding).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class UNetConfig(dict):
    """The constructor arguments, readable as keys or attributes (``unet.config.in_channels``),
    like a diffusers model's config."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"UNet config has no {name!r}") from None


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (the ResBlock / output norms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


# ---------------------------------------------------------------------------------------------
# convolutional blocks
# ---------------------------------------------------------------------------------------------
class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, [Dropout], Conv3d k=(3,1,1)) stages over frames, plus the input.

    Input and output are (B, C, T, H, W). The last convolution is zero-initialised, so a fresh
    block is the identity.
    """

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()
        kernel, padding = (3, 1, 1), (1, 0, 0)
        self.conv1 = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv3d(channels, channels, kernel, padding=padding))
        self.conv2 = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(channels, channels, kernel, padding=padding)
        )
        self.conv3 = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(channels, channels, kernel, padding=padding)
        )
        self.conv4 = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(channels, channels, kernel, padding=padding)
        )
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """Spatial residual block with timestep embedding, then (optionally) a temporal conv block.

    x: (B*T, C, H, W); emb: (B*T, E). ``num_frames`` unfolds the frames for the temporal block.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 temporal_conv: bool = True, temporal_dropout: float = 0.1):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        # The attribute name is misspelt ("temopral") in VideoCrafter2's checkpoints; we keep the
        # typo so that ``model.ckpt`` and the T2V-Turbo UNet files load strictly, key for key.
        self.temopral_conv = TemporalConvBlock(out_channels, temporal_dropout) if temporal_conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.temopral_conv is not None:
            bt, c, hh, ww = h.shape
            video = h.view(bt // num_frames, num_frames, c, hh, ww).transpose(1, 2)
            video = self.temopral_conv(video)
            h = video.transpose(1, 2).reshape(bt, c, hh, ww)
        return h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head (cross-)attention: softmax(q kᵀ / sqrt(d_head)) v with SDPA.

    ``context_dim=None`` makes it a self-attention (keys and values from ``x``).
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b = q.shape[0]
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, out.shape[2], -1))


class GEGLU(nn.Module):
    """Gated GELU: a · gelu(g) with [a, g] = proj(x)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention (or a second self-attention), GEGLU MLP.

    Registration order (attn1, ff, attn2, norm1, norm2, norm3) is the checkpoints' key order.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the H*W tokens with text cross-attention. x: (B*T, C, H, W)."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1, use_linear: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        bt, c, h, w = x.shape
        y = self.norm(x)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)  # (B*T, H*W, C)
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.use_linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(bt, -1, h, w)
        if not self.use_linear:
            y = self.proj_out(y)
        return x + y


class TemporalTransformer(nn.Module):
    """Transformer over the T frames at every pixel, self-attention only. x: (B, C, T, H, W).

    The GroupNorm runs over the whole clip (all frames together). Both attentions of each block
    are self-attentions (VC2's ``temporal_selfatt_only``). ``use_linear=False`` gives kernel-1
    Conv1d projections, as in ``init_attn``.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1, use_linear: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(inner, heads, dim_head, None) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv1d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x).permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)  # (B*H*W, C, T)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.transpose(1, 2)  # (B*H*W, T, C)
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y)
        if self.use_linear:
            y = self.proj_out(y).transpose(1, 2)
        else:
            y = self.proj_out(y.transpose(1, 2))
        y = y.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)
        return x + y


class TimestepEmbedSequential(nn.Sequential):
    """A UNet stage: runs each layer with the inputs it needs (embedding, context, frame count)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, num_frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                bt, c, h, w = x.shape
                video = x.view(bt // num_frames, num_frames, c, h, w).transpose(1, 2)
                x = layer(video).transpose(1, 2).reshape(bt, c, h, w)
            else:
                x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------
# the UNet
# ---------------------------------------------------------------------------------------------
class VC2UNet(nn.Module):
    """VideoCrafter2's text-to-video UNet (epsilon prediction).

    The constructor is the config: ``unet.config`` holds every argument and
    ``VC2UNet(**unet.config)`` rebuilds the same architecture.

    Args:
        in_channels / out_channels: latent channels (4).
        model_channels: width of the first level (320); the time embedding is 4x that.
        attention_resolutions: downsampling factors (1, 2, 4, ...) whose levels get spatial +
            temporal transformers; the middle block always has both.
        num_res_blocks: residual blocks per level (the decoder has one more).
        channel_mult: width multiplier per level.
        num_head_channels: channels per attention head (heads = width / num_head_channels).
        transformer_depth: transformer blocks per (spatial, temporal) transformer.
        context_dim: width of the text embedding (1024 for OpenCLIP ViT-H-14).
        use_linear: Linear (True) or 1x1-conv projections in the transformers (not ``init_attn``).
        temporal_conv / temporal_attention: the temporal conv blocks / temporal transformers.
        temporal_length: frames the model was trained on (informational; attention is length-free).
        addition_attention: the extra temporal transformer ``init_attn`` after the input conv
            (8 heads of ``num_head_channels``, Conv1d projections).
        fps_cond: add the fps embedding (``fps_embedding`` MLP) to the time embedding.
        time_cond_proj_dim: size of T2V-Turbo's guidance embedding; adds ``time_cond_proj``
            (Linear, no bias, -> model_channels) whose output is added to the sinusoidal
            timestep features before ``time_embed``. ``None`` = the VC2 teacher.
        motion_cond_proj_dim: T2V-Turbo v2's motion-guidance embedding size; adds
            ``motion_cond_proj`` (-> model_channels, no bias) and ``combine_proj``
            (2·model_channels -> model_channels, no bias). With ``motion_cond`` given, the guidance
            term becomes ``combine_proj(cat[time_cond_proj(w_emb), motion_cond_proj(m_emb)])``;
            the shapes are those of the released ``unet_mg.pt``, the combination rule is not
            checked against a reference output (no fixture exists for it).
        dropout: dropout in the ResBlocks (0 in VC2); the temporal conv blocks use
            ``temporal_conv_dropout`` (0.1 in VC2). Both act only in train mode.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_res_blocks: int = 2,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        use_linear: bool = True,
        temporal_conv: bool = True,
        temporal_attention: bool = True,
        temporal_length: int = 16,
        addition_attention: bool = True,
        fps_cond: bool = True,
        time_cond_proj_dim: int | None = None,
        motion_cond_proj_dim: int | None = None,
        dropout: float = 0.0,
        temporal_conv_dropout: float = 0.1,
    ):
        super().__init__()
        self.config = UNetConfig(
            in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
            attention_resolutions=list(attention_resolutions), num_res_blocks=num_res_blocks,
            channel_mult=list(channel_mult), num_head_channels=num_head_channels,
            transformer_depth=transformer_depth, context_dim=context_dim, use_linear=use_linear,
            temporal_conv=temporal_conv, temporal_attention=temporal_attention,
            temporal_length=temporal_length, addition_attention=addition_attention, fps_cond=fps_cond,
            time_cond_proj_dim=time_cond_proj_dim, motion_cond_proj_dim=motion_cond_proj_dim,
            dropout=dropout, temporal_conv_dropout=temporal_conv_dropout,
        )
        self.model_channels = model_channels
        self.gradient_checkpointing = False
        emb_dim = model_channels * 4

        # Registration order below is the checkpoints' key order.
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.fps_embedding = (
            nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) if fps_cond else None
        )
        self.time_cond_proj = nn.Linear(time_cond_proj_dim, model_channels, bias=False) if time_cond_proj_dim else None
        if motion_cond_proj_dim:
            if not time_cond_proj_dim:
                raise ValueError("`motion_cond_proj_dim` needs `time_cond_proj_dim` (the v2 UNet combines both)")
            self.motion_cond_proj = nn.Linear(motion_cond_proj_dim, model_channels, bias=False)
            self.combine_proj = nn.Linear(2 * model_channels, model_channels, bias=False)
        else:
            self.motion_cond_proj = self.combine_proj = None

        def res_block(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, dropout, temporal_conv, temporal_conv_dropout)

        def attention_layers(ch: int) -> list[nn.Module]:
            heads = ch // num_head_channels
            layers: list[nn.Module] = [SpatialTransformer(ch, heads, num_head_channels, context_dim, transformer_depth, use_linear)]
            if temporal_attention:
                layers.append(TemporalTransformer(ch, heads, num_head_channels, transformer_depth, use_linear))
            return layers

        # The ModuleList is registered before init_attn although it is filled afterwards.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        self.init_attn = (
            TimestepEmbedSequential(TemporalTransformer(model_channels, 8, num_head_channels, transformer_depth, use_linear=False))
            if addition_attention
            else None
        )
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention_layers(ch)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), *attention_layers(ch), res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers += attention_layers(ch)
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    # ---- helpers ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each UNet stage in the backward pass (training only)."""
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    def _run(self, stage: TimestepEmbedSequential, h, emb, context, num_frames: int) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, num_frames, use_reentrant=False)
        return stage(h, emb, context, num_frames)

    def time_embedding(self, timesteps, fps, timestep_cond, motion_cond) -> torch.Tensor:
        """(B, 4·model_channels): time_embed(sinusoid(t) + guidance terms) + fps_embedding(sinusoid(fps))."""
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        if timestep_cond is not None:
            if self.time_cond_proj is None:
                raise ValueError("`timestep_cond` was given but this UNet has no `time_cond_proj` (build it with time_cond_proj_dim)")
            cond = self.time_cond_proj(timestep_cond.to(t_emb.dtype))
            if motion_cond is not None:
                if self.motion_cond_proj is None:
                    raise ValueError("`motion_cond` was given but this UNet has no motion-conditioning layers")
                motion = self.motion_cond_proj(motion_cond.to(t_emb.dtype))
                cond = self.combine_proj(torch.cat([cond, motion], dim=-1))
            t_emb = t_emb + cond
        emb = self.time_embed(t_emb)
        if self.fps_embedding is not None:
            if fps is None:
                fps = 16
            if not torch.is_tensor(fps):
                fps = torch.full_like(timesteps, int(fps))
            fps = fps.to(timesteps.device).expand(timesteps.shape[0]) if fps.ndim == 0 else fps.to(timesteps.device)
            emb = emb + self.fps_embedding(timestep_embedding(fps, self.model_channels).to(emb.dtype))
        return emb

    # ---- forward ------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        fps: int | torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        motion_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: noisy latents (B, C, T, H, W).
            timesteps: (B,) integer timesteps (a scalar is broadcast).
            context: text embedding (B, L, context_dim).
            fps: frames per second, int or (B,) tensor; ``None`` = 16 (VC2's default).
            timestep_cond: guidance embedding (B, time_cond_proj_dim); ``None`` = no guidance term.
            motion_cond: v2 motion-guidance embedding (B, motion_cond_proj_dim).
        Returns:
            eps: (B, out_channels, T, H, W).
        """
        b, _, t, h, w = x.shape
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.to(x.device).expand(b)
        emb = self.time_embedding(timesteps, fps, timestep_cond, motion_cond).to(x.dtype)
        emb = emb.repeat_interleave(t, dim=0)
        context = context.to(x.dtype).repeat_interleave(t, dim=0)

        hidden = x.transpose(1, 2).reshape(b * t, -1, h, w)
        skips = []
        for index, stage in enumerate(self.input_blocks):
            hidden = self._run(stage, hidden, emb, context, t)
            if index == 0 and self.init_attn is not None:
                hidden = self._run(self.init_attn, hidden, emb, context, t)
            skips.append(hidden)
        hidden = self._run(self.middle_block, hidden, emb, context, t)
        for stage in self.output_blocks:
            hidden = self._run(stage, torch.cat([hidden, skips.pop()], dim=1), emb, context, t)
        out = self.out(hidden)
        return out.view(b, t, *out.shape[1:]).transpose(1, 2)
