"""A tiny VideoCrafter2 through the normal CLI: `t2v-turbo train` with configs/t2v_turbo_vc2.yaml
(overridden down to tiny sizes) and `t2v-turbo sample` of the trained and of a converted student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2v_turbo.cli import main
from t2v_turbo.models.vc2 import lora_format as lf
from t2v_turbo.models.vc2.tiny import save_tiny_vc2_ckpt
from t2v_turbo.student import read_student_meta
from t2v_turbo.testing import write_caption_folder

CAPTIONS = ["a cat running", "a red car on the street"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("vc2cli")
    ckpt_path, config_path = save_tiny_vc2_ckpt(root / "raw", seed=0)
    teacher = root / "vc2"
    assert main(["convert", "vc2", "--ckpt", str(ckpt_path), "--config", str(config_path), "--out", str(teacher)]) == 0
    videos = write_caption_folder(root / "videos", CAPTIONS)
    return dict(root=root, teacher=teacher, videos=videos)


def test_train_then_sample_tiny_vc2_through_the_cli(assets, tmp_path):
    run_dir = tmp_path / "run"
    code = main([
        "train", str(Path(__file__).resolve().parents[1] / "configs" / "t2v_turbo_vc2.yaml"),
        f"teacher.path={assets['teacher']}", f"output_dir={run_dir}",
        "data._component_=distill.data.VideoCaptionFolder", "~data.csv", f"+data.folder={assets['videos']}",
        "data.num_frames=4", "data.fps=8", "data.height=16", "data.width=16",
        "dataloader.batch_size=2", "dataloader.num_workers=0",
        "rewards=[]", "reward_options.dtype=float32",
        "model.lora.rank=4", "model.lora.alpha=4.0",
        "train.max_steps=2", 'train.mixed_precision="no"', "train.teacher_dtype=float32", "train.checkpoint_every=2",
        "validation.every=0", "logging.tensorboard=false",
    ])
    assert code == 0
    student_dir = run_dir / "student"
    meta = read_student_meta(student_dir)
    assert meta.family == "vc2" and meta.lora["target_modules"] == "all_linear_conv"
    out = tmp_path / "sample.gif"
    assert main(["sample", "--checkpoint", str(student_dir), "--prompt", "a cat running", "--out", str(out),
                 "--num-frames", "4", "--height", "16", "--width", "16", "--device", "cpu", "--format", "gif"]) == 0
    assert out.is_file() and out.stat().st_size > 0


def test_sample_converted_lora_student_is_deterministic(assets, tmp_path):
    from t2v_turbo.adapters.vc2 import VC2Adapter

    adapter = VC2Adapter.from_pretrained(assets["teacher"])
    gen = torch.Generator().manual_seed(5)
    table = lf.lora_index_table(adapter.build_student_unet(256), 4)
    lora = lf.save_lora_list(tmp_path / "unet_lora.pt", [0.05 * torch.randn(r["shape"], generator=gen) for r in table])
    student = tmp_path / "student"
    with pytest.warns(UserWarning, match="time_cond_proj"):
        main(["convert", "t2v-turbo-lora", "--teacher", str(assets["teacher"]), "--lora", str(lora), "--out", str(student)])
    outs = []
    for name in ("a.gif", "b.gif"):
        out = tmp_path / name
        assert main(["sample", "--checkpoint", str(student), "--prompt", "a dog", "--out", str(out), "--steps", "4",
                     "--num-frames", "4", "--height", "16", "--width", "16", "--device", "cpu", "--format", "gif", "--seed", "3"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_gpu_bench_smoke_path_on_cpu():
    import importlib.util
    import math
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_vc2_gpu", Path(__file__).resolve().parents[1] / "bench" / "bench_vc2_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--tiny", "--steps", "1", "--dtype", "bfloat16"])
    assert result["rewards"] == ["hpsv2.1", "internvideo2"] and result["gradient_checkpointing"]
    assert result["video_shape"] == [1, 3, 4, 16, 16]
    assert all(math.isfinite(x) for x in result["losses"]) and result["train_step_s"] > 0
    # the batch from a video (encoded every step) and from a cached posterior (after the encoders were released)
    assert set(result["data_paths"]) == {"video", "latent"} and result["encoders_released_mib"] > 0
