"""Tiny reward checkpoints, saved in the real checkpoints' formats, for tests and benchmarks.

Each ``save_tiny_*`` writes random small weights where the real files would be, so the rewards
load them through the same code path as the released checkpoints. ``TINY_REWARD_KWARGS`` maps a
registered reward name to a function ``folder -> build_reward kwargs``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

import torch

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


TINY_REWARD_KWARGS: dict[str, Callable[[Path], dict]] = {
    "hpsv2": _hps_kwargs("v2"),
    "hpsv2.1": _hps_kwargs("v2.1"),
    "clip": _clip_kwargs,
    "open_clip": _open_clip_kwargs,
    "pickscore": _pickscore_kwargs,
    "aesthetic": _aesthetic_kwargs,
    "viclip": _viclip_kwargs,
}
