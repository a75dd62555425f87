"""Two-process DDP on CPU (gloo) through ``accelerate launch``: the ranks end with identical weights."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from t2v_turbo.testing import build_tiny_diffusers_t2v
from t2v_turbo.video_io import write_mp4

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from distill.trainer import TrainingRecipe
    from t2v_turbo.config import load_config

    recipe = TrainingRecipe(load_config(sys.argv[1], sys.argv[2:]))
    recipe.setup()
    def digest():
        params = sorted((n, p) for n, p in recipe.network.named_parameters() if p.requires_grad)
        return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for _, p in params)).hexdigest()
    before = digest()
    batches = []  # what this rank trained on: the recipe's own step, observed
    train_step = recipe.train_step
    def observed_step(batch, **kwargs):
        batches.append({"positions": batch["positions"], "indices": batch["indices"], "captions": batch["captions"]})
        return train_step(batch, **kwargs)
    recipe.train_step = observed_step
    recipe.train()
    rank = recipe.accelerator.process_index
    record = {"before": before, "after": digest(), "world": recipe.accelerator.num_processes,
              "type": str(recipe.accelerator.distributed_type), "batches": batches}
    (recipe.output_dir / f"rank{rank}.json").write_text(json.dumps(record))
    recipe.cleanup()
    """
)


@pytest.mark.slow  # > 10 s on 2 CPU cores
def test_two_cpu_processes_train_identical_weights(tmp_path):
    teacher = build_tiny_diffusers_t2v(tmp_path / "teacher")
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        write_mp4(videos / f"v{i}.mp4", rng.integers(0, 255, size=(6, 16, 16, 3)).astype(np.uint8), fps=8)
        (videos / f"v{i}.txt").write_text(["a cat", "a dog", "a red car", "a bird"][i])
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
        str(REPO / "configs" / "tiny.yaml"), f"teacher.path={teacher}", f"data.folder={videos}",
        f"output_dir={out}", "train.max_steps=2", "train.checkpoint_every=2", "dataloader.batch_size=1",
        "logging.tensorboard=false", "train.device=cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    import json

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["type"] == "DistributedType.MULTI_CPU" for r in ranks)
    # micro-batch m of rank r holds global position (m * 2 + r) * batch_size: the ranks shard the positions
    assert [b["positions"] for b in ranks[0]["batches"]] == [[0], [2]]
    assert [b["positions"] for b in ranks[1]["batches"]] == [[1], [3]]
    # positions 0..3 are one epoch of the 4 videos: together the ranks saw each video once
    indices = [i for r in ranks for b in r["batches"] for i in b["indices"]]
    assert sorted(indices) == [0, 1, 2, 3]
    captions = {c for r in ranks for b in r["batches"] for c in b["captions"]}
    assert captions == {"a cat", "a dog", "a red car", "a bird"}
    assert ranks[0]["after"] == ranks[1]["after"]  # different samples, averaged gradients: identical weights
    assert ranks[0]["after"] != ranks[0]["before"]
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pt").is_file() and (checkpoint / "rng_state_1.pt").is_file()
    assert (out / "student" / "student.safetensors").is_file()
