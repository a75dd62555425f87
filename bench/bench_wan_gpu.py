"""Benchmark: T2V-Turbo on Wan2.1-T2V-1.3B: a LoRA + mixed-reward distillation step and 4-step sampling.

Random weights at the real sizes (``WanTransformer3DModel`` 1,418,996,800 parameters, Wan2.1's
``AutoencoderKLWan``; HPSv2.1 on open_clip ViT-H-14 and InternVideo2-Stage2 1B as rewards, built by
``bench_vc2_gpu.build_rewards``), configs/t2v_turbo_wan21_1.3b.yaml's recipe: LoRA rank 64 on the
attention projections + the guidance layer, bf16 autocast with fp32 trainable weights, gradient
checkpointing of the transformer and of the VAE decoder, rewards within the first 9 pixel frames
(3 of 21 latent frames decoded), 81 frames at 480x832 by default. UMT5-XXL is not built: the step
takes text embeddings, so random (1, 512, 4096) embeddings stand in for it. Prints one JSON object:
time and peak GPU memory of a full optimisation step (teacher CFG + Euler step, target, student,
partial decode, rewards, backward, AdamW) and the latency of 4-step sampling (4 transformer calls +
a full VAE decode).

    python bench/bench_wan_gpu.py                          # GPU, real sizes
    python bench/bench_wan_gpu.py --frames 33              # 33 frames (9 latent)
    python bench/bench_wan_gpu.py --device cpu --tiny      # smoke path (tiny models, seconds on CPU)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vc2_gpu import (  # noqa: E402
    add_step_arguments,
    build_rewards,
    default_dtype,
    step_result,
    teacher_and_size,
    time_sampling,
    time_training,
    trainable_student,
)


def build_teacher(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from t2v_turbo.adapters.wan import WanAdapter, wan21_transformer
    from t2v_turbo.testing import build_word_tokenizer, tiny_wan_transformer_config, tiny_wan_vae_config

    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            transformer = WanTransformer3DModel(**tiny_wan_transformer_config())
            vae = AutoencoderKLWan(**tiny_wan_vae_config())
        else:
            transformer = wan21_transformer("1.3B", device=device)
            vae = AutoencoderKLWan()  # Wan2.1's VAE configuration (z_dim 16, 4x temporal, 8x spatial)
    tokenizer = build_word_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                               num_heads=4))  # unused: the step takes embeddings
    geometry = {"num_frames": 9, "height": 32, "width": 32} if tiny else {}
    adapter = WanAdapter(transformer, vae, text_encoder, tokenizer, flow_shift=3.0,
                         source="random weights (benchmark)", **geometry)
    return adapter.to(device=device, dtype=dtype).freeze()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_step_arguments(parser, "tiny models, 9 frames at 32x32 (smoke path)", "1 + 4k pixel frames (default 81)")
    parser.add_argument("--frame-window", type=int, default=9, help="rewards choose among the first N pixel frames")
    args = parser.parse_args(argv)

    from distill.objectives import RunContext, T2VTurboObjective
    from t2v_turbo.pipeline import T2VTurboPipeline
    from t2v_turbo.student import LoraSettings

    device, dtype, adapter, size = teacher_and_size(args, build_teacher)
    frames, height, width = size
    lora = LoraSettings(rank=4 if args.tiny else 64, alpha=4.0 if args.tiny else 64.0, dropout=0.0,
                        target_modules="attention")
    student, optimizer, trained = trainable_student(adapter, lora, not args.no_gradient_checkpointing)
    terms = [] if args.no_rewards else build_rewards(args.tiny, device, default_dtype(args.reward_dtype, device))
    objective = T2VTurboObjective(w_min=2.0, w_max=6.0, vae_gradient_checkpointing=not args.no_gradient_checkpointing,
                                  frame_window=args.frame_window)
    objective.bind(RunContext(adapter, trained, terms, seed=0, device=device))
    prompt = ["A cat wearing sunglasses and working as a lifeguard at a pool."]
    text_dim = adapter.unet.config.text_dim
    text = torch.randn(1, adapter.max_sequence_length, text_dim, device=device, dtype=dtype)
    uncond = torch.randn(1, adapter.max_sequence_length, text_dim, device=device, dtype=dtype)
    f = adapter.vae_spatial_factor
    latents = torch.randn(1, adapter.unet.config.in_channels, adapter.latent_frames(frames), height // f, width // f,
                          device=device, dtype=dtype)
    outputs = []
    training = time_training(objective, student, optimizer, latents, text, uncond, prompt, args.steps, device, dtype,
                             outputs)

    # 4-step sampling (eval mode, no grad; the transformer in the teacher dtype)
    student.eval()
    adapter.cast_network(student, dtype=dtype)
    pipe = T2VTurboPipeline(adapter, student)
    adapter.encode_prompts = lambda prompts: text[:1].expand(len(prompts), -1, -1)  # the stand-in text embedding
    sampling = time_sampling(pipe, prompt, device, num_frames=frames, height=height, width=width)
    result = step_result(
        "wan_gpu", args, device, size, lora, terms, training, sampling,
        frame_window=args.frame_window,
        decoded_latent_frames=outputs[-1].decoded_latent_frames,
        lora_params=sum(p.numel() for n, p in student.named_parameters() if ".lora_" in n),
        guidance_layer_params=sum(p.numel() for n, p in student.named_parameters() if "cond_proj" in n),
        transformer_params=sum(p.numel() for p in adapter.unet.parameters()),
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
