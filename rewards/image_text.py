"""Frame-level image-text rewards: score selected frames with an image model and average.

Registered names (see ``docs/rewards_image.md`` for the checkpoints):

=============  ==============================================  ==========================================
name           model                                           score of one frame
=============  ==============================================  ==========================================
``hpsv2``      open_clip ViT-H-14 + ``HPS_v2_compressed.pt``   cosine(image, text)
``hpsv2.1``    open_clip ViT-H-14 + ``HPS_v2.1_compressed.pt`` cosine(image, text)
``clip``       open_clip ViT-H-14 laion2B-s32B-b79K            cosine(image, text)
``open_clip``  any open_clip architecture + checkpoint         cosine(image, text)
``pickscore``  transformers ``CLIPModel`` PickScore_v1         exp(logit_scale) * cosine(image, text)
``aesthetic``  CLIP ViT-L/14 + LAION MLP or linear head        head(normalised image embedding)
=============  ==============================================  ==========================================

HPS: the HPSv2 code multiplies the cosine by the logit scale in some paths (its training loss);
its benchmark score and T2V-Turbo use the plain cosine, and so do we. PickScore is defined with
the logit scale (about 100), so its values are ~100x the cosines of the other rewards: choose
the mix weights accordingly.

Every reward is built from a config that includes its preprocessing (``ImagePreprocess``) and
its frame selection (``FrameSelection``); inputs are decoder pixels in [-1, 1], mapped to
[0, 1] with ``to_unit_range`` and preprocessed with tensor ops, so gradients reach the pixels.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rewards.base import VideoReward, as_dtype, check_video_batch, register_reward
from rewards.frames import FrameSelection
from rewards.preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImagePreprocess, to_unit_range

logger = logging.getLogger(__name__)

HPS_SOURCE = "https://huggingface.co/xswu/HPSv2"
OPENCLIP_H14_SOURCE = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
AESTHETIC_HEADS = {
    # head -> (checkpoint file name, where users get it)
    "mlp": ("sac+logos+ava1-l14-linearMSE.pth", "https://github.com/christophschuhmann/improved-aesthetic-predictor"),
    "linear": ("sa_0_4_vit_l_14_linear.pth", "https://github.com/LAION-AI/aesthetic-predictor"),
}


def resolve_checkpoint(path: str | os.PathLike, expected_file: str, source: str) -> Path:
    """The checkpoint file at ``path`` (a file, or a folder holding ``expected_file``).

    Raises ``FileNotFoundError`` naming the expected file, where it was looked for and where to
    get it.
    """
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        candidate = candidate / expected_file
    if not candidate.is_file():
        raise FileNotFoundError(
            f"reward checkpoint not found: expected {expected_file!r} at {str(candidate)!r}. "
            f"Download it from {source} and pass its path (or its folder) as `checkpoint`."
        )
    return candidate


def _as_preprocess(preprocess: ImagePreprocess | dict | None, defaults: ImagePreprocess) -> ImagePreprocess:
    """``preprocess`` as given, or ``defaults`` with the fields of a dict replaced."""
    if isinstance(preprocess, ImagePreprocess):
        return preprocess
    return dataclasses.replace(defaults, **(preprocess or {}))


def _cosine(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (B, T) of image features (B, T, D) with text features (B, D)."""
    return torch.einsum("btd,bd->bt", F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1))


class FrameRewardBase(VideoReward):
    """A reward that scores frames one by one with an image model and averages over frames.

    Subclasses implement ``score_frames``; this class picks the frames (``FrameSelection``),
    maps pixels to [0, 1], and averages the per-frame scores, weighted by the TAR weights when
    the selection sets ``tar_lambda`` (mean of weight x score, weights not normalised, as
    InstructVideo defines it).
    """

    granularity = "frame"

    def __init__(self, frame_selection: FrameSelection | dict | None = None, dtype: str | torch.dtype = "float32"):
        super().__init__()
        if not isinstance(frame_selection, FrameSelection):
            frame_selection = FrameSelection(**(frame_selection or {}))
        self.frame_selection = frame_selection
        self.dtype = as_dtype(dtype)

    def freeze(self) -> None:
        """Cast to ``self.dtype``, stop gradients to the weights, and switch to eval mode."""
        self.to(self.dtype)
        self.requires_grad_(False)
        self.eval()

    def frame_indices(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        return self.frame_selection.indices(num_frames, generator)

    def frame_weights(self, indices: list[int], num_frames: int) -> torch.Tensor | None:
        return self.frame_selection.weights(indices, num_frames)

    @abc.abstractmethod
    def score_frames(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-frame scores (B, T) of images (B, T, 3, H, W) in [0, 1] against ``prompts`` (B)."""

    def score(
        self, frames: torch.Tensor, prompts: Sequence[str], frame_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_video_batch(frames, prompts)
        images = to_unit_range(frames.transpose(1, 2)).to(self.dtype)
        per_frame = self.score_frames(images, list(prompts)).float()
        if frame_weights is not None:
            per_frame = per_frame * frame_weights.to(per_frame.device, per_frame.dtype)
        return per_frame.mean(dim=1)


# ---------------------------------------------------------------------------------------------
# open_clip rewards: HPSv2, HPSv2.1, CLIPScore, and any open_clip architecture
# ---------------------------------------------------------------------------------------------


def _open_clip_model_config(model_config: str | os.PathLike | dict) -> tuple[dict, str | None]:
    """(config dict, open_clip model name or None) from a name, a JSON file path or a dict."""
    import open_clip

    if isinstance(model_config, dict):
        return copy.deepcopy(model_config), None
    if str(model_config) in open_clip.list_models():
        return open_clip.get_model_config(str(model_config)), str(model_config)
    path = Path(model_config)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")), None
    raise FileNotFoundError(
        f"`model_config` {str(model_config)!r} is neither an open_clip model name (see "
        "open_clip.list_models()) nor an existing JSON file of an open_clip model config"
    )


def build_open_clip_model(config: dict) -> nn.Module:
    """An open_clip ``CLIP`` (or ``CustomTextCLIP`` for a custom / Hugging Face text tower) with
    random weights from a model config dict (the format of open_clip's ``model_configs/*.json``)."""
    from open_clip import CLIP, CustomTextCLIP

    config = copy.deepcopy(config)
    config.pop("preprocess_cfg", None)
    text_cfg = config.get("text_cfg", {})
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_pretrained"] = False  # weights come from the reward checkpoint
    model_class = CustomTextCLIP if config.pop("custom_text", False) or hf_text else CLIP
    return model_class(**config)


def _open_clip_default_preprocess(config: dict) -> ImagePreprocess:
    """The architecture's own preprocessing: open_clip's defaults, updated by the config's
    ``preprocess_cfg``, at the vision tower's input size."""
    from open_clip.transform import PreprocessCfg

    cfg = {**dataclasses.asdict(PreprocessCfg()), **config.get("preprocess_cfg", {})}
    size = config.get("vision_cfg", {}).get("image_size", cfg["size"])
    size = size if isinstance(size, int) else size[0]
    resize_mode = {"shortest": "shortest", "longest": "letterbox", "squash": "squash"}[cfg["resize_mode"]]
    return ImagePreprocess(size=size, resize_mode=resize_mode, mean=cfg["mean"], std=cfg["std"])


class OpenCLIPReward(FrameRewardBase):
    """Cosine similarity of an open_clip model's image and text embeddings, frame by frame.

    Args:
        model_config: an open_clip model name (``"ViT-H-14"``), a path to a JSON model config, or
            the config as a dict (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``).
        checkpoint: path to the weights (a file, or a folder holding ``checkpoint_file``):
            a raw or ``{"state_dict": ...}`` torch file or a safetensors file, loaded strictly.
            ``None`` keeps random weights (tests and benchmarks only; a warning says so).
        checkpoint_file: file name looked for when ``checkpoint`` is a folder, and named in the
            missing-checkpoint error.
        checkpoint_source: where users get the checkpoint (named in the missing-checkpoint error).
        tokenizer: callable ``list[str] -> LongTensor (N, L)``; default: open_clip's tokenizer
            for a model name, else open_clip's CLIP BPE tokenizer at the config's context length.
        preprocess: an ``ImagePreprocess``, or a dict of fields replacing the model's own
            preprocessing (open_clip's ``preprocess_cfg`` for the architecture).
        frame_selection: a ``FrameSelection`` or dict of its fields (default: 5 random frames).
        dtype: dtype of the model and of its inputs (scores are returned in float32).
    """

    def __init__(
        self,
        model_config: str | os.PathLike | dict,
        checkpoint: str | os.PathLike | None,
        *,
        checkpoint_file: str = "open_clip_model.safetensors",
        checkpoint_source: str = "the model's publisher",
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        preprocess: ImagePreprocess | dict | None = None,
        frame_selection: FrameSelection | dict | None = None,
        dtype: str | torch.dtype = "float32",
    ):
        import open_clip

        super().__init__(frame_selection, dtype)
        config, model_name = _open_clip_model_config(model_config)
        self.model = build_open_clip_model(config)
        if checkpoint is None:
            logger.warning("open_clip reward built with random weights (checkpoint=None): for tests and benchmarks only")
        else:
            open_clip.load_checkpoint(
                self.model, str(resolve_checkpoint(checkpoint, checkpoint_file, checkpoint_source)), strict=True
            )
        if tokenizer is None:
            context_length = config.get("text_cfg", {}).get("context_length", 77)
            tokenizer = (
                open_clip.get_tokenizer(model_name) if model_name else open_clip.SimpleTokenizer(context_length=context_length)
            )
        self.tokenizer = tokenizer
        self.preprocess = _as_preprocess(preprocess, _open_clip_default_preprocess(config))
        self.freeze()

    def score_frames(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        batch, frames = images.shape[:2]
        pixels = self.preprocess(images.flatten(0, 1))
        image_features = self.model.encode_image(pixels).view(batch, frames, -1)
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(prompts)).to(device)
        text_features = self.model.encode_text(tokens)
        return _cosine(image_features.float(), text_features.float())


def _open_clip_preset(
    name: str, checkpoint_file: str, source: str, preprocess_defaults: dict, doc: str
) -> Callable[..., OpenCLIPReward]:
    """A builder of ``OpenCLIPReward`` for one released checkpoint on open_clip ViT-H-14: its file
    name, where to get it, and the fields of its preprocessing that differ from the architecture's."""

    def build(
        checkpoint: str | os.PathLike | None,
        model_config: str | os.PathLike | dict = "ViT-H-14",
        preprocess: ImagePreprocess | dict | None = None,
        frame_selection: FrameSelection | dict | None = None,
        dtype: str | torch.dtype = "float32",
    ) -> OpenCLIPReward:
        return OpenCLIPReward(
            model_config,
            checkpoint,
            checkpoint_file=checkpoint_file,
            checkpoint_source=source,
            preprocess=preprocess
            if isinstance(preprocess, ImagePreprocess)
            else {**preprocess_defaults, **(preprocess or {})},
            frame_selection=frame_selection,
            dtype=dtype,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


# HPSv2 letterboxes (longer side to the model's input size, zero pad), OpenAI CLIP mean/std
_HPS_PREPROCESS = {"resize_mode": "letterbox", "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD}

hpsv2 = register_reward("hpsv2")(_open_clip_preset(
    "hpsv2", "HPS_v2_compressed.pt", HPS_SOURCE, _HPS_PREPROCESS,
    "HPSv2 (``HPS_v2_compressed.pt`` on open_clip ViT-H-14): cosine(image, text).",
))
hpsv2_1 = register_reward("hpsv2.1")(_open_clip_preset(
    "hpsv2_1", "HPS_v2.1_compressed.pt", HPS_SOURCE, _HPS_PREPROCESS,
    "HPSv2.1 (``HPS_v2.1_compressed.pt`` on open_clip ViT-H-14): cosine(image, text); T2V-Turbo's image reward.",
))
clip_score = register_reward("clip")(_open_clip_preset(
    "clip_score", "open_clip_pytorch_model.bin", OPENCLIP_H14_SOURCE, {},
    "OpenCLIP CLIPScore with ViT-H-14 laion2B-s32B-b79K (``open_clip_pytorch_model.bin``): "
    "cosine(image, text), shorter side to 224 + centre crop, OpenAI mean/std.",
))

register_reward("open_clip")(OpenCLIPReward)


# ---------------------------------------------------------------------------------------------
# transformers CLIP rewards: PickScore, LAION aesthetic predictor
# ---------------------------------------------------------------------------------------------


def _from_pretrained(loader: Any, name_or_path: str | os.PathLike, what: str, source: str):
    """``loader.from_pretrained`` on a local folder, or a hub id already in the local cache.

    A path that does not exist, or a hub id that cannot be loaded offline, raises
    ``FileNotFoundError`` naming what was expected and where to get it.
    """
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or str(name_or_path).startswith(("/", ".", "~")) or str(name_or_path).count("/") > 1
    hint = f"Download {what} from {source} into a folder and pass that folder."
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"{what} not found: expected a folder at {str(path)!r}. {hint}")
    try:
        return loader.from_pretrained(str(path) if looks_local else str(name_or_path))
    except OSError as err:
        raise FileNotFoundError(f"could not load {what} from {str(name_or_path)!r}. {hint}") from err


def _processor_preprocess(image_processor) -> ImagePreprocess:
    """Our tensor preprocessing from a transformers ``CLIPImageProcessor`` config
    (shorter side to ``size.shortest_edge``, centre crop ``crop_size``, its mean/std)."""
    crop = image_processor.crop_size["height"]
    short_side = image_processor.size.get("shortest_edge", crop)
    if short_side != crop or image_processor.crop_size["width"] != crop:
        raise ValueError(
            f"image processor resizes to {short_side} and crops {image_processor.crop_size}; only square crops of the "
            "resized short side are supported"
        )
    return ImagePreprocess(
        size=crop, resize_mode="shortest", mean=tuple(image_processor.image_mean), std=tuple(image_processor.image_std)
    )


def _clip_image_embeddings(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


@register_reward("pickscore")
class PickScoreReward(FrameRewardBase):
    """PickScore: ``exp(logit_scale) * cosine(image, text)`` of the PickScore_v1 ``CLIPModel``.

    Args:
        model: folder (or cached hub id) of the ``CLIPModel`` (``yuvalkirstain/PickScore_v1``).
        processor: folder (or cached hub id) of its processor, tokenizer and image processor
            (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``); its image processor config gives the
            preprocessing (shorter side 224, centre crop 224, OpenAI mean/std).
        preprocess, frame_selection, dtype: as for ``OpenCLIPReward``.
    """

    def __init__(
        self,
        model: str | os.PathLike = "yuvalkirstain/PickScore_v1",
        processor: str | os.PathLike = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        preprocess: ImagePreprocess | dict | None = None,
        frame_selection: FrameSelection | dict | None = None,
        dtype: str | torch.dtype = "float32",
    ):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        super().__init__(frame_selection, dtype)
        self.model = _from_pretrained(CLIPModel, model, "the PickScore model", "https://huggingface.co/yuvalkirstain/PickScore_v1")
        processor_source = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        self.tokenizer = _from_pretrained(AutoTokenizer, processor, "the PickScore tokenizer", processor_source)
        image_processor = _from_pretrained(CLIPImageProcessor, processor, "the PickScore image processor", processor_source)
        self.preprocess = _as_preprocess(preprocess, _processor_preprocess(image_processor))
        self.freeze()

    def score_frames(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        batch, frames = images.shape[:2]
        pixels = self.preprocess(images.flatten(0, 1))
        image_features = _clip_image_embeddings(self.model, pixels).view(batch, frames, -1)
        tokens = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(pixels.device)
        text_output = self.model.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        text_features = self.model.text_projection(text_output.pooler_output)
        return self.model.logit_scale.exp().float() * _cosine(image_features.float(), text_features.float())


class LaionAestheticMLP(nn.Module):
    """The LAION improved aesthetic predictor head, laid out as its checkpoint
    (``layers.{0,2,4,6,7}.{weight,bias}``): 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


@register_reward("aesthetic")
class AestheticReward(FrameRewardBase):
    """LAION aesthetic score (about 1-10) of each frame; the prompts are ignored.

    The head reads the L2-normalised CLIP ViT-L/14 image embedding, as both LAION predictors do.

    Args:
        head_checkpoint: the head's state dict (a file, or a folder holding the file for
            ``head``): ``sac+logos+ava1-l14-linearMSE.pth`` (MLP) or
            ``sa_0_4_vit_l_14_linear.pth`` (linear). ``None``: random head (tests, benchmarks).
        clip_model: folder (or cached hub id) of the transformers ``CLIPModel``
            ``openai/clip-vit-large-patch14`` with its image processor config (preprocessing).
        head: ``"mlp"`` (improved aesthetic predictor) or ``"linear"`` (the first LAION predictor).
        preprocess, frame_selection, dtype: as for ``OpenCLIPReward``.
    """

    def __init__(
        self,
        head_checkpoint: str | os.PathLike | None,
        clip_model: str | os.PathLike = "openai/clip-vit-large-patch14",
        head: str = "mlp",
        preprocess: ImagePreprocess | dict | None = None,
        frame_selection: FrameSelection | dict | None = None,
        dtype: str | torch.dtype = "float32",
    ):
        from transformers import CLIPImageProcessor, CLIPModel

        if head not in AESTHETIC_HEADS:
            raise ValueError(f"`head` must be one of {sorted(AESTHETIC_HEADS)}, got {head!r}")
        super().__init__(frame_selection, dtype)
        clip_source = "https://huggingface.co/openai/clip-vit-large-patch14"
        self.model = _from_pretrained(CLIPModel, clip_model, "the CLIP ViT-L/14 model", clip_source)
        image_processor = _from_pretrained(CLIPImageProcessor, clip_model, "the CLIP ViT-L/14 image processor", clip_source)
        embed_dim = self.model.config.projection_dim
        self.head = LaionAestheticMLP(embed_dim) if head == "mlp" else nn.Linear(embed_dim, 1)
        if head_checkpoint is None:
            logger.warning("aesthetic reward built with a random head (head_checkpoint=None): for tests and benchmarks only")
        else:
            head_file = resolve_checkpoint(head_checkpoint, *AESTHETIC_HEADS[head])
            self.head.load_state_dict(torch.load(head_file, map_location="cpu", weights_only=True), strict=True)
        self.preprocess = _as_preprocess(preprocess, _processor_preprocess(image_processor))
        self.freeze()

    def score_frames(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        batch, frames = images.shape[:2]
        embeddings = _clip_image_embeddings(self.model, self.preprocess(images.flatten(0, 1)))
        return self.head(F.normalize(embeddings, dim=-1)).view(batch, frames)
