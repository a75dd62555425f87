"""Frame-level image-text rewards against independently computed references, loading tiny models
saved in the real checkpoints' formats."""

import math

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from rewards import build_reward
from rewards.image_text import HPS_SOURCE, build_open_clip_model
from rewards.preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from rewards.testing import (
    TINY_OPEN_CLIP_CONFIG,
    save_tiny_aesthetic_head,
    save_tiny_open_clip,
    save_tiny_transformers_clip,
)


def known_image(height=40, width=64):
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5.0 + y / 7.0)], -1) * 255
    return img.round().astype(np.uint8)


def as_video(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> a one-frame video (1, 3, 1, H, W) in [-1, 1]."""
    return (torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)[None, :, None]


@pytest.fixture(scope="module")
def hps_checkpoint(tmp_path_factory):
    return save_tiny_open_clip(tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt", seed=0)


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    return save_tiny_transformers_clip(tmp_path_factory.mktemp("clip"), seed=0)


def test_hps_checkpoint_loads_exact_weights(hps_checkpoint):
    reward = build_reward("hpsv2.1", checkpoint=hps_checkpoint.parent, model_config=TINY_OPEN_CLIP_CONFIG)
    torch.manual_seed(0)
    original = build_open_clip_model(TINY_OPEN_CLIP_CONFIG).state_dict()
    loaded = reward.model.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_hps_score_matches_reference_pipeline(hps_checkpoint):
    """Reference: HPSv2's PIL letterbox + Normalize, open_clip tokenizer, cosine of the features.
    Tolerance 2e-3 on the cosine covers the uint8 rounding of the PIL path."""
    reward = build_reward("hpsv2.1", checkpoint=hps_checkpoint, model_config=TINY_OPEN_CLIP_CONFIG,
                          frame_selection={"mode": "all"})
    img, prompt, size = known_image(), "a photo of a sunset", 32
    torch.manual_seed(0)
    model = build_open_clip_model(TINY_OPEN_CLIP_CONFIG).eval()
    new_w, new_h = size, round(img.shape[0] * size / img.shape[1])
    canvas = Image.new("RGB", (size, size))
    canvas.paste(Image.fromarray(img).resize((new_w, new_h), Image.BICUBIC), (0, (size - new_h) // 2))
    pixels = TF.normalize(TF.to_tensor(canvas), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)[None]
    with torch.no_grad():
        image_f = model.encode_image(pixels, normalize=True)
        text_f = model.encode_text(open_clip.tokenize([prompt]), normalize=True)
    expected = (image_f * text_f).sum(-1)
    got = reward(as_video(img), [prompt])
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_hps_loads_module_prefixed_state_dict(tmp_path, hps_checkpoint):
    sd = torch.load(hps_checkpoint, weights_only=True)["state_dict"]
    path = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    reward = build_reward("hpsv2", checkpoint=path, model_config=TINY_OPEN_CLIP_CONFIG)
    assert torch.equal(reward.model.logit_scale, sd["logit_scale"])


def test_hps_strict_load_rejects_incomplete_checkpoint(tmp_path, hps_checkpoint):
    sd = torch.load(hps_checkpoint, weights_only=True)["state_dict"]
    sd.pop("text_projection")
    torch.save({"state_dict": sd}, tmp_path / "HPS_v2.1_compressed.pt")
    with pytest.raises(RuntimeError, match="text_projection"):
        build_reward("hpsv2.1", checkpoint=tmp_path, model_config=TINY_OPEN_CLIP_CONFIG)


@pytest.mark.parametrize(
    "name,kwargs,expected_file,source",
    [
        ("hpsv2.1", {}, "HPS_v2.1_compressed.pt", HPS_SOURCE),
        ("hpsv2", {}, "HPS_v2_compressed.pt", HPS_SOURCE),
        ("clip", {}, "open_clip_pytorch_model.bin", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ],
)
def test_missing_open_clip_checkpoint_names_file_place_and_source(tmp_path, name, kwargs, expected_file, source):
    with pytest.raises(FileNotFoundError) as err:
        build_reward(name, checkpoint=tmp_path, model_config=TINY_OPEN_CLIP_CONFIG, **kwargs)
    message = str(err.value)
    assert expected_file in message and str(tmp_path / expected_file) in message and source in message


def test_missing_aesthetic_head_and_pickscore_folder(tmp_path, tiny_clip_folder):
    with pytest.raises(FileNotFoundError, match=r"sa_0_4_vit_l_14_linear\.pth.*LAION-AI/aesthetic-predictor"):
        build_reward("aesthetic", head_checkpoint=tmp_path, clip_model=tiny_clip_folder, head="linear")
    missing = tmp_path / "PickScore_v1"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_reward("pickscore", model=missing, processor=tiny_clip_folder)


def test_pickscore_matches_transformers_processor_and_model(tiny_clip_folder):
    """Reference: the real transformers path, CLIPProcessor on a PIL image and CLIPModel's
    logits_per_image (= exp(logit_scale) * cosine, PickScore's definition). Tolerance 0.05 on
    scores of about logit_scale (14.3 at init) covers the processor's uint8 rounding."""
    from transformers import CLIPModel, CLIPProcessor

    reward = build_reward("pickscore", model=tiny_clip_folder, processor=tiny_clip_folder)
    img, prompt = known_image(48, 36), "a red bicycle"
    processor = CLIPProcessor.from_pretrained(tiny_clip_folder)
    model = CLIPModel.from_pretrained(tiny_clip_folder).eval()
    inputs = processor(text=[prompt], images=Image.fromarray(img), return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image[0]
    torch.testing.assert_close(reward(as_video(img), [prompt]), expected, atol=0.05, rtol=0)


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_aesthetic_matches_reference_head(tmp_path, tiny_clip_folder, head):
    """Reference: CLIP image embedding from the processor path, L2-normalised, through the
    LAION head rebuilt by hand from the saved state dict."""
    from transformers import CLIPImageProcessor, CLIPModel

    name = "sac+logos+ava1-l14-linearMSE.pth" if head == "mlp" else "sa_0_4_vit_l_14_linear.pth"
    head_path = save_tiny_aesthetic_head(tmp_path / name, head=head, seed=1)
    reward = build_reward("aesthetic", head_checkpoint=tmp_path, clip_model=tiny_clip_folder, head=head)
    img = known_image()
    model = CLIPModel.from_pretrained(tiny_clip_folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(tiny_clip_folder)(Image.fromarray(img), return_tensors="pt").pixel_values
    sd = torch.load(head_path, weights_only=True)
    with torch.no_grad():
        emb = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        x = emb / emb.norm(dim=-1, keepdim=True)
        if head == "mlp":
            for i in (0, 2, 4, 6):
                x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
            expected = x @ sd["layers.7.weight"].T + sd["layers.7.bias"]
        else:
            expected = x @ sd["weight"].T + sd["bias"]
    torch.testing.assert_close(reward(as_video(img), ["ignored"]), expected[:, 0], atol=2e-3, rtol=0)


def test_temporal_attenuation_weights_the_frame_mean(hps_checkpoint):
    plain = build_reward("hpsv2.1", checkpoint=hps_checkpoint, model_config=TINY_OPEN_CLIP_CONFIG,
                         frame_selection={"mode": "segmental", "segments": 4})
    tar = build_reward("hpsv2.1", checkpoint=hps_checkpoint, model_config=TINY_OPEN_CLIP_CONFIG,
                       frame_selection={"mode": "segmental", "segments": 4, "tar_lambda": 0.5})
    clip = torch.rand(2, 3, 16, 32, 32) * 2 - 1
    prompts = ["a", "b"]
    idx = tar.frame_indices(16, torch.Generator().manual_seed(0))
    per_frame = plain.score_frames((clip[:, :, idx].transpose(1, 2) / 2 + 0.5).clamp(0, 1), prompts)
    weights = torch.tensor([math.exp(-0.5 * abs(f - 16 / 2)) for f in idx])  # exp(-lambda |f - F / 2|)
    expected = (per_frame * weights).mean(1)
    torch.testing.assert_close(tar(clip, prompts, torch.Generator().manual_seed(0)), expected)
    assert not torch.allclose(plain(clip, prompts, torch.Generator().manual_seed(0)), expected)


def test_bfloat16_reward_close_to_float32(hps_checkpoint):
    args = dict(checkpoint=hps_checkpoint, model_config=TINY_OPEN_CLIP_CONFIG, frame_selection={"mode": "all"})
    clip = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    low = build_reward("hpsv2.1", dtype="bfloat16", **args)
    assert next(low.parameters()).dtype == torch.bfloat16
    scores = low(clip, ["a", "b"])
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, build_reward("hpsv2.1", **args)(clip, ["a", "b"]), atol=3e-2, rtol=0)


def test_preprocess_override_and_default(hps_checkpoint):
    reward = build_reward("hpsv2.1", checkpoint=hps_checkpoint, model_config=TINY_OPEN_CLIP_CONFIG)
    assert (reward.preprocess.size, reward.preprocess.resize_mode) == (32, "letterbox")
    assert reward.preprocess.mean == OPENAI_CLIP_MEAN
    squash = build_reward("hpsv2.1", checkpoint=hps_checkpoint, model_config=TINY_OPEN_CLIP_CONFIG,
                          preprocess={"resize_mode": "squash"})
    assert (squash.preprocess.size, squash.preprocess.resize_mode) == (32, "squash")
    clip = build_reward("clip", checkpoint=None, model_config=TINY_OPEN_CLIP_CONFIG)
    assert (clip.preprocess.size, clip.preprocess.resize_mode, clip.preprocess.crop) == (32, "shortest", "center")
