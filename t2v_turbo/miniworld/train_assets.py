"""Train the mini world's models with fixed seeds and write them as small shipped assets.

Stages (each a function; ``build`` runs them in order and records ``training_log.json``):

1. ``train_vae``      diffusers ``AutoencoderKL`` 32x32 -> 4x8x8 on single frames; scale factor = 1 / latent std.
2. ``train_teacher``  diffusers ``UNet3DConditionModel`` (epsilon, scaled_linear 1000 steps) jointly with a
                      small transformers ``CLIPTextModel`` over the word tokenizer, 10% caption dropout
                      to the empty prompt; written as a diffusers ``TextToVideoSDPipeline`` folder.
3. ``train_image_reward``  open_clip ``CLIP`` (small custom config) contrastive on (single frame,
                      caption without the motion phrase).
4. ``train_video_reward``  our ViCLIP at tiny size contrastive on (clip, full caption).

Only the world's training split is used (the held-out (colour, shape) pairs never appear).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from t2v_turbo.miniworld import world
from t2v_turbo.miniworld.tokenizer import CONTEXT_LENGTH, MiniWorldTokenizer, save_hf_tokenizer, vocabulary

log = logging.getLogger("t2v_turbo.miniworld.build")

#: default number of optimiser steps per model (sized for ~40-50 min on 2 CPU cores)
DEFAULT_STEPS = {"vae": 300, "teacher": 450, "teacher_more": 550, "image_reward": 1500, "video_reward": 1200}
TEXT_HIDDEN = 64


# ---- configs ----------------------------------------------------------------------------
def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
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


# ---- 1. VAE --------------------------------------------------------------------------------
def train_vae(videos: np.ndarray, steps: int, batch_size: int = 32, lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
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
        # L1 + MSE on pixels; the object covers few pixels, so weight pixels far from the frame's median
        w = 1.0 + 4.0 * ((x - x.flatten(2).median(-1).values[..., None, None]).abs().amax(1, keepdim=True) > 0.2).float()
        loss = (w * ((rec - x).abs() + (rec - x) ** 2)).mean() + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 100 == 0:
            log.info("vae step %d loss %.4f", step, loss)
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


# ---- 2. teacher + text encoder ---------------------------------------------------------------
def train_teacher(latents: torch.Tensor, captions: list[str], steps: int, batch_size: int = 24, lr: float = 1e-3,
                  caption_dropout: float = 0.1, ema_decay: float = 0.99, seed: int = 0, init_from: Path | None = None):
    """Train (or, with ``init_from`` = a teacher folder, continue training) the UNet + text encoder."""
    from diffusers import UNet3DConditionModel
    from transformers import CLIPTextModel

    from distill.schedule import scaled_linear_alphas_cumprod

    torch.manual_seed(seed)
    if init_from is not None:
        unet = UNet3DConditionModel.from_pretrained(init_from, subfolder="unet", torch_dtype=torch.float32)
        text_encoder = CLIPTextModel.from_pretrained(init_from, subfolder="text_encoder", dtype=torch.float32)
    else:
        unet = UNet3DConditionModel(**unet_config())
        text_encoder = CLIPTextModel(text_encoder_config())
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
        a = abar[t].view(-1, 1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        emb = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update(step)
        losses.append(float(loss))
        if step % 50 == 0:
            log.info("teacher step %d loss %.4f (%.1fs)", step, np.mean(losses[-50:]), time.time() - t0)
    ema.copy_to()
    unet.eval()
    text_encoder.eval()
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr, "caption_dropout": caption_dropout, "ema_decay": ema_decay,
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


# ---- 3/4. rewards ----------------------------------------------------------------------------
def image_reward_config() -> dict:
    """open_clip ``CLIP`` kwargs of the mini world's image-text reward."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": len(vocabulary()), "width": 64, "heads": 2,
                     "layers": 2, "mlp_ratio": 2.0},
    }


def retrieval_accuracy(video_emb: torch.Tensor, text_emb: torch.Tensor, labels: list[int]) -> float:
    """Top-1 text->video retrieval: each caption's nearest video must have that caption (label index)."""
    sim = F.normalize(text_emb, dim=-1) @ F.normalize(video_emb, dim=-1).T  # (C, N)
    best = sim.argmax(1)
    return float(np.mean([labels[int(b)] == c for c, b in enumerate(best)]))


# ---- the whole build --------------------------------------------------------------------------
def build(out: str | Path, steps: dict | None = None, seed: int = 0, num_videos: int = 5000, stages=("vae", "teacher", "rewards"),
          threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    steps = {**DEFAULT_STEPS, **(steps or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.json"
    record = json.loads(log_path.read_text()) if log_path.is_file() else {}
    record.update({"seed": seed, "num_videos": num_videos, "machine": "2-core CPU, no GPU", "torch_threads": threads})
    t0 = time.time()
    videos, captions, _ = training_pool(num_videos, seed)
    record["render_seconds"] = time.time() - t0

    def save():
        log_path.write_text(json.dumps(record, indent=2))

    teacher_dir = out / "teacher"
    if "vae" in stages:
        vae, record["vae"] = train_vae(videos, steps["vae"], seed=seed)
        teacher_dir.mkdir(parents=True, exist_ok=True)
        vae.save_pretrained(out / "_vae_fp32")
        save()
    if "teacher" in stages:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(out / "_vae_fp32")
        cache = out / "_latents.pt"  # the encoded pool, reused when the teacher stage is re-run
        if cache.is_file():
            lat = torch.load(cache)
        else:
            lat = encode_pool(vae, videos, seed)
            torch.save(lat, cache)
        record["latent_std_after_scaling"] = float(lat.std())
        unet, text_encoder, record["teacher"] = train_teacher(lat, captions, steps["teacher"], seed=seed)
        save_teacher(teacher_dir, unet, vae, text_encoder)
        save()
    if "teacher_more" in stages:  # continue the teacher from its saved folder (a second phase at a lower lr)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(out / "_vae_fp32")
        lat = torch.load(out / "_latents.pt")
        unet, text_encoder, record["teacher_phase2"] = train_teacher(
            lat, captions, steps["teacher_more"], lr=5e-4, seed=seed + 1, init_from=teacher_dir)
        save_teacher(teacher_dir, unet, vae, text_encoder)
        save()
    if "rewards" in stages:
        from t2v_turbo.miniworld import train_rewards

        record["image_reward"] = train_rewards.train_and_save_image_reward(out / "image_reward", videos, captions, steps["image_reward"], seed)
        save()
        record["video_reward"] = train_rewards.train_and_save_video_reward(out / "video_reward", videos, captions, steps["video_reward"], seed)
        save()
    record["total_seconds"] = record.get("total_seconds", 0.0) + time.time() - t0
    save()
    return record


def main(argv=None):  # python -m t2v_turbo.miniworld.train_assets OUT [stages...]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0]
    stages = tuple(argv[1:]) or ("vae", "teacher", "rewards")
    build(out, stages=stages)


if __name__ == "__main__":
    main()
