"""Word-level tokenizer over the mini world's words.

One vocabulary, two faces:

- ``build_hf_tokenizer()`` -> a transformers ``PreTrainedTokenizerFast`` (saved as ``tokenizer.json``
  in the teacher's ``tokenizer/`` folder and read back by ``AutoTokenizer``), for the diffusers
  ``CLIPTextModel``;
- ``MiniWorldTokenizer`` -> a callable ``list[str] -> LongTensor (B, L)`` for open_clip / ViCLIP text
  towers.

Ids: ``[PAD]`` = 0, the world's words, ``[UNK]``, ``[BOS]``, and ``[EOS]`` = the LARGEST id, because
open_clip and ViCLIP text towers pool the token at ``argmax(token id)`` (and transformers' CLIP
pools at the first ``eos_token_id``): either way the end-of-text token is the one pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from miniworld.world import world_vocabulary

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
CONTEXT_LENGTH = 16


def vocabulary() -> dict[str, int]:
    """token -> id: [PAD]=0, the world's words, then [UNK], [BOS], [EOS] (the largest id)."""
    tokens = [PAD] + world_vocabulary() + [UNK, BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def build_hf_tokenizer(context_length: int = CONTEXT_LENGTH):
    """A ``PreTrainedTokenizerFast``: lower-cased whitespace words, ``[BOS] words [EOS]``, right padding."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=context_length,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
    )


class MiniWorldTokenizer:
    """Callable ``texts -> LongTensor (B, context_length)``: ``[BOS] words [EOS] [PAD]...``.

    Text longer than the context is truncated and still ends with ``[EOS]``, so the pooled token
    (argmax id) always exists. ``strip_motion=True`` drops the motion phrase of mini-world
    captions first (the image-text reward's text; other text is kept as it is).
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH, strip_motion: bool = False):
        self.context_length = int(context_length)
        self.strip_motion = bool(strip_motion)
        self.vocab = vocabulary()
        self.vocab_size = len(self.vocab)
        self.pad_id, self.unk_id = self.vocab[PAD], self.vocab[UNK]
        self.bos_id, self.eos_id = self.vocab[BOS], self.vocab[EOS]

    def encode(self, text: str) -> list[int]:
        if self.strip_motion:
            from miniworld.world import strip_motion

            try:
                text = strip_motion(text)
            except ValueError:
                pass
        ids = [self.vocab.get(w, self.unk_id) for w in text.lower().split()]
        ids = [self.bos_id] + ids[: self.context_length - 2] + [self.eos_id]
        return ids + [self.pad_id] * (self.context_length - len(ids))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if context_length is not None and context_length != self.context_length:
            return MiniWorldTokenizer(context_length, self.strip_motion)(texts)
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "MiniWorldTokenizer":
        """Rebuild from a ``tokenizer/`` folder written by ``save_hf_tokenizer`` (checks the vocabulary)."""
        import json

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"mini-world tokenizer: no tokenizer.json in {Path(folder).resolve()}")
        data = json.loads(path.read_text())
        vocab = data["model"]["vocab"]
        if vocab != vocabulary():
            raise ValueError(f"{path}: vocabulary differs from the mini world's ({len(vocab)} vs {len(vocabulary())} tokens)")
        cfg_path = Path(folder) / "tokenizer_config.json"
        length = json.loads(cfg_path.read_text()).get("model_max_length", CONTEXT_LENGTH) if cfg_path.is_file() else CONTEXT_LENGTH
        return cls(int(length))


def save_hf_tokenizer(folder: str | Path, context_length: int = CONTEXT_LENGTH) -> Path:
    """Write the transformers tokenizer (``tokenizer.json`` + config) to ``folder``."""
    folder = Path(folder)
    build_hf_tokenizer(context_length).save_pretrained(folder)
    return folder
