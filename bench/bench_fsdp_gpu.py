"""GPU check of the sharded engines: what tests/test_fsdp.py cannot run on CPU. Prints one JSON object.

tests/test_fsdp.py runs FSDP2 on two gloo CPU processes, with the processes labelled as GPU processes for accelerate
(which turns FSDP on only for accelerator devices) and in float32. Here, on CUDA (one GPU is enough; every GPU of
the machine is used), the tiny config trains 2 steps under accelerate's real launchers, in bf16 mixed precision with
a bf16 teacher, global batch 2:

- ``plain``: one process, no engine: the reference losses;
- ``fsdp``: ``configs/accelerate/fsdp.yaml`` (FSDP2 on NCCL, MixedPrecisionPolicy bf16 over units whose frozen
  weights are bf16 and whose LoRA is float32), a checkpoint every step, then a second launch resumed from
  checkpoint-1;
- ``zero2``: ``configs/accelerate/zero2.yaml`` when deepspeed imports (``pip install 't2v-turbo[deepspeed]'``); its
  checkpoint must refuse to resume, by name.

For each: the per-step losses (mean over processes), the largest relative difference from ``plain``, whether the
resumed step repeated the uninterrupted one, whether the saved student loads as a normal student, peak GPU memory.
Dropout is off in every run so that a sample's loss depends on the sample alone.

    python bench/bench_fsdp_gpu.py            # about 2 minutes on one GPU (4-6 launches of the tiny config)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNNER = textwrap.dedent(
    """
    import json, sys
    import torch
    from distill.trainer import TrainingRecipe
    from t2v_turbo.config import load_config

    overrides, out, resume = sys.argv[2:-2], sys.argv[-2], sys.argv[-1]
    recipe = TrainingRecipe(load_config(sys.argv[1], overrides + [f"output_dir={out}"]))
    try:
        recipe.setup(resume=None if resume == "none" else resume)
    except Exception as err:  # a refused resume is a result here
        record = {"setup_error": f"{type(err).__name__}: {err}"}
        if recipe.accelerator.is_main_process:
            open(f"{out}.json", "w").write(json.dumps(record))
        recipe.cleanup()
        sys.exit(0)
    for module in recipe.network.modules():
        if type(module).__name__ == "Dropout":
            module.p = 0.0
    losses, train_step = [], recipe.train_step
    def observed(batch, **kwargs):
        result = train_step(batch, **kwargs)
        losses.append(float(recipe.accelerator.reduce(result[0].loss.detach().float(), "mean")))
        return result
    recipe.train_step = observed
    recipe.train()
    record = {"engine": recipe.accelerator.distributed_type.value, "processes": recipe.accelerator.num_processes,
              "losses": losses, "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
    if recipe.accelerator.is_main_process:
        open(f"{out}.json", "w").write(json.dumps(record))
    recipe.cleanup()
    """
)


def launch(root: Path, name: str, config: str | None, processes: int, overrides: list[str], resume: str = "none") -> dict:
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    engine = ["--config_file", str(REPO / "configs" / "accelerate" / config)] if config else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *engine, "--num_processes", str(processes),
           "--main_process_port", "29531", str(runner), str(REPO / "configs" / "tiny.yaml"), *overrides,
           str(root / name), resume]
    result = subprocess.run(cmd, check=False, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        return {"error": result.stderr[-3000:]}
    return json.loads((root / f"{name}.json").read_text())


def loads_as_student(folder: Path, teacher: Path) -> bool:
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
    from t2v_turbo.student import load_student

    load_student(folder, DiffusersT2VAdapter.from_pretrained(teacher))
    return True


def largest_relative_difference(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference))


def main() -> dict:
    import torch

    from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

    if not torch.cuda.is_available():
        raise SystemExit("bench_fsdp_gpu.py needs a CUDA GPU (tests/test_fsdp.py is the CPU check)")
    gpus = torch.cuda.device_count()
    report: dict = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = build_tiny_diffusers_t2v(root / "teacher")
        videos = write_caption_folder(root / "videos", ["a cat running", "a red car on the street", "a bird flying",
                                                        "a dog on the beach"])
        common = [f"teacher.path={teacher}", f"data.folder={videos}", "train.max_steps=2", "train.checkpoint_every=1",
                  "train.mixed_precision=bf16", "train.teacher_dtype=bfloat16", "optimizer.lr=1e-3",
                  "logging.tensorboard=false"]
        plain = launch(root, "plain", None, 1, common + ["dataloader.batch_size=2"])
        report["plain"] = plain
        per_process = [f"dataloader.batch_size={max(2 // gpus, 1)}"]
        fsdp = launch(root, "fsdp", "fsdp.yaml", min(gpus, 2), common + per_process)
        if "losses" in fsdp:
            resumed = launch(root, "fsdp_resumed", "fsdp.yaml", min(gpus, 2), common + per_process,
                             resume=str(root / "fsdp" / "checkpoint-1"))
            fsdp.update(resumed_step_2=resumed.get("losses"), resume_repeats=resumed.get("losses") == fsdp["losses"][1:],
                        student_loads=loads_as_student(root / "fsdp" / "checkpoint-2" / "student", teacher))
            if "losses" in plain:
                fsdp["max_rel_diff_vs_plain"] = largest_relative_difference(fsdp["losses"], plain["losses"])
        report["fsdp"] = fsdp
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            report["zero2"] = {"skipped": "deepspeed is not installed (pip install 't2v-turbo[deepspeed]')"}
        else:
            zero2 = launch(root, "zero2", "zero2.yaml", min(gpus, 2), common + per_process)
            if "losses" in zero2:
                zero2["student_loads"] = loads_as_student(root / "zero2" / "checkpoint-2" / "student", teacher)
                zero2["resume"] = launch(root, "zero2_resumed", "zero2.yaml", min(gpus, 2), common + per_process,
                                         resume=str(root / "zero2" / "checkpoint-1")).get("setup_error")
                if "losses" in plain:
                    zero2["max_rel_diff_vs_plain"] = largest_relative_difference(zero2["losses"], plain["losses"])
            report["zero2"] = zero2
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
