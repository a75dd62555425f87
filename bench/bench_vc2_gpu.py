"""Benchmark: T2V-Turbo (VC2) distillation step and 4-step sampling at VideoCrafter2 size.

Random weights at the real sizes (VC2 UNet 1.41B, VAE 84M, OpenCLIP-H text 354M; HPSv2.1 on
open_clip ViT-H-14 and InternVideo2-Stage2 1B as reward models), the paper's recipe: LoRA rank
64 on every Linear/Conv, bf16, gradient checkpointing of the UNet and of the VAE decoder under
the rewards, 16 frames at 320x512, one video per step. Prints one JSON object: peak GPU memory
and time of a full optimisation step (teacher CFG + DDIM, target, student, rewards, backward,
AdamW), and the latency of 4-step sampling (UNet calls + VAE decoding).

Data paths (``--data``): each step's batch comes from a pixel video (VAE encode of its 16 frames + OpenCLIP
text encode every step: what training from videos costs besides decoding the file), or from a cached posterior
(``distill.latent_cache``: latents drawn from a stored mean and std, stored embeddings), measured after the
adapter released its text encoder and VAE encoder (``release_encoders``, the decoder kept for the rewards);
``both`` (default) runs the video path, then the latent path, and reports each (``data_paths``).

    python bench/bench_vc2_gpu.py                      # GPU, real sizes
    python bench/bench_vc2_gpu.py --device cpu --tiny  # smoke path (tiny models, seconds on CPU)

No checkpoint is read and nothing is downloaded (text tokens come from open_clip's bundled BPE;
InternVideo2's BERT ids are synthetic). Figures go to bench/RESULTS.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn


def build_teacher(tiny: bool, device: torch.device, dtype: torch.dtype):
    from t2v_turbo.adapters.vc2 import VC2Adapter
    from t2v_turbo.models.vc2 import checkpoint as ckpt
    from t2v_turbo.models.vc2.tiny import tiny_vc2_config
    from t2v_turbo.models.vc2.unet import VC2UNet

    config = tiny_vc2_config() if tiny else ckpt.vc2_config()
    torch.manual_seed(0)
    with torch.device(device):
        unet = VC2UNet(**config["unet"])
        vae = ckpt.build_vae(config["vae"])
        text = ckpt.VC2TextEncoder(**config["text_encoder"])
        # the zero-initialised output layers would make every branch after them an identity
        with torch.no_grad():
            for param in list(unet.parameters()) + list(text.parameters()):
                if param.ndim > 1 and not torch.any(param != 0):
                    nn.init.normal_(param, std=0.02)
            nn.init.normal_(text.model.positional_embedding, std=0.01)  # torch.empty in the constructor
            nn.init.normal_(text.model.text_projection, std=0.02)
    adapter = VC2Adapter(unet, vae, text, config, source="random weights (benchmark)")
    return adapter.to(device=device, dtype=dtype).freeze()


def build_rewards(tiny: bool, device: torch.device, dtype: str):
    from distill.objectives import RewardTerm
    from rewards.base import build_reward

    if tiny:
        from rewards.testing import TINY_OPEN_CLIP_CONFIG

        hps_config, iv2_config = TINY_OPEN_CLIP_CONFIG, "tiny"
    else:
        hps_config, iv2_config = "ViT-H-14", "1b"

    def bert_ids(prompts):  # synthetic [CLS] ... [SEP] ids: no BERT vocabulary is needed for timing
        ids = torch.zeros(len(prompts), 40, dtype=torch.long)
        ids[:, 0], ids[:, 1:11], ids[:, 11] = 101, 1000, 102
        return ids

    hps = build_reward("hpsv2.1", checkpoint=None, model_config=hps_config, frame_selection={"mode": "random", "num_frames": 5},
                       dtype=dtype)
    iv2 = build_reward("internvideo2", checkpoint=None, config=iv2_config, tokenizer=bert_ids, num_frames=8, stride=2, dtype=dtype)
    terms = []
    for name, reward, weight in (("hpsv2.1", hps, 1.0), ("internvideo2", iv2, 2.0)):
        reward.requires_grad_(False).eval().to(device)
        terms.append(RewardTerm(name, reward, weight))
    return terms


def add_step_arguments(parser: argparse.ArgumentParser, tiny_help: str, frames_help: str | None = None) -> None:
    """The flags the GPU step benches share (device, geometry, timed steps, rewards, checkpointing, dtypes)."""
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--frames", type=int, default=None, help=frames_help)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="timed optimisation steps (after one warm-up step)")
    parser.add_argument("--no-rewards", action="store_true", help="consistency distillation only (VCM)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--reward-dtype", choices=["bfloat16", "float32"], default=None,
                        help="reward models' dtype (default: bf16 on GPU, fp32 on CPU, where bicubic resizing has no bf16 kernel)")


def default_dtype(given: str | None, device: torch.device) -> str:
    """``given``, else bf16 on a GPU and fp32 on the CPU."""
    return given or ("bfloat16" if device.type == "cuda" else "float32")


def teacher_and_size(args: argparse.Namespace, build) -> tuple[torch.device, torch.dtype, object, list[int]]:
    """(device, dtype, teacher adapter from ``build(tiny, device, dtype)``, [frames, height, width]: the flags or
    the teacher's defaults)."""
    device = torch.device(args.device)
    dtype = getattr(torch, default_dtype(args.dtype, device))
    adapter = build(args.tiny, device, dtype)
    return device, dtype, adapter, [args.frames or adapter.default_num_frames, args.height or adapter.default_height,
                                    args.width or adapter.default_width]


def trainable_student(adapter, lora, gradient_checkpointing: bool):
    """(student in train mode, AdamW on its trainable weights, the ``TrainedModel`` an objective binds to): the
    trainable weights in fp32 (mixed precision), the frozen base in the teacher's dtype."""
    from distill.model import TrainedModel
    from t2v_turbo.student import StudentMeta, build_student

    student = build_student(adapter, 256, lora=lora, train_guidance_layer=True)
    for param in student.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    if gradient_checkpointing:
        student.enable_gradient_checkpointing()
    student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    return student, optimizer, TrainedModel(student, StudentMeta.for_adapter(adapter, time_cond_proj_dim=256, lora=lora))


def step_result(bench: str, args: argparse.Namespace, device: torch.device, video_size: list[int], lora, terms,
                training: tuple[list[float], float, float | None], sampling: tuple[torch.Tensor, float, float | None],
                **fields) -> dict:
    """The JSON record of a step bench: the run's settings, ``fields``, the timed training and sampling."""
    losses, step_time, peak_train = training
    video, latency, peak_sample = sampling
    return {
        "bench": bench,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "tiny": args.tiny,
        "dtype": default_dtype(args.dtype, device),
        "reward_dtype": None if args.no_rewards else default_dtype(args.reward_dtype, device),
        "video": video_size,
        "lora_rank": lora.rank,
        **fields,
        "rewards": [t.name for t in terms],
        "gradient_checkpointing": not args.no_gradient_checkpointing,
        "train_step_s": round(step_time, 4),
        "train_peak_mem_gib": None if peak_train is None else round(peak_train, 2),
        "losses": [round(x, 6) for x in losses],
        "sample_4step_s": round(latency, 4),
        "sample_peak_mem_gib": None if peak_sample is None else round(peak_sample, 2),
        "video_shape": list(video.shape),
        "torch": torch.__version__,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(objective, student, optimizer, latents, text, uncond, prompt, steps: int, device: torch.device,
                  dtype: torch.dtype, outputs: list | None = None,
                  prepare=None) -> tuple[list[float], float, float | None]:
    """(losses, seconds per optimisation step, peak GPU GiB) of ``steps`` timed steps after one warm-up
    step (allocator, kernels, optimizer state); each step's ObjectiveOutput is appended to ``outputs``.
    ``prepare(index) -> (latents, text, uncond)``, when given, makes each step's batch (timed with the step)."""
    trainable = [p for p in student.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step(index: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        batch = (latents, text, uncond) if prepare is None else prepare(index)
        with autocast:
            out = objective.loss(student, *batch, prompt, positions=[index], seed=0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if outputs is not None:
            outputs.append(out)
        return float(out.loss.detach())

    losses = [step(0)]
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(steps):
        losses.append(step(i + 1))
    sync(device)
    step_time = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return losses, step_time, peak


def time_sampling(pipe, prompt, device: torch.device, **call) -> tuple[torch.Tensor, float, float | None]:
    """(video, seconds, peak GPU GiB) of one 4-step sampling call after a warm-up call."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        pipe(prompt, num_inference_steps=4, generator=generator, **call)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        video = pipe(prompt, num_inference_steps=4, generator=generator, **call)
        sync(device)
    latency = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return video, latency, peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_step_arguments(parser, "tiny models and 4x16x16 videos (smoke path)")
    parser.add_argument("--data", choices=["video", "latent", "both"], default="both",
                        help="where each step's batch comes from: pixels encoded every step, a cached posterior, or both")
    args = parser.parse_args(argv)

    from distill.objectives import RunContext, T2VTurboObjective
    from t2v_turbo.pipeline import T2VTurboPipeline
    from t2v_turbo.sampler.scheduling_t2v_turbo import T2VTurboScheduler
    from t2v_turbo.student import LoraSettings

    device, dtype, adapter, size = teacher_and_size(args, build_teacher)
    frames, height, width = size
    lora = LoraSettings(rank=4 if args.tiny else 64, alpha=4.0 if args.tiny else 64.0, dropout=0.1, target_modules="all_linear_conv")
    student, optimizer, trained = trainable_student(adapter, lora, not args.no_gradient_checkpointing)
    terms = [] if args.no_rewards else build_rewards(args.tiny, device, default_dtype(args.reward_dtype, device))
    objective = T2VTurboObjective(decode_chunk_size=1, vae_gradient_checkpointing=not args.no_gradient_checkpointing)
    objective.bind(RunContext(adapter, trained, terms, seed=0, device=device))
    prompt = ["A cat wearing sunglasses and working as a lifeguard at a pool."]
    with torch.no_grad():
        text = adapter.encode_prompts(prompt)
        uncond = adapter.empty_prompt_embedding(1)
    f = adapter.vae_spatial_factor
    latents = torch.randn(1, 4, frames, height // f, width // f, device=device, dtype=dtype)
    data_paths = {}
    if args.data in ("video", "both"):
        pixels = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
        pixels = pixels.to(device)

        def from_video(index: int):
            with torch.no_grad():
                return (adapter.encode_video(pixels, generator=[torch.Generator().manual_seed(index)]),
                        adapter.encode_prompts(prompt), adapter.empty_prompt_embedding(1))

        data_paths["video"] = time_training(objective, student, optimizer, None, None, None, prompt, args.steps,
                                            device, dtype, prepare=from_video)
    if args.data in ("latent", "both"):
        from t2v_turbo.adapters.base import sample_posterior

        mean, std = latents.float(), torch.full_like(latents, 0.05, dtype=torch.float32)  # a stored posterior
        released = sum(p.numel() * p.element_size() for m in (adapter.text_encoder, adapter.vae.encoder,
                                                                adapter.vae.quant_conv) for p in m.parameters())
        adapter.release_encoders(keep_decoder=True, uncond_embedding=uncond[0], prompt_embeddings={prompt[0]: text[0]})
        if device.type == "cuda":
            torch.cuda.empty_cache()

        def from_cache(index: int):
            return sample_posterior(mean, std, [torch.Generator().manual_seed(index)]), text, uncond

        data_paths["latent"] = time_training(objective, student, optimizer, None, None, None, prompt, args.steps,
                                             device, dtype, prepare=from_cache)
    training = time_training(objective, student, optimizer, latents, text, uncond, prompt, args.steps, device, dtype)

    # 4-step sampling (eval mode, no grad; the UNet in the teacher dtype)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    student.eval()
    student.to(dtype)
    pipe = T2VTurboPipeline(adapter, student, T2VTurboScheduler.from_adapter(adapter))
    sampling = time_sampling(pipe, prompt, device, num_frames=frames, height=height, width=width)
    result = step_result(
        "vc2_gpu", args, device, size, lora, terms, training, sampling,
        trainable_params=trainable,
        unet_params=sum(p.numel() for p in student.parameters()) - trainable,
        data_paths={path: {"train_step_s": round(t, 4), "train_peak_mem_gib": None if peak is None else round(peak, 2)}
                    for path, (_, t, peak) in data_paths.items()},
        encoders_released_mib=round(released / 2**20, 1) if "latent" in data_paths else None,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
