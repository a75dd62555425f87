"""Sampling cost: 4-step student vs 50-step teacher with CFG, same batch, on the tiny model.

    python bench/bench_sampling.py [--batch 2 --frames 8 --size 32 --repeats 3 --device cpu]

Prints one JSON object: wall times (median of repeats, seconds), their ratio, and UNet calls
(forward passes) / evaluations (batch rows) per run. The student has LoRA on the attention
projections and its guidance layer; its weights do not change the cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.pipeline import T2VTurboPipeline, TeacherPipeline
from t2v_turbo.student import LoraSettings, build_student
from t2v_turbo.testing import build_tiny_diffusers_t2v


def timed(pipe, prompts, steps, repeats, **kwargs):
    times = []
    for _ in range(repeats):
        pipe.unet_calls = pipe.unet_evaluations = 0
        start = time.perf_counter()
        pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), pipe.unet_calls, pipe.unet_evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        adapter = DiffusersT2VAdapter.from_pretrained(build_tiny_diffusers_t2v(folder), device=args.device)
    student = build_student(adapter, 256, lora=LoraSettings(rank=4, alpha=4)).eval()
    prompts = ["a cat running on the beach", "a red car in the city", "a bird flying", "a boat on the sea"]
    prompts = (prompts * args.batch)[: args.batch]
    geometry = dict(num_frames=args.frames, height=args.size, width=args.size)
    student_time, student_calls, student_evals = timed(T2VTurboPipeline(adapter, student), prompts, 4, args.repeats, guidance_scale=7.5, **geometry)
    teacher_time, teacher_calls, teacher_evals = timed(TeacherPipeline(adapter), prompts, 50, args.repeats, guidance_scale=7.5, **geometry)
    print(json.dumps({
        "bench": "sampling",
        "model": "tiny diffusers T2V (t2v_turbo.testing)",
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch, "frames": args.frames, "size": args.size, "repeats": args.repeats,
        "student": {"steps": 4, "seconds": round(student_time, 4), "unet_calls": student_calls, "unet_evaluations": student_evals},
        "teacher": {"steps": 50, "cfg": True, "seconds": round(teacher_time, 4), "unet_calls": teacher_calls, "unet_evaluations": teacher_evals},
        "speedup": round(teacher_time / student_time, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
