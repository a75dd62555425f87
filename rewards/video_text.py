"""Clip-level video-text rewards: score a clip of frames with a video-text model.

Registered names (see ``docs/rewards_video.md`` for the checkpoints):

================  ==================================================  ====================================
name              model                                               score of one clip
================  ==================================================  ====================================
``viclip``        ViCLIP-L/14, ``ViClip-InternVid-10M-FLT.pth``       cosine(video, text)
``internvideo2``  InternVideo2-Stage2 1B, ``InternVideo2-stage2_1b-    cosine(video, text)
                  224p-f4.pt`` + the bert-large-uncased tokenizer
``xclip``         transformers ``XCLIPModel`` (a local folder)         cosine(video, video-conditioned text)
================  ==================================================  ====================================

Every reward picks ``num_frames`` frames ``stride`` apart from a random start (T2V-Turbo: 8
frames at stride 2), maps decoder pixels from [-1, 1] to [0, 1], resizes the short side to
``image_size`` (bicubic, antialiased when shrinking, as PIL and torchvision do), crops the centre
(or a random square with ``crop="random"``, the reference's training-time crop), normalises with
the model's mean/std and scores the (B, T, 3, S, S) clip. All of it is tensor ops, so the
gradient reaches the pixels.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import torch

from rewards.base import VideoReward, as_dtype, check_video_batch, register_reward
from rewards.frames import clip_frames
from rewards.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, to_unit_range
from rewards.viclip import VICLIP_CONFIGS, build_viclip, load_viclip, resolve_config

logger = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], torch.Tensor]

BERT_TOKENIZER_HELP = (
    "InternVideo2's text tower needs the `bert-large-uncased` WordPiece tokenizer "
    "(https://huggingface.co/google-bert/bert-large-uncased: vocab.txt + tokenizer_config.json); "
    "download that folder and pass its local path as `tokenizer`"
)


#: The clip sampler of every video reward (kept under its former name for callers of this module).
sample_clip_frames = clip_frames


def viclip_tokenizer(context_length: int = 32) -> Tokenizer:
    """CLIP BPE ids ``[49406] + bpe + [49407]``, zero padded to ``context_length`` (ViCLIP: 32);
    longer texts are truncated with the last id set to 49407 (open_clip's ``SimpleTokenizer``)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def bert_tokenizer(path: str | os.PathLike, max_length: int = 40) -> Tokenizer:
    """A transformers ``BertTokenizerFast`` from a local folder: ids (N, max_length),
    ``[CLS] ... [SEP]`` zero padded, truncated to ``max_length`` (InternVideo2: 40)."""
    from transformers import BertTokenizerFast

    if not Path(path).is_dir():
        raise FileNotFoundError(f"BERT tokenizer folder not found at {os.fspath(path)!r}; {BERT_TOKENIZER_HELP}")
    tokenizer = BertTokenizerFast.from_pretrained(os.fspath(path))

    def tokenize(texts: list[str]) -> torch.Tensor:
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return encoded["input_ids"]

    return tokenize


class ClipRewardBase(VideoReward):
    """Picks the clip, preprocesses it, and scores it against the prompts.

    Subclasses set ``self.model`` and implement ``score_clip``; the text features of prompts
    seen before come from a least-recently-used cache of ``text_cache_size`` entries (0: none).
    """

    granularity = "clip"

    def __init__(self, num_frames: int, stride: int, preprocess: ImagePreprocess, dtype: torch.dtype,
                 text_cache_size: int):
        super().__init__()
        if num_frames < 1 or stride < 1:
            raise ValueError(f"`num_frames` and `stride` must be >= 1, got {num_frames} and {stride}")
        self.num_frames, self.stride = num_frames, stride
        self.preprocess = preprocess
        self.dtype = dtype
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def freeze(self) -> None:
        self.to(self.dtype).requires_grad_(False).eval()

    def frame_indices(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        return clip_frames(num_frames, self.num_frames, self.stride, generator)

    def preprocess_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """Decoder frames (B, C, T, H, W) in [-1, 1] -> model input (B, T, 3, S, S)."""
        if frames.ndim != 5:
            raise ValueError(f"`frames` must be (B, C, T, H, W), got shape {tuple(frames.shape)}")
        batch, _, frames_count = frames.shape[:3]
        images = to_unit_range(frames.transpose(1, 2).flatten(0, 1).float())
        pixels = self.preprocess(images)
        return pixels.view(batch, frames_count, *pixels.shape[1:])

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text features (B, D), float32, without gradient; cached per prompt."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._text_cache]
        if missing:
            with torch.no_grad():
                self._text_cache.update(zip(missing, self.encode_prompts(missing)))
        features = torch.stack([self._text_cache[prompt] for prompt in prompts])
        for prompt in prompts:
            self._text_cache.move_to_end(prompt)
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return features

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text features (N, D) of distinct prompts."""
        raise NotImplementedError

    def score(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_video_batch(frames, prompts)
        return self.score_clip(self.preprocess_clip(frames), list(prompts))

    def score_clip(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores (B,) of preprocessed clips (B, T, 3, S, S) against ``prompts``: by default the
        cosine of ``self.model.encode_video`` with the cached text features."""
        video_features = self.model.encode_video(video, normalize=True)
        return (video_features * self.text_features(prompts).to(video_features.device)).sum(-1)


def _clip_preprocess(image_size: int, crop: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> ImagePreprocess:
    return ImagePreprocess(size=image_size, resize_mode="shortest", crop=crop, mean=mean, std=std)


@register_reward("viclip")
class ViCLIPReward(ClipRewardBase):
    """ViCLIP-L/14 clip reward (T2V-Turbo's ModelScope setting, beta_vid = 3).

    Args:
        checkpoint: path to ``ViClip-InternVid-10M-FLT.pth`` (or a safetensors state dict);
            ``None`` keeps random weights (tests and benchmarks only; a warning says so).
        config: ``"l14"`` (the released model), ``"tiny"`` or a config dict (``VICLIP_CONFIGS``).
        tokenizer: callable ``list[str] -> LongTensor (B, 32)``; default: CLIP BPE (``viclip_tokenizer``).
        num_frames: frames per clip; ViCLIP was trained on exactly 8 and its vision tower takes
            exactly the config's ``num_frames``.
        stride: spacing of the clip's frames in the decoded video.
        image_size: model input side (default: the config's, 224 for ``"l14"``).
        crop: ``"center"`` or ``"random"`` (the reference reward's random crop).
        dtype: dtype of the model (``"float32"``, ``"bfloat16"``, ``"float16"``); scores are float32.
        text_cache_size: prompts whose text features are kept (0 disables the cache).
        allow_pickle: read a ``torch.save`` checkpoint that holds Python objects beyond tensors by
            unpickling it in full, which runs any code it holds (only for files you trust). Without
            it such a file is refused with an error naming it.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, config: str | dict = "l14", *,
                 tokenizer: Tokenizer | None = None, num_frames: int = 8, stride: int = 2,
                 image_size: int | None = None, crop: str = "center", dtype: str | torch.dtype = "float32",
                 text_cache_size: int = 1024, allow_pickle: bool = False):
        resolved = resolve_config(config, VICLIP_CONFIGS, "ViCLIP")
        if num_frames != resolved["vision"]["num_frames"]:
            raise ValueError(f"ViCLIP config {config!r} takes {resolved['vision']['num_frames']} frames, got num_frames={num_frames}")
        size = image_size or resolved["vision"]["image_size"]
        super().__init__(num_frames, stride, _clip_preprocess(size, crop), as_dtype(dtype), text_cache_size)
        if checkpoint is None:
            logger.warning("ViCLIP reward built with random weights (checkpoint=None): for tests and benchmarks only")
            self.model = build_viclip(resolved)
        else:
            self.model = load_viclip(checkpoint, resolved, allow_pickle=allow_pickle)
        self.tokenizer = tokenizer or viclip_tokenizer(resolved["text"]["context_length"])
        self.freeze()

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.model.temp.device)
        return self.model.encode_text(tokens, normalize=True)


@register_reward("internvideo2")
class InternVideo2Reward(ClipRewardBase):
    """InternVideo2-Stage2 1B clip reward (T2V-Turbo's VideoCrafter2 setting, beta_vid = 2).

    Args:
        checkpoint: path to ``InternVideo2-stage2_1b-224p-f4.pt`` (or a state dict in our key
            names); ``None`` keeps random weights (tests and benchmarks only).
        config: ``"1b"`` (the released model), ``"tiny"`` or a dict (``INTERNVIDEO2_CONFIGS``).
        tokenizer: a local folder holding the ``bert-large-uncased`` tokenizer, or a callable
            ``list[str] -> LongTensor (B, L)`` of BERT ids zero padded (the attention mask is
            ``ids != 0``). Required: it cannot be downloaded here.
        num_frames: frames per clip; the 4-frame position embeddings of the checkpoint are
            interpolated in time to this count when loading (T2V-Turbo: 8).
        gelu_approximate: ``"tanh"`` (the released reward's fused MLP) or ``"none"`` (exact);
            default: the config's.
        stride, image_size, crop, dtype, text_cache_size, allow_pickle: as for ``viclip``.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, config: str | dict = "1b", *,
                 tokenizer: str | os.PathLike | Tokenizer | None = None, num_frames: int = 8, stride: int = 2,
                 image_size: int | None = None, crop: str = "center", gelu_approximate: str | None = None,
                 dtype: str | torch.dtype = "float32", text_cache_size: int = 1024, allow_pickle: bool = False):
        from rewards.internvideo2 import INTERNVIDEO2_CONFIGS, build_internvideo2, load_internvideo2

        resolved = resolve_config(config, INTERNVIDEO2_CONFIGS, "InternVideo2")
        size = image_size or resolved["vision"]["image_size"]
        super().__init__(num_frames, stride, _clip_preprocess(size, crop), as_dtype(dtype), text_cache_size)
        if tokenizer is None:
            raise ValueError(f"`tokenizer` is required; {BERT_TOKENIZER_HELP}")
        if not callable(tokenizer):
            tokenizer = bert_tokenizer(tokenizer, resolved["max_text_length"])
        self.tokenizer = tokenizer
        if checkpoint is None:
            logger.warning("InternVideo2 reward built with random weights (checkpoint=None): for tests and benchmarks only")
            self.model = build_internvideo2(resolved, num_frames, gelu_approximate)
        else:
            self.model = load_internvideo2(checkpoint, resolved, num_frames, gelu_approximate,
                                           allow_pickle=allow_pickle)
        self.freeze()

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        input_ids = self.tokenizer(prompts).to(self.model.vision_proj.weight.device)
        return self.model.encode_text(input_ids, normalize=True)


def folder_preprocess(folder: Path | None, image_size: int, crop: str) -> ImagePreprocess:
    """Short side to ``image_size`` and a square crop, normalised with the mean/std of the model folder's
    ``preprocessor_config.json`` when present, else ImageNet's (X-CLIP's, VideoMAE's)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        processor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
        mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
    return _clip_preprocess(image_size, crop, mean, std)


@register_reward("xclip")
class XCLIPReward(ClipRewardBase):
    """X-CLIP through transformers' ``XCLIPModel`` (no port).

    X-CLIP's text embedding is conditioned on the video (its prompt generator attends to the
    frames), so the score is the cosine of the video embedding with the text embedding
    conditioned on that same video; text features are not cached.

    Args:
        model: a local ``save_pretrained`` folder (e.g. a copy of ``microsoft/xclip-base-patch32``)
            or a hub id; preprocessing mean/std come from its ``preprocessor_config.json`` when
            present.
        tokenizer: callable ``list[str] -> LongTensor (B, L)`` of CLIP BPE ids; default: the
            folder's tokenizer (``AutoTokenizer``), padded to the text context.
        num_frames: frames per clip (default: the model's ``vision_config.num_frames``).
        stride, image_size (default: the model's), crop, dtype: as for ``viclip``.
    """

    def __init__(self, model: str | os.PathLike, *, tokenizer: Tokenizer | None = None,
                 num_frames: int | None = None, stride: int = 2, image_size: int | None = None,
                 crop: str = "center", dtype: str | torch.dtype = "float32"):
        from transformers import AutoTokenizer, XCLIPModel

        folder = Path(model) if Path(model).is_dir() else None
        try:
            xclip = XCLIPModel.from_pretrained(os.fspath(model))
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"X-CLIP model not found: {os.fspath(model)!r} is not a local folder and could not be loaded "
                "from the hub; pass the local save_pretrained folder of an XCLIPModel "
                "(e.g. a copy of https://huggingface.co/microsoft/xclip-base-patch32)"
            ) from err
        vision = xclip.config.vision_config
        num_frames = num_frames or vision.num_frames
        super().__init__(num_frames, stride, folder_preprocess(folder, image_size or vision.image_size, crop),
                         as_dtype(dtype), text_cache_size=0)
        self.model = xclip
        if tokenizer is None:
            hf_tokenizer = AutoTokenizer.from_pretrained(os.fspath(model))
            context = xclip.config.text_config.max_position_embeddings

            def tokenizer(texts: list[str]) -> torch.Tensor:
                return hf_tokenizer(texts, padding="max_length", truncation=True, max_length=context,
                                    return_tensors="pt")["input_ids"]
        self.tokenizer = tokenizer
        self.freeze()

    def score_clip(self, video: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        input_ids = self.tokenizer(prompts).to(self.model.logit_scale.device)
        out = self.model(input_ids=input_ids, pixel_values=video.to(self.dtype))
        batch = torch.arange(video.shape[0], device=video.device)
        own_text = out.text_embeds[batch, batch]  # text i conditioned on video i, normalised
        return (out.video_embeds.float() * own_text.float()).sum(-1)
