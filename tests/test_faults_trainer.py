"""Fault injection on the trainer (tiny config, CPU): NaN/Inf steps, non-finite weights."""

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.trainer import CHECKPOINT_PREFIX, TrainingRecipe, list_checkpoints
from distill.trainer import run_training as run
from t2v_turbo.config import load_config
from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
CAPTIONS = ["a cat running", "a red car on the street", "a bird flying in the sky", "a dog on the beach"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"teacher": build_tiny_diffusers_t2v(root / "teacher"),
            "videos": write_caption_folder(root / "videos", CAPTIONS)}


def tiny_config(assets, output_dir, *overrides):
    return load_config(TINY, [f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
                              f"output_dir={output_dir}", "logging.tensorboard=false", *overrides])


@pytest.fixture(scope="module")
def two_checkpoints(assets, tmp_path_factory):
    """An output_dir holding checkpoint-1 and checkpoint-2 of a 2-step run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("two_checkpoints")
    run(tiny_config(assets, out, "train.max_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=2"))
    return out


def trained_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "training_state.pt", map_location="cpu", weights_only=True)


def test_nonfinite_reason_names_the_first_bad_value():
    from distill.nonfinite import nonfinite_reason, nonfinite_tensors

    finite = torch.nn.Linear(2, 2)
    finite.weight.grad, finite.bias.grad = torch.ones(2, 2), torch.zeros(2)
    assert nonfinite_reason([torch.tensor(1.5), torch.tensor(0.0)], finite.named_parameters()) is None
    assert nonfinite_reason([torch.tensor(1.0), torch.tensor(float("nan"))]) == "loss=nan (micro-batch 2 of 2)"
    assert nonfinite_reason([torch.tensor(float("inf"))]) == "loss=inf"
    finite.bias.grad = torch.tensor([0.0, float("-inf")])
    reason = nonfinite_reason([torch.tensor(1.0)], finite.named_parameters())
    assert reason == "non-finite gradient in 1 tensor(s), first bias"
    assert nonfinite_tensors([("a", torch.zeros(3)), ("b", None), ("c", torch.tensor([1.0, float("nan")]))]) == ["c"]


def test_skipped_steps_stop_after_the_configured_run_of_skips():
    from distill.nonfinite import NonFiniteError, SkippedSteps

    counter = SkippedSteps(max_consecutive=3)
    counter.record(1, "loss=nan")
    counter.record(2, "loss=nan")
    counter.record(3, None)  # a finite step resets the run
    counter.record(4, "loss=inf")
    counter.record(5, "loss=inf")
    assert (counter.total, counter.consecutive) == (4, 2)
    with pytest.raises(NonFiniteError, match=r"step 6: 3 optimizer steps in a row .*last: loss=nan.*skips=3"):
        counter.record(6, "loss=nan")


def test_a_nan_batch_skips_its_step_and_training_continues(assets, tmp_path, caplog):
    cfg = tiny_config(assets, tmp_path, "train.max_steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=3")
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    load = recipe.dataset.load

    def poisoned(index):  # the second batch decodes to NaN pixels
        pixels = load(index)
        return pixels * float("nan") if recipe.micro_step == 1 else pixels

    recipe.dataset.load = poisoned
    try:
        with caplog.at_level(logging.WARNING, logger="distill.nonfinite"):
            recipe.train()
    finally:
        recipe.cleanup()
    assert "step 2 skipped (no optimizer update): loss=nan" in caplog.text
    assert (recipe.skipped_steps.total, recipe.skipped_steps.consecutive, recipe.global_step) == (1, 0, 3)
    states = [trained_state(tmp_path / f"{CHECKPOINT_PREFIX}{step}") for step in (1, 2, 3)]
    for name in recipe.trainable_names:  # step 2 changed nothing, step 3 trained again
        assert torch.equal(states[0]["trainable"][name], states[1]["trainable"][name]), name
    assert any(not torch.equal(states[1]["trainable"][n], states[2]["trainable"][n]) for n in recipe.trainable_names)
    assert [s["optimizer"]["state"][0]["step"].item() for s in states] == [1, 1, 2]
    assert [s["lr_scheduler"]["last_epoch"] for s in states] == [1, 1, 2]
    assert states[2]["skipped_steps"] == {"total": 1, "consecutive": 0}


def test_diverging_run_stops_and_writes_only_finite_weights(assets, tmp_path, capsys):
    from t2v_turbo.cli import main

    # lr = 1e10: step 1 is applied (huge but finite weights), every later loss is NaN
    args = ["train", str(TINY), f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
            f"output_dir={tmp_path}", "logging.tensorboard=false", "optimizer.lr=1e10", "train.max_steps=8",
            "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.max_consecutive_skips=2"]
    assert main(args) == 1
    assert "step 3: 2 optimizer steps in a row had a non-finite loss or gradient" in capsys.readouterr().err
    assert not (tmp_path / "student").exists()
    (kept,) = list_checkpoints(tmp_path)
    assert kept.name == f"{CHECKPOINT_PREFIX}2"
    state = trained_state(kept)
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    from safetensors.torch import load_file

    assert all(torch.isfinite(v).all() for v in load_file(kept / "student" / "student.safetensors").values())


def test_nonfinite_weights_are_never_written_and_rotation_keeps_the_last_finite_checkpoint(assets, tmp_path):
    from distill.nonfinite import NonFiniteError

    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "train.max_steps=1", "train.keep_checkpoints=1"))
    recipe.setup()
    try:
        recipe.train()
        finite = recipe.save_checkpoint(1)
        name = recipe.trainable_names[0]
        with torch.no_grad():
            dict(recipe.network.named_parameters())[name].view(-1)[0] = float("inf")
        recipe.global_step = 2
        with pytest.raises(NonFiniteError, match=rf"step 2: 1 trained weight tensor\(s\) hold NaN or Inf "
                                                 rf"\(first {name}\); "
                                                 rf"{CHECKPOINT_PREFIX}2 is not written.*{finite}"):
            recipe.save_checkpoint(2)
        with pytest.raises(NonFiniteError, match="the final model .* is not written"):
            recipe.save_final()
    finally:
        recipe.cleanup()
    assert list_checkpoints(tmp_path) == [finite]
    assert not (tmp_path / f"{CHECKPOINT_PREFIX}2.tmp").exists()


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it until its stdin closes."""
    script = ("import sys; from t2v_turbo.fileio import FolderLock; "
              "lock = FolderLock(sys.argv[1], 'other run').acquire(); print('locked', flush=True); sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_the_same_output_dir_fails_naming_the_holder(assets, tmp_path, capsys):
    from t2v_turbo.cli import main
    from t2v_turbo.fileio import FolderLock

    holder = hold_lock(tmp_path)
    try:
        code = main(["train", str(TINY), f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
                     f"output_dir={tmp_path}", "logging.tensorboard=false", "train.max_steps=1"])
    finally:
        holder.stdin.close()
        holder.wait()
    assert code == 1
    assert f"is in use by another other run: PID {holder.pid} on " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [FolderLock.LOCK_NAME, FolderLock.OWNER_NAME]  # none of ours


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    from t2v_turbo.fileio import FolderInUseError, FolderLock

    holder = hold_lock(tmp_path)
    holder.kill()  # SIGKILL: no chance to release
    holder.wait()
    with caplog.at_level(logging.WARNING, logger="t2v_turbo.fileio"):
        lock = FolderLock(tmp_path, "training run").acquire()
    assert f"taking over the stale lock of PID {holder.pid}" in caplog.text
    assert lock.read_owner()["pid"] == os.getpid()
    with pytest.raises(FolderInUseError, match=f"in use by another training run: PID {os.getpid()} "):
        FolderLock(tmp_path).acquire()
    lock.release()
    assert not lock.owner_path.exists()
    with FolderLock(tmp_path):  # released: free again, and no stale warning
        pass


def test_resume_latest_falls_back_past_a_truncated_checkpoint(assets, two_checkpoints, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    bad = out / f"{CHECKPOINT_PREFIX}2" / "training_state.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    recipe = TrainingRecipe(tiny_config(assets, out, "train.max_steps=2", "train.checkpoint_every=1"))
    try:
        with caplog.at_level(logging.WARNING, logger="distill.checkpoints"):
            recipe.setup(resume="latest")
        assert (recipe.global_step, recipe.micro_step) == (1, 1)
    finally:
        recipe.cleanup()
    assert f"skipping {CHECKPOINT_PREFIX}2: {bad}: unreadable" in caplog.text
    assert f"resuming from {out / (CHECKPOINT_PREFIX + '1')}, the newest readable checkpoint" in caplog.text


def test_resume_from_a_corrupt_checkpoint_names_the_file_before_loading(assets, two_checkpoints, tmp_path, capsys):
    from t2v_turbo.cli import main

    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    empty = out / f"{CHECKPOINT_PREFIX}1" / "rng_state_0.pt"
    empty.write_bytes(b"")
    truncated = out / f"{CHECKPOINT_PREFIX}2" / "training_state.pt"
    truncated.write_bytes(truncated.read_bytes()[:100])
    # the teacher folder does not exist: the checkpoint is read (and refused) before anything loads
    args = ["train", str(TINY), f"teacher.path={tmp_path / 'no_teacher'}", f"data.folder={assets['videos']}",
            f"output_dir={out}", "logging.tensorboard=false"]
    assert main(args + ["--resume", str(out / f"{CHECKPOINT_PREFIX}1")]) == 2
    assert f"{empty}: unreadable (0 bytes)" in capsys.readouterr().err
    assert main(args + ["--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and f"{truncated}: unreadable (100 bytes)" in err and f"{empty}: unreadable" in err


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@contextlib.contextmanager
def file_size_limit(limit: int):
    """While active, a write that would grow a file of this process past ``limit`` bytes fails with EFBIG, as one
    on a full disk fails with ENOSPC (SIGXFSZ ignored, so the write returns the error instead of killing us)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_exits_nonzero(assets, two_checkpoints, tmp_path,
                                                                                   capsys):
    from t2v_turbo.cli import main

    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    shutil.rmtree(out / f"{CHECKPOINT_PREFIX}2")
    before = files_of(out / f"{CHECKPOINT_PREFIX}1")
    # a file-size limit makes the writes of the next checkpoint fail as on a full disk
    limit = (out / f"{CHECKPOINT_PREFIX}1" / "student" / "student.safetensors").stat().st_size // 2
    assert (out / "config.yaml").stat().st_size < limit
    with file_size_limit(limit):
        code = main(["train", str(TINY), f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
                     f"output_dir={out}", "logging.tensorboard=false", "train.max_steps=2", "train.checkpoint_every=1",
                     "--resume", "latest"])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    final = out / f"{CHECKPOINT_PREFIX}2"
    assert f"error: {TINY}: writing {final} failed: " in err
    assert "bytes are free on that disk" in err and "It needs about " in err
    assert f"The previous checkpoint {out / (CHECKPOINT_PREFIX + '1')} is kept" in err
    assert list_checkpoints(out) == [out / f"{CHECKPOINT_PREFIX}1"]
    assert not (out / f"{CHECKPOINT_PREFIX}2.tmp").exists() and not final.exists()
    assert files_of(out / f"{CHECKPOINT_PREFIX}1") == before
