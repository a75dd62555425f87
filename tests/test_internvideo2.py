"""InternVideo2-Stage2: key compatibility with the released checkpoint and the fixture's numbers."""

from pathlib import Path

import pytest
import torch

from rewards.internvideo2 import (
    convert_released_state_dict,
    interpolate_temporal_pos_embed,
    load_internvideo2,
)
from rewards.testing import internvideo2_released_state_dict, reference_tensors

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
FIXTURE = REFERENCE / "internvideo2_tiny.safetensors"
ATOL = 1e-5  # the fixture README's tolerance on unit-norm features


@pytest.fixture(scope="module")
def fixture_tensors():
    return reference_tensors(FIXTURE)


@pytest.fixture(scope="module")
def tiny_model():
    return load_internvideo2(FIXTURE, config="tiny")


def encode(model, tensors):
    with torch.no_grad():
        video = model.encode_video(tensors["input.video"], normalize=True)
        text = model.encode_text(tensors["input.text_input_ids"], tensors["input.text_attention_mask"], normalize=True)
    return video, text


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


def released_format(state_dict, fixture_tensors):
    """The tiny model's weights as the released .pt holds them, with the fixture's 4-frame
    position embeddings."""
    return internvideo2_released_state_dict(state_dict, {
        "vision_encoder.pos_embed": fixture_tensors["posembed.input_pos_embed_t4"],
        "vision_encoder.clip_pos_embed": fixture_tensors["posembed.input_clip_pos_embed_t4"],
    })


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


def test_bfloat16_features_stay_float32_and_close(fixture_tensors):
    model = load_internvideo2(FIXTURE, config="tiny", dtype=torch.bfloat16)
    video, text = encode(model, fixture_tensors)
    assert video.dtype == text.dtype == torch.float32
    torch.testing.assert_close(video, fixture_tensors["output.video_feat"], atol=1e-2, rtol=0)  # measured 3.6e-3
    torch.testing.assert_close(text, fixture_tensors["output.text_feat"], atol=1e-2, rtol=0)  # 3.8e-3


def test_tiny_released_checkpoint_builder(tmp_path):
    """rewards.testing's tiny checkpoint is in the released format and loads through the same path."""
    from rewards.testing import save_tiny_internvideo2

    path = save_tiny_internvideo2(tmp_path / "InternVideo2-stage2_1b-224p-f4.pt")
    released = torch.load(path, weights_only=True)["module"]
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in released and "itm_head.weight" in released
    assert released["vision_encoder.pos_embed"].shape == (1, 1 + 4 * 16, 32)  # 4 frames of 4x4 patches
    model = load_internvideo2(path, config="tiny", num_frames=8)
    expected = interpolate_temporal_pos_embed(released["vision_encoder.pos_embed"], num_frames=8, patches_per_frame=16)
    torch.testing.assert_close(model.vision_encoder.pos_embed, expected, atol=0, rtol=0)
    assert model.vision_encoder.pos_embed.abs().sum() > 0
