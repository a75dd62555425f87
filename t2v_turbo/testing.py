"""Builders of tiny teachers in the diffusers (ModelScope) layout, for tests, benches and CI.

A tiny teacher is written to disk exactly like a real one (``save_pretrained`` of every
component plus ``model_index.json``), so code under test loads it through the same
``from_pretrained`` path it uses for ``ali-vilab/text-to-video-ms-1.7b``. Nothing is downloaded:
the tokenizer is a word-level ``PreTrainedTokenizerFast`` built with the ``tokenizers`` library,
and every weight is drawn from a seeded generator.

Sizes are chosen so that a UNet forward on (2, 4, 4, 8, 8) latents takes milliseconds on one
CPU core while every input still matters:

- ``norm_num_groups=8`` keeps several channels per GroupNorm group. With one channel per group
  the per-channel timestep embedding a ResNet block adds before its second GroupNorm would be
  normalised away, and the UNet would be blind to the timestep and to ``timestep_cond``.
- parameters that diffusers initialises to exactly zero or one are re-drawn around those
  values, so no branch of the tiny network is an identity that could hide a wiring bug.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

#: the words the tiny tokenizer knows; anything else maps to ``[UNK]``
DEFAULT_VOCABULARY: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "at", "is",
    "cat", "dog", "bird", "fish", "horse", "car", "boat", "tree", "house", "person",
    "red", "green", "blue", "yellow", "white", "black", "small", "big", "fast", "slow",
    "running", "jumping", "flying", "swimming", "walking", "sitting", "dancing", "playing",
    "beach", "forest", "city", "street", "sky", "sea", "river", "mountain", "snow", "rain",
    "sunset", "night", "day", "video", "photo", "cinematic", "slow-motion", "close-up",
)
SPECIAL_TOKENS = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]", "unk": "[UNK]"}


def build_word_tokenizer(vocabulary: Sequence[str] = DEFAULT_VOCABULARY, model_max_length: int = 16):
    """A word-level ``PreTrainedTokenizerFast``: lower-cased whitespace words, ``[BOS] ... [EOS]``.

    Ids 0..3 are ``[PAD]``, ``[BOS]``, ``[EOS]``, ``[UNK]``; padding is on the right, as CLIP's.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in vocabulary:
        vocab.setdefault(word.lower(), len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=bos,
        eos_token=eos,
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="right",
    )


def redraw_degenerate_parameters(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-draw parameters that are all zeros (as 0.05·randn) or all ones (as 1 + 0.1·randn)."""
    with torch.no_grad():
        for param in module.parameters():
            if torch.all(param == 0):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
            elif torch.all(param == 1):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))


def tiny_unet_config(
    cross_attention_dim: int = 32,
    time_cond_proj_dim: int | None = None,
    norm_num_groups: int = 8,
    attention_head_dim: int = 4,
) -> dict:
    """Constructor kwargs of the tiny ``UNet3DConditionModel`` (2 levels, one cross-attention level)."""
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def build_tiny_diffusers_t2v(
    folder: str | Path,
    seed: int = 0,
    vocabulary: Sequence[str] = DEFAULT_VOCABULARY,
    text_hidden_size: int = 32,
    max_text_length: int = 16,
    latent_channels: int = 4,
) -> Path:
    """Write a tiny ModelScope-layout text-to-video model to ``folder`` and return the path.

    Layout (what ``TextToVideoSDPipeline.from_pretrained(folder)`` reads): ``unet/``
    (UNet3DConditionModel), ``vae/`` (AutoencoderKL, 3 -> ``latent_channels``, downsampling x2),
    ``text_encoder/`` (CLIPTextModel), ``tokenizer/`` (word-level fast tokenizer),
    ``scheduler/`` (DDIMScheduler with the ModelScope schedule) and ``model_index.json``.
    The same ``seed`` always writes the same weights.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = build_word_tokenizer(vocabulary, model_max_length=max_text_length)

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**tiny_unet_config(cross_attention_dim=text_hidden_size))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden_size,
            intermediate_size=2 * text_hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_text_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    for module in (unet, vae, text_encoder):
        redraw_degenerate_parameters(module, generator)
        module.eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipeline = TextToVideoSDPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_caption_folder(folder: str | Path, captions: Sequence[str], seed: int = 0) -> Path:
    """A ``VideoCaptionFolder`` of small real mp4 clips (10 frames, 20x24, brightening over time)
    with one ``clipN.txt`` caption each."""
    import numpy as np

    from t2v_turbo.video_io import write_mp4

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, caption in enumerate(captions):
        base = rng.integers(0, 255, size=(1, 20, 24, 3))
        frames = np.clip(base + 8 * np.arange(10)[:, None, None, None], 0, 255).astype(np.uint8)
        write_mp4(folder / f"clip{i}.mp4", frames, fps=8)
        (folder / f"clip{i}.txt").write_text(caption)
    return folder


def write_preference_pairs(folder: str | Path, captions: Sequence[str], seed: int = 0,
                           dimensions: Sequence[str] = ("VQ", "MQ", "TA")) -> Path:
    """A preference CSV (``pairs.csv``: ``prompt``, ``video_a``, ``video_b``, a label per dimension, ``Overall``
    and the scores ``{dim}_a`` / ``{dim}_b``) of two small mp4 clips per caption (10 frames, 20x24, one
    brightening, one darkening over time); scores are drawn from ``seed`` (0..2) and the labels follow them.
    Returns the CSV's path."""
    import csv

    import numpy as np

    from t2v_turbo.video_io import write_mp4

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def label(a: float, b: float) -> str:
        return "A" if a > b else "B" if b > a else "tie"

    path = folder / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        columns = ["prompt", "video_a", "video_b", *dimensions, "Overall"]
        writer = csv.DictWriter(f, fieldnames=columns + [f"{d}_{s}" for d in dimensions for s in "ab"])
        writer.writeheader()
        for i, caption in enumerate(captions):
            row = {"prompt": caption}
            for side, direction in (("a", 1), ("b", -1)):
                base = rng.integers(60, 196, size=(1, 20, 24, 3))
                frames = np.clip(base + direction * 8 * np.arange(10)[:, None, None, None], 0, 255).astype(np.uint8)
                write_mp4(folder / f"pair{i}_{side}.mp4", frames, fps=8)
                row[f"video_{side}"] = f"pair{i}_{side}.mp4"
                row.update({f"{d}_{side}": int(rng.integers(0, 3)) for d in dimensions})
            row.update({d: label(row[f"{d}_a"], row[f"{d}_b"]) for d in dimensions})
            row["Overall"] = label(sum(row[f"{d}_a"] for d in dimensions), sum(row[f"{d}_b"] for d in dimensions))
            writer.writerow(row)
    return path


def tiny_wan_transformer_config(in_channels: int = 4, text_dim: int = 32) -> dict:
    """Constructor kwargs of a tiny ``WanTransformer3DModel``: 2 blocks of 2 heads x 12 channels
    (rotary split 4/4/4 over frames/height/width), patch (1, 2, 2), 32 sinusoidal timestep features."""
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=in_channels,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def tiny_wan_vae_config(z_dim: int = 4, wan22: bool = False) -> dict:
    """Constructor kwargs of a tiny ``AutoencoderKLWan`` with Wan's compression (4x in time, 8x in
    space: three spatial and two temporal downsamplings) and per-channel latents mean/std.
    ``wan22``: Wan2.2 TI2V's layout, residual blocks on 2x2-patchified pixels (16x in space)."""
    wan22_kwargs = dict(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16)
    return dict(
        **(wan22_kwargs if wan22 else {}),
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1 * (i - z_dim / 2) for i in range(z_dim)],
        latents_std=[0.5 + 0.25 * i for i in range(z_dim)],
    )


def build_tiny_wan(
    folder: str | Path,
    seed: int = 0,
    vae: str = "wan",
    text_encoder: str = "umt5",
    flow_shift: float = 3.0,
    vocabulary: Sequence[str] = DEFAULT_VOCABULARY,
    text_hidden_size: int = 32,
    max_text_length: int = 16,
) -> Path:
    """Write a tiny flow teacher for the ``wan`` adapter to ``folder`` and return the path.

    ``vae="wan"`` with ``text_encoder="umt5"`` is a stock ``WanPipeline`` folder (``AutoencoderKLWan``,
    ``UMT5EncoderModel``, ``UniPCMultistepScheduler`` with flow sigmas and ``flow_shift``), loadable by
    ``WanPipeline.from_pretrained``; ``vae="wan22"`` is Wan2.2 TI2V-5B's layout (patchified residual VAE,
    16x in space, ``expand_timesteps``). ``vae="per_frame"`` (a 2D ``AutoencoderKL``, 8x spatial) and/or
    ``text_encoder="clip"`` give the mini world's kind of custom flow teacher. Same seed, same weights.
    """
    from diffusers import AutoencoderKL, AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, UMT5Config, UMT5EncoderModel

    from t2v_turbo.adapters.wan import save_flow_teacher

    if vae not in ("wan", "wan22", "per_frame") or text_encoder not in ("umt5", "clip"):
        raise ValueError(f"`vae`={vae!r} must be 'wan', 'wan22' or 'per_frame', "
                         f"`text_encoder`={text_encoder!r} 'umt5' or 'clip'")
    generator = torch.Generator().manual_seed(seed)
    tokenizer = build_word_tokenizer(vocabulary, model_max_length=max_text_length)
    torch.manual_seed(seed)
    latent_channels = 4
    transformer = WanTransformer3DModel(**tiny_wan_transformer_config(latent_channels, text_hidden_size))
    if vae in ("wan", "wan22"):
        autoencoder = AutoencoderKLWan(**tiny_wan_vae_config(latent_channels, wan22=vae == "wan22"))
    else:
        autoencoder = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16), sample_size=32, scaling_factor=0.5,
        )
    if text_encoder == "umt5":
        encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=text_hidden_size, d_kv=8, d_ff=2 * text_hidden_size, num_layers=2,
            num_heads=4, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        ))
    else:
        encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_hidden_size, intermediate_size=2 * text_hidden_size,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_text_length,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ))
    for module in (transformer, autoencoder, encoder):
        redraw_degenerate_parameters(module, generator)
        module.eval()
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift,
        solver_order=2, beta_schedule="linear",
    )
    return save_flow_teacher(folder, transformer, autoencoder, encoder, tokenizer, scheduler,
                             expand_timesteps=vae == "wan22")


def randomise_trainable(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Add ``scale`` N(0, I) to every trainable parameter (drawn in name order from a generator seeded ``seed``),
    so a freshly built student, whose LoRA B and guidance layer start at zero, differs from its teacher as a
    trained one does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in module.named_parameters() if p.requires_grad):
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module
