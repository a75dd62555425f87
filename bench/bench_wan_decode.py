"""Decoding for a reward on Wan's causal VAE: full decode vs partial decode of the frames a reward needs.

A reward that scores pixel frames within the first ``--window`` frames needs only the first
K = latent_frames_needed(window - 1) latent frames (Wan: 9 pixel frames -> 3 latent frames), and with
checkpointing each latent frame's decoder activations are recomputed in backward. Each variant
decodes with gradient, backpropagates sum(pixels of the window) to the latents, and reports:

- ``saved_for_backward_mib``: bytes of the tensors autograd keeps from the forward for the backward
  (``torch.autograd.graph.saved_tensors_hooks``; exact, independent of the allocator);
- ``peak_rss_mib``: the variant's process peak resident set size (``ru_maxrss``; it runs alone in a
  subprocess) and ``baseline_rss_mib`` before the decode;
- ``time_s``: median wall time of forward + backward.

    python bench/bench_wan_decode.py                       # tiny VAE, 81 frames at 64x64, CPU
    python bench/bench_wan_decode.py --vae wan21 --frames 81 --height 480 --width 832 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "partial", "partial+checkpointing")


def build_adapter(vae_size: str, device: str, dtype):
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from t2v_turbo.adapters.wan import WanAdapter
    from t2v_turbo.testing import build_word_tokenizer, tiny_wan_transformer_config, tiny_wan_vae_config

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**tiny_wan_vae_config()) if vae_size == "tiny" else AutoencoderKLWan()
    z_dim = vae.config.z_dim
    transformer = WanTransformer3DModel(**tiny_wan_transformer_config(z_dim))
    tokenizer = build_word_tokenizer()
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    adapter = WanAdapter(transformer, vae, text, tokenizer, flow_shift=3.0)
    adapter.to(device=device, dtype=dtype)
    return adapter.freeze()


def run_variant(variant: str, args) -> dict:
    import torch

    dtype = getattr(torch, args.dtype)
    adapter = build_adapter(args.vae, args.device, dtype)
    frames = list(range(args.window))
    latent_frames = adapter.latent_frames(args.frames)
    z = torch.randn(1, adapter.vae.config.z_dim, latent_frames, args.height // 8, args.width // 8,
                    generator=torch.Generator().manual_seed(0)).to(args.device)
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    def decode():
        if variant == "full":
            return adapter.decode_latents(z_grad)[:, :, frames]
        return adapter.decode_frames(z_grad, frames, checkpointing=variant.endswith("checkpointing"))

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        z_grad = z.clone().requires_grad_(True)
        saved[0] = 0
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pixels = decode()
        pixels.float().sum().backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "variant": variant,
        "latent_frames_decoded": latent_frames if variant == "full" else adapter.latent_frames_needed(frames),
        "pixel_frames_returned": len(frames),
        "saved_for_backward_mib": saved[0] / 2**20,
        "time_s": statistics.median(times),
        "baseline_rss_mib": baseline / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", choices=["tiny", "wan21"], default="tiny", help="tiny test VAE or Wan2.1's architecture")
    parser.add_argument("--frames", type=int, default=81, help="pixel frames of the video (1 + 4k)")
    parser.add_argument("--window", type=int, default=9, help="the reward's frames: pixel frames 0..window-1")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = []
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True, text=True,
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        if proc.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full = results[0]
    for r in results:
        r["saved_ratio_to_full"] = r["saved_for_backward_mib"] / full["saved_for_backward_mib"]
        r["peak_rss_above_baseline_ratio_to_full"] = (
            (r["peak_rss_mib"] - r["baseline_rss_mib"]) / (full["peak_rss_mib"] - full["baseline_rss_mib"]))
        r["time_ratio_to_full"] = r["time_s"] / full["time_s"]
    import torch

    print(json.dumps({"benchmark": "wan_decode", "vae": args.vae, "frames": args.frames, "window": args.window,
                      "height": args.height, "width": args.width, "device": args.device, "dtype": args.dtype,
                      "torch_threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
