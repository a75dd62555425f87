"""Fault injection, security: files and configs from others never run code unless the user opts in.

Every case uses a crafted pickle (or component) that would write a marker file, and checks that the
marker is not written and that the error names the file and the opt-in. The first test shows the
payload really runs code when unpickled.
"""

import dataclasses
from pathlib import Path

import pytest
import torch

from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


class WritesMarker:
    """Unpickling this object calls ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def crafted_pickle(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(WritesMarker(marker)), path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"teacher": build_tiny_diffusers_t2v(root / "teacher"),
            "videos": write_caption_folder(root / "videos", ["a cat"])}


def test_the_crafted_pickle_runs_code_when_unpickled_in_full(tmp_path):
    marker = tmp_path / "marker"
    torch.load(crafted_pickle(tmp_path / "x.pt", marker), weights_only=False)
    assert marker.read_text() == "code ran"


def test_resume_from_a_crafted_training_state_runs_no_code(assets, tmp_path, capsys):
    from t2v_turbo.cli import main

    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted"
    crafted_pickle(crafted / "training_state.pt", marker, wrap=lambda payload: {"trainable": payload, "global_step": 1})
    torch.save({"torch": torch.get_rng_state()}, crafted / "rng_state_0.pt")
    code = main(["train", str(TINY), f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
                 f"output_dir={tmp_path / 'run'}", "logging.tensorboard=false", "--resume", str(crafted)])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert f"{crafted / 'training_state.pt'}: refused: it holds Python objects other than plain data" in err
    assert "there is no opt-in for training states" in err


def test_train_reward_resume_from_a_crafted_training_state_runs_no_code(tmp_path, capsys):
    from t2v_turbo.cli import main

    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted"
    crafted_pickle(crafted / "training_state.pt", marker, wrap=lambda payload: {"trainable": payload, "step": 1})
    torch.save({"torch": torch.get_rng_state()}, crafted / "rng_state_0.pt")
    code = main(["train-reward", str(ROOT / "configs" / "miniworld_reward_model.yaml"),
                 f"output_dir={tmp_path / 'run'}", "--resume", str(crafted)])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert f"{crafted / 'training_state.pt'}: refused: it holds Python objects other than plain data" in err


def test_a_crafted_rng_state_is_refused_too(tmp_path):
    from distill.checkpoints import CheckpointError, find_resume_checkpoint

    marker = tmp_path / "marker"
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    torch.save({"global_step": 3}, folder / "training_state.pt")
    crafted_pickle(folder / "rng_state_0.pt", marker)
    with pytest.raises(CheckpointError, match=f"{folder / 'rng_state_0.pt'}: refused"):
        find_resume_checkpoint(str(folder), tmp_path, rank=0)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be read"):
        find_resume_checkpoint("latest", tmp_path, rank=0)
    assert not marker.exists()


def test_a_config_component_from_an_override_runs_no_shell_command(assets, tmp_path, capsys):
    from t2v_turbo.cli import main

    marker = tmp_path / "marker"
    code = main(["train", str(TINY), "teacher._component_=os.system", "~teacher.path",
                 f"+teacher.command=echo code ran > {marker}", f"data.folder={assets['videos']}",
                 f"output_dir={tmp_path / 'run'}", "logging.tensorboard=false"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert "teacher._component_ 'os.system': not a trusted module. A config may call only the modules t2v_turbo" in err
    assert "--trust-config" in err and "T2V_TURBO_TRUST_CONFIG=1" in err and "T2V_TURBO_TRUSTED_MODULES" in err


def test_trusted_prefixes_cannot_be_used_to_reach_other_modules(monkeypatch):
    from t2v_turbo.config import ConfigError, resolve_component, validate_component

    monkeypatch.delenv("T2V_TURBO_TRUST_CONFIG", raising=False)
    monkeypatch.delenv("T2V_TURBO_TRUSTED_MODULES", raising=False)
    for dotted, why in [("t2v_turbo.fileio.os.system", "it reaches the untrusted module 'os'"),
                        ("t2v_turbo.config.importlib.import_module", "it reaches the untrusted module 'importlib'"),
                        ("t2v_turbo.config.Path", "it resolves to an object of the untrusted module 'pathlib'"),
                        ("distill.trainer.logger.__class__", "a dunder attribute is not allowed"),
                        ("t2v_turbo_evil.x", "not a trusted module")]:
        with pytest.raises(ConfigError, match=f"_component_ '{dotted}': {why}"):
            resolve_component(dotted)
    node = {"_component_": "transformers.AutoModel.from_pretrained", "pretrained_model_name_or_path": "x",
            "trust_remote_code": True}
    assert validate_component(node, "teacher") == [
        "teacher.trust_remote_code=true runs code from the model's folder; if you trust it, pass --trust-config "
        "(or set T2V_TURBO_TRUST_CONFIG=1)"]


def test_the_opt_ins_extend_the_allowlist(tmp_path, monkeypatch, capsys):
    from t2v_turbo.cli import main
    from t2v_turbo.config import instantiate

    monkeypatch.delenv("T2V_TURBO_TRUST_CONFIG", raising=False)
    monkeypatch.delenv("T2V_TURBO_TRUSTED_MODULES", raising=False)
    args = ["train", str(TINY), "optimizer._component_=builtins.dict", "--print-config"]
    assert main(args) == 2 and "optimizer._component_ 'builtins.dict': not a trusted module" in capsys.readouterr().err
    assert main(args + ["--trust-config"]) == 0 and "_component_: builtins.dict" in capsys.readouterr().out
    assert "T2V_TURBO_TRUST_CONFIG" not in __import__("os").environ  # the flag does not outlive the command
    marker = tmp_path / "marker"
    monkeypatch.setenv("T2V_TURBO_TRUSTED_MODULES", "subprocess")
    instantiate({"_component_": "subprocess.run", "args": f"echo code ran > {marker}", "shell": True})
    assert marker.read_text().strip() == "code ran"  # the opted-in component really runs


def test_a_downloaded_student_json_imports_no_module_outside_the_allowlist(tmp_path, monkeypatch):
    import json

    from t2v_turbo.config import ConfigError
    from t2v_turbo.student import StudentMeta, load_teacher_for, read_student_meta

    monkeypatch.delenv("T2V_TURBO_TRUST_CONFIG", raising=False)
    monkeypatch.delenv("T2V_TURBO_TRUSTED_MODULES", raising=False)
    marker = tmp_path / "marker"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "evil_adapter.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    student = tmp_path / "student"
    student.mkdir()
    meta = StudentMeta(teacher_adapter="evil_adapter.Adapter", teacher_path="teacher", family="modelscope")
    (student / "student.json").write_text(json.dumps(dataclasses.asdict(meta)))
    with pytest.raises(ConfigError, match=rf"{student / 'student.json'}: teacher_adapter 'evil_adapter.Adapter': not a "
                                          r"trusted module.*--trust-config"):
        load_teacher_for(read_student_meta(student), student)
    assert not marker.exists()
    meta.teacher_adapter = "t2v_turbo.config.ConfigError"
    (student / "student.json").write_text(json.dumps(dataclasses.asdict(meta)))
    with pytest.raises(ValueError, match="'t2v_turbo.config.ConfigError' is not a TeacherAdapter class"):
        load_teacher_for(read_student_meta(student), student)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_crafted_reward_checkpoint_is_refused_naming_the_opt_in(tmp_path, zip_format):
    from rewards.base import build_reward
    from rewards.internvideo2 import load_internvideo2
    from rewards.videoreward import load_tensors
    from t2v_turbo.fileio import PickleRefusedError

    marker = tmp_path / "marker"
    crafted = tmp_path / "ViClip-InternVid-10M-FLT.pth"
    torch.save({"model": WritesMarker(marker)}, crafted, _use_new_zipfile_serialization=zip_format)
    opt_in = "If you trust the file, set allow_pickle: true in the reward's args"
    with pytest.raises(PickleRefusedError, match=f"{crafted}: refused: .*{opt_in}"):
        build_reward("viclip", checkpoint=str(crafted), config="tiny")
    with pytest.raises(PickleRefusedError, match=f"{crafted}: refused: .*{opt_in}"):
        load_internvideo2(crafted, "tiny")
    with pytest.raises(PickleRefusedError, match=f"{crafted}: refused: .*{opt_in}"):
        load_tensors(crafted)  # VideoReward's non-LoRA / full state dict
    assert not marker.exists()
    with pytest.raises(ValueError, match="holds no state dict"):  # the opt-in unpickles in full: the code runs
        build_reward("viclip", checkpoint=str(crafted), config="tiny", allow_pickle=True)
    assert marker.read_text() == "code ran"
