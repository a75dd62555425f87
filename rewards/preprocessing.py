"""Differentiable image preprocessing for reward models.

Every function takes a batch of images ``(N, 3, H, W)`` float in ``[0, 1]`` (except
``to_unit_range``, which maps decoder pixels in ``[-1, 1]`` there) and is built from tensor ops
only, so the gradient of a reward reaches the pixels. Resizing is bicubic with antialiasing,
which follows PIL's bicubic filter (the filter the reward models were trained with), and the
result is clamped to ``[0, 1]`` as PIL's uint8 output is: bicubic overshoots at sharp edges, and
the models never saw those values (the clamp zeroes the gradient of only those overshooting
output pixels).

``ImagePreprocess`` bundles one reward's preprocessing (size, resize mode, crop, mean/std) so
that it lives in the reward's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_MODES = ("letterbox", "shortest", "squash")
CROP_MODES = ("center", "random")


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """Map decoder pixels in ``[-1, 1]`` to ``[0, 1]``: ``(x / 2 + 0.5).clamp(0, 1)``.

    The clamp is what the T2V-Turbo reference does; it zeroes the gradient of every pixel that
    falls outside ``[-1, 1]``, so out-of-range pixels get no reward signal.
    """
    return (pixels / 2 + 0.5).clamp(0, 1)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, C, H, W), got shape {tuple(images.shape)}")


def resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize to ``height x width`` (bicubic, antialiased, clamped to ``[0, 1]``); a no-op at that size."""
    if (images.shape[-2], images.shape[-1]) == (height, width):
        return images
    resized = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0, 1)


def letterbox(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the longer side to ``size`` (bicubic, aspect kept) and zero-pad to ``size x size``.

    Geometry of HPSv2's preprocessing (its ``ResizeMaxSize``): the resized shape is
    ``round(H * size / max(H, W)), round(W * size / max(H, W))``; with ``pad_h = size - h`` and
    ``pad_w = size - w`` the padding is ``pad_w // 2`` on the left, ``pad_h // 2`` on top and
    the rest (the odd pixel, if any) on the right / bottom. The fill is 0 in ``[0, 1]`` space,
    i.e. black before normalisation. One difference: HPSv2 skips the padding when the longer
    side already equals ``size`` (leaving a non-square image the ViT cannot take); we always
    pad, so the output is always square.
    """
    _check_images(images)
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    resized = resize(images, new_h, new_w)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


def resize_short_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (bicubic, aspect kept; the longer side is
    ``int(size * long / short)``, truncated, as torchvision's ``Resize(size)`` does)."""
    _check_images(images)
    height, width = images.shape[-2:]
    if height <= width:
        return resize(images, size, int(size * width / height))
    return resize(images, int(size * height / width), size)


def _crop_check(images: torch.Tensor, size: int) -> tuple[int, int]:
    _check_images(images)
    height, width = images.shape[-2:]
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the images ({height}x{width}); resize first")
    return height, width


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size x size`` crop; the offsets are ``round((H - size) / 2)`` and
    ``round((W - size) / 2)``, as torchvision's ``center_crop``."""
    height, width = _crop_check(images, size)
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``size x size`` crop at a uniformly random offset (one offset for the whole batch)."""
    height, width = _crop_check(images, size)
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return images[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    _check_images(images)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


@dataclass
class ImagePreprocess:
    """One reward model's image preprocessing, applied to ``(N, 3, H, W)`` images in ``[0, 1]``.

    Args:
        size: side of the square model input (e.g. 224).
        resize_mode: ``"letterbox"`` (longer side to ``size``, zero pad; HPSv2),
            ``"shortest"`` (shorter side to ``size``, then crop; CLIP, PickScore),
            ``"squash"`` (resize both sides to ``size``, aspect not kept).
        crop: ``"center"`` or ``"random"`` (only used by ``"shortest"``).
        mean, std: normalisation constants.
    """

    size: int = 224
    resize_mode: str = "shortest"
    crop: str = "center"
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"`crop` must be one of {CROP_MODES}, got {self.crop!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.resize_mode == "letterbox":
            images = letterbox(images, self.size)
        elif self.resize_mode == "squash":
            images = resize(images, self.size, self.size)
        else:
            images = resize_short_side(images, self.size)
            if self.crop == "center":
                images = center_crop(images, self.size)
            else:
                images = random_crop(images, self.size, generator)
        return normalize(images, self.mean, self.std)
