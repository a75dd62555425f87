"""InternVideo2-Stage2: key compatibility with the released checkpoint and the fixture's numbers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewards.internvideo2 import (
    build_internvideo2,
    convert_released_state_dict,
    interpolate_temporal_pos_embed,
    load_internvideo2,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
FIXTURE = REFERENCE / "internvideo2_tiny.safetensors"
ATOL = 1e-5  # the fixture README's tolerance on unit-norm features


@pytest.fixture(scope="module")
def fixture_tensors():
    return {key: value.clone() for key, value in load_file(FIXTURE).items()}


@pytest.fixture(scope="module")
def tiny_model():
    return load_internvideo2(FIXTURE, config="tiny")


def encode(model, tensors):
    with torch.no_grad():
        video = model.encode_video(tensors["input.video"], normalize=True)
        text = model.encode_text(tensors["input.text_input_ids"], tensors["input.text_attention_mask"], normalize=True)
    return video, text


def test_tiny_state_dict_order_and_size_match_fixture(tiny_model):
    meta = json.loads((REFERENCE / "internvideo2_tiny.json").read_text())
    assert list(tiny_model.state_dict()) == meta["state_dict_keys_in_order"]
    assert sum(p.numel() for p in tiny_model.parameters()) == meta["num_params"]


def test_reproduces_fixture_features_and_score(tiny_model, fixture_tensors):
    with torch.no_grad():
        pooled = tiny_model.vision_encoder(fixture_tensors["input.video"])
        text_cls = tiny_model.text_encoder(
            input_ids=fixture_tensors["input.text_input_ids"],
            attention_mask=fixture_tensors["input.text_attention_mask"],
        ).last_hidden_state[:, 0]
        score = tiny_model(fixture_tensors["input.video"], fixture_tensors["input.text_input_ids"])
    video, text = encode(tiny_model, fixture_tensors)
    torch.testing.assert_close(pooled, fixture_tensors["output.video_pooled_unprojected"], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(text_cls, fixture_tensors["output.text_cls_unprojected"], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(video, fixture_tensors["output.video_feat"], atol=ATOL, rtol=0)
    torch.testing.assert_close(text, fixture_tensors["output.text_feat"], atol=ATOL, rtol=0)
    # the default mask (ids != 0) is the fixture's mask
    torch.testing.assert_close(score, fixture_tensors["output.score"], atol=ATOL, rtol=0)


def test_tanh_gelu_variant(fixture_tensors):
    model = load_internvideo2(FIXTURE, config="tiny", gelu_approximate="tanh")
    video, _ = encode(model, fixture_tensors)
    torch.testing.assert_close(video, fixture_tensors["output.video_feat_gelu_tanh_variant"], atol=ATOL, rtol=0)
    # the variant is distinguishable from exact GELU at this tolerance (fixture: 1.1e-4 apart)
    assert (video - fixture_tensors["output.video_feat"]).abs().max() > 5 * ATOL


@pytest.mark.parametrize("name", ["pos_embed", "clip_pos_embed"])
def test_temporal_pos_embed_interpolation(fixture_tensors, name):
    result = interpolate_temporal_pos_embed(fixture_tensors[f"posembed.input_{name}_t4"], num_frames=8, patches_per_frame=16)
    torch.testing.assert_close(result, fixture_tensors[f"posembed.output_{name}_t8"], atol=1e-6, rtol=0)


def test_real_config_matches_manifest():
    manifest = json.loads((REFERENCE / "internvideo2_manifest.json").read_text())
    with torch.device("meta"):
        model = build_internvideo2("1b")
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(shapes) == list(manifest["state_dict"])
    assert shapes == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert sum(p.numel() for p in model.vision_encoder.parameters()) == manifest["num_params_vision"]
    assert sum(p.numel() for p in model.text_encoder.parameters()) == manifest["num_params_text"]


def released_format(state_dict, fixture_tensors):
    """The tiny model's weights as the released .pt holds them: BERT under `text_encoder.bert.`,
    4-frame position embeddings, plus entries the model does not use."""
    released = {}
    for key, value in state_dict.items():
        if key.startswith("text_encoder."):
            key = "text_encoder.bert." + key[len("text_encoder."):]
        released[key] = value
    released["vision_encoder.pos_embed"] = fixture_tensors["posembed.input_pos_embed_t4"]
    released["vision_encoder.clip_pos_embed"] = fixture_tensors["posembed.input_clip_pos_embed_t4"]
    released["temp"] = torch.tensor(0.07)
    released["itm_head.weight"] = torch.zeros(2, 32)
    return released


def test_released_checkpoint_round_trip(tmp_path, tiny_model, fixture_tensors):
    checkpoint = tmp_path / "InternVideo2-stage2_1b-224p-f4.pt"
    torch.save({"module": released_format(tiny_model.state_dict(), fixture_tensors)}, checkpoint)
    reloaded = load_internvideo2(checkpoint, config="tiny", num_frames=8)
    expected_pos = fixture_tensors["posembed.output_pos_embed_t8"]
    torch.testing.assert_close(reloaded.vision_encoder.pos_embed, expected_pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        reloaded.text_encoder.embeddings.word_embeddings.weight, tiny_model.text_encoder.embeddings.word_embeddings.weight
    )
    # the 4-frame checkpoint also serves a 4-frame model, without interpolation
    four = load_internvideo2(checkpoint, config="tiny", num_frames=4)
    torch.testing.assert_close(four.vision_encoder.pos_embed, fixture_tensors["posembed.input_pos_embed_t4"])
    with torch.no_grad():
        assert four.encode_video(fixture_tensors["input.video"][:, :4]).shape == (2, 16)


def test_released_checkpoint_without_decoder_heads_loads(tmp_path, tiny_model, fixture_tensors):
    released = released_format(tiny_model.state_dict(), fixture_tensors)
    released = {k: v for k, v in released.items() if "clip_decoder" not in k}
    checkpoint = tmp_path / "no_heads.pt"
    torch.save({"module": released}, checkpoint)
    without_heads = load_internvideo2(checkpoint, config="tiny")
    torch.save({"module": released_format(tiny_model.state_dict(), fixture_tensors)}, tmp_path / "full.pt")
    with_heads = load_internvideo2(tmp_path / "full.pt", config="tiny")
    # the heads are off the feature path: same features with or without them
    torch.testing.assert_close(encode(without_heads, fixture_tensors)[0], encode(with_heads, fixture_tensors)[0])


def test_missing_weights_are_an_error(tmp_path, tiny_model, fixture_tensors):
    released = released_format(tiny_model.state_dict(), fixture_tensors)
    del released["text_encoder.bert.embeddings.position_ids"]
    checkpoint = tmp_path / "partial.pt"
    torch.save({"module": released}, checkpoint)
    with pytest.raises(RuntimeError, match="position_ids"):
        load_internvideo2(checkpoint, config="tiny")


def test_convert_drops_unused_entries(tiny_model, fixture_tensors):
    converted = convert_released_state_dict(released_format(tiny_model.state_dict(), fixture_tensors), tiny_model)
    assert set(converted) == set(tiny_model.state_dict())


def test_missing_checkpoint_names_path_and_source(tmp_path):
    missing = tmp_path / "nowhere" / "InternVideo2-stage2_1b-224p-f4.pt"
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        load_internvideo2(missing)
    assert "OpenGVLab/InternVideo2-Stage2_1B-224p-f4" in str(err.value)


def test_bfloat16_features_stay_float32_and_close(fixture_tensors):
    model = load_internvideo2(FIXTURE, config="tiny", dtype=torch.bfloat16)
    video, text = encode(model, fixture_tensors)
    assert video.dtype == text.dtype == torch.float32
    torch.testing.assert_close(video, fixture_tensors["output.video_feat"], atol=1e-2, rtol=0)  # measured 3.6e-3
    torch.testing.assert_close(text, fixture_tensors["output.text_feat"], atol=1e-2, rtol=0)  # 3.8e-3
