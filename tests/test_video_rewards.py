"""Clip-level video-text rewards: their models' layouts against the reference manifests, registry,
preprocessing to the fixtures, gradients, frame choice."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from rewards import build_reward
from rewards.frames import clip_frames
from rewards.internvideo2 import build_internvideo2, load_internvideo2
from rewards.testing import (
    TINY_BERT_WORDS,
    architecture_summary,
    reference_tensors,
    save_tiny_bert_tokenizer,
    save_tiny_xclip,
)
from rewards.viclip import build_viclip, load_viclip
from rewards.video_text import InternVideo2Reward, ViCLIPReward, sample_clip_frames

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
VICLIP_FIXTURE = REFERENCE / "viclip_tiny.safetensors"
INTERNVIDEO2_FIXTURE = REFERENCE / "internvideo2_tiny.safetensors"
ATOL = 1e-5


def fixture_pixels(tensors):
    """The fixture's [0, 1] frames (B, T, 3, H, W) as decoder pixels (B, C, T, H, W) in [-1, 1]."""
    return (tensors["input.video_raw01"] * 2 - 1).transpose(1, 2).contiguous()


def synthetic_bert_ids(tensors):
    def tokenize(texts):
        return tensors["input.text_input_ids"][: len(texts)]

    return tokenize


@pytest.fixture(scope="module")
def internvideo2_tensors():
    return reference_tensors(INTERNVIDEO2_FIXTURE)


@pytest.fixture(scope="module")
def viclip_reward():
    return ViCLIPReward(VICLIP_FIXTURE, config="tiny")  # default tokenizer: the real CLIP BPE


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    return save_tiny_bert_tokenizer(tmp_path_factory.mktemp("bert-large-uncased"))


@pytest.fixture(scope="module")
def xclip_folder(tmp_path_factory):
    return save_tiny_xclip(tmp_path_factory.mktemp("xclip_tiny"), image_mean=[0.5] * 3, image_std=[0.25] * 3)


@pytest.fixture(scope="module")
def xclip_reward(xclip_folder):
    return build_reward("xclip", model=xclip_folder)  # default tokenizer: the folder's


@pytest.fixture(scope="module")
def tiny_clip_rewards(viclip_reward, internvideo2_tensors, xclip_reward):
    internvideo2 = build_reward("internvideo2", checkpoint=INTERNVIDEO2_FIXTURE, config="tiny",
                                tokenizer=synthetic_bert_ids(internvideo2_tensors))
    return {"viclip": viclip_reward, "internvideo2": internvideo2, "xclip": xclip_reward}


#: Our implementations of the released models: (loader, builder, the released config's name).
MODELS = {"viclip": (load_viclip, build_viclip, "l14"), "internvideo2": (load_internvideo2, build_internvideo2, "1b")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiny_model_state_dict_order_and_size_match_fixture(name):
    load, _, _ = MODELS[name]
    meta = json.loads((REFERENCE / f"{name}_tiny.json").read_text())
    summary = architecture_summary(load(REFERENCE / f"{name}_tiny.safetensors", config="tiny"))
    assert list(summary["state_dict"]) == meta["state_dict_keys_in_order"]
    assert summary["num_params"] == meta["num_params"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_released_config_matches_manifest(name):
    """Key names, order and shapes, and parameter counts (total, vision, text) of the real model."""
    _, build, config = MODELS[name]
    manifest = json.loads((REFERENCE / f"{name}_manifest.json").read_text())
    with torch.device("meta"):
        summary = architecture_summary(build(config))
    assert list(summary["state_dict"]) == list(manifest["state_dict"])
    assert summary == {key: manifest[key] for key in summary}


@pytest.mark.parametrize("name", ["viclip", "internvideo2", "xclip"])
def test_reward_scores_batch_with_gradient_to_pixels(name, tiny_clip_rewards):
    reward = tiny_clip_rewards[name]
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


def test_viclip_reward_reproduces_fixture_score_from_pixels(viclip_reward):
    tensors = reference_tensors(VICLIP_FIXTURE)
    reward = viclip_reward
    prompts = json.loads((REFERENCE / "viclip_tiny.json").read_text())["inputs"]["texts"]
    # 32x32 frames: the resize and crop are identities, so the model sees the fixture's input.video
    with torch.no_grad():
        scores = reward.score(fixture_pixels(tensors), prompts)
    torch.testing.assert_close(scores, tensors["output.score"], atol=ATOL, rtol=0)


def test_internvideo2_reward_reproduces_fixture_score_from_pixels(tiny_clip_rewards, internvideo2_tensors):
    with torch.no_grad():
        scores = tiny_clip_rewards["internvideo2"].score(fixture_pixels(internvideo2_tensors), ["first", "second"])
    torch.testing.assert_close(scores, internvideo2_tensors["output.score"], atol=ATOL, rtol=0)


def test_internvideo2_tokenizer_from_local_folder(bert_folder):
    # a bert-large-uncased folder in miniature: WordPiece vocab.txt + tokenizer_config.json, uncased
    vocab = (bert_folder / "vocab.txt").read_text().split()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    reward = InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny", tokenizer=bert_folder)
    ids = reward.tokenizer(["A corgi on the Beach", "horse", "zebra"])
    assert ids.shape == (3, 40)
    words = [vocab.index(word) for word in ("a", "corgi", "on", "the", "beach")]
    assert ids[0, :7].tolist() == [2, *words, 3] and ids[0, 7:].eq(0).all()
    # a word outside the vocabulary splits into letters: z ##e ##b ##r ##a
    assert [vocab[i] for i in ids[2, 1:6]] == ["z", "##e", "##b", "##r", "##a"] and ids[2, 6] == 3
    assert reward.score(torch.zeros(2, 3, 8, 32, 32), ["a corgi", "horse"]).shape == (2,)


def test_tiny_bert_vocabulary_covers_the_test_prompts(bert_folder):
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(bert_folder))
    prompts = ["a red ball", "a dog running on grass", "an astronaut riding a horse on the moon",
               "a corgi running on the beach at sunset", "a horse at night"]
    for prompt in prompts:
        assert tokenizer.tokenize(prompt) == prompt.split()
    assert set(TINY_BERT_WORDS) <= set(tokenizer.vocab)


def test_internvideo2_without_tokenizer_says_what_to_pass():
    with pytest.raises(ValueError, match="bert-large-uncased"):
        InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny")
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        InternVideo2Reward(INTERNVIDEO2_FIXTURE, config="tiny", tokenizer="/tmp/no_such_tokenizer")


@pytest.mark.parametrize(
    "name,source",
    [("viclip", "huggingface.co/OpenGVLab/ViCLIP"), ("internvideo2", "OpenGVLab/InternVideo2-Stage2_1B-224p-f4"),
     ("xclip", "microsoft/xclip-base-patch32")],
)
def test_missing_checkpoint_raises_file_not_found_naming_path_and_source(name, source, tmp_path):
    missing = tmp_path / "not_here" / "weights.pt"
    kwargs = {"model": missing} if name == "xclip" else {"checkpoint": missing, "config": "tiny"}
    if name == "internvideo2":
        kwargs["tokenizer"] = lambda texts: torch.zeros(len(texts), 40, dtype=torch.long)
    with pytest.raises(FileNotFoundError, match="not_here") as err:
        build_reward(name, **kwargs)
    assert source in str(err.value)


def test_viclip_rejects_a_frame_count_it_was_not_built_for():
    with pytest.raises(ValueError, match="8 frames"):
        ViCLIPReward(VICLIP_FIXTURE, config="tiny", num_frames=4)


def test_frame_indices_count_stride_range_and_start_distribution():
    assert sample_clip_frames is clip_frames  # one sampler, under its former name too
    generator = torch.Generator().manual_seed(0)
    starts = Counter()
    for _ in range(3000):
        indices = clip_frames(20, 8, 2, generator)
        assert len(indices) == 8 and all(b - a == 2 for a, b in zip(indices, indices[1:]))
        assert 0 <= indices[0] and indices[-1] < 20
        starts[indices[0]] += 1
    assert sorted(starts) == [0, 1, 2, 3, 4, 5]  # span 15 in 20 frames: 6 valid starts
    assert all(abs(count / 3000 - 1 / 6) < 0.03 for count in starts.values())
    assert set(clip_frames(16, 8, 2, generator)[0] for _ in range(50)) == {0, 1}  # T2V-Turbo: 16 frames


def test_frame_indices_of_a_short_video_are_even_with_repeats(viclip_reward):
    assert clip_frames(5, 8, 2) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert clip_frames(10, 8, 2) == [0, 1, 3, 4, 5, 6, 8, 9]
    reward = viclip_reward
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
def test_bfloat16_reward_is_close_to_float32(name, tiny_clip_rewards):
    tensors = reference_tensors(VICLIP_FIXTURE if name == "viclip" else INTERNVIDEO2_FIXTURE)
    kwargs = {"checkpoint": VICLIP_FIXTURE if name == "viclip" else INTERNVIDEO2_FIXTURE, "config": "tiny"}
    if name == "internvideo2":
        kwargs["tokenizer"] = synthetic_bert_ids(tensors)
    prompts = ["a corgi running on the beach at sunset", "a horse"]
    with torch.no_grad():
        full = tiny_clip_rewards[name].score(fixture_pixels(tensors), prompts)
        half = build_reward(name, dtype="bfloat16", **kwargs).score(fixture_pixels(tensors), prompts)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=2e-2, rtol=0)


def test_xclip_reads_mean_std_and_geometry_from_its_folder(xclip_reward):
    assert xclip_reward.preprocess.mean == (0.5, 0.5, 0.5) and xclip_reward.preprocess.std == (0.25, 0.25, 0.25)
    assert (xclip_reward.preprocess.size, xclip_reward.num_frames) == (32, 8)


def test_xclip_default_tokenizer_is_the_folders_clip_bpe(xclip_folder, xclip_reward):
    """The default tokenizer is the model folder's CLIP tokenizer, padded to the text context; its
    ids are open_clip's CLIP BPE ids, and scores equal X-CLIP's own forward with an attention mask."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import AutoTokenizer, XCLIPModel

    prompts = ["a corgi running on the beach at sunset", "A horse at night!"]
    ids = xclip_reward.tokenizer(prompts)
    assert ids.shape == (2, 32)
    reference = SimpleTokenizer(context_length=32)(prompts)
    for row, ref in zip(ids, reference):
        length = int(ref.count_nonzero())
        assert row[:length].tolist() == ref[:length].tolist()  # [49406] + BPE + [49407]
        assert row[length:].eq(49407).all()  # padded with the end token (the folder's pad token)

    torch.manual_seed(0)
    video = torch.rand(2, 3, 8, 40, 48) * 2 - 1
    tokens = AutoTokenizer.from_pretrained(str(xclip_folder))(prompts, padding=True, return_tensors="pt")
    model = XCLIPModel.from_pretrained(str(xclip_folder)).eval()
    with torch.no_grad():
        got = xclip_reward.score(video, prompts)
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=xclip_reward.preprocess_clip(video))
    expected = torch.stack([out.video_embeds[i] @ out.text_embeds[i, i] for i in range(2)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
