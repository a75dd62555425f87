"""Our sampler against stock diffusers on our own export, and the student against its teacher, on
the shipped mini-world student at batch 8 (8 frames, 32x32).

    python bench/bench_export_sampling.py [--batch 8 --repeats 5 --threads 1]

Samplers, all 4 steps on the same prompts and generator seed unless noted:

- ``ours_merged``: ``T2VTurboPipeline.from_pretrained(student)`` (LoRA merged into the weights,
  the default), LCM spacing so it computes what the export computes;
- ``ours_unmerged``: the same with ``fuse_lora=False`` (peft's LoRA layers, the trained form);
- ``stock_diffusers``: ``TextToVideoSDPipeline.from_pretrained(export)`` on the ``--format
  diffusers`` export of the same student (guidance folded in, ``LCMScheduler``), guidance_scale 1;
- ``teacher_cfg_50``: the teacher's 50-step DDIM with classifier-free guidance (2 UNet rows per video).

The runs are interleaved (one of each per round); each time is the median over rounds, and each
``*_paired`` ratio the median of the ratios within a round, so a machine shared with other jobs
slows both sides of a ratio alike; the ratios are what to read. Prints one
JSON object, with the largest latent difference between ours_merged and stock_diffusers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import TextToVideoSDPipeline

    from miniworld.assets import STUDENT, evaluation_prompts, load_teacher
    from t2v_turbo.export import export_student
    from t2v_turbo.pipeline import T2VTurboPipeline, TeacherPipeline

    prompts = evaluation_prompts()[: args.batch]
    merged = T2VTurboPipeline.from_pretrained(STUDENT, spacing="lcm")
    unmerged = T2VTurboPipeline.from_pretrained(STUDENT, spacing="lcm", fuse_lora=False)
    teacher = TeacherPipeline(load_teacher())
    meta = merged.meta
    geometry = dict(num_frames=meta.num_frames, height=meta.height, width=meta.width)
    with tempfile.TemporaryDirectory() as folder:
        stock = TextToVideoSDPipeline.from_pretrained(export_student(STUDENT, f"{folder}/pipe", "diffusers"))
    stock.set_progress_bar_config(disable=True)

    def run(name: str, output_type: str = "pt"):
        generator = torch.Generator().manual_seed(0)
        if name == "stock_diffusers":
            return stock(prompts, num_inference_steps=4, guidance_scale=1.0, generator=generator,
                         output_type="latent" if output_type == "latent" else "np", **geometry).frames
        if name == "teacher_cfg_50":
            return teacher(prompts, num_inference_steps=50, guidance_scale=meta.guidance_scale, generator=generator,
                           output_type=output_type, **geometry)
        pipe = merged if name == "ours_merged" else unmerged
        return pipe(prompts, num_inference_steps=4, guidance_scale=meta.guidance_scale, generator=generator,
                    output_type=output_type, **geometry)

    names = ["ours_merged", "ours_unmerged", "stock_diffusers", "teacher_cfg_50"]
    difference = (run("ours_merged", "latent") - torch.as_tensor(run("stock_diffusers", "latent"))).abs().max().item()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}

    def paired(numerator: str, denominator: str) -> float:
        """Median over rounds of the ratio within a round (the two ran seconds apart)."""
        return round(statistics.median(a / b for a, b in zip(times[numerator], times[denominator])), 3)
    print(json.dumps({
        "bench": "export_sampling",
        "model": "shipped mini-world student (LoRA rank 16 on every Linear/Conv) and teacher",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or 'unknown'}), no GPU",
        "load_average_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch, "repeats": args.repeats, "geometry": geometry,
        "seconds_median": {k: round(v, 3) for k, v in seconds.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "stock_over_ours_merged": round(seconds["stock_diffusers"] / seconds["ours_merged"], 3),
        "stock_over_ours_merged_paired": paired("stock_diffusers", "ours_merged"),
        "unmerged_over_merged": round(seconds["ours_unmerged"] / seconds["ours_merged"], 3),
        "unmerged_over_merged_paired": paired("ours_unmerged", "ours_merged"),
        "speedup_vs_teacher_cfg_50": round(seconds["teacher_cfg_50"] / seconds["ours_merged"], 2),
        "speedup_vs_teacher_cfg_50_paired": paired("teacher_cfg_50", "ours_merged"),
        "speedup_vs_teacher_cfg_50_unmerged": round(seconds["teacher_cfg_50"] / seconds["ours_unmerged"], 2),
        "max_latent_difference_ours_vs_stock": difference,
    }, indent=2))


if __name__ == "__main__":
    main()
