"""CLI inputs as a careless user gives them (issue 10, items 11-13; issue 14, item 7): bad numbers
named by flag, guidance outside the trained range, existing outputs kept unless --overwrite, an
unwritable --out found before sampling, one `error:` line for user errors, early failures."""

import logging
from pathlib import Path

import pytest
import torch

from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.cli import main
from t2v_turbo.fileio import write_folder
from t2v_turbo.pipeline import T2VTurboPipeline
from t2v_turbo.student import LoraSettings, StudentMeta, build_student, save_student
from t2v_turbo.testing import build_tiny_diffusers_t2v, randomise_trainable
from t2v_turbo.video_io import read_video, to_uint8_frames

SETTINGS = LoraSettings(rank=4, alpha=4)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return DiffusersT2VAdapter.from_pretrained(build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def student_dir(adapter, tmp_path_factory):
    """A student whose meta says: 2 frames of 8x16 at 4 fps, w = 3 in a trained range [2, 6], 2 steps,
    lossless video."""
    unet = randomise_trainable(build_student(adapter, 256, lora=SETTINGS), seed=3)
    folder = tmp_path_factory.mktemp("student")
    meta = StudentMeta.for_adapter(adapter, lora=SETTINGS, guidance_scale=3.0, num_inference_steps=2,
                                   guidance_range=[2.0, 6.0], num_frames=2, height=8, width=16, fps=4,
                                   lossless_video=True)
    save_student(folder, unet, meta)
    return folder


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "argument --steps: expected an integer >= 1, got 0"),
    ("--steps", "-3", "argument --steps: expected an integer >= 1, got -3"),
    ("--num-frames", "0", "argument --num-frames: expected an integer >= 1, got 0"),
    ("--batch-size", "0", "argument --batch-size: expected an integer >= 1, got 0"),
    ("--height", "abc", "argument --height: expected an integer >= 1, got 'abc'"),
    ("--num-samples", "0", "argument --num-samples: expected an integer >= 1, got 0"),
    ("--guidance", "nan", "argument --guidance: expected a finite number, got nan"),
])
def test_sample_rejects_bad_numbers_naming_the_flag(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse stops before any checkpoint is read
        main(["sample", "--checkpoint", str(tmp_path / "nowhere"), "--prompt", "a cat",
              "--out", str(tmp_path / "a.mp4"), flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_uses_the_students_defaults_and_writes_lossless_video(student_dir, adapter, tmp_path, capsys):
    out = tmp_path / "a.mp4"
    assert main(["sample", "--checkpoint", str(student_dir), "--prompt", "a cat", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err
    frames = read_video(out)
    assert frames.shape == (2, 8, 16, 3)  # the student's geometry, not the teacher's defaults
    pipe = T2VTurboPipeline.from_pretrained(student_dir)
    expected = pipe("a cat", num_inference_steps=2, guidance_scale=3.0, num_frames=2, height=8, width=16,
                    generator=torch.Generator().manual_seed(0))[0]
    assert pipe.unet_calls == 2
    assert (frames == to_uint8_frames(expected)).all()  # lossless: the file holds the pipeline's pixels exactly
    assert main(["sample", "--checkpoint", str(student_dir), "--prompt", "a cat", "--out", str(tmp_path / "b.mp4"),
                 "--no-lossless", "--num-frames", "3"]) == 0
    assert read_video(tmp_path / "b.mp4").shape[0] == 3  # a flag overrides the student's value


def test_sample_warns_outside_the_trained_guidance_range(student_dir, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(student_dir), "--prompt", "a cat"]
    assert main([*args, "--guidance", "9", "--out", str(tmp_path / "a.mp4")]) == 0
    err = capsys.readouterr().err
    warning = "warning: --guidance: guidance scale 9 is outside the range the student was trained on [2, 6]"
    assert err.count(warning) == 1
    assert main([*args, "--guidance", "6", "--out", str(tmp_path / "b.mp4")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_sample_keeps_existing_outputs_unless_overwrite(student_dir, tmp_path, capsys):
    out = tmp_path / "videos"
    out.mkdir()
    kept = out / "a cat-1.mp4"
    kept.write_bytes(b"an earlier run")
    args = ["sample", "--checkpoint", str(student_dir), "--prompt", "a cat", "--num-samples", "2", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"t2v-turbo sample: error: --out: 1 output(s) already exist ({kept}); "
                   "pass --overwrite to replace them")
    assert kept.read_bytes() == b"an earlier run" and not (out / "a cat-0.mp4").exists()  # nothing written
    assert main(args + ["--overwrite"]) == 0
    assert read_video(kept).shape == (2, 8, 16, 3) and read_video(out / "a cat-0.mp4").shape == (2, 8, 16, 3)


def test_sample_finds_an_unwritable_out_before_loading_the_model(student_dir, tmp_path, capsys, monkeypatch):
    import t2v_turbo.pipeline

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(t2v_turbo.pipeline, "load_student_pipeline", must_not_load)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "videos"
    assert main(["sample", "--checkpoint", str(student_dir), "--prompt", "a cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"t2v-turbo sample: error: --out: cannot write to {blocker / 'videos'}")
    assert err.count("\n") == 1


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_sample_read_only_out_folder(student_dir, tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    assert main(["sample", "--checkpoint", str(student_dir), "--prompt", "a cat", "--out", str(folder)]) == 2
    assert f"--out: cannot write to {folder}" in capsys.readouterr().err


def test_export_refuses_an_existing_folder_and_replaces_it_whole_with_overwrite(student_dir, tmp_path, capsys):
    out = tmp_path / "unet"
    out.mkdir()
    stale = out / "diffusion_pytorch_model.bin"  # an older export's weights
    stale.write_bytes(b"old weights")
    assert main(["export", str(student_dir), "--format", "merged", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and stale.read_bytes() == b"old weights"
    assert main(["export", str(student_dir), "--format", "merged", "--out", str(out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "diffusion_pytorch_model.bin" not in names  # no mixed folder
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md", "export.json"} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]  # no temporary folder left beside it


def test_write_folder_leaves_the_old_folder_when_the_write_fails(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def failing(folder):
        (folder / "half.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder(out, failing, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with pytest.raises(FileExistsError, match="not empty"):
        write_folder(out, lambda folder: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_folder(empty, lambda folder: (folder / "a.txt").write_text("new")) / "a.txt").read_text() == "new"


@pytest.mark.parametrize("argv, start", [
    (["sample", "--checkpoint", "{tmp}/missing", "--prompt", "a cat", "--out", "{tmp}/a.mp4"],
     "t2v-turbo sample: error: no student checkpoint at {tmp}/missing"),
    (["export", "{tmp}/missing", "--format", "merged", "--out", "{tmp}/out"],
     "t2v-turbo export: error: no student checkpoint at {tmp}/missing"),
    (["eval", "minibench", "{tmp}/missing"],
     "t2v-turbo eval minibench: error: MiniBench: no video folder at {tmp}/missing"),
    (["train", "{tmp}/missing.yaml"], "t2v-turbo train: error: {tmp}/missing.yaml"),
])
def test_user_errors_are_one_error_line(argv, start, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(start.format(tmp=tmp_path)) and err.count("\n") == 1, err


def test_resume_latest_without_a_checkpoint_fails_before_the_data_is_rendered(tmp_path, capsys):
    code = main(["train", str(CONFIGS / "miniworld.yaml"), f"output_dir={tmp_path / 'run'}",
                 f"data.folder={tmp_path / 'data'}", "--resume", "latest"])
    assert code == 2
    assert "--resume latest: no complete checkpoint-<step> folder in" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_hub_id_not_in_the_cache_says_so_and_how_to_pass_a_folder(tmp_path):
    message = r"'t2v-turbo-tests/no-such-model' is not in the local cache .* pass a local folder"
    with pytest.raises(FileNotFoundError, match=message):
        DiffusersT2VAdapter.from_pretrained("t2v-turbo-tests/no-such-model")


def test_moving_a_student_to_a_device_logs_no_float32_warning(student_dir, caplog):
    with caplog.at_level(logging.WARNING):
        T2VTurboPipeline.from_pretrained(student_dir, device="cpu", dtype=torch.float32)
    assert not [r for r in caplog.records if "kept in float32" in r.getMessage()]

