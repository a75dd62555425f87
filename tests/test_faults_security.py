"""Fault injection, security: files and configs from others never run code unless the user opts in.

Every case uses a crafted pickle (or component) that would write a marker file, and checks that the
marker is not written and that the error names the file and the opt-in. The first test shows the
payload really runs code when unpickled.
"""

from pathlib import Path

import pytest
import torch

from distill.checkpoints import CheckpointError, find_resume_checkpoint
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
    return {"teacher": build_tiny_diffusers_t2v(root / "teacher"), "videos": write_caption_folder(root / "videos", ["a cat"])}


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


def test_a_crafted_rng_state_is_refused_too(tmp_path):
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
