"""ViCLIP: key compatibility with the released checkpoint and the reference fixture's numbers."""

import json
from pathlib import Path

import pytest
import torch

from rewards.testing import reference_tensors
from rewards.viclip import load_viclip

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
FIXTURE = REFERENCE / "viclip_tiny.safetensors"
ATOL = 1e-5  # the fixture README's tolerance on unit-norm features


@pytest.fixture(scope="module")
def fixture_tensors():
    return reference_tensors(FIXTURE)


@pytest.fixture(scope="module")
def tiny_model():
    return load_viclip(FIXTURE, config="tiny")


def test_reproduces_fixture_features_and_score(tiny_model, fixture_tensors):
    with torch.no_grad():
        video_raw = tiny_model.encode_video(fixture_tensors["input.video"])
        text_raw = tiny_model.encode_text(fixture_tensors["input.text_tokens"])
        video = tiny_model.encode_video(fixture_tensors["input.video"], normalize=True)
        text = tiny_model.encode_text(fixture_tensors["input.text_tokens"], normalize=True)
        score = tiny_model(fixture_tensors["input.video"], fixture_tensors["input.text_tokens"])
    torch.testing.assert_close(video_raw, fixture_tensors["output.video_feat_unnormalized"], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(text_raw, fixture_tensors["output.text_feat_unnormalized"], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(video, fixture_tensors["output.video_feat"], atol=ATOL, rtol=0)
    torch.testing.assert_close(text, fixture_tensors["output.text_feat"], atol=ATOL, rtol=0)
    torch.testing.assert_close(score, fixture_tensors["output.score"], atol=ATOL, rtol=0)


def test_default_tokenizer_gives_fixture_ids(fixture_tensors):
    from rewards.video_text import viclip_tokenizer

    texts = json.loads((REFERENCE / "viclip_tiny.json").read_text())["inputs"]["texts"]
    assert torch.equal(viclip_tokenizer()(texts), fixture_tensors["input.text_tokens"].long())


def test_released_pth_format_round_trip(tmp_path, tiny_model, fixture_tensors):
    checkpoint = tmp_path / "ViClip-InternVid-10M-FLT.pth"
    torch.save({"model": tiny_model.state_dict()}, checkpoint)
    reloaded = load_viclip(checkpoint, config="tiny")
    with torch.no_grad():
        score = reloaded(fixture_tensors["input.video"], fixture_tensors["input.text_tokens"])
    torch.testing.assert_close(score, fixture_tensors["output.score"], atol=ATOL, rtol=0)
    assert not any(p.requires_grad for p in reloaded.parameters())


def test_strict_load_rejects_missing_keys(tmp_path, tiny_model):
    state_dict = tiny_model.state_dict()
    del state_dict["temp"]
    checkpoint = tmp_path / "partial.pth"
    torch.save({"model": state_dict}, checkpoint)
    with pytest.raises(RuntimeError, match="temp"):
        load_viclip(checkpoint, config="tiny")


def test_bfloat16_features_stay_float32_and_close(fixture_tensors):
    model = load_viclip(FIXTURE, config="tiny", dtype=torch.bfloat16)
    with torch.no_grad():
        video = model.encode_video(fixture_tensors["input.video"], normalize=True)
    assert video.dtype == torch.float32
    torch.testing.assert_close(video, fixture_tensors["output.video_feat"], atol=1e-2, rtol=0)  # measured 3e-3
