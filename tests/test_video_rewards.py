"""Clip-level video-text rewards: registry, preprocessing to the fixtures, gradients, frame choice."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewards import build_reward
from rewards.video_text import InternVideo2Reward, ViCLIPReward, sample_clip_frames

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
VICLIP_FIXTURE = REFERENCE / "viclip_tiny.safetensors"
INTERNVIDEO2_FIXTURE = REFERENCE / "internvideo2_tiny.safetensors"
ATOL = 1e-5


def fixture(path):
    return {key: value.clone() for key, value in load_file(path).items()}


def fixture_pixels(tensors):
    """The fixture's [0, 1] frames (B, T, 3, H, W) as decoder pixels (B, C, T, H, W) in [-1, 1]."""
    return (tensors["input.video_raw01"] * 2 - 1).transpose(1, 2).contiguous()


def synthetic_bert_ids(tensors):
    def tokenize(texts):
        return tensors["input.text_input_ids"][: len(texts)]

    return tokenize


@pytest.fixture(scope="module")
def xclip_folder(tmp_path_factory):
    from transformers import XCLIPConfig, XCLIPModel

    config = XCLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=32),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_frames=8, mit_hidden_size=16, mit_intermediate_size=32,
                           mit_num_attention_heads=2),
        projection_dim=16, prompt_layers=1, prompt_num_attention_heads=2,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("xclip_tiny")
    XCLIPModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}))
    return folder


def build_tiny(name, xclip_folder):
    if name == "viclip":
        return build_reward("viclip", checkpoint=VICLIP_FIXTURE, config="tiny")
    if name == "internvideo2":
        tensors = fixture(INTERNVIDEO2_FIXTURE)
        return build_reward("internvideo2", checkpoint=INTERNVIDEO2_FIXTURE, config="tiny",
                            tokenizer=synthetic_bert_ids(tensors))
    from rewards.video_text import viclip_tokenizer

    return build_reward("xclip", model=xclip_folder, tokenizer=viclip_tokenizer(32))


@pytest.mark.parametrize("name", ["viclip", "internvideo2", "xclip"])
def test_reward_scores_batch_with_gradient_to_pixels(name, xclip_folder):
    reward = build_tiny(name, xclip_folder)
    assert reward.granularity == "clip"
    assert not any(p.requires_grad for p in reward.parameters())
    torch.manual_seed(0)
    video = (torch.rand(2, 3, 17, 40, 48) * 2 - 1).requires_grad_(True)
    scores = reward(video, ["a corgi on the beach", "a horse at night"], torch.Generator().manual_seed(0))
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.all(scores.abs() <= 1 + 1e-5)  # cosines
    scores.sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    used_frames = (video.grad.abs().sum(dim=(0, 1, 3, 4)) > 0).nonzero().flatten().tolist()
    assert len(used_frames) == 8 and all(b - a == 2 for a, b in zip(used_frames, used_frames[1:]))


def test_viclip_reward_reproduces_fixture_score_from_pixels():
    tensors = fixture(VICLIP_FIXTURE)
    reward = ViCLIPReward(VICLIP_FIXTURE, config="tiny")  # default tokenizer: the real CLIP BPE
    prompts = json.loads((REFERENCE / "viclip_tiny.json").read_text())["inputs"]["texts"]
    # 32x32 frames: the resize and crop are identities, so the model sees the fixture's input.video
    with torch.no_grad():
        scores = reward.score(fixture_pixels(tensors), prompts)
    torch.testing.assert_close(scores, tensors["output.score"], atol=ATOL, rtol=0)


def test_internvideo2_reward_reproduces_fixture_score_from_pixels():
    tensors = fixture(INTERNVIDEO2_FIXTURE)
    reward = InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny", tokenizer=synthetic_bert_ids(tensors))
    with torch.no_grad():
        scores = reward.score(fixture_pixels(tensors), ["first", "second"])
    torch.testing.assert_close(scores, tensors["output.score"], atol=ATOL, rtol=0)


def test_internvideo2_tokenizer_from_local_folder(tmp_path):
    # a bert-large-uncased folder in miniature: a WordPiece vocab.txt (uncased by default)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "corgi", "on", "the", "beach", "horse"]
    folder = tmp_path / "bert-large-uncased"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    reward = InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny", tokenizer=folder)
    ids = reward.tokenizer(["A corgi on the beach", "horse"])
    assert ids.shape == (2, 40)
    assert ids[0, :7].tolist() == [2, 5, 6, 7, 8, 9, 3] and ids[0, 7:].eq(0).all()
    assert reward.score(torch.zeros(2, 3, 8, 32, 32), ["a corgi", "horse"]).shape == (2,)


def test_internvideo2_without_tokenizer_says_what_to_pass():
    with pytest.raises(ValueError, match="bert-large-uncased"):
        InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny")
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny", tokenizer="/tmp/no_such_tokenizer")


@pytest.mark.parametrize("name", ["viclip", "internvideo2", "xclip"])
def test_missing_checkpoint_raises_file_not_found_naming_path(name, tmp_path):
    missing = tmp_path / "not_here" / "weights.pt"
    kwargs = {"model": missing} if name == "xclip" else {"checkpoint": missing, "config": "tiny"}
    if name == "internvideo2":
        kwargs["tokenizer"] = lambda texts: torch.zeros(len(texts), 40, dtype=torch.long)
    with pytest.raises(FileNotFoundError, match="not_here"):
        build_reward(name, **kwargs)


def test_viclip_rejects_a_frame_count_it_was_not_built_for():
    with pytest.raises(ValueError, match="8 frames"):
        ViCLIPReward(VICLIP_FIXTURE, config="tiny", num_frames=4)


def test_frame_indices_count_stride_range_and_start_distribution():
    generator = torch.Generator().manual_seed(0)
    starts = Counter()
    for _ in range(3000):
        indices = sample_clip_frames(20, 8, 2, generator)
        assert len(indices) == 8 and all(b - a == 2 for a, b in zip(indices, indices[1:]))
        assert 0 <= indices[0] and indices[-1] < 20
        starts[indices[0]] += 1
    assert sorted(starts) == [0, 1, 2, 3, 4, 5]  # span 15 in 20 frames: 6 valid starts
    assert all(abs(count / 3000 - 1 / 6) < 0.03 for count in starts.values())
    assert set(sample_clip_frames(16, 8, 2, generator)[0] for _ in range(50)) == {0, 1}  # T2V-Turbo: 16 frames


def test_frame_indices_of_a_short_video_are_even_with_repeats():
    assert sample_clip_frames(5, 8, 2) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert sample_clip_frames(10, 8, 2) == [0, 1, 3, 4, 5, 6, 8, 9]
    reward = ViCLIPReward(VICLIP_FIXTURE, config="tiny")
    assert reward.frame_indices(1) == [0] * 8
    scores = reward(torch.zeros(1, 3, 3, 32, 32), ["a"], torch.Generator().manual_seed(0))
    assert scores.shape == (1,)


def test_frame_indices_follow_the_generator():
    reward = ViCLIPReward(VICLIP_FIXTURE, config="tiny", num_frames=8, stride=3)
    first = reward.frame_indices(40, torch.Generator().manual_seed(3))
    assert first == reward.frame_indices(40, torch.Generator().manual_seed(3))
    assert len(first) == 8 and first[1] - first[0] == 3


def test_text_features_are_cached_per_prompt():
    reward = ViCLIPReward(VICLIP_FIXTURE, config="tiny", text_cache_size=2)
    calls = []
    encode = reward.encode_prompts
    reward.encode_prompts = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    first = reward.text_features(["a", "b", "a"])
    again = reward.text_features(["b", "a"])
    assert calls == [["a", "b"]]
    torch.testing.assert_close(again, first[[1, 0]])
    reward.text_features(["c"])  # evicts the least recently used ("b")
    reward.text_features(["a", "b"])
    assert calls == [["a", "b"], ["c"], ["b"]]
    assert len(reward._text_cache) == 2


def test_random_crop_changes_with_the_global_seed():
    reward = ViCLIPReward(VICLIP_FIXTURE, config="tiny", crop="random")
    torch.manual_seed(0)
    video = torch.rand(1, 3, 8, 32, 64) * 2 - 1
    draws = []
    for seed in range(4):
        torch.manual_seed(seed)
        with torch.no_grad():
            draws.append(reward.score(video, ["a"]).item())
    assert len(set(draws)) > 1


@pytest.mark.parametrize("name", ["viclip", "internvideo2"])
def test_bfloat16_reward_is_close_to_float32(name):
    tensors = fixture(VICLIP_FIXTURE if name == "viclip" else INTERNVIDEO2_FIXTURE)
    kwargs = {"checkpoint": VICLIP_FIXTURE if name == "viclip" else INTERNVIDEO2_FIXTURE, "config": "tiny"}
    if name == "internvideo2":
        kwargs["tokenizer"] = synthetic_bert_ids(tensors)
    prompts = ["a corgi running on the beach at sunset", "a horse"]
    with torch.no_grad():
        full = build_reward(name, **kwargs).score(fixture_pixels(tensors), prompts)
        half = build_reward(name, dtype="bfloat16", **kwargs).score(fixture_pixels(tensors), prompts)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=2e-2, rtol=0)
