"""Train the mini world's models with fixed seeds and write them as small assets.

Stages (each a function; ``build`` runs them in order and records ``training_log.json``):

1. ``vae``          ``train_vae``: diffusers ``AutoencoderKL`` 32x32 -> 8x8x8 (the coarse grid) on single frames;
                    scale factor = 1 / latent std.
2. ``vae_decoder``  ``finetune_vae_decoder``: sharper decoder on the frozen encoder (the latent space is unchanged).
3. ``rewards``      ``train_rewards``: open_clip ``CLIP`` on (single frame, caption without the motion phrase) and
                    our ViCLIP at tiny size with 2-frame tubelets on (clip, full caption), both contrastive.
4. ``text_encoder`` ``text_encoder_from_viclip``: the video reward's text tower as a transformers ``CLIPTextModel``,
                    the teacher's frozen text encoder (its motion words stay apart: ``text_distinctness``).
5. ``teacher``      ``train_flow_teacher`` over ``FLOW_TEACHER_PHASES``: a tiny diffusers ``WanTransformer3DModel``
                    trained with flow matching on the coarse latents, 10% caption dropout for guidance; written as
                    a flow-teacher folder (``t2v_turbo.adapters.wan.save_flow_teacher``) to ``coarse_teacher/``.
6. ``fine_vae``     ``train_vae`` + ``finetune_vae_decoder`` with ``FINE_VAE``: 32x32 -> 4x16x16, off-palette clips
                    in the decoder stage (the round trip keeps shape, which the coarse grid does not).
7. ``fine_teacher`` the same transformer layout on the fine latents, warm-started from the coarse teacher
                    (``warm_start_transformer``), over ``FINE_TEACHER_PHASES``; written to ``teacher/``.
8. ``eps_teacher``  (only when named) ``train_teacher`` over ``TEACHER_PHASES``: diffusers ``UNet3DConditionModel``
                    (epsilon, scaled_linear 1000 steps) jointly with a small ``CLIPTextModel``, written as a diffusers
                    ``TextToVideoSDPipeline`` folder: the recipe of the shipped v1 teacher.

Only the world's training split is used (the held-out (colour, shape) pairs never appear).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from miniworld import world
from miniworld.tokenizer import CONTEXT_LENGTH, MiniWorldTokenizer, save_hf_tokenizer, vocabulary
from t2v_turbo.diffusion.flow import shift_sigmas

log = logging.getLogger("miniworld.build")

#: optimiser steps of the VAE, its decoder fine-tuning and the two reward models
DEFAULT_STEPS = {"vae": 1200, "vae_decoder": 1500, "image_reward": 1500, "video_reward": 1500, "video_reward_variants": 1000,
                 "fine_vae": 2400, "fine_vae_decoder": 1500}

#: the teacher's training phases, in order; each continues from the previous phase's EMA weights (``seed`` is
#: added to the build's seed). This is the shipped teacher's history (``training_log.json``):
#: 1-3. plain epsilon loss, diffusers' dropout. The teacher barely followed the caption (MiniBench 0.53).
#: 4-5. v-weighted loss (``v_loss_weight``), then no dropout and batch 16: no better (0.55), because
#: 6-.  the teacher read the background from the initial noise, not from the caption (see ``offset_noise_like``):
#:      offset noise of std 0.3.
NUM_OFFSET_PHASES = 5  # how many 500-step offset-noise phases the shipped teacher got
TEACHER_PHASES: tuple[dict, ...] = (
    dict(steps=450, batch_size=24, lr=1e-3, loss_weighting="uniform", dropout=0.1, seed=0),
    dict(steps=550, batch_size=24, lr=5e-4, loss_weighting="uniform", dropout=0.1, seed=1),
    dict(steps=1200, batch_size=24, lr=5e-4, loss_weighting="uniform", dropout=0.1, seed=1),
    dict(steps=400, batch_size=24, lr=5e-4, loss_weighting="v", dropout=0.1, seed=5),
    dict(steps=800, batch_size=16, lr=1e-3, loss_weighting="v", dropout=0.0, seed=10),
    *(dict(steps=500, batch_size=16, lr=1e-3, loss_weighting="v", dropout=0.0, offset_noise=0.3, seed=20 + k)
      for k in range(NUM_OFFSET_PHASES)),
)
TEXT_HIDDEN = 64


# ---- configs ----------------------------------------------------------------------------
#: channels of the VAE's levels (each level after the first halves the frame: three levels give 8x8 latents)
VAE_BLOCKS = (16, 32, 64)


def vae_config(latent_channels: int = 4, block_out_channels: Sequence[int] = VAE_BLOCKS) -> dict:
    """The per-frame ``AutoencoderKL`` (32x32 -> ``latent_channels`` x s x s, s = 32 / 2^(levels - 1)). Four
    channels on the 8x8 grid cap MiniBench's shape score of a round trip at 0.76 (thin triangle tips and circle
    edges blur); eight keep it better (0.87)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
    )


def unet_config() -> dict:
    """The teacher UNet3D: the tiny two-level layout with the text encoder's width and wider norms/heads."""
    from t2v_turbo.testing import tiny_unet_config

    return tiny_unet_config(cross_attention_dim=TEXT_HIDDEN, norm_num_groups=16, attention_head_dim=8)


def text_encoder_config():
    from transformers import CLIPTextConfig

    vocab = vocabulary()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        pad_token_id=vocab["[PAD]"],
        bos_token_id=vocab["[BOS]"],
        eos_token_id=vocab["[EOS]"],
    )


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


# ---- data ---------------------------------------------------------------------------------
def training_pool(num_videos: int, seed: int = 0) -> tuple[np.ndarray, list[str], list[world.Attributes]]:
    """uint8 videos (N, T, H, W, 3), captions and attributes from the world's training split."""
    videos, captions, attrs = [], [], []
    for i in tqdm(range(num_videos), desc="render training videos", mininterval=5):
        s = world.sample_at(i, seed, "train")
        videos.append(s.video)
        captions.append(s.caption)
        attrs.append(s.attributes)
    assert not any(a.held_out for a in attrs)
    return np.stack(videos), captions, attrs


def off_palette_clips(num_videos: int, seed: int = 0, min_distance: float = 100.0) -> np.ndarray:
    """uint8 (N, T, H, W, 3) training-split clips with the object painted in a random colour at RGB distance
    >= ``min_distance`` from every palette colour. The VAE decoder sees each shape in many colours, so it does not
    learn the palette's colour-shape pairs as a prior (a red triangle, a held-out pair, decoded rounder); none of
    these clips is a held-out composition, nor a palette colour at all."""
    rng = np.random.default_rng([seed, 31337])
    palette = np.array(list(world.COLOURS.values()), dtype=np.float64)
    attributes = world.train_attributes()
    clips = []
    for _ in range(num_videos):
        rgb = rng.uniform(0, 255, 3)
        while np.linalg.norm(palette - rgb, axis=1).min() < min_distance:
            rgb = rng.uniform(0, 255, 3)
        clips.append(world.make_sample(attributes[rng.integers(len(attributes))], rng, object_rgb=rgb).video)
    return np.stack(clips)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))) * 0.9 + 0.1

    return f


class _EMA:
    def __init__(self, modules, decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def _optimizer_step(loss: torch.Tensor, opt, sched, params, ema: _EMA, step: int) -> float:
    """Backward, clip to norm 1, step the optimiser, its schedule and the EMA; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    ema.update(step)
    return loss.item()


# ---- 1. VAE --------------------------------------------------------------------------------
def vae_pixel_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE on pixels in [-1, 1], 5x weight on object pixels (those far from the frame's median colour):
    the object covers few pixels, and its edges decide MiniBench's shape score."""
    w = 1.0 + 4.0 * ((x - x.flatten(2).median(-1).values[..., None, None]).abs().amax(1, keepdim=True) > 0.2).float()
    return (w * ((rec - x).abs() + (rec - x) ** 2)).mean()


def train_vae(videos: np.ndarray, steps: int, batch_size: int = 32, lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0,
              latent_channels: int = 4, block_out_channels: Sequence[int] = VAE_BLOCKS):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(latent_channels, block_out_channels))
    frames = torch.from_numpy(videos.reshape(-1, *videos.shape[2:])).permute(0, 3, 1, 2)  # (N*T, 3, H, W) uint8
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(30, steps))
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.time()
    for step in tqdm(range(steps), desc="vae", mininterval=10):
        idx = torch.randint(len(frames), (batch_size,), generator=g)
        x = frames[idx].float() / 127.5 - 1
        post = vae.encode(x).latent_dist
        z = post.sample(g)
        rec = vae.decode(z).sample
        loss = vae_pixel_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            log.info("vae step %d loss %.4f", step, losses[-1])
    vae.eval()
    with torch.no_grad():
        sample = frames[torch.randint(len(frames), (512,), generator=g)].float() / 127.5 - 1
        lat = vae.encode(sample).latent_dist.sample(g)
        scale = float(1.0 / lat.std())
        rec = vae.decode(vae.encode(sample).latent_dist.mode()).sample
        psnr = float(10 * torch.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), sample)))
    vae.register_to_config(scaling_factor=scale)
    stats = {"steps": steps, "batch_size": batch_size, "seconds": time.time() - t0, "final_loss": float(np.mean(losses[-20:])),
             "scaling_factor": scale, "recon_psnr_db": psnr, "loss_curve": losses[:: max(1, steps // 50)]}
    return vae, stats


def finetune_vae_decoder(vae, videos: np.ndarray, steps: int, batch_size: int = 32, lr: float = 5e-4, seed: int = 0):
    """Train only ``post_quant_conv`` + decoder on the frozen encoder's posterior samples.

    The encoder, and with it the latent space the teacher was trained in, stays bit-identical, so a teacher
    trained on the old latents keeps working while decoded videos get sharper object edges.
    """
    torch.manual_seed(seed)
    frames = torch.from_numpy(videos.reshape(-1, *videos.shape[2:])).permute(0, 3, 1, 2)
    trainable = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    vae.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(30, steps))
    g = torch.Generator().manual_seed(seed + 7)
    losses = []
    t0 = time.time()
    for step in tqdm(range(steps), desc="vae decoder", mininterval=10):
        x = frames[torch.randint(len(frames), (batch_size,), generator=g)].float() / 127.5 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(g)
        loss = vae_pixel_loss(vae.decode(z).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0:
            log.info("vae decoder step %d loss %.4f", step, losses[-1])
    vae.requires_grad_(False)
    vae.eval()
    return vae, {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": time.time() - t0,
                 "final_loss": float(np.mean(losses[-20:])), "loss_curve": losses[:: max(1, steps // 50)]}


@torch.no_grad()
def encode_pool(vae, videos: np.ndarray, seed: int = 0, chunk: int = 256) -> torch.Tensor:
    """Scaled latents (N, 4, T, 8, 8) of the pool's videos (posterior samples with a fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    n, t = videos.shape[:2]
    frames = torch.from_numpy(videos.reshape(-1, *videos.shape[2:])).permute(0, 3, 1, 2)
    out = []
    for i in tqdm(range(0, len(frames), chunk), desc="encode pool", mininterval=10):
        x = frames[i : i + chunk].float() / 127.5 - 1
        out.append(vae.encode(x).latent_dist.sample(g) * vae.config.scaling_factor)
    lat = torch.cat(out)
    return lat.unflatten(0, (n, t)).transpose(1, 2).contiguous()


# ---- text encoder from the video reward -----------------------------------------------------
def text_encoder_from_viclip(text_tower):
    """The video reward's text tower (``rewards.viclip.ViCLIPTextTransformer``) as a transformers ``CLIPTextModel``.

    Both are CLIP's causal pre-LN text transformer with QuickGELU and a 4x MLP; only the names differ
    (``attn.in_proj`` holds q, k and v stacked). The tower was trained contrastively against clips with each
    caption's motion variants as hard negatives, so its hidden states keep the motion words apart, unlike a text
    encoder trained jointly with a teacher that never needed them (the shipped one: motion words 0.01-0.04
    relative L2 apart, colours 0.6). ``last_hidden_state`` equals the tower's final-LN output row for row, and
    the end-of-text row times the tower's ``text_projection`` is the reward's text feature.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = vocabulary()
    width = text_tower.token_embedding.embedding_dim
    blocks = text_tower.transformer.resblocks
    config = CLIPTextConfig(
        vocab_size=text_tower.token_embedding.num_embeddings, hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features, num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads, max_position_embeddings=text_tower.context_length,
        hidden_act="quick_gelu", layer_norm_eps=blocks[0].ln_1.eps, projection_dim=text_tower.text_projection.shape[1],
        pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[BOS]"], eos_token_id=vocab["[EOS]"],
    )
    state = {"embeddings.token_embedding.weight": text_tower.token_embedding.weight,
             "embeddings.position_embedding.weight": text_tower.positional_embedding,
             "final_layer_norm.weight": text_tower.ln_final.weight, "final_layer_norm.bias": text_tower.ln_final.bias}
    for i, block in enumerate(blocks):
        prefix = f"encoder.layers.{i}."
        for part, weight, bias in zip("qkv", block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            state[f"{prefix}self_attn.{part}_proj.weight"], state[f"{prefix}self_attn.{part}_proj.bias"] = weight, bias
        for ours, theirs in (("self_attn.out_proj", block.attn.out_proj), ("layer_norm1", block.ln_1),
                             ("layer_norm2", block.ln_2), ("mlp.fc1", block.mlp.c_fc), ("mlp.fc2", block.mlp.c_proj)):
            state[f"{prefix}{ours}.weight"], state[f"{prefix}{ours}.bias"] = theirs.weight, theirs.bias
    model = CLIPTextModel(config)
    model.load_state_dict({k: v.detach().float().clone() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


def relative_distances(text_encoder, base: str, variants: Sequence[str]) -> list[float]:
    """|E(v) - E(base)| / |E(base)| of the (L, D) last hidden states (``encode_clip_prompts``'s conditioning)."""
    with torch.no_grad():
        hidden = text_encoder(MiniWorldTokenizer()([base, *variants]))[0]
    return [float((h - hidden[0]).norm() / hidden[0].norm()) for h in hidden[1:]]


#: the caption the text encoder's distinctness is measured from, and its one-attribute variants
DISTINCTNESS_BASE = "a red circle moving left on a black background"


def text_distinctness(text_encoder, base: str = DISTINCTNESS_BASE) -> dict:
    """Relative L2 distances (``relative_distances``) from ``base`` to each of its one-attribute variants, per
    attribute, and the ratio min over motion / min over colour, shape and background (1 = motion words as
    distinct as the closest other attribute)."""
    import dataclasses

    from miniworld.train_rewards import ATTRIBUTE_VALUES

    attrs = world.parse_caption(base)
    out = {}
    for field, values in ATTRIBUTE_VALUES.items():
        variants = [world.caption_of(dataclasses.replace(attrs, **{field: v})) for v in values if v != getattr(attrs, field)]
        out[field] = dict(zip([v for v in values if v != getattr(attrs, field)], relative_distances(text_encoder, base, variants)))
    others = min(d for f in ("background", "colour", "shape") for d in out[f].values())
    return {"relative_l2_from": base, "distances": out, "motion_to_others_min_ratio": min(out["motion"].values()) / others}


# ---- 2. teacher + text encoder ---------------------------------------------------------------
def v_loss_weight(alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """Per-sample weight 1 / alpha_bar_t that turns the epsilon MSE into the v-prediction MSE.

    With v = sqrt(abar) eps - sqrt(1 - abar) x0 and an epsilon model, v_hat - v = (eps_hat - eps) / sqrt(abar),
    so |v_hat - v|^2 = |eps_hat - eps|^2 / abar. Uniform epsilon weights leave the high-noise steps, where the
    caption decides background, colour and motion, with a tiny share of the gradient; this weighting gives every
    noise level an x0-scale error (the model still predicts epsilon).
    """
    return 1.0 / alphas_cumprod_t


def offset_noise_like(latents: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Noise ``std * n[b, c]``, constant over frames and pixels, to add to the diffusion noise ("offset noise").

    The scaled_linear schedule keeps sqrt(abar_999) = 0.068 of the signal at its last step. The background covers
    most of a mini-world frame and fixes the latents' per-channel mean (background means differ by up to 2.3),
    while pure noise over a 4x8x8x8 latent has a mean of std 0.044 per channel: a teacher trained on plain noise
    reads the background from the noise instead of the caption, and at sampling time the initial noise picks it.
    An offset of std >> 0.068 * 2.3 hides that mean, so the caption has to carry it.
    """
    b, c = latents.shape[:2]
    return std * torch.randn((b, c) + (1,) * (latents.dim() - 2), generator=generator).expand_as(latents)


def load_teacher_modules(folder: str | Path | None = None, latent_channels: int = 4):
    """fp32 (UNet, text encoder) from a teacher folder, or freshly initialised ones when ``folder`` is None."""
    from diffusers import UNet3DConditionModel
    from transformers import CLIPTextModel

    if folder is None:
        config = {**unet_config(), "in_channels": latent_channels, "out_channels": latent_channels}
        return UNet3DConditionModel(**config), CLIPTextModel(text_encoder_config())
    return (UNet3DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32),
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32))


def train_teacher(unet, text_encoder, latents: torch.Tensor, captions: list[str], steps: int, batch_size: int = 24,
                  lr: float = 1e-3, caption_dropout: float = 0.1, ema_decay: float = 0.99, seed: int = 0,
                  loss_weighting: str = "v", dropout: float = 0.0, offset_noise: float = 0.0):
    """Train the UNet + text encoder in place for ``steps`` (one phase: warm-up, cosine decay, EMA weights at the end).

    ``loss_weighting``: ``"uniform"`` (plain epsilon MSE) or ``"v"`` (``v_loss_weight``).
    ``dropout``: probability given to every ``nn.Dropout`` of the UNet for this phase (diffusers builds the
    temporal convolutions with 0.1; the mini-world teacher underfits, so the later phases turn it off).
    ``offset_noise``: std of a per-(sample, channel) constant added to the noise (``offset_noise_like``).
    """
    from diffusers.models.attention_processor import AttnProcessor

    from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod

    if loss_weighting not in ("uniform", "v"):
        raise ValueError(f"loss_weighting must be 'uniform' or 'v', got {loss_weighting!r}")
    torch.manual_seed(seed)
    # plain bmm attention: about 20% faster than SDPA on CPU for these short sequences (8-64 tokens)
    unet.set_attn_processor(AttnProcessor())
    for m in unet.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    tokenizer = MiniWorldTokenizer()
    tokens = tokenizer(captions)
    empty = tokenizer([""])[0]
    abar = scaled_linear_alphas_cumprod(1000, 0.00085, 0.012).float()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(30, steps))
    ema = _EMA([unet, text_encoder], ema_decay)
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    t0 = time.time()
    unet.train()
    text_encoder.train()
    for step in tqdm(range(steps), desc="teacher", mininterval=10):
        idx = torch.randint(len(latents), (batch_size,), generator=g)
        z0 = latents[idx]
        ids = tokens[idx].clone()
        drop = torch.rand(batch_size, generator=g) < caption_dropout
        ids[drop] = empty
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        if offset_noise:
            eps = eps + offset_noise_like(z0, offset_noise, g)
        a = abar[t].view(-1, 1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        emb = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=emb).sample
        loss = (pred - eps).square().mean((1, 2, 3, 4))
        if loss_weighting == "v":
            loss = loss * v_loss_weight(abar[t])
        losses.append(_optimizer_step(loss.mean(), opt, sched, params, ema, step))
        if step % 50 == 0:
            log.info("teacher step %d loss %.4f (%.1fs)", step, np.mean(losses[-50:]), time.time() - t0)
    ema.copy_to()
    unet.eval()
    text_encoder.eval()
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr, "caption_dropout": caption_dropout, "ema_decay": ema_decay,
             "loss_weighting": loss_weighting, "dropout": dropout, "offset_noise": offset_noise,
             "seconds": time.time() - t0, "final_loss": float(np.mean(losses[-50:])), "loss_curve": losses[:: max(1, steps // 50)]}
    return unet, text_encoder, stats


def save_teacher(folder: Path, unet, vae, text_encoder, half: bool = True) -> Path:
    """Write the diffusers ``TextToVideoSDPipeline`` folder (fp16 weights on disk when ``half``)."""
    import copy

    from diffusers import TextToVideoSDPipeline
    from transformers import AutoTokenizer

    folder = Path(folder)
    save_hf_tokenizer(folder / "_tok")
    tokenizer = AutoTokenizer.from_pretrained(folder / "_tok")
    mods = [copy.deepcopy(m) for m in (unet, vae, text_encoder)]
    if half:  # UNet and VAE stored fp16 (diffusers loads them back as fp32); the tiny text encoder stays fp32
        mods[0], mods[1] = mods[0].half(), mods[1].half()
    pipe = TextToVideoSDPipeline(vae=mods[1], text_encoder=mods[2], tokenizer=tokenizer, unet=mods[0], scheduler=scheduler())
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(folder / "_tok")
    return folder


# ---- flow teacher (Wan-layout DiT) ------------------------------------------------------------
#: shift s of the flow teacher's sigmas, in training (sigma = s u / (1 + (s - 1) u), u uniform) and sampling
FLOW_SHIFT = 2.0
#: the flow teacher's phases, in order; each continues from the previous one's EMA weights (``seed`` is added to
#: the build's seed); a phase is the unit the build resumes at. From the fifth phase on the loss adds the
#: frame-difference term (``flow_matching_loss``). The teacher learns the motion last: "still" against "moving"
#: by 2,000 steps, the axis by 5,000, the sign between 11,000 and 15,000 (motion 0.52 -> 0.86); the shipped
#: teacher is all 38 phases, 19,000 steps: MiniBench 0.946, motion 1.000 (bench/RESULTS.md, mini world v2)
FLOW_TEACHER_PHASES: tuple[dict, ...] = tuple(
    dict(steps=500, batch_size=32, lr=1e-3 if k < 8 else 5e-4, seed=100 + k, temporal_loss_weight=1.0 if k >= 4 else 0.0)
    for k in range(38))


def flow_transformer_config(latent_channels: int = 8, text_dim: int = TEXT_HIDDEN, latent_size: int = 8) -> dict:
    """The flow teacher: a ``WanTransformer3DModel`` with 4 blocks of 4 heads x 24 channels over latent patches of
    a quarter of the latent frame (2x2 on 8x8 latents: 8 frames x 4 x 4 = 128 tokens a video). Every token
    carries its frame in the 3D rotary positions (head channels split 8/8/8 over frame/height/width) and reads the
    caption through cross-attention, so the caption's motion word can move the object frame by frame (a UNet3D's
    temporal layers see neither)."""
    from t2v_turbo.testing import tiny_wan_transformer_config

    patch = latent_size // 4
    return {**tiny_wan_transformer_config(latent_channels, text_dim), "num_attention_heads": 4, "attention_head_dim": 24,
            "freq_dim": 64, "ffn_dim": 384, "num_layers": 4, "rope_max_seq_len": 32, "patch_size": (1, patch, patch)}


def flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)


def flow_matching_loss(error: torch.Tensor, temporal_loss_weight: float = 0.0) -> torch.Tensor:
    """mean |e|^2 + w mean |D e|^2 of the velocity error e = v_hat - v (B, C, T, H, W), D the difference between
    consecutive frames: an error that is the same in every frame (appearance) cancels in D, one that changes from
    frame to frame (a wrong displacement) does not, so motion errors get a gradient of their own instead of a
    small share of the MSE."""
    loss = error.square().mean()
    if temporal_loss_weight:
        loss = loss + temporal_loss_weight * error.diff(dim=2).square().mean()
    return loss


def _draw_flow_batch(latents: torch.Tensor, labels: torch.Tensor, size: int, caption_dropout: float, shift: float,
                     g: torch.Generator) -> tuple:
    """(x0, caption rows, caption-dropout mask, sigma (size, 1, 1, 1, 1), eps) of ``size`` random pool videos,
    drawn from ``g`` in this order."""
    idx = torch.randint(len(latents), (size,), generator=g)
    x0 = latents[idx]
    dropped = torch.rand(size, generator=g) < caption_dropout
    sigma = shift_sigmas(torch.rand(size, generator=g), shift).view(-1, 1, 1, 1, 1)
    return x0, labels[idx], dropped, sigma, torch.randn(x0.shape, generator=g)


def with_time_reversed_pairs(x0: torch.Tensor, rows: torch.Tensor, dropped: torch.Tensor, sigma: torch.Tensor,
                             eps: torch.Tensor, reversed_rows: torch.Tensor) -> tuple:
    """A flow batch followed by itself played backwards: the frames (dim 2) of x0 and eps reversed, each caption
    row replaced by its time-reversed caption's (``reversed_rows``), sigma and the caption dropout repeated."""
    return (torch.cat([x0, x0.flip(2)]), torch.cat([rows, reversed_rows[rows]]), dropped.repeat(2),
            sigma.repeat(2, 1, 1, 1, 1), torch.cat([eps, eps.flip(2)]))


def time_reversal_rows(captions: Sequence[str]) -> torch.Tensor:
    """Row i: the index in ``captions`` of captions[i] played backwards (``world.time_reversed_caption``); raises
    naming the caption whose reversal is missing."""
    row = {c: i for i, c in enumerate(captions)}
    missing = [c for c in captions if world.time_reversed_caption(c) not in row]
    if missing:
        raise ValueError(f"time-reversal pairs: the reversal of {missing[0]!r} is not among the training captions")
    return torch.tensor([row[world.time_reversed_caption(c)] for c in captions])


def train_flow_teacher(transformer, latents: torch.Tensor, caption_embeddings: torch.Tensor, labels: torch.Tensor,
                       empty_embedding: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 1e-3,
                       caption_dropout: float = 0.1, ema_decay: float = 0.995, seed: int = 0, shift: float = FLOW_SHIFT,
                       temporal_loss_weight: float = 0.0, time_reversal_pairs: bool = False,
                       reversed_rows: torch.Tensor | None = None, trainable: Sequence[str] | None = None):
    """Flow matching in place for ``steps`` (one phase: warm-up, cosine decay, EMA weights at the end).

    x_sigma = (1 - sigma) x0 + sigma eps and the regression target v = eps - x0 (``t2v_turbo.diffusion.flow``),
    the network conditioned on t = 1000 sigma; sigma = shift(u), u uniform. The text encoder is frozen: its
    (L, D) outputs of every training caption come precomputed in ``caption_embeddings`` (``labels[i]`` is the
    row of latent i's caption); ``caption_dropout`` of a batch gets the empty prompt's, for guidance.
    The loss is ``flow_matching_loss`` (``temporal_loss_weight``: the weight of its frame-difference term).

    ``time_reversal_pairs``: the second half of each batch is the first half played backwards (frames reversed)
    under the time-reversed caption (``reversed_rows[i]``: the row of caption i's, ``time_reversal_rows``), with
    the same noise reversed and the same sigma and caption dropout. The two inputs of a pair then differ only in
    frame order, so the caption's motion sign is the one thing that tells the network which target it has: a
    direct gradient for the direction, which the plain loss left to the noise (the world's distribution is
    unchanged, time reversal being one of its symmetries).

    ``trainable``: train only the parameters whose names start with one of these prefixes (the others frozen for
    the phase), e.g. a warm-started transformer's new ``patch_embedding`` and ``proj_out`` under its kept blocks.
    """
    from t2v_turbo.diffusion.flow import flow_add_noise, flow_model_timesteps, flow_velocity

    torch.manual_seed(seed)
    for name, p in transformer.named_parameters():
        p.requires_grad_(trainable is None or name.startswith(tuple(trainable)))
    params = [p for p in transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(30, steps))
    ema = _EMA([transformer], ema_decay)
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    t0 = time.time()
    transformer.train()
    if time_reversal_pairs and (reversed_rows is None or batch_size % 2):
        raise ValueError("time_reversal_pairs needs reversed_rows and an even batch_size")
    for step in tqdm(range(steps), desc="flow teacher", mininterval=10):
        if time_reversal_pairs:
            half = _draw_flow_batch(latents, labels, batch_size // 2, caption_dropout, shift, g)
            x0, rows, dropped, sigma, eps = with_time_reversed_pairs(*half, reversed_rows)
        else:
            x0, rows, dropped, sigma, eps = _draw_flow_batch(latents, labels, batch_size, caption_dropout, shift, g)
        text = caption_embeddings[rows].clone()
        text[dropped] = empty_embedding
        pred = transformer(hidden_states=flow_add_noise(x0, eps, sigma), timestep=flow_model_timesteps(sigma.flatten()),
                           encoder_hidden_states=text, return_dict=False)[0]
        loss = flow_matching_loss(pred - flow_velocity(x0, eps), temporal_loss_weight)
        losses.append(_optimizer_step(loss, opt, sched, params, ema, step))
        if step % 50 == 0:
            log.info("flow teacher step %d loss %.4f (%.1fs)", step, np.mean(losses[-50:]), time.time() - t0)
    ema.copy_to()
    transformer.eval().requires_grad_(True)
    return transformer, {"steps": steps, "batch_size": batch_size, "lr": lr, "caption_dropout": caption_dropout,
                         "ema_decay": ema_decay, "shift": shift, "temporal_loss_weight": temporal_loss_weight,
                         "time_reversal_pairs": time_reversal_pairs, "trainable": list(trainable) if trainable else "all",
                         "seconds": time.time() - t0,
                         "final_loss": float(np.mean(losses[-50:])), "loss_curve": losses[:: max(1, steps // 50)]}


def warm_start_transformer(transformer, source: dict[str, torch.Tensor]) -> list[str]:
    """Copy into ``transformer`` every tensor of the state dict ``source`` (another flow teacher's) whose name and
    shape match, and return the names that keep their initial values.

    The fine-grid teacher keeps the coarse one's token grid (4x4 tokens a frame on either latent grid), so only
    the patch embedding and the output projection change shape; the blocks, which hold what the coarse teacher
    learnt about captions, positions and motion, carry over."""
    state = transformer.state_dict()
    kept = {k: v.to(state[k].dtype) for k, v in source.items() if k in state and v.shape == state[k].shape}
    transformer.load_state_dict(kept, strict=False)
    return sorted(set(state) - set(kept))


# ---- the whole build --------------------------------------------------------------------------
#: the build's stages, in order; ``eps_teacher`` (the UNet3D epsilon teacher over ``TEACHER_PHASES``) is not run
#: by default
STAGES = ("vae", "vae_decoder", "rewards", "text_encoder", "video_reward", "teacher", "fine_vae", "fine_teacher",
          "eps_teacher")
DEFAULT_STAGES = STAGES[:8]
#: latent channels of the coarse VAE (8x8 latents)
LATENT_CHANNELS = 8
#: the fine VAE (16x16 latents; ``vae_blocks`` its levels): on the coarse 8x8 grid the round trip's held-out shape
#: stays at 0.73-0.89 whatever the channels; two levels of 16 and 32 channels with off-palette clips in the decoder
#: stage keep every MiniBench dimension >= 0.95 (bench/RESULTS.md, mini world v2)
FINE_VAE = {"latent_channels": 4, "vae_blocks": (16, 32), "decoder_off_palette": 2500}
#: the fine teacher's phases, warm-started from the coarse teacher (``warm_start_transformer``): first only the new
#: patch embedding and output projection under the coarse teacher's frozen blocks, then everything at the coarse
#: teacher's late learning rate. Trained from scratch on the fine grid, a teacher had not learnt the motion's
#: sign after 24,500 steps; warm-started it has after 2,000 (bench/RESULTS.md)
FINE_TEACHER_PHASES: tuple[dict, ...] = (
    dict(steps=500, batch_size=32, lr=1e-3, seed=200, temporal_loss_weight=1.0, trainable=("patch_embedding", "proj_out")),
    *(dict(steps=500, batch_size=32, lr=5e-4, seed=201 + k, temporal_loss_weight=1.0) for k in range(15)))


def _resume_phases(record: dict, key: str, checkpoint: Path, log_path: Path, modules: dict) -> list:
    """The finished phases of ``record[key]``, with ``modules`` loaded from ``checkpoint`` when there are any."""
    done = record.setdefault(key, [])
    if done:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{log_path} records {len(done)} finished {key} but {checkpoint} is missing; "
                                    f"remove {key!r} from the log to train from scratch")
        state = torch.load(checkpoint, weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state[name])
    return done


def _save_checkpoint(checkpoint: Path, modules: dict) -> None:
    tmp = checkpoint.with_suffix(".tmp")
    torch.save({name: module.state_dict() for name, module in modules.items()}, tmp)
    tmp.replace(checkpoint)  # atomic: a crash never leaves half a checkpoint


def caption_embeddings(text_encoder, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique captions' (K, L, D) conditioning, (N,) row of each caption, the empty prompt's (L, D)), encoded as
    the adapters encode prompts (``encode_clip_prompts`` over the teacher's tokenizer)."""
    from miniworld.tokenizer import build_hf_tokenizer
    from t2v_turbo.adapters.diffusers_t2v import encode_clip_prompts

    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    tokenizer = build_hf_tokenizer()
    with torch.no_grad():
        table = encode_clip_prompts(tokenizer, text_encoder, unique + [""])
    return table[:-1], torch.tensor([row[c] for c in captions]), table[-1]


def _vae_stages(vae_dir: Path, videos: np.ndarray, steps: int, decoder_steps: int, seed: int, latent_channels: int,
                vae_blocks: Sequence[int], decoder_off_palette: int, record: dict, key: str, train: bool) -> None:
    """``train_vae`` into ``vae_dir`` (when ``train``), then ``finetune_vae_decoder`` on its frozen encoder with
    ``decoder_off_palette`` off-palette clips added; statistics into ``record[key]`` and ``record[key + "_decoder"]``."""
    from diffusers import AutoencoderKL

    if train:
        vae, record[key] = train_vae(videos, steps, seed=seed, latent_channels=latent_channels, block_out_channels=vae_blocks)
        vae.save_pretrained(vae_dir)
    if decoder_steps:
        clips = np.concatenate([videos, off_palette_clips(decoder_off_palette, seed)]) if decoder_off_palette else videos
        vae, record[key + "_decoder"] = finetune_vae_decoder(AutoencoderKL.from_pretrained(vae_dir), clips, decoder_steps, seed=seed)
        record[key + "_decoder"]["off_palette_clips"] = decoder_off_palette
        vae.save_pretrained(vae_dir)


def _encoded_pool(vae_dir: Path, videos: np.ndarray, seed: int, cache: Path) -> tuple:
    """(the VAE, the pool's latents), encoded once into ``cache`` (an encoder never changes after its stage)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    if cache.is_file():
        return vae, torch.load(cache, weights_only=True)
    latents = encode_pool(vae, videos, seed)
    torch.save(latents, cache)
    return vae, latents


def _run_phases(phases: Sequence[dict], done: list, train_phase, modules: dict, checkpoint: Path, seed: int,
                threads: int, save) -> None:
    """Run the unfinished ``phases`` (``train_phase(seed=..., **phase)`` trains ``modules`` in place and returns the
    phase's statistics), checkpointing the fp32 weights and logging (``save``) after each."""
    for phase in phases[len(done):]:
        phase = dict(phase)
        phase_seed = seed + phase.pop("seed")
        stats = train_phase(seed=phase_seed, **phase)
        _save_checkpoint(checkpoint, modules)
        done.append({**stats, "seed": phase_seed, "threads": threads})
        save()


def _flow_teacher_stage(transformer, phases: Sequence[dict], done: list, latents: torch.Tensor, captions: list[str],
                        text_encoder, seed: int, threads: int, checkpoint: Path, save) -> None:
    """Run the unfinished ``phases`` of a flow teacher (``_run_phases``) on the frozen text encoder's conditioning."""
    table, labels, empty = caption_embeddings(text_encoder, captions)
    reversed_rows = None  # the table's rows are the sorted unique captions (``caption_embeddings``)
    if any(phase.get("time_reversal_pairs") for phase in phases[len(done):]):
        reversed_rows = time_reversal_rows(sorted(set(captions)))
    _run_phases(phases, done, lambda **phase: train_flow_teacher(transformer, latents, table, labels, empty,
                                                                 reversed_rows=reversed_rows, **phase)[1],
                {"transformer": transformer}, checkpoint, seed, threads, save)


def build(out: str | Path, steps: dict | None = None, seed: int = 0, num_videos: int = 5000,
          stages: Sequence[str] = DEFAULT_STAGES, threads: int = 1,
          teacher_phases: Sequence[dict] = FLOW_TEACHER_PHASES, eps_teacher_phases: Sequence[dict] = TEACHER_PHASES,
          latent_channels: int = LATENT_CHANNELS, vae_blocks: Sequence[int] = VAE_BLOCKS, decoder_off_palette: int = 0,
          fine_vae: dict = FINE_VAE, fine_teacher_phases: Sequence[dict] = FINE_TEACHER_PHASES) -> dict:
    """Run ``stages`` into ``out`` and record every model's statistics in ``out/training_log.json``.

    Order: the coarse VAE (8x8 latents; ``latent_channels``, levels ``vae_blocks``, ``decoder_off_palette``
    off-palette clips in its decoder stage), rewards (the image reward and the video reward's first phase,
    contrastive over captions), text encoder (the first phase's text tower, frozen for the teachers), the video
    reward's second phase (adds videos that differ in one attribute as negatives,
    ``train_rewards.sample_ranking_loss``), the coarse flow teacher (``teacher_phases``, written to
    ``coarse_teacher/``), the fine VAE (``fine_vae``: 16x16 latents) and the fine teacher, warm-started from the
    coarse one (``fine_teacher_phases``, written to ``teacher/``): coarse to fine, because on the fine grid a
    teacher trained from scratch learnt the motion's sign too late to build.

    The teacher stages are resumable: after each phase the fp32 weights go to a checkpoint and the phase's
    statistics to the log, and a re-run continues after the last finished phase. A new VAE or text encoder
    discards the progress of the teachers trained on its latents or conditioning.
    """
    from transformers import CLIPTextModel

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown build stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    torch.set_num_threads(threads)
    steps = {**DEFAULT_STEPS, **(steps or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.json"
    record = json.loads(log_path.read_text()) if log_path.is_file() else {}
    vae_dir, fine_vae_dir, text_dir = out / "_vae_fp32", out / "_fine_vae_fp32", out / "_text_encoder"
    flow_checkpoint, fine_checkpoint, eps_checkpoint = (out / "_flow_teacher_fp32.pt", out / "_fine_teacher_fp32.pt",
                                                        out / "_teacher_fp32.pt")
    fine_from_scratch = "fine_vae" in stages or not record.get("fine_teacher_phases")
    if "fine_teacher" in stages and fine_from_scratch and "teacher" not in stages and not flow_checkpoint.is_file():
        raise FileNotFoundError(f"fine_teacher: {flow_checkpoint} (the coarse teacher it starts from) is missing; "
                                "run the teacher stage first")
    record.update({"seed": seed, "num_videos": num_videos, "machine": "2-core CPU, no GPU", "torch_threads": threads})
    t0 = time.time()
    videos, captions, _ = training_pool(num_videos, seed)
    record["render_seconds"] = time.time() - t0

    def save():
        log_path.write_text(json.dumps(record, indent=2))

    coarse, fine = ((flow_checkpoint, "flow_teacher_phases"), (eps_checkpoint, "teacher_phases")), (fine_checkpoint, "fine_teacher_phases")

    def discard(*teachers, latents: Path | None = None):
        if latents is not None:
            latents.unlink(missing_ok=True)
        for path, key in teachers:
            path.unlink(missing_ok=True)
            record.pop(key, None)

    if "vae" in stages or "vae_decoder" in stages:
        _vae_stages(vae_dir, videos, steps["vae"], steps["vae_decoder"] if "vae_decoder" in stages else 0, seed,
                    latent_channels, vae_blocks, decoder_off_palette, record, "vae", train="vae" in stages)
        if "vae" in stages:
            discard(*coarse, fine, latents=out / "_latents.pt")
        save()
    if "rewards" in stages:
        from miniworld import train_rewards

        record["image_reward"] = train_rewards.train_and_save_image_reward(out / "image_reward", videos, captions, steps["image_reward"], seed)
        save()
        record["video_reward_base"] = train_rewards.train_and_save_video_reward(
            out / "_video_reward_base", videos, captions, steps["video_reward"], seed, variant_fields=())
        save()
    if "text_encoder" in stages:
        from miniworld.train_rewards import build_video_reward

        text_encoder = text_encoder_from_viclip(build_video_reward(out / "_video_reward_base").model.text_encoder)
        text_encoder.save_pretrained(text_dir)
        record["text_encoder"] = {"source": "text tower of the video reward's first phase", **text_distinctness(text_encoder)}
        discard(*coarse, fine)
        save()
    if "video_reward" in stages:
        from miniworld import train_rewards

        record["video_reward"] = train_rewards.train_and_save_video_reward(
            out / "video_reward", videos, captions, steps["video_reward_variants"], seed, lr=5e-4, init=out / "_video_reward_base")
        save()
    if "teacher" in stages or "fine_teacher" in stages:
        from diffusers import WanTransformer3DModel

        from miniworld.tokenizer import build_hf_tokenizer
        from t2v_turbo.adapters.wan import save_flow_teacher

        text_encoder = CLIPTextModel.from_pretrained(text_dir).eval().requires_grad_(False)

        def new_transformer(latents: torch.Tensor):
            torch.manual_seed(seed)
            return WanTransformer3DModel(**flow_transformer_config(latents.shape[1], text_encoder.config.hidden_size,
                                                                   latents.shape[-1]))
    if "teacher" in stages:
        vae, lat = _encoded_pool(vae_dir, videos, seed, out / "_latents.pt")
        record["latent_std_after_scaling"] = float(lat.std())
        transformer = new_transformer(lat)
        done = _resume_phases(record, "flow_teacher_phases", flow_checkpoint, log_path, {"transformer": transformer})
        _flow_teacher_stage(transformer, teacher_phases, done, lat, captions, text_encoder, seed, threads, flow_checkpoint, save)
        save_flow_teacher(out / "coarse_teacher", transformer, vae, text_encoder, build_hf_tokenizer(), flow_scheduler())
    if "fine_vae" in stages:
        _vae_stages(fine_vae_dir, videos, steps["fine_vae"], steps["fine_vae_decoder"], seed, fine_vae["latent_channels"],
                    fine_vae["vae_blocks"], fine_vae["decoder_off_palette"], record, "fine_vae", train=True)
        discard(fine, latents=out / "_fine_latents.pt")
        save()
    if "fine_teacher" in stages:
        vae, lat = _encoded_pool(fine_vae_dir, videos, seed, out / "_fine_latents.pt")
        record["fine_latent_std_after_scaling"] = float(lat.std())
        transformer = new_transformer(lat)
        done = _resume_phases(record, "fine_teacher_phases", fine_checkpoint, log_path, {"transformer": transformer})
        if not done:
            coarse_state = torch.load(flow_checkpoint, weights_only=True)["transformer"]
            record["fine_teacher_init"] = {"coarse_teacher_phases": len(record.get("flow_teacher_phases", [])),
                                           "reinitialised": warm_start_transformer(transformer, coarse_state)}
        _flow_teacher_stage(transformer, fine_teacher_phases, done, lat, captions, text_encoder, seed, threads, fine_checkpoint, save)
        save_flow_teacher(out / "teacher", transformer, vae, text_encoder, build_hf_tokenizer(), flow_scheduler())
    if "eps_teacher" in stages:
        vae, lat = _encoded_pool(vae_dir, videos, seed, out / "_latents.pt")
        unet, text_encoder = load_teacher_modules(latent_channels=lat.shape[1])
        modules = {"unet": unet, "text_encoder": text_encoder}
        done = _resume_phases(record, "teacher_phases", eps_checkpoint, log_path, modules)
        _run_phases(eps_teacher_phases, done, lambda **phase: train_teacher(unet, text_encoder, lat, captions, **phase)[2],
                    modules, eps_checkpoint, seed, threads, save)
        save_teacher(out / "eps_teacher", unet, vae, text_encoder)
    record["total_seconds"] = record.get("total_seconds", 0.0) + time.time() - t0
    save()
    return record
