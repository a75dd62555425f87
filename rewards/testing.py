"""Tiny reward checkpoints, saved in the real checkpoints' formats, for tests and benchmarks.

Each ``save_tiny_*`` writes random small weights where the real files would be, so the rewards
load them through the same code path as the released checkpoints. ``TINY_REWARD_KWARGS`` maps a
registered reward name to a function ``folder -> build_reward kwargs``; ``SHIPPED_ASSET_REWARDS``
names the rewards whose defaults load small assets shipped with the project (built with no
arguments). ``tiny_reward_kwargs`` gives the kwargs of either kind.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterable

import torch

from rewards.preprocessing import IMAGENET_MEAN, IMAGENET_STD

#: An open_clip model config of the ViT-H-14 family's shape, shrunk (CLIP BPE vocabulary kept).
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

#: A tiny open_clip config with a byte-level vocabulary, for a custom tokenizer (``byte_tokenizer``).
BYTE_VOCAB_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 259, "width": 32, "heads": 2, "layers": 1},
}


def byte_tokenizer(prompts: list[str], context_length: int = 16) -> torch.Tensor:
    """Token ids (N, context_length): 257, the UTF-8 bytes + 1, 258 (end; the largest id, where
    open_clip pools), then zeros. A stand-in for a custom tokenizer callable."""
    tokens = torch.zeros(len(prompts), context_length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids = [257] + [b + 1 for b in prompt.lower().encode("utf-8")][: context_length - 2] + [258]
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens


def save_tiny_open_clip(path: str | Path, config: dict = TINY_OPEN_CLIP_CONFIG, seed: int = 0) -> Path:
    """A random open_clip model saved as the HPS checkpoints are: ``torch.save({"state_dict": sd})``
    (or as a bare safetensors state dict when ``path`` ends in ``.safetensors``)."""
    from safetensors.torch import save_file

    from rewards.image_text import build_open_clip_model

    torch.manual_seed(seed)
    state_dict = build_open_clip_model(config).state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save({"state_dict": state_dict}, path)
    return path


def save_clip_bpe_tokenizer(folder: str | Path) -> Path:
    """The CLIP BPE tokenizer as a transformers ``CLIPTokenizer`` folder, built from the BPE merges
    that open_clip ships (the same vocabulary as the real PickScore / CLIP tokenizers)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges).save_pretrained(str(folder))
    return Path(folder)


def save_tiny_transformers_clip(
    folder: str | Path, image_size: int = 32, seed: int = 0, with_tokenizer: bool = True
) -> Path:
    """A random tiny transformers ``CLIPModel`` + ``CLIPImageProcessor`` (+ CLIP tokenizer) folder,
    the layout of ``yuvalkirstain/PickScore_v1`` / ``openai/clip-vit-large-patch14``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(folder))
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(str(folder))
    if with_tokenizer:
        save_clip_bpe_tokenizer(folder)
    return Path(folder)


def save_tiny_aesthetic_head(path: str | Path, head: str = "mlp", embed_dim: int = 16, seed: int = 0) -> Path:
    """A random aesthetic head saved as the LAION files are: a bare state dict (``layers.N.*``
    for the MLP, ``weight``/``bias`` for the linear head)."""
    from rewards.image_text import LaionAestheticMLP

    torch.manual_seed(seed)
    module = LaionAestheticMLP(embed_dim) if head == "mlp" else torch.nn.Linear(embed_dim, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


#: Words of the prompts the tests use; with the letters (and their ``##`` continuations) of the
#: tiny BERT vocabulary, any other lowercase word still splits into known pieces.
TINY_BERT_WORDS = (
    "a an at beach ball bicycle car cat corgi dog first grass horse ignored moon night of on photo "
    "red riding running second sunset the astronaut"
).split()
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def save_tiny_bert_tokenizer(folder: str | Path, words: Iterable[str] = TINY_BERT_WORDS) -> Path:
    """An uncased WordPiece tokenizer folder in the layout of ``bert-large-uncased`` (``vocab.txt``
    + ``tokenizer_config.json``), written offline by transformers' ``BertTokenizer``.

    The vocabulary is the BERT special tokens (``[PAD]`` = 0, ``[UNK]``, ``[CLS]``, ``[SEP]``,
    ``[MASK]``), then ``words``, then ``a``-``z`` and ``##a``-``##z``.
    """
    from transformers import BertTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = list(dict.fromkeys([*BERT_SPECIAL_TOKENS, *words, *letters, *("##" + c for c in letters)]))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # the vocabulary file as the first argument: ``vocab_file`` in transformers 4, ``vocab`` in 5
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    return folder


def internvideo2_released_state_dict(
    state_dict: dict[str, torch.Tensor], replace: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """A state dict of our ``InternVideo2`` in the released ``.pt``'s key names: BERT under
    ``text_encoder.bert.``, plus the entries the reward does not use (``temp``, ``itm_head.*``).
    ``replace`` gives tensors for some released keys (e.g. 4-frame ``vision_encoder.pos_embed``)."""
    released = {
        ("text_encoder.bert." + key[len("text_encoder."):] if key.startswith("text_encoder.") else key): value
        for key, value in state_dict.items()
    }
    released.update(replace or {})
    text_width = state_dict["text_proj.weight"].shape[1]
    released["temp"] = torch.tensor(0.07)
    released["itm_head.weight"] = torch.zeros(2, text_width)
    released["itm_head.bias"] = torch.zeros(2)
    return released


def save_tiny_internvideo2(path: str | Path, config: str | dict = "tiny", checkpoint_frames: int = 4, seed: int = 0) -> Path:
    """A random InternVideo2 saved as ``InternVideo2-stage2_1b-224p-f4.pt`` is: ``torch.save({'module':
    sd})`` in the original key names, with position embeddings of ``checkpoint_frames`` frames (the
    released checkpoint has 4; loading interpolates them). The embeddings and layer scales, which
    start at zero / 1e-5, are drawn at random too, so every block shapes the features."""
    from rewards.internvideo2 import LayerScale, build_internvideo2

    torch.manual_seed(seed)
    model = build_internvideo2(config, num_frames=checkpoint_frames)
    vision = model.vision_encoder
    with torch.no_grad():
        for embedding in (vision.cls_token, vision.pos_embed, vision.img_pos_embed, vision.clip_pos_embed,
                          vision.clip_img_pos_embed):
            embedding.normal_(std=0.02)
        for module in model.modules():
            if isinstance(module, LayerScale):
                module.gamma.uniform_(0.05, 0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": internvideo2_released_state_dict(model.state_dict())}, path)
    return path


#: A transformers ``XCLIPConfig`` of ``microsoft/xclip-base-patch32``'s shape, shrunk (CLIP BPE
#: vocabulary kept): 8 frames of 32x32, text context 32.
TINY_XCLIP_CONFIG = {
    "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "max_position_embeddings": 32},
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_frames": 8, "mit_hidden_size": 16,
                      "mit_intermediate_size": 32, "mit_num_attention_heads": 2},
    "projection_dim": 16,
    "prompt_layers": 1,
    "prompt_num_attention_heads": 2,
}


def save_tiny_xclip(
    folder: str | Path, seed: int = 0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, with_tokenizer: bool = True
) -> Path:
    """A random tiny ``XCLIPModel`` folder in the layout of ``microsoft/xclip-base-patch32``:
    ``save_pretrained`` weights + config, the ``VideoMAEImageProcessor`` config (its mean/std) and
    the CLIP BPE tokenizer."""
    from transformers import VideoMAEImageProcessor, XCLIPConfig, XCLIPModel

    torch.manual_seed(seed)
    config = XCLIPConfig(**TINY_XCLIP_CONFIG)
    XCLIPModel(config).save_pretrained(str(folder))
    size = config.vision_config.image_size
    VideoMAEImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(image_mean), image_std=list(image_std),
    ).save_pretrained(str(folder))
    if with_tokenizer:
        save_clip_bpe_tokenizer(folder)
    return Path(folder)


#: Class names of the tiny detector and action classifier: the objects and actions of the registry tests'
#: prompts ("a red ball", "a dog running on grass", "a cat", "a car", "... riding a horse ...").
TINY_TASK_LABELS = ("ball", "book", "car", "cat", "dog", "horse")


def save_tiny_yolos(folder: str | Path, target: str = "book", seed: int = 0) -> Path:
    """A random tiny ``YolosForObjectDetection`` + ``YolosImageProcessor`` folder in the layout of
    ``hustvl/yolos-base`` (classes ``TINY_TASK_LABELS``). The class head's bias favours ``target`` so that
    its detections pass the 0.2 threshold and the reward has a gradient, as a detector that sees the
    object does."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    config = YolosConfig(image_size=[32, 32], patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_detection_tokens=4, id2label=dict(enumerate(TINY_TASK_LABELS)))
    model = YolosForObjectDetection(config)
    with torch.no_grad():
        model.class_labels_classifier.layers[-1].bias[TINY_TASK_LABELS.index(target)] += 4.0
    model.save_pretrained(str(folder))
    YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(str(folder))
    return Path(folder)


def save_tiny_videomae(folder: str | Path, seed: int = 0) -> Path:
    """A random tiny ``VideoMAEForVideoClassification`` + ``VideoMAEImageProcessor`` folder in the layout of
    ``MCG-NJU/videomae-base-finetuned-kinetics``: 4 frames of 32x32, classes ``TINY_TASK_LABELS``."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEImageProcessor

    torch.manual_seed(seed)
    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            id2label=dict(enumerate(TINY_TASK_LABELS)))
    VideoMAEForVideoClassification(config).save_pretrained(str(folder))
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return Path(folder)


def reference_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a reference fixture (``.safetensors``), cloned so a test may change them."""
    from safetensors.torch import load_file

    return {key: value.clone() for key, value in load_file(str(path)).items()}


def architecture_summary(model: torch.nn.Module) -> dict:
    """What a reference manifest records of a video-text model: ``state_dict`` (key -> shape, in
    order) and the parameter counts ``num_params``, ``num_params_vision``, ``num_params_text``."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {
        "state_dict": {key: list(value.shape) for key, value in model.state_dict().items()},
        "num_params": count(model),
        "num_params_vision": count(model.vision_encoder),
        "num_params_text": count(model.text_encoder),
    }


#: Qwen2-VL's special tokens (the chat and vision markers the reward's text uses)
QWEN2_VL_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                           "<|video_pad|>", "<|image_pad|>")
#: words of the chat format and of the reward's default prompt template
QWEN2_VL_WORDS = ("system", "user", "assistant", "you", "are", "helpful", "rate", "generated", "video", "for", "prompt",
                  "visual", "motion", "quality", "text", "alignment", ".", ":", '"', ",")


def save_tiny_qwen2_vl(folder: str | Path, vocabulary: Iterable[str] = (), seed: int = 0, hidden_size: int = 32,
                       num_layers: int = 2, vision_depth: int = 1) -> Path:
    """A random tiny ``Qwen2VLForConditionalGeneration`` folder in the layout of ``Qwen/Qwen2-VL-2B-Instruct``
    (``save_pretrained`` config + weights, a fast tokenizer with Qwen2-VL's special tokens).

    The tokenizer is word-level (lower-cased words and punctuation of ``vocabulary``, the chat words
    and ``t2v_turbo.testing.DEFAULT_VOCABULARY``; others map to ``<unk>``). As in the real model, the
    embedding has more rows than the tokenizer, so the reward tokens fit without growing it.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from t2v_turbo.testing import DEFAULT_VOCABULARY, redraw_degenerate_parameters

    words = dict.fromkeys(["<unk>", *QWEN2_VL_WORDS, *DEFAULT_VOCABULARY, *(w.lower() for w in vocabulary)])
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>", padding_side="right")
    tokenizer.add_tokens([t for t in QWEN2_VL_SPECIAL_TOKENS if t != "<|endoftext|>"], special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}
    heads = 4
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer) + 8, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": _mrope_section(hidden_size // heads)}),
        vision_config=dict(depth=vision_depth, embed_dim=hidden_size, hidden_size=hidden_size, num_heads=2,
                           mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    redraw_degenerate_parameters(model, torch.Generator().manual_seed(seed))
    folder = Path(folder)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (temporal, height, width) split of the rotary pairs, 2:1:1 as in the released 16:24:24 = 64."""
    half = head_dim // 2
    return [half - 2 * (half // 4), half // 4, half // 4]


#: z-normalisation statistics of the tiny VideoReward's inference_config
TINY_VIDEOREWARD_STATS = {"VQ_mean": 0.25, "VQ_std": 2.0, "MQ_mean": -0.5, "MQ_std": 0.5, "TA_mean": 1.0, "TA_std": 4.0}


def save_tiny_videoreward(folder: str | Path, base_model: str | Path, seed: int = 0, step: int = 7,
                          non_lora_format: str = "pth") -> Path:
    """A random VideoReward checkpoint on the tiny Qwen2-VL ``base_model``, in the released layout:
    ``model_config.json`` (``model_name_or_path`` = the hub id, as released, so a loader needs
    ``base_model``) and ``checkpoint-<step>/`` with ``adapter_config.json``, ``adapter_model.safetensors``
    (LoRA r 4 on every language-model Linear, B drawn non-zero) and ``non_lora_state_dict.pth`` (a
    re-drawn vision merger, the score head and the embedding, keys in the released names).
    Small pixel bounds keep the video input at a few patches."""
    from rewards.videoreward import build_videoreward_model, save_videoreward_model

    model = build_videoreward_model(base_model, min_pixels=56 * 56, max_pixels=56 * 84, seed=seed,
                                    lora={"rank": 4, "alpha": 8.0}, train_modules=["model.visual.merger"])
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or name.startswith("vlm.model.visual.merger.") or name == "rm_head.weight":
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    save_videoreward_model(folder, model, step, base_model="Qwen/Qwen2-VL-2B-Instruct",
                           inference_config=TINY_VIDEOREWARD_STATS, non_lora_format=non_lora_format)
    return Path(folder)


def _hps_kwargs(version: str) -> Callable[[Path], dict]:
    def kwargs(folder: Path) -> dict:
        checkpoint = save_tiny_open_clip(Path(folder) / f"HPS_{version}_compressed.pt")
        return {"checkpoint": checkpoint, "model_config": TINY_OPEN_CLIP_CONFIG}

    return kwargs


def _clip_kwargs(folder: Path) -> dict:
    return {"checkpoint": save_tiny_open_clip(Path(folder) / "open_clip_pytorch_model.bin"), "model_config": TINY_OPEN_CLIP_CONFIG}


def _open_clip_kwargs(folder: Path) -> dict:
    config_path = Path(folder) / "tiny_byte_clip.json"
    config_path.write_text(json.dumps(BYTE_VOCAB_OPEN_CLIP_CONFIG))
    checkpoint = save_tiny_open_clip(Path(folder) / "tiny_byte_clip.safetensors", BYTE_VOCAB_OPEN_CLIP_CONFIG)
    return {"model_config": config_path, "checkpoint": checkpoint, "tokenizer": byte_tokenizer}


def _pickscore_kwargs(folder: Path) -> dict:
    model = save_tiny_transformers_clip(Path(folder) / "pickscore")
    return {"model": model, "processor": model}


def _aesthetic_kwargs(folder: Path) -> dict:
    return {
        "clip_model": save_tiny_transformers_clip(Path(folder) / "clip-l14", with_tokenizer=False),
        "head_checkpoint": save_tiny_aesthetic_head(Path(folder) / "sac+logos+ava1-l14-linearMSE.pth"),
    }


def _viclip_kwargs(folder: Path) -> dict:
    # random weights of the "tiny" config; its loading path is tested with the reference fixture
    return {"config": "tiny", "checkpoint": None, "stride": 1}


def _internvideo2_kwargs(folder: Path) -> dict:
    return {
        "checkpoint": save_tiny_internvideo2(Path(folder) / "InternVideo2-stage2_1b-224p-f4.pt"),
        "config": "tiny",
        "tokenizer": save_tiny_bert_tokenizer(Path(folder) / "bert-large-uncased"),
    }


def _xclip_kwargs(folder: Path) -> dict:
    return {"model": save_tiny_xclip(Path(folder) / "xclip-base-patch32")}


def _videoreward_kwargs(folder: Path) -> dict:
    base = save_tiny_qwen2_vl(Path(folder) / "Qwen2-VL-2B-Instruct")
    return {"checkpoint": save_tiny_videoreward(Path(folder) / "VideoReward", base), "base_model": base}


def _object_removal_kwargs(folder: Path) -> dict:
    return {"model": save_tiny_yolos(Path(folder) / "yolos-base"), "target_object": "book"}


def _action_kwargs(folder: Path) -> dict:
    return {"model": save_tiny_videomae(Path(folder) / "videomae-base-finetuned-kinetics")}


def save_tiny_preference_model(folder: str | Path, teacher: str | Path, space: str = "pixels", seed: int = 0) -> Path:
    """A random ``PreferenceRewardModel`` (width 8, depth 2) on the tiny diffusers teacher folder ``teacher``,
    saved with z-normalisation statistics."""
    from rewards.preference_model import PreferenceRewardModel
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter

    model = PreferenceRewardModel(DiffusersT2VAdapter.from_pretrained(teacher).freeze(), space=space, width=8,
                                  depth=2, seed=seed)
    stats = {"VQ_mean": 0.1, "VQ_std": 2.0, "MQ_mean": -0.2, "MQ_std": 0.5, "TA_mean": 0.0, "TA_std": 1.0}
    return model.save_pretrained(folder, inference_config=stats)


def _preference_model_kwargs(folder: Path) -> dict:
    from t2v_turbo.testing import build_tiny_diffusers_t2v

    teacher = build_tiny_diffusers_t2v(Path(folder) / "teacher")
    return {"checkpoint": save_tiny_preference_model(Path(folder) / "model", teacher)}


TINY_REWARD_KWARGS: dict[str, Callable[[Path], dict]] = {
    "hpsv2": _hps_kwargs("v2"),
    "hpsv2.1": _hps_kwargs("v2.1"),
    "clip": _clip_kwargs,
    "open_clip": _open_clip_kwargs,
    "pickscore": _pickscore_kwargs,
    "aesthetic": _aesthetic_kwargs,
    "viclip": _viclip_kwargs,
    "internvideo2": _internvideo2_kwargs,
    "xclip": _xclip_kwargs,
    "videoreward": _videoreward_kwargs,
    "preference-model": _preference_model_kwargs,
    "object-removal": _object_removal_kwargs,
    "action-classification": _action_kwargs,
}

#: Rewards whose defaults load the mini world's small assets shipped in the package
#: (``miniworld/assets``): tests build them with no arguments.
SHIPPED_ASSET_REWARDS = ("miniworld-image", "miniworld-video")


def rewards_without_tiny_builder(names: Iterable[str]) -> list[str]:
    """The ``names`` that neither ``TINY_REWARD_KWARGS`` nor ``SHIPPED_ASSET_REWARDS`` covers."""
    return [name for name in names if name not in TINY_REWARD_KWARGS and name not in SHIPPED_ASSET_REWARDS]


def tiny_reward_kwargs(name: str, folder: str | Path) -> dict:
    """``build_reward`` kwargs of a test-sized ``name``: tiny checkpoints written under ``folder``,
    or none for a reward in ``SHIPPED_ASSET_REWARDS``."""
    if name in TINY_REWARD_KWARGS:
        return TINY_REWARD_KWARGS[name](Path(folder))
    if name in SHIPPED_ASSET_REWARDS:
        return {}
    raise KeyError(
        f"reward {name!r} has no tiny builder: add a `folder -> build_reward kwargs` function for it to "
        "rewards.testing.TINY_REWARD_KWARGS (or, if its defaults load shipped assets, its name to "
        "SHIPPED_ASSET_REWARDS)"
    )
