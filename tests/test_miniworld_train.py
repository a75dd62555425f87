"""A seconds-long mini-world training run through the CLI (the path CI exercises)."""

import json
from pathlib import Path

from t2v_turbo.cli import main

MINIWORLD_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "miniworld.yaml"


def test_train_two_steps_through_cli(tmp_path):
    code = main(["train", str(MINIWORLD_CONFIG), "train.max_steps=2", "dataloader.batch_size=2",
                 "data.num_videos=4", f"data.folder={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}",
                 "train.log_every=1", "objective.decode_chunk_size=4", "validation.every=2"])
    assert code == 0
    meta = json.loads((tmp_path / "run" / "student" / "student.json").read_text())
    assert meta["lora"]["rank"] == 16
    # the student's sampling defaults: its training clips' geometry, the distillation w range, lossless video
    assert (meta["num_frames"], meta["height"], meta["width"], meta["fps"]) == (8, 32, 32, 8)
    assert meta["guidance_range"] == [2.0, 6.0] and meta["lossless_video"] is True and meta["guidance_scale"] == 4.0
    assert (tmp_path / "data" / "train_seed0_n4.csv").is_file()
    # validation samples the flow student with its own sampler (an epsilon scheduler here raised on the flow teacher)
    assert (tmp_path / "run" / "validation" / "step-000002.gif").stat().st_size > 0
    from miniworld.report import read_scalars

    scalars = read_scalars(tmp_path / "run" / "logs")
    assert len(scalars["loss/cd"]) == 2 and "reward/miniworld-video" in scalars and "reward/miniworld-image" in scalars
