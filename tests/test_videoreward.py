"""The ``videoreward`` reward (rewards/videoreward.py): a tiny Qwen2-VL VideoReward saved in the released layout,
loaded and scored, checked against transformers' own Qwen2-VL processor and a hand-merged LoRA forward."""

import json
import logging
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rewards import build_reward
from rewards.testing import TINY_VIDEOREWARD_STATS, save_tiny_qwen2_vl, save_tiny_videoreward
from rewards.videoreward import (
    DEFAULT_PROMPT_TEMPLATE,
    build_videoreward_model,
    load_videoreward_model,
    module_key,
    patchify,
    released_key,
    sample_frame_indices,
    save_videoreward_model,
    smart_resize,
)
from t2v_turbo.fileio import PickleRefusedError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videoreward")
    base = save_tiny_qwen2_vl(folder / "Qwen2-VL-2B-Instruct")
    return base, save_tiny_videoreward(folder / "VideoReward", base)


def uint8_video(batch=2, frames=4, height=56, width=84, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, height, width, 3), generator=g, dtype=torch.uint8)


def as_pixels(video):
    """uint8 (B, T, H, W, 3) -> (B, 3, T, H, W) in [-1, 1]."""
    return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def test_released_layout_on_disk(tiny):
    _, folder = tiny
    config = json.loads((folder / "model_config.json").read_text())
    assert set(config) >= {"data_config", "model_config", "peft_lora_config", "inference_config"}
    assert config["model_config"]["model_name_or_path"] == "Qwen/Qwen2-VL-2B-Instruct"
    checkpoint = folder / "checkpoint-7"
    assert {p.name for p in checkpoint.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                    "non_lora_state_dict.pth"}
    non_lora = torch.load(checkpoint / "non_lora_state_dict.pth", weights_only=True)
    assert "base_model.model.rm_head.weight" in non_lora
    assert any(k.startswith("base_model.model.visual.merger.") for k in non_lora)
    lora = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert all(re.match(r"base_model\.model\.model\.layers\.\d+\..*\.lora_[AB]\.weight$", k) for k in lora)
    targets = json.loads((checkpoint / "adapter_config.json").read_text())["target_modules"]
    assert "model.layers.0.self_attn.q_proj" in targets


def test_scores_match_transformers_processor_and_merged_lora(tiny):
    """Oracle: transformers' Qwen2VLProcessor builds the inputs from the literal chat text; the LoRA is merged
    into the base weights by hand (W + alpha / r * B A) from the released key names; the head is applied at
    the three reward tokens and z-normalised with the inference_config statistics."""
    from transformers import (
        AutoTokenizer,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    base, folder = tiny
    reward = build_reward("videoreward", checkpoint=folder, base_model=base)
    video = uint8_video()
    prompts = ["a red cat", "a blue car on the street"]
    ours = reward.score(as_pixels(video), prompts)

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"], special_tokens=True)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 84}),
    )
    texts = [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>"
        f'Rate the generated video for the prompt "{p}". Visual quality: <|VQ_reward|> Motion quality: '
        "<|MQ_reward|> Text alignment: <|TA_reward|><|im_end|>\n<|im_start|>assistant\n"
        for p in prompts
    ]
    inputs = processor(text=texts, videos=[v.permute(0, 3, 1, 2) for v in video], padding=True, return_tensors="pt",
                       videos_kwargs={"cap_pixels_per_frame": False})
    pixels, grid = reward.model.video_inputs(as_pixels(video))
    text = reward.model.text_inputs(prompts, int(grid[0].prod()) // 4, "cpu")
    assert torch.equal(text["input_ids"], inputs["input_ids"])
    assert torch.equal(text["mm_token_type_ids"], inputs["mm_token_type_ids"].int())
    assert torch.equal(grid, inputs["video_grid_thw"])
    torch.testing.assert_close(pixels, inputs["pixel_values_videos"], atol=1e-5, rtol=1e-5)

    vlm = Qwen2VLForConditionalGeneration.from_pretrained(base)
    vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    checkpoint = folder / "checkpoint-7"
    non_lora = torch.load(checkpoint / "non_lora_state_dict.pth", weights_only=True)
    lora = load_file(str(checkpoint / "adapter_model.safetensors"))
    scale = 8.0 / 4
    params = dict(vlm.named_parameters())
    with torch.no_grad():
        for key, value in non_lora.items():
            name = key.replace("base_model.model.visual.", "model.visual.").replace(
                "base_model.model.model.", "model.language_model.")
            if name != "base_model.model.rm_head.weight":
                params[name].copy_(value)
        for key in [k for k in lora if ".lora_A." in k]:
            module = key.replace("base_model.model.model.", "model.language_model.").replace(".lora_A.weight", "")
            params[module + ".weight"] += scale * lora[key.replace("lora_A", "lora_B")] @ lora[key]
        hidden = vlm.model(**inputs).last_hidden_state
    head = non_lora["base_model.model.rm_head.weight"]
    ids = inputs["input_ids"]
    raw = torch.stack([hidden[ids == tokenizer.convert_tokens_to_ids(f"<|{d}_reward|>")] @ head[k]
                       for k, d in enumerate(["VQ", "MQ", "TA"])], dim=1)
    stats = TINY_VIDEOREWARD_STATS
    z = (raw - torch.tensor([stats[f"{d}_mean"] for d in "VQ MQ TA".split()])) / torch.tensor(
        [stats[f"{d}_std"] for d in "VQ MQ TA".split()])
    torch.testing.assert_close(ours, z.sum(1), rtol=1e-4, atol=1e-5)


def test_gradient_reaches_pixels_only(tiny):
    base, folder = tiny
    reward = build_reward("videoreward", checkpoint=folder, base_model=base, weights={"MQ": 1.0})
    pixels = (torch.rand(1, 3, 8, 40, 48) * 2 - 1).requires_grad_(True)
    reward(pixels, ["a dog"]).sum().backward()
    assert pixels.grad is not None and pixels.grad[:, :, reward.frame_indices(8)].abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())


def test_weights_select_the_dimensions(tiny):
    base, folder = tiny
    ta_only = build_reward("videoreward", checkpoint=folder, base_model=base, weights={"TA": 2.0})
    frames, prompts = as_pixels(uint8_video(batch=1)), ["a cat"]
    torch.testing.assert_close(ta_only.score(frames, prompts), 2 * ta_only.dimension_scores(frames, prompts)[:, 2])
    raw = build_reward("videoreward", checkpoint=folder, base_model=base, normalize=False)
    torch.testing.assert_close(raw.dimension_scores(frames, prompts), raw.model(frames, prompts))
    with pytest.raises(ValueError, match=r"dimensions \['AQ'\].*\['VQ', 'MQ', 'TA'\]"):
        build_reward("videoreward", checkpoint=folder, base_model=base, weights={"AQ": 1.0})


def test_safetensors_non_lora_loads_the_same(tiny, tmp_path):
    base, folder = tiny
    other = save_tiny_videoreward(tmp_path / "st", base, non_lora_format="safetensors")
    assert (other / "checkpoint-7" / "non_lora_state_dict.safetensors").is_file()
    frames, prompts = as_pixels(uint8_video(batch=1)), ["a cat"]
    a = build_reward("videoreward", checkpoint=folder, base_model=base).score(frames, prompts)
    b = build_reward("videoreward", checkpoint=other, base_model=base).score(frames, prompts)
    torch.testing.assert_close(a, b)


class TensorDict(dict):
    """A dict subclass: torch.load(weights_only=True) refuses the unknown class."""


def test_pickle_only_behind_the_opt_in(tiny, tmp_path):
    base, folder = tiny
    copy = shutil.copytree(folder, tmp_path / "copy")
    path = copy / "checkpoint-7" / "non_lora_state_dict.pth"
    torch.save(TensorDict(torch.load(path, weights_only=True)), path)
    with pytest.raises(PickleRefusedError, match="non_lora_state_dict.pth: refused: .*TensorDict.*If you trust the "
                                                 "file, set allow_pickle: true in the reward's args"):
        build_reward("videoreward", checkpoint=copy, base_model=base)
    frames = as_pixels(uint8_video(batch=1))
    trusted = build_reward("videoreward", checkpoint=copy, base_model=base, allow_pickle=True)
    reference = build_reward("videoreward", checkpoint=folder, base_model=base)
    torch.testing.assert_close(trusted.score(frames, ["a"]), reference.score(frames, ["a"]))


def test_bad_checkpoints_are_named(tiny, tmp_path):
    base, folder = tiny
    with pytest.raises(FileNotFoundError, match="Qwen2-VL base model not found at 'Qwen/Qwen2-VL-2B-Instruct'"):
        build_reward("videoreward", checkpoint=folder)
    with pytest.raises(FileNotFoundError, match="model_config.json not found"):
        build_reward("videoreward", checkpoint=tmp_path, base_model=base)
    with pytest.raises(FileNotFoundError, match="no checkpoint-3 .found steps \\[7\\]"):
        load_videoreward_model(folder, base, step=3)

    no_head = shutil.copytree(folder, tmp_path / "no_head")
    path = no_head / "checkpoint-7" / "non_lora_state_dict.pth"
    tensors = torch.load(path, weights_only=True)
    del tensors["base_model.model.rm_head.weight"]
    torch.save(tensors, path)
    with pytest.raises(ValueError, match="no rm_head.weight"):
        load_videoreward_model(no_head, base)

    extra = shutil.copytree(folder, tmp_path / "extra")
    adapter = extra / "checkpoint-7" / "adapter_model.safetensors"
    save_file({**load_file(str(adapter)), "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight":
               torch.zeros(4, 32)}, str(adapter))
    with pytest.raises(RuntimeError, match="unexpected=.*layers.9.mlp.up_proj.lora_A"):
        load_videoreward_model(extra, base)

    unnormalised = shutil.copytree(folder, tmp_path / "unnormalised")
    config = json.loads((unnormalised / "model_config.json").read_text())
    del config["inference_config"]
    (unnormalised / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no inference_config.*normalize=false"):
        build_reward("videoreward", checkpoint=unnormalised, base_model=base)


def test_released_checkpoint_without_template_warns(tiny, tmp_path, caplog):
    base, folder = tiny
    released = shutil.copytree(folder, tmp_path / "released")
    config = json.loads((released / "model_config.json").read_text())
    del config["data_config"]["prompt_template"]
    config["data_config"]["prompt_template_type"] = "detailed_special"
    (released / "model_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        model, _ = load_videoreward_model(released, base)
    assert "'detailed_special' prompt template" in caplog.text
    assert model.prompt_template == DEFAULT_PROMPT_TEMPLATE
    template = "{prompt} <|TA_reward|> <|MQ_reward|> <|VQ_reward|>"
    assert load_videoreward_model(released, base, prompt_template=template)[0].prompt_template == template
    with pytest.raises(ValueError, match="must hold <\\|VQ_reward\\|> exactly once"):
        load_videoreward_model(released, base, prompt_template="{prompt} <|TA_reward|> <|MQ_reward|>")


def test_full_checkpoint_round_trip(tiny, tmp_path):
    base, _ = tiny
    model = build_videoreward_model(base, pretrained=False, seed=3, prompt_template="{prompt} <|VQ_reward|>"
                                    "<|MQ_reward|><|TA_reward|>")
    save_videoreward_model(tmp_path, model, step=2, base_model=str(base))
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    loaded, config = load_videoreward_model(tmp_path)
    assert config["peft_lora_config"] == {"lora_enable": False}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    frames = as_pixels(uint8_video(batch=1, frames=2))
    torch.testing.assert_close(loaded(frames, ["a cat"]), model.eval()(frames, ["a cat"]))


def test_key_names_round_trip(tiny):
    base, folder = tiny
    model, _ = load_videoreward_model(folder, base)
    for key in model.state_dict():
        assert module_key(released_key(key)) == key
    assert released_key("vlm.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == \
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert released_key("vlm.model.visual.merger.mlp.0.weight") == "base_model.model.visual.merger.mlp.0.weight"
    assert released_key("rm_head.weight") == "base_model.model.rm_head.weight"


@pytest.mark.parametrize("size", [(256, 256), (320, 512), (480, 832), (32, 32), (1080, 1920), (57, 29)])
def test_smart_resize_matches_transformers(size):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    assert smart_resize(*size, 28, 128 * 28 * 28, 200704) == reference(*size, 28, 128 * 28 * 28, 200704)
    assert smart_resize(256, 256) == (336, 336)  # 9 x 9 merged patches is below the 128 minimum


def test_frame_sampling_at_2_fps():
    # 16 frames at 8 fps = 2 s -> 4 frames; 48 frames at 8 fps -> 12; never fewer than 4
    assert sample_frame_indices(16, 8.0) == [0, 5, 10, 15]
    assert sample_frame_indices(48, 8.0) == torch.linspace(0, 47, 12).round().long().tolist()
    assert sample_frame_indices(8, 8.0) == [0, 2, 5, 7]
    assert sample_frame_indices(3, 8.0) == [0, 2]
    assert sample_frame_indices(16, 8.0, num_frames=7) == torch.linspace(0, 15, 8).round().long().tolist()
    with pytest.raises(ValueError, match="1 frame"):
        sample_frame_indices(1, 8.0)


def test_patchify_pads_time_like_the_processor():
    from transformers import Qwen2VLVideoProcessor

    frames = torch.randn(2, 3, 3, 28, 56)
    ours, grid = patchify(frames)
    theirs, *their_grid = Qwen2VLVideoProcessor().patchify(frames, patch_size=14, merge_size=2, temporal_patch_size=2)
    assert grid == tuple(their_grid) == (2, 2, 4)
    torch.testing.assert_close(ours, theirs.flatten(0, 1))
