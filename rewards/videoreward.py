"""VideoReward (VideoAlign, arXiv 2501.13918): a Qwen2-VL video reward with one reward token per dimension.

The model is transformers' ``Qwen2VLForConditionalGeneration`` plus a linear score head
``rm_head`` (hidden -> D, no bias). The prompt text holds one special token per dimension
(``<|VQ_reward|>``, ``<|MQ_reward|>``, ``<|TA_reward|>``: visual quality, motion quality, text
alignment); dimension k's score is row k of the head applied to the last hidden state at its
token. The registered reward ``videoreward`` z-normalises each dimension with the mean/std of the
checkpoint's ``inference_config`` and returns the weighted sum ``sum_k w_k (r_k - mu_k) / sd_k``.

Checkpoint layout (the released ``KwaiVGI/VideoReward``; our trainer writes the same)::

    model_config.json                 data_config (fps, max_frame_pixels, eval_dim, ...), model_config
                                      (model_name_or_path = the Qwen2-VL base, output_dim, ...),
                                      peft_lora_config, inference_config ({dim}_mean, {dim}_std)
    checkpoint-<step>/
        adapter_config.json           peft LoRA config (r, lora_alpha, target_modules)
        adapter_model.safetensors     LoRA weights
        non_lora_state_dict.pth       every other trained tensor (vision merger, rm_head, embeddings);
          or .safetensors             ``.pth`` loads with torch.load(weights_only=True) only
      or model.safetensors / model.pth    a full state dict (no LoRA)

Keys are the names of the training-time peft model (``base_model.model.`` + the module path of
transformers 4.x: ``visual.*``, ``model.layers.*``, ``rm_head.weight``); loading maps them to
transformers 5's layout (``model.visual.*``, ``model.language_model.*``), as transformers' own
Qwen2-VL checkpoint conversion does.

Video input follows Qwen2-VL's (and ``qwen-vl-utils``'): frames sampled uniformly at
``sample_fps`` (2), their count rounded to an even number (at least 4); each frame resized so both
sides are multiples of 28 with between ``min_pixels`` and ``max_pixels`` pixels (``smart_resize``),
scaled to [0, 1], normalised with the OpenAI CLIP mean/std and cut into 2 x 14 x 14 patches in the
order of transformers' ``Qwen2VLVideoProcessor.patchify``. All tensor ops: the gradient of the score
reaches the pixels. The text is Qwen2-VL's chat format (default system turn, one user turn with the
video then the prompt, the assistant header), the video placeholder repeated once per merged patch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rewards.base import VideoReward, as_dtype, check_video_batch, register_reward
from rewards.preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize, to_unit_range
from t2v_turbo.fileio import read_folder_json, torch_load
from t2v_turbo.student import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME

logger = logging.getLogger(__name__)

DIMENSIONS = ("VQ", "MQ", "TA")
MODEL_CONFIG_NAME = "model_config.json"
CHECKPOINT_PREFIX = "checkpoint-"
NON_LORA_NAMES = ("non_lora_state_dict.safetensors", "non_lora_state_dict.pth")
FULL_NAMES = ("model.safetensors", "model.pth")
#: peft adapter name of the LoRA layers
ADAPTER_NAME = "default"
RELEASED_PREFIX = "base_model.model."
EMBEDDING_KEY = "vlm.model.language_model.embed_tokens.weight"

SYSTEM_PROMPT = "You are a helpful assistant."
VIDEO_PLACEHOLDER = "<|video_pad|>"
#: our own scoring prompt; the released model was trained with VideoAlign's ``detailed_special``
#: template, which is not shipped here: pass its text as ``prompt_template`` to score as it was trained
DEFAULT_PROMPT_TEMPLATE = (
    'Rate the generated video for the prompt "{prompt}". '
    "Visual quality: <|VQ_reward|> Motion quality: <|MQ_reward|> Text alignment: <|TA_reward|>"
)
#: qwen-vl-utils' video bounds: at least 128 merged patches per frame, at least 4 frames
VIDEO_MIN_PIXELS = 128 * 28 * 28
MIN_FRAMES = 4


def reward_token(dimension: str) -> str:
    """The special token whose hidden state gives ``dimension``'s score: ``<|{dimension}_reward|>``."""
    return f"<|{dimension}_reward|>"


# ---- video input ------------------------------------------------------------------------
def sample_frame_indices(total_frames: int, video_fps: float, sample_fps: float = 2.0,
                         num_frames: int | None = None, factor: int = 2) -> list[int]:
    """Uniform frame indices: n = total / video_fps * sample_fps (or ``num_frames``) rounded to a multiple of
    ``factor``, clipped to [4, total] (both rounded to the factor), at round(linspace(0, total - 1, n))."""
    wanted = num_frames if num_frames is not None else total_frames / video_fps * sample_fps
    most = (total_frames // factor) * factor
    if most < factor:
        raise ValueError(f"a video of {total_frames} frame(s) is too short for Qwen2-VL (needs >= {factor})")
    count = min(max(round(wanted / factor) * factor, math.ceil(MIN_FRAMES / factor) * factor), most)
    return torch.linspace(0, total_frames - 1, count).round().long().tolist()


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = VIDEO_MIN_PIXELS,
                 max_pixels: int = 200704) -> tuple[int, int]:
    """(h, w): both multiples of ``factor``, h * w within [min_pixels, max_pixels], aspect ratio kept
    as far as that allows (round to the factor; when outside the bounds, scale by sqrt of the pixel
    ratio and floor (too many) or ceil (too few) to the factor)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200, which Qwen2-VL cannot take")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def patchify(frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2,
             merge_size: int = 2) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised frames (B, T, C, H, W) -> patches (B * N, C * tp * p * p) and the grid (t, h, w).

    The last frame is repeated up to a multiple of ``temporal_patch_size``. Patches are ordered
    time, merge-window row, merge-window column, row and column inside the window, each flattened
    as (channel, time, y, x): the layout of ``Qwen2VLVideoProcessor.patchify``, which the vision
    tower's ``PatchMerger`` relies on.
    """
    batch, frames_count, channels, height, width = frames.shape
    if height % (patch_size * merge_size) or width % (patch_size * merge_size):
        raise ValueError(f"frames of {height}x{width} are not multiples of {patch_size * merge_size}")
    if pad := -frames_count % temporal_patch_size:
        frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
    grid_t, grid_h, grid_w = frames.shape[1] // temporal_patch_size, height // patch_size, width // patch_size
    patches = frames.reshape(batch, grid_t, temporal_patch_size, channels, grid_h // merge_size, merge_size,
                             patch_size, grid_w // merge_size, merge_size, patch_size)
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flat = patches.reshape(batch * grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size**2)
    return flat, (grid_t, grid_h, grid_w)


def chat_text(prompt_text: str, num_video_tokens: int) -> str:
    """Qwen2-VL's chat format for one user turn (the video, then ``prompt_text``) with its default
    system turn and the assistant header; the video placeholder repeated per merged patch."""
    video = "<|vision_start|>" + VIDEO_PLACEHOLDER * num_video_tokens + "<|vision_end|>"
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{video}{prompt_text}<|im_end|>\n"
            "<|im_start|>assistant\n")


@dataclasses.dataclass
class VideoInput:
    """How a clip becomes Qwen2-VL input (the ``data_config`` of a checkpoint, plus the vision config)."""

    sample_fps: float = 2.0
    num_frames: int | None = None
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = 200704
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2


# ---- checkpoint keys ----------------------------------------------------------------------
def module_key(released: str) -> str:
    """A released checkpoint key -> our ``VideoRewardModel`` key (module paths of transformers 5,
    the peft adapter name inserted into LoRA keys)."""
    key = released.removeprefix(RELEASED_PREFIX)
    if key.startswith("rm_head."):
        return key
    key = re.sub(r"^visual\.", "model.visual.", key)
    key = re.sub(r"^model\.(?!language_model\.|visual\.)", "model.language_model.", key)
    key = re.sub(r"\.(lora_[AB])\.", rf".\1.{ADAPTER_NAME}.", key)
    return "vlm." + key


def released_key(key: str) -> str:
    """Inverse of ``module_key``: our key -> the released (transformers 4.x, peft) name."""
    if key.startswith("rm_head."):
        return RELEASED_PREFIX + key
    key = key.removeprefix("vlm.")
    key = re.sub(r"^model\.visual\.", "visual.", key)
    key = re.sub(r"^model\.language_model\.", "model.", key)
    key = re.sub(rf"\.(lora_[AB])\.{ADAPTER_NAME}\.", r".\1.", key)
    return RELEASED_PREFIX + key


def released_module_name(name: str) -> str:
    """A module path of transformers 5's Qwen2-VL -> 4.x's (LoRA ``target_modules`` in adapter_config.json)."""
    return released_key("vlm." + name + ".w").removeprefix(RELEASED_PREFIX)[: -len(".w")]


# ---- the model ----------------------------------------------------------------------------
class VideoRewardModel(nn.Module):
    """Qwen2-VL + ``rm_head``: (frames in [-1, 1] (B, C, T, H, W), prompts) -> raw scores (B, D).

    ``forward`` takes the frames already sampled (``sample_frame_indices``); each dimension's token
    must occur exactly once in ``prompt_template`` (a ``str.format`` template with ``{prompt}``).
    """

    def __init__(self, vlm: nn.Module, tokenizer, dimensions: Sequence[str] = DIMENSIONS,
                 prompt_template: str = DEFAULT_PROMPT_TEMPLATE, video: VideoInput | None = None):
        super().__init__()
        self.vlm = vlm
        self.tokenizer = tokenizer
        self.dimensions = tuple(dimensions)
        hidden = vlm.config.text_config.hidden_size
        self.rm_head = nn.Linear(hidden, len(self.dimensions), bias=False)
        self.rm_head.to(next(vlm.parameters()).dtype)
        for dim in self.dimensions:
            if prompt_template.count(reward_token(dim)) != 1:
                raise ValueError(f"`prompt_template` must hold {reward_token(dim)} exactly once: {prompt_template!r}")
        if "{prompt}" not in prompt_template:
            raise ValueError(f"`prompt_template` has no {{prompt}} field: {prompt_template!r}")
        self.prompt_template = prompt_template
        self.video = video or VideoInput()
        self.token_ids = [tokenizer.convert_tokens_to_ids(reward_token(d)) for d in self.dimensions]
        self.video_token_id = vlm.config.video_token_id

    def video_inputs(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values_videos (B * N, C * 2 * 14 * 14), video_grid_thw (B, 3)) of frames (B, C, T, H, W)."""
        batch, _, count, height, width = frames.shape
        v = self.video
        new_h, new_w = smart_resize(height, width, v.patch_size * v.merge_size, v.min_pixels, v.max_pixels)
        images = resize(to_unit_range(frames.transpose(1, 2).flatten(0, 1).float()), new_h, new_w)
        images = normalize(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).view(batch, count, 3, new_h, new_w)
        patches, grid = patchify(images, v.patch_size, v.temporal_patch_size, v.merge_size)
        return patches, torch.tensor([grid] * batch, device=frames.device)

    def text_inputs(self, prompts: Sequence[str], num_video_tokens: int, device) -> dict[str, torch.Tensor]:
        texts = [chat_text(self.prompt_template.format(prompt=p), num_video_tokens) for p in prompts]
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        ids = encoded["input_ids"].to(device)
        return {"input_ids": ids, "attention_mask": encoded["attention_mask"].to(device),
                "mm_token_type_ids": (ids == self.video_token_id).int() * 2}

    def forward(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_video_batch(frames, prompts)
        dtype = next(self.vlm.parameters()).dtype
        pixels, grid = self.video_inputs(frames)
        num_video_tokens = int(grid[0].prod()) // self.video.merge_size**2
        text = self.text_inputs(prompts, num_video_tokens, frames.device)
        hidden = self.vlm.model(**text, pixel_values_videos=pixels.to(dtype), video_grid_thw=grid).last_hidden_state
        ids = text["input_ids"]
        at_tokens = []
        for token in self.token_ids:
            found = ids == token
            if not bool((found.sum(1) == 1).all()):
                raise ValueError(f"token id {token} must occur once per prompt; the tokenizer split the template")
            at_tokens.append(hidden[found])  # (B, hidden), in batch order
        states = torch.stack(at_tokens, dim=1)  # (B, D, hidden)
        # dimension k: head row k at token k (the diagonal of the head applied at every reward token)
        return (states * self.rm_head.weight[None]).sum(-1).float()

    def frame_indices(self, total_frames: int, video_fps: float) -> list[int]:
        """The frames it scores of a ``total_frames`` clip at ``video_fps`` (``sample_frame_indices``)."""
        v = self.video
        return sample_frame_indices(total_frames, video_fps, v.sample_fps, v.num_frames, v.temporal_patch_size)

    def score_pair(self, pixels_a: torch.Tensor, pixels_b: torch.Tensor, prompts: Sequence[str], video_fps: float,
                   generators: Sequence[torch.Generator] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores (B, D) of two clips per prompt in one forward (the reward-model recipe's interface;
        nothing here is random: ``generators`` are unused)."""
        idx = self.frame_indices(pixels_a.shape[2], video_fps)
        scores = self(torch.cat([pixels_a[:, :, idx], pixels_b[:, :, idx]]), list(prompts) * 2)
        return scores[: len(prompts)], scores[len(prompts):]

    def save_pretrained(self, folder: str | os.PathLike, step: int, inference_config: dict | None = None) -> Path:
        """``save_videoreward_model`` with safetensors files."""
        return save_videoreward_model(folder, self, step, inference_config=inference_config)

    # ---- saving ----------------------------------------------------------------------------
    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if ".lora_A." in k or ".lora_B." in k}

    def has_lora(self) -> bool:
        return any(".lora_A." in name for name, _ in self.named_parameters())


def build_tokenizer(base_model: str | os.PathLike, dimensions: Sequence[str]):
    """The base's tokenizer with one special token per dimension appended (right padding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.fspath(base_model))
    tokenizer.add_tokens([reward_token(d) for d in dimensions], special_tokens=True)
    tokenizer.padding_side = "right"
    return tokenizer


def inject_lora(model: VideoRewardModel, rank: int, alpha: float, target_modules: Sequence[str], dropout: float = 0.0,
                use_rslora: bool = False, seed: int = 0) -> VideoRewardModel:
    """peft LoRA on the named modules of ``model.vlm`` (exact names; B = 0, A drawn from ``seed``)."""
    from peft import LoraConfig, inject_adapter_in_model

    modules = dict(model.vlm.named_modules())
    unknown = [n for n in target_modules if n not in modules]
    if unknown or not target_modules:
        raise ValueError(f"LoRA target modules not in the Qwen2-VL model: {unknown[:5] or 'none given'}")
    model.lora_settings = {"lora_r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "use_rslora": use_rslora}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, use_rslora=use_rslora,
                        target_modules="^(" + "|".join(re.escape(n) for n in target_modules) + ")$")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model.vlm, adapter_name=ADAPTER_NAME)
    return model


def language_linear_modules(vlm: nn.Module) -> list[str]:
    """Every ``nn.Linear`` of the language model (the LoRA targets VideoAlign's training chose)."""
    return [n for n, m in vlm.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.language_model.")]


def build_videoreward_model(base_model: str | os.PathLike, dimensions: Sequence[str] = DIMENSIONS,
                            prompt_template: str = DEFAULT_PROMPT_TEMPLATE, sample_fps: float = 2.0,
                            num_frames: int | None = None, min_pixels: int = VIDEO_MIN_PIXELS,
                            max_pixels: int = 200704, pretrained: bool = True, dtype: str | torch.dtype = "float32",
                            lora: dict | None = None, train_modules: Sequence[str] = (), seed: int = 0,
                            ) -> VideoRewardModel:
    """A new reward model on a Qwen2-VL base folder: its weights (``pretrained``) or fresh weights of its
    config drawn from ``seed``; the embedding resized to the tokenizer with the reward tokens appended
    (new rows and the head drawn from ``seed``). Patch sizes come from the base's vision config.

    Trainable: every parameter without ``lora``; with ``lora`` (``rank``, ``alpha``, ``dropout``,
    ``target_modules``: ``"language_linear"`` = every Linear of the language model, VideoAlign's choice,
    or a list of module names) the LoRA weights, the head and the modules under ``train_modules``
    (e.g. ``["model.visual.merger"]``).
    """
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    base = _local_base(base_model)
    tokenizer = build_tokenizer(base, dimensions)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if pretrained:
            vlm = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=as_dtype(dtype),
                                                                  attn_implementation="sdpa")
        else:
            config = AutoConfig.from_pretrained(base)
            config._attn_implementation = "sdpa"
            vlm = Qwen2VLForConditionalGeneration(config).to(as_dtype(dtype))
        base_vocab = vlm.get_input_embeddings().weight.shape[0]
        vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        vision = vlm.config.vision_config
        video = VideoInput(sample_fps, num_frames, min_pixels, max_pixels, vision.patch_size,
                           vision.temporal_patch_size, vision.spatial_merge_size)
        model = VideoRewardModel(vlm, tokenizer, dimensions, prompt_template, video)
        nn.init.normal_(model.rm_head.weight, std=vlm.config.text_config.initializer_range)
    model.base_model = str(base_model)
    #: the reward tokens got new embedding rows (the base's vocabulary was full): a checkpoint must hold them
    model.embedding_grown = len(tokenizer) > base_vocab
    if lora is not None:
        unknown = sorted(set(lora) - {"rank", "alpha", "dropout", "target_modules"})
        if unknown:
            raise ValueError(f"`lora` takes rank, alpha, dropout, target_modules; got unknown keys {unknown}")
        targets = lora.get("target_modules", "language_linear")
        targets = language_linear_modules(vlm) if targets == "language_linear" else list(targets)
        model.requires_grad_(False)
        inject_lora(model, lora.get("rank", 64), lora.get("alpha", 128.0), targets, lora.get("dropout", 0.0), seed=seed)
        model.rm_head.requires_grad_(True)
        modules = dict(vlm.named_modules())
        for name in train_modules:
            if name not in modules:
                raise ValueError(f"`train_modules`: {name!r} is not a module of the Qwen2-VL model")
            modules[name].requires_grad_(True)
    return model


def _local_base(base_model: str | os.PathLike) -> str:
    path = Path(base_model)
    if path.is_dir():
        return os.fspath(path)
    raise FileNotFoundError(
        f"Qwen2-VL base model not found at {os.fspath(base_model)!r}: pass the local folder of "
        "Qwen/Qwen2-VL-2B-Instruct (https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct) as `base_model`"
    )


# ---- loading ------------------------------------------------------------------------------
def read_model_config(folder: str | os.PathLike) -> dict:
    """``model_config.json`` of a VideoReward checkpoint, its sections checked."""
    path = Path(folder) / MODEL_CONFIG_NAME
    config = read_folder_json(folder, MODEL_CONFIG_NAME, "VideoReward checkpoint",
                              "download https://huggingface.co/KwaiVGI/VideoReward")
    for section in ("data_config", "model_config"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"{path}: section {section!r} is missing")
    model = config["model_config"]
    if model.get("reward_token", "special") != "special" or not model.get("use_special_tokens", True):
        raise ValueError(f"{path}: model_config.reward_token={model.get('reward_token')!r}; only the reward-token "
                         "head ('special', use_special_tokens: true) is supported")
    dims = config["data_config"].get("eval_dim", list(DIMENSIONS))
    dims = [dims] if isinstance(dims, str) else list(dims)
    if model.get("output_dim", len(dims)) != len(dims):
        raise ValueError(f"{path}: model_config.output_dim={model.get('output_dim')} but eval_dim has {len(dims)} "
                         f"dimensions {dims}")
    config["data_config"]["eval_dim"] = dims
    return config


def find_checkpoint(folder: str | os.PathLike, step: int | None = None) -> Path:
    """``checkpoint-<step>`` (the latest when ``step`` is None) inside ``folder``."""
    steps = {int(p.name[len(CHECKPOINT_PREFIX):]): p for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()}
    if not steps:
        raise FileNotFoundError(f"{Path(folder).resolve()}: no {CHECKPOINT_PREFIX}<step> folder")
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise FileNotFoundError(f"{Path(folder).resolve()}: no {CHECKPOINT_PREFIX}{step} (found steps {sorted(steps)})")
    return steps[step]


def load_tensors(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a torch ``.pth`` through ``t2v_turbo.fileio.torch_load``
    (``weights_only=True``; a file that needs more is refused naming the opt-in, unpickled in full only with
    ``allow_pickle``, which runs any code it holds: only for files you trust)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch_load(path, allow_pickle, opt_in="allow_pickle: true in the reward's args")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def _checkpoint_files(checkpoint: Path) -> tuple[Path | None, Path | None]:
    """(full state dict, non-LoRA state dict): exactly one is found, or ``FileNotFoundError``."""
    full = next((checkpoint / n for n in FULL_NAMES if (checkpoint / n).is_file()), None)
    non_lora = next((checkpoint / n for n in NON_LORA_NAMES if (checkpoint / n).is_file()), None)
    if full is None and non_lora is None:
        raise FileNotFoundError(f"{checkpoint}: neither a full state dict {FULL_NAMES} nor the LoRA layout "
                                f"({PEFT_WEIGHTS_NAME}, {PEFT_CONFIG_NAME}, one of {NON_LORA_NAMES})")
    if full is None:
        for name in (PEFT_WEIGHTS_NAME, PEFT_CONFIG_NAME):
            if not (checkpoint / name).is_file():
                raise FileNotFoundError(f"{checkpoint}: {non_lora.name} found but not {name}")
    return full, non_lora


def _lora_settings(path: Path) -> dict:
    config = json.loads(path.read_text(encoding="utf-8"))
    unsupported = {k: config.get(k) for k in ("modules_to_save", "rank_pattern", "alpha_pattern", "use_dora")
                   if config.get(k)}
    if unsupported:
        raise ValueError(f"{path}: unsupported LoRA options {unsupported}")
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        raise ValueError(f"{path}: target_modules must be a list of module names, got {targets!r}")
    return {"rank": config["r"], "alpha": config["lora_alpha"], "use_rslora": config.get("use_rslora", False),
            "dropout": config.get("lora_dropout", 0.0),
            "target_modules": [module_key(t + ".w")[len("vlm."):-len(".w")] for t in targets]}


def load_videoreward_model(checkpoint: str | os.PathLike, base_model: str | os.PathLike | None = None,
                           step: int | None = None, dtype: str | torch.dtype = "float32",
                           prompt_template: str | None = None, allow_pickle: bool = False,
                           ) -> tuple[VideoRewardModel, dict]:
    """(model in eval mode, model_config.json) of a VideoReward checkpoint folder.

    ``base_model``: the Qwen2-VL base folder (default: ``model_config.model_name_or_path``, taken
    relative to the checkpoint folder when that exists). Loading is strict: the LoRA keys equal the
    injected LoRA's, every non-LoRA key names a parameter of the model, and ``rm_head.weight`` (the
    one tensor the base lacks) is present.
    """
    folder = Path(checkpoint)
    config = read_model_config(folder)
    files = find_checkpoint(folder, step)
    full, non_lora = _checkpoint_files(files)
    tensors = {module_key(k): v for k, v in load_tensors(full or non_lora, allow_pickle).items()}
    lora = None
    if full is None:
        from safetensors.torch import load_file

        lora = _lora_settings(files / PEFT_CONFIG_NAME)
        tensors.update({module_key(k): v for k, v in load_file(str(files / PEFT_WEIGHTS_NAME)).items()})
    if "rm_head.weight" not in tensors:
        raise ValueError(f"{full or non_lora}: no rm_head.weight (base_model.model.rm_head.weight), the score head")

    data = config["data_config"]
    base = base_model or config["model_config"]["model_name_or_path"]
    if not Path(base).is_absolute() and (folder / base).is_dir():
        base = folder / base
    template = prompt_template or data.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE
    if prompt_template is None and "prompt_template" not in data:
        logger.warning("%s was trained with the %r prompt template, which is not shipped; scoring with our default "
                       "template (pass `prompt_template` to match training)", folder, data.get("prompt_template_type"))
    model = build_videoreward_model(base, data["eval_dim"], template, sample_fps=data.get("fps") or 2.0,
                                    num_frames=data.get("num_frames"),
                                    min_pixels=data.get("min_frame_pixels", VIDEO_MIN_PIXELS),
                                    max_pixels=data.get("max_frame_pixels") or 200704, pretrained=full is None,
                                    dtype=dtype)
    if lora is not None:
        inject_lora(model, lora["rank"], lora["alpha"], lora["target_modules"], lora["dropout"], lora["use_rslora"])
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    lora_missing = sorted(k for k in own if (".lora_A." in k or ".lora_B." in k) and k not in tensors)
    full_missing = sorted(set(own) - set(tensors)) if full is not None else []
    if unknown or lora_missing or full_missing:
        raise RuntimeError(f"{files}: keys do not match the model; unexpected={unknown[:5]} "
                           f"missing LoRA={lora_missing[:5]} missing={full_missing[:5]}")
    if model.embedding_grown and EMBEDDING_KEY not in tensors:
        raise RuntimeError(f"{files}: the reward tokens extend the base's embedding, but the checkpoint holds no "
                           "embed_tokens weights for them")
    with torch.no_grad():
        for key, value in tensors.items():
            if own[key].shape != value.shape:
                raise RuntimeError(f"{files}: {released_key(key)} has shape {tuple(value.shape)}, the model expects "
                                   f"{tuple(own[key].shape)}")
            own[key].copy_(value)
    return model.eval(), config


# ---- saving -------------------------------------------------------------------------------
def save_videoreward_model(folder: str | os.PathLike, model: VideoRewardModel, step: int,
                           base_model: str | None = None, inference_config: dict | None = None,
                           non_lora_format: str = "safetensors") -> Path:
    """Write ``model`` in the checkpoint layout above: ``model_config.json`` + ``checkpoint-<step>/``.

    With LoRA: ``adapter_config.json``, ``adapter_model.safetensors`` and the non-LoRA tensors (every
    trainable non-LoRA parameter, the head and the embedding) as ``non_lora_state_dict.safetensors``
    (or ``.pth`` with ``non_lora_format="pth"``, the released file's format); without: the full state
    dict as ``model.safetensors`` / ``model.pth``. Keys in the released names.
    """
    from safetensors.torch import save_file

    if non_lora_format not in ("safetensors", "pth"):
        raise ValueError(f"`non_lora_format`={non_lora_format!r} is not one of 'safetensors', 'pth'")
    folder = Path(folder)
    checkpoint = folder / f"{CHECKPOINT_PREFIX}{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()

    def write(tensors: dict[str, torch.Tensor], stem: str) -> None:
        tensors = {released_key(k): v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        if non_lora_format == "pth":
            torch.save(tensors, checkpoint / f"{stem}.pth")
        else:
            save_file(tensors, str(checkpoint / f"{stem}.safetensors"))

    lora_config = {"lora_enable": model.has_lora()}
    if model.has_lora():
        lora, settings = model.lora_state_dict(), model.lora_settings
        targets = sorted({k.removeprefix("vlm.").rsplit(".lora_", 1)[0] for k in lora})
        adapter = {"peft_type": "LORA", "r": settings["lora_r"], "lora_alpha": settings["lora_alpha"],
                   "lora_dropout": settings["lora_dropout"], "use_rslora": settings["use_rslora"],
                   "target_modules": [released_module_name(t) for t in targets], "bias": "none",
                   "modules_to_save": None, "task_type": "CAUSAL_LM"}
        (checkpoint / PEFT_CONFIG_NAME).write_text(json.dumps(adapter, indent=2) + "\n", encoding="utf-8")
        save_file({released_key(k): v.detach().cpu().contiguous() for k, v in lora.items()},
                  str(checkpoint / PEFT_WEIGHTS_NAME))
        trained = {n for n, p in model.named_parameters() if p.requires_grad and n not in lora}
        keep = trained | {"rm_head.weight", EMBEDDING_KEY}
        write({k: v for k, v in state.items() if k in keep}, "non_lora_state_dict")
        lora_config.update(settings)
    else:
        write(state, "model")
    v = model.video
    config = {
        "data_config": {"fps": v.sample_fps, "num_frames": v.num_frames, "max_frame_pixels": v.max_pixels,
                        "min_frame_pixels": v.min_pixels, "eval_dim": list(model.dimensions),
                        "prompt_template_type": "custom", "prompt_template": model.prompt_template,
                        "sample_type": "uniform"},
        "model_config": {"model_name_or_path": str(base_model or getattr(model, "base_model", "")),
                         "output_dim": len(model.dimensions), "reward_token": "special", "use_special_tokens": True},
        "peft_lora_config": lora_config,
    }
    if inference_config is not None:
        config["inference_config"] = inference_config
    (folder / MODEL_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return checkpoint


# ---- the registered reward ----------------------------------------------------------------
@register_reward("videoreward")
class VideoAlignReward(VideoReward):
    """VideoReward as a clip-level reward: ``sum_k w_k (r_k - mu_k) / sd_k`` over VQ, MQ, TA.

    Args:
        checkpoint: the VideoReward folder (``model_config.json`` + ``checkpoint-<step>/``).
        base_model: the Qwen2-VL-2B-Instruct folder (default: the checkpoint's ``model_name_or_path``).
        weights: weight of each dimension, e.g. ``{VQ: 1, MQ: 1, TA: 1}`` (the default; VideoAlign's
            overall score) or ``{TA: 1}``; dimensions left out weigh 0.
        normalize: z-normalise with ``inference_config`` (required in model_config.json when true).
        video_fps: frame rate of the videos it scores (frames are sampled at the checkpoint's ``fps``).
        num_frames, max_pixels, min_pixels: override the checkpoint's video settings.
        prompt_template, step, allow_pickle: as ``load_videoreward_model``.
        dtype: model dtype; scores are float32.
    """

    granularity = "clip"

    def __init__(self, checkpoint: str | os.PathLike, base_model: str | os.PathLike | None = None, *,
                 weights: dict[str, float] | None = None, normalize: bool = True, video_fps: float = 8.0,
                 num_frames: int | None = None, max_pixels: int | None = None, min_pixels: int | None = None,
                 prompt_template: str | None = None, step: int | None = None, dtype: str | torch.dtype = "float32",
                 allow_pickle: bool = False):
        super().__init__()
        config = read_model_config(checkpoint)
        dims = config["data_config"]["eval_dim"]
        weights = dict(weights) if weights is not None else {d: 1.0 for d in dims}
        unknown = sorted(set(weights) - set(dims))
        if unknown:
            raise ValueError(f"`weights` names dimensions {unknown} the checkpoint does not score; it scores {dims}")
        mean, std = torch.zeros(len(dims)), torch.ones(len(dims))
        if normalize:
            stats = config.get("inference_config")
            if not stats:
                raise ValueError(f"{Path(checkpoint) / MODEL_CONFIG_NAME} has no inference_config to z-normalise "
                                 "with; pass normalize=false")
            mean = torch.tensor([float(stats[f"{d}_mean"]) for d in dims])
            std = torch.tensor([float(stats[f"{d}_std"]) for d in dims])
        self.model, _ = load_videoreward_model(checkpoint, base_model, step, dtype, prompt_template, allow_pickle)
        overrides = {"num_frames": num_frames, "max_pixels": max_pixels, "min_pixels": min_pixels}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        self.model.video = dataclasses.replace(self.model.video, **overrides)
        self.video_fps = video_fps
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.register_buffer("weights", torch.tensor([float(weights.get(d, 0.0)) for d in dims]), persistent=False)
        self.requires_grad_(False).eval()

    def frame_indices(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        return self.model.frame_indices(num_frames, self.video_fps)

    def dimension_scores(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """z-normalised scores (B, D) of the selected frames."""
        raw = self.model(frames, list(prompts))
        return (raw - self.mean.to(raw.device)) / self.std.to(raw.device)

    def score(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.dimension_scores(frames, prompts) @ self.weights.to(frames.device)
