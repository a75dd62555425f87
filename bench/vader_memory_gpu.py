"""VADER's memory ablation on a ModelScope-size model (random weights; memory does not depend on them).

VADER (arXiv 2407.08737) reports that on ModelScope LoRA + fp16 alone does not fit, and that frame
subsampling, truncated backpropagation and gradient checkpointing together bring a training step to about
20 GB. This script measures the peak GPU memory (``torch.cuda.max_memory_allocated``) of one VADER
``train step`` (sampling chain, decode, HPS-size reward, backward, AdamW step) with each technique added
in turn:

1. LoRA (rank 16 on q/k/v) + fp16: gradient through all DDIM steps, every frame decoded;
2. + frame subsampling: one random frame decoded;
3. + truncated backpropagation: gradient through the last step only (K = 1);
4. + gradient checkpointing: the UNet's blocks (and the VAE decoder) recompute activations in backward.

The model is built in memory in ModelScope's shapes (UNet3D 320-640-1280-1280 with 1024-d cross attention,
SD VAE, a 23-layer 1024-d CLIP text encoder), the reward in HPSv2's (open_clip ViT-H-14). A variant that
runs out of memory is reported as such. ``--tiny`` runs the same on tiny shapes (CPU smoke test).

    python bench/vader_memory_gpu.py                  # on the GPU machine, prints JSON
    python bench/vader_memory_gpu.py --tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MS_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=64,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, norm_num_groups=32,
               down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
               up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))
MS_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256)
MS_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
               max_position_embeddings=77, hidden_act="gelu")
VARIANTS = (
    ("LoRA + fp16", dict(backprop_steps="all", decode_frames="all", checkpointing=False)),
    ("+ frame subsampling", dict(backprop_steps="all", decode_frames="random", checkpointing=False)),
    ("+ truncated backprop (K = 1)", dict(backprop_steps=1, decode_frames="random", checkpointing=False)),
    ("+ gradient checkpointing", dict(backprop_steps=1, decode_frames="random", checkpointing=True)),
)


def build_adapter(tiny: bool, device, dtype):
    """A ModelScope-shaped (or tiny) ``DiffusersT2VAdapter`` with random weights, in memory."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from rewards.testing import save_clip_bpe_tokenizer
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
    from t2v_turbo.testing import tiny_unet_config

    torch.manual_seed(0)
    if tiny:
        unet = UNet3DConditionModel(**tiny_unet_config(cross_attention_dim=32))
        vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, latent_channels=4)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=77)
    else:
        unet, vae, text = UNet3DConditionModel(**MS_UNET), AutoencoderKL(**MS_VAE), MS_TEXT
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(str(save_clip_bpe_tokenizer(folder)), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **text))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    adapter = DiffusersT2VAdapter(unet, vae, text_encoder, tokenizer, scheduler)
    return adapter.freeze().to(device=device, dtype=dtype)


def build_reward(tiny: bool, device, dtype):
    from distill.objectives import RewardTerm
    from rewards.image_text import OpenCLIPReward
    from rewards.testing import TINY_OPEN_CLIP_CONFIG

    reward = OpenCLIPReward(TINY_OPEN_CLIP_CONFIG if tiny else "ViT-H-14", None, dtype=dtype)
    reward.requires_grad_(False).eval().to(device)
    return RewardTerm("hps-size", reward, 1.0, "linear", 1.0)


def measure(name: str, settings: dict, args, device) -> dict:
    import torch

    from distill.model import from_teacher
    from distill.objectives import RunContext, TrainingBatch, VADERObjective
    from distill.trainer import enable_gradient_checkpointing

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    adapter = build_adapter(args.tiny, device, dtype)
    model = from_teacher(adapter, time_cond_proj_dim=None, lora={"rank": 16, "alpha": 8.0, "dropout": 0.01,
                                                                  "target_modules": "attention_qkv"})
    for param in model.unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    if settings["checkpointing"]:
        enable_gradient_checkpointing(model.unet)
    model.unet.train()
    steps = args.steps
    objective = VADERObjective(num_inference_steps=steps, guidance_scale=12.0, eta=1.0,
                               backprop_steps=steps if settings["backprop_steps"] == "all" else settings["backprop_steps"],
                               decode_frames=settings["decode_frames"], num_frames=args.frames, height=args.height,
                               width=args.width, decode_chunk_size=1, vae_gradient_checkpointing=settings["checkpointing"])
    objective.bind(RunContext(adapter, model, [build_reward(args.tiny, device, dtype)], seed=0, device=device))
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    with torch.no_grad():
        text, uncond = adapter.encode_prompts(["a raccoon playing a guitar"]), adapter.empty_prompt_embedding(1)
    batch = TrainingBatch(["a raccoon playing a guitar"], [0], text.float(), uncond.float())
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            out = objective(model.unet, batch)
        out.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        result = {"variant": name, "fits": True, "loss": float(out.loss.detach()), "seconds": time.perf_counter() - start}
    except torch.OutOfMemoryError:
        result = {"variant": name, "fits": False}
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["device_total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    result.update(settings, sampling_steps=steps, frames=args.frames, height=args.height, width=args.width)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (VADER: 25)")
    parser.add_argument("--frames", type=int, default=None, help="default: 16 (ModelScope), 4 with --tiny")
    parser.add_argument("--height", type=int, default=None, help="default: 256, 16 with --tiny")
    parser.add_argument("--width", type=int, default=None, help="default: 256, 16 with --tiny")
    parser.add_argument("--variant", type=int, default=None, help="only variant i (0-3)")
    args = parser.parse_args(argv)
    import torch

    args.frames = args.frames or (4 if args.tiny else 16)
    args.height, args.width = args.height or (16 if args.tiny else 256), args.width or (16 if args.tiny else 256)
    device = torch.device(args.device)
    results = []
    for i, (name, settings) in enumerate(VARIANTS):
        if args.variant is not None and i != args.variant:
            continue
        results.append(measure(name, settings, args, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "vader_memory", "device": str(device),
                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                      "model": "tiny" if args.tiny else "ModelScope-size (random weights)", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
