"""Tensor preprocessing: exact geometry, agreement with the PIL/torchvision reference, gradients."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from rewards.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImagePreprocess,
    center_crop,
    letterbox,
    normalize,
    random_crop,
    resize_short_side,
    to_unit_range,
)


def test_constants():
    assert OPENAI_CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert OPENAI_CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    "height,width,content,pad_ltrb",
    [
        # 100x61 -> longer side 224: 224 x round(61*2.24)=137 ; pad_w = 87 -> left 43, right 44
        (100, 61, (224, 137), (43, 0, 44, 0)),
        # wide 50x120 -> round(50*224/120)=93 x 224 ; pad_h = 131 -> top 65, bottom 66
        (50, 120, (93, 224), (0, 65, 0, 66)),
        (64, 64, (224, 224), (0, 0, 0, 0)),
    ],
)
def test_letterbox_geometry(height, width, content, pad_ltrb):
    images = torch.full((2, 3, height, width), 0.5) + 0.1  # strictly positive content
    out = letterbox(images, 224)
    assert out.shape == (2, 3, 224, 224)
    nonzero_rows = (out[0, 0].abs().sum(1) > 0).nonzero().flatten()
    nonzero_cols = (out[0, 0].abs().sum(0) > 0).nonzero().flatten()
    left, top, right, bottom = pad_ltrb
    assert (int(nonzero_rows[0]), 224 - 1 - int(nonzero_rows[-1])) == (top, bottom)
    assert (int(nonzero_cols[0]), 224 - 1 - int(nonzero_cols[-1])) == (left, right)
    assert (len(nonzero_rows), len(nonzero_cols)) == content


def _known_image(height=96, width=150, seed=0) -> np.ndarray:
    """A smooth non-square RGB test image (gradients plus a few blocks), uint8 HWC."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 9.0 + y / 13.0)], -1) * 255
    img[20:40, 30:70] = rng.integers(0, 256, 3)
    return img.clip(0, 255).astype(np.uint8)


def _hps_reference(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """HPSv2's PIL pipeline, written independently: PIL bicubic resize of the longer side,
    paste on a black canvas at (pad_w // 2, pad_h // 2), ToTensor, torchvision Normalize."""
    pil = Image.fromarray(img)
    w, h = pil.size
    scale = size / max(w, h)
    new_w, new_h = round(w * scale), round(h * scale)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(pil.resize((new_w, new_h), Image.BICUBIC), ((size - new_w) // 2, (size - new_h) // 2))
    return TF.normalize(TF.to_tensor(canvas), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def test_hps_letterbox_matches_pil_reference():
    """Tolerance: PIL rounds its resized image to uint8 (0.5/255) and its fixed-point filter
    differs slightly from torch's: max |diff| <= 2/255 and mean |diff| <= 0.25/255, measured in
    [0, 1] space (multiply by std to leave normalised space)."""
    img = _known_image()
    ours = ImagePreprocess(size=224, resize_mode="letterbox")(torch.from_numpy(img).permute(2, 0, 1)[None] / 255.0)[0]
    ref = _hps_reference(img)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    diff = ((ours - ref) * std).abs()
    assert diff.max() <= 2 / 255
    assert diff.mean() <= 0.25 / 255


def test_shortest_center_crop_matches_torchvision_pil():
    img = _known_image(120, 90)
    ours = ImagePreprocess(size=64, resize_mode="shortest")(torch.from_numpy(img).permute(2, 0, 1)[None] / 255.0)[0]
    pil = TF.center_crop(TF.resize(Image.fromarray(img), 64, interpolation=TF.InterpolationMode.BICUBIC), 64)
    ref = TF.normalize(TF.to_tensor(pil), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    diff = ((ours - ref) * std).abs()
    assert ours.shape == ref.shape == (3, 64, 64)
    assert diff.max() <= 2 / 255 and diff.mean() <= 0.25 / 255


def test_resize_short_side_and_crops_shapes():
    images = torch.rand(1, 3, 40, 100)
    assert resize_short_side(images, 20).shape == (1, 3, 20, 50)
    assert resize_short_side(images.transpose(2, 3), 20).shape == (1, 3, 50, 20)
    crop = center_crop(torch.arange(30.0).view(1, 1, 5, 6).expand(1, 3, 5, 6), 3)
    assert crop[0, 0, 0].tolist() == [8.0, 9.0, 10.0]  # top = round(1.0) = 1, left = round(1.5) = 2
    with pytest.raises(ValueError, match="crop size 7 is larger"):
        center_crop(crop, 7)


def test_random_crop_seeded_and_covers_offsets():
    images = torch.arange(100.0).view(1, 1, 10, 10)
    a = random_crop(images, 4, torch.Generator().manual_seed(0))
    b = random_crop(images, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1, 1, 4, 4)
    g = torch.Generator().manual_seed(1)
    corners = {int(random_crop(images, 4, g)[0, 0, 0, 0]) for _ in range(400)}
    assert corners == {10 * r + c for r in range(7) for c in range(7)}


def test_normalize_and_to_unit_range():
    x = torch.full((1, 3, 2, 2), 0.5)
    out = normalize(x, (0.5, 0.25, 0.0), (1.0, 0.5, 2.0))
    assert out[0, :, 0, 0].tolist() == [0.0, 0.5, 0.25]
    assert to_unit_range(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["letterbox", "shortest", "squash"])
def test_gradient_reaches_pixels(mode):
    pixels = (torch.rand(2, 3, 48, 80) * 1.6 - 0.8).requires_grad_(True)  # inside [-1, 1]
    out = ImagePreprocess(size=32, resize_mode=mode)(to_unit_range(pixels))
    out.square().sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert torch.isfinite(pixels.grad).all()


def test_clamp_blocks_gradient_outside_range():
    pixels = torch.tensor([-2.0, 0.0, 2.0], requires_grad=True)
    to_unit_range(pixels).sum().backward()
    assert pixels.grad.tolist() == [0.0, 0.5, 0.0]


def test_bad_modes_rejected():
    with pytest.raises(ValueError, match="`resize_mode`"):
        ImagePreprocess(resize_mode="pad")
    with pytest.raises(ValueError, match="`crop`"):
        ImagePreprocess(crop="left")
