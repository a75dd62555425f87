"""Task rewards of VADER (arXiv 2407.08737): a detector's class score and an action classifier.

Registered names:

=========================  ==========================================  =====================================
name                       model                                       score
=========================  ==========================================  =====================================
``object-removal``         transformers ``YolosForObjectDetection``     1 - the detector's score for the
                           (``hustvl/yolos-base`` / ``yolos-tiny``)     target object, per frame, averaged
``action-classification``  transformers ``VideoMAEForVideoClassification``  log p(action | clip): minus the
                           (``MCG-NJU/videomae-base-finetuned-kinetics``)  cross-entropy of the clip's class
=========================  ==========================================  =====================================

Both load a local ``save_pretrained`` folder (model + ``preprocessor_config.json``; or a hub id already
in the local cache) and preprocess with tensor ops, so the gradient reaches the pixels. With the
``linear`` reward loss and target 1, ``object-removal`` gives VADER's loss (the mean detection score);
with target 0, ``action-classification`` gives its cross-entropy.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from rewards.base import as_dtype, register_reward
from rewards.frames import FrameSelection
from rewards.image_text import FrameRewardBase, _from_pretrained
from rewards.preprocessing import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_short_side
from rewards.video_text import ClipRewardBase, folder_preprocess

YOLOS_SOURCE = "https://huggingface.co/hustvl/yolos-base"
VIDEOMAE_SOURCE = "https://huggingface.co/MCG-NJU/videomae-base-finetuned-kinetics"


def target_detection_score(logits: torch.Tensor, target: int, threshold: float = 0.2) -> torch.Tensor:
    """The detector's score for class ``target`` in each image: (N,) from class logits (N, Q, C + 1).

    As DETR-style post-processing reads them (the last class is "no object"): per query q,
    p_q = max over the C classes of softmax(logits_q) and label_q = its argmax; the detections of the
    target are the queries with label_q = target and p_q > ``threshold``; the score is the mean of their
    p_q, 0 when there is none (and then without gradient, as in VADER).
    """
    probs = logits.softmax(-1)[..., :-1]
    best, labels = probs.max(-1)
    keep = (labels == target) & (best > threshold)
    count = keep.sum(-1)
    total = (best * keep).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def class_ids(config) -> dict[str, int]:
    """Class name -> index of a transformers classifier config (from ``id2label``, which every checkpoint has)."""
    return {name: int(index) for index, name in config.id2label.items()}


def _processor_config(folder: Path | None) -> dict:
    path = folder / "preprocessor_config.json" if folder is not None else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}


@register_reward("object-removal")
class ObjectRemovalReward(FrameRewardBase):
    """1 - (a YOLOS detector's score for ``target_object``) per frame, averaged: high when the object is gone.

    Args:
        target_object: a class name of the detector (``id2label`` of its config, e.g. ``"book"``, ``"dog"``).
        model: folder (or cached hub id) of a ``YolosForObjectDetection`` with its image processor config.
        threshold: detections below this class probability do not count (VADER: 0.2).
        image_size: the frames' short side at the detector's input (aspect kept; VADER: 512); default:
            the image processor's ``size.shortest_edge``.
        frame_selection: a ``FrameSelection`` or dict (default: 1 random frame, VADER's default).
        dtype: dtype of the detector.

    The prompts are not used.
    """

    def __init__(
        self,
        target_object: str,
        model: str | os.PathLike = "hustvl/yolos-base",
        threshold: float = 0.2,
        image_size: int | None = None,
        frame_selection: FrameSelection | dict | None = None,
        dtype: str | torch.dtype = "float32",
    ):
        from transformers import YolosForObjectDetection

        super().__init__(frame_selection or {"mode": "random", "num_frames": 1}, dtype)
        self.model = _from_pretrained(YolosForObjectDetection, model, "the YOLOS detector", YOLOS_SOURCE)
        labels = class_ids(self.model.config)
        if target_object not in labels:
            raise ValueError(f"`target_object`={target_object!r} is not a class of the detector; its classes are "
                             f"{sorted(labels)}")
        self.target = int(labels[target_object])
        self.threshold = threshold
        processor = _processor_config(Path(model) if Path(model).is_dir() else None)
        self.image_size = image_size or processor.get("size", {}).get("shortest_edge", 800)
        self.mean = tuple(processor.get("image_mean", IMAGENET_MEAN))
        self.std = tuple(processor.get("image_std", IMAGENET_STD))
        self.freeze()

    def score_frames(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        batch, frames = images.shape[:2]
        pixels = normalize(resize_short_side(images.flatten(0, 1), self.image_size), self.mean, self.std)
        logits = self.model(pixel_values=pixels.to(self.dtype)).logits.float()
        return (1.0 - target_detection_score(logits, self.target, self.threshold)).view(batch, frames)


def action_label_ids(prompts: Sequence[str], label2id: dict[str, int], label: str | None = None) -> list[int]:
    """The action class of each prompt: ``label`` for all when given, else the longest class name that
    occurs in the prompt as whole words, case-insensitively ("A person playing piano" -> "playing piano")."""
    if label is not None:
        if label not in label2id:
            raise ValueError(f"`label`={label!r} is not a class of the classifier (e.g. {sorted(label2id)[:5]})")
        return [int(label2id[label])] * len(prompts)
    names = sorted(label2id, key=len, reverse=True)
    ids = []
    for prompt in prompts:
        found = next((n for n in names if re.search(rf"\b{re.escape(n.lower())}\b", prompt.lower())), None)
        if found is None:
            raise ValueError(f"prompt {prompt!r} names no action class of the classifier; use prompts that contain "
                             f"a class name (e.g. {sorted(label2id)[:5]}) or set the reward's `label`")
        ids.append(int(label2id[found]))
    return ids


@register_reward("action-classification")
class ActionClassificationReward(ClipRewardBase):
    """log p(action | clip) of a VideoMAE video classifier (VADER's action reward; its loss is the cross-entropy).

    Args:
        model: folder (or cached hub id) of a ``VideoMAEForVideoClassification`` (Kinetics-400) with its
            ``preprocessor_config.json``.
        label: the target class for every prompt; default: the class named in each prompt
            (``action_label_ids``).
        num_frames: frames per clip (default: the model's ``num_frames``; any multiple of its tubelet size:
            the position table is rebuilt for it, as VADER loads the model with its own frame count).
        stride, image_size (default: the model's), crop, dtype: as for ``viclip``.
    """

    def __init__(
        self,
        model: str | os.PathLike = "MCG-NJU/videomae-base-finetuned-kinetics",
        label: str | None = None,
        *,
        num_frames: int | None = None,
        stride: int = 1,
        image_size: int | None = None,
        crop: str = "center",
        dtype: str | torch.dtype = "float32",
    ):
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification

        config = _from_pretrained(VideoMAEConfig, model, "the VideoMAE classifier", VIDEOMAE_SOURCE)
        num_frames = num_frames or config.num_frames
        if num_frames % config.tubelet_size:
            raise ValueError(f"`num_frames`={num_frames} must be a multiple of the tubelet size {config.tubelet_size}")
        folder = Path(model) if Path(model).is_dir() else None
        super().__init__(num_frames, stride, folder_preprocess(folder, image_size or config.image_size, crop),
                         as_dtype(dtype), text_cache_size=0)
        classifier = VideoMAEForVideoClassification.from_pretrained(os.fspath(model), num_frames=num_frames)
        self.model = classifier
        self.label, self.label2id = label, class_ids(classifier.config)
        if label is not None:
            action_label_ids([""], self.label2id, label)  # checks the name
        self.freeze()

    def score_clip(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = torch.tensor(action_label_ids(prompts, self.label2id, self.label), device=video.device)
        logits = self.model(pixel_values=video.to(self.dtype)).logits.float()
        return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)

