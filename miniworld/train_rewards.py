"""Train the mini world's two reward models through the project's own reward classes.

- image-text: ``rewards.image_text.OpenCLIPReward`` around a small custom open_clip ``CLIP``,
  trained on (single frame, caption WITHOUT the motion phrase): it cannot see motion.
- video-text: ``rewards.video_text.ViCLIPReward`` around our ViCLIP at a tiny size, trained on
  (8-frame clip, full caption).

Both are trained contrastively: each sample's embedding against the text embeddings of every
training caption (cross-entropy with a learned temperature), so repeated captions in a batch are
never false negatives; and each caption against its sample and videos that differ from the sample in
one attribute (``sample_ranking_loss``), because a student raises a reward by changing its video under
a fixed prompt: a reward trained only to rank captions ranked a caption's own video first among its
shape variants 66% of the time (video reward) and rewarded shapes the world does not draw. Inputs go
through the reward's own preprocessing, so training and scoring see the same pixels. Held-out
captions and compositions never appear in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from miniworld import world
from miniworld.tokenizer import CONTEXT_LENGTH, MiniWorldTokenizer, vocabulary

log = logging.getLogger("miniworld.build")

IMAGE_CONFIG_FILE = "open_clip_config.json"
IMAGE_WEIGHTS_FILE = "open_clip_model.safetensors"
VIDEO_CONFIG_FILE = "viclip_config.json"
VIDEO_WEIGHTS_FILE = "viclip.safetensors"
STATS_FILE = "training_stats.json"
IMAGE_PREPROCESS = {"size": 32, "resize_mode": "squash"}
#: the values each caption attribute can take, in the world's palette order
ATTRIBUTE_VALUES = {"background": world.BACKGROUNDS, "colour": world.COLOURS, "shape": world.SHAPES, "motion": world.MOTIONS}


def image_model_config() -> dict:
    """open_clip ``CLIP`` kwargs (the format of open_clip's model_configs/*.json)."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": len(vocabulary()), "width": 64, "heads": 2,
                     "layers": 2, "mlp_ratio": 2.0},
    }


def video_model_config() -> dict:
    """Our ViCLIP at tiny size, over the word tokenizer, 8 frames of 32x32, tubelets of 2 frames x 8x8 px.

    A token spanning two frames sees the object's displacement inside it (1.2-1.8 px a frame); with
    one-frame patches (4x4 tokens a frame) the reward told a caption's motion variants apart 60% of
    the time after 3000 steps, with 2-frame tubelets 0.99 after 1000 (and half the tokens)."""
    return {
        "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 4, "output_dim": 64, "num_frames": 8,
                   "tubelet_size": 2},
        "text": {"context_length": CONTEXT_LENGTH, "vocab_size": len(vocabulary()), "width": 64, "heads": 2, "layers": 2,
                 "output_dim": 64},
    }


def _unfreeze(module):
    module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def _parse(text: str) -> tuple[world.Attributes, bool]:
    """The attributes of a full or motion-free caption (a motion-free one parses as ``still``), and whether it
    has its motion phrase."""
    with_motion = " moving " in text or " staying still " in text
    return world.parse_caption(text if with_motion else text.replace(" on a ", " staying still on a ", 1)), with_motion


def one_field_variants(attrs: world.Attributes, field: str) -> list[world.Attributes]:
    """``attrs`` with ``field`` set to each of its other values, in the palette's order."""
    return [dataclasses.replace(attrs, **{field: v}) for v in ATTRIBUTE_VALUES[field] if v != getattr(attrs, field)]


def variant_sets(texts: list[str], field: str) -> torch.Tensor:
    """(len(texts), K) indices into ``texts``: per caption, itself first, then every caption of ``texts`` that
    differs from it in ``field`` only (the hard negatives a reward must tell apart), padded with -1 where that
    variant is a held-out composition (in no training data). ``texts`` are full captions, or motion-free ones
    (``world.strip_motion``) for the image reward."""
    values = ATTRIBUTE_VALUES[field]
    index = {c: i for i, c in enumerate(texts)}
    rows = []
    for text in texts:
        attrs, with_motion = _parse(text)
        variants = one_field_variants(attrs, field)
        missing = [world.caption_of(a, with_motion) for a in variants
                   if world.caption_of(a, with_motion) not in index and not a.held_out]
        if missing:
            raise ValueError(f"variant_sets: the training captions lack the {field} variant(s) {missing} of {text!r}")
        others = [index[c] for c in (world.caption_of(a, with_motion) for a in variants) if c in index]
        rows.append([index[text]] + others + [-1] * (len(values) - 1 - len(others)))
    return torch.tensor(rows)


def variant_videos(attributes: Sequence[world.Attributes], fields: Sequence[str], seed: int = 0
                   ) -> tuple[np.ndarray, list[list[world.Attributes]]]:
    """uint8 (N, len(fields), T, H, W, 3) and their attributes: per sample and field, a fresh video whose
    attributes equal the sample's but in that field, which takes another value drawn at random among those that
    keep the composition out of the held-out pairs (no held-out composition enters training)."""
    rng = np.random.default_rng([seed, 4242])
    out = np.empty((len(attributes), len(fields), world.NUM_FRAMES, world.HEIGHT, world.WIDTH, 3), np.uint8)
    chosen = []
    for i, attrs in enumerate(tqdm(attributes, desc="render variant videos", mininterval=10)):
        chosen.append([])
        for j, field in enumerate(fields):
            variants = [a for a in one_field_variants(attrs, field) if not a.held_out]
            chosen[-1].append(variants[rng.integers(len(variants))])
            out[i, j] = world.make_sample(chosen[-1][-1], rng).video
    return out, chosen


def sample_ranking_loss(samples: torch.Tensor, variants: torch.Tensor, captions: torch.Tensor, scale) -> torch.Tensor:
    """Cross-entropy of each caption over its own sample and that sample's variants, the sample first:

        loss = mean_b -log softmax_k(scale * <c_b, x_bk>)_0,   x_b0 = sample b,  x_bk = its variant k (k >= 1)

    ``samples`` (B, D), ``variants`` (B, F, D), ``captions`` (B, D), all unit-normalised."""
    sims = torch.cat([(samples * captions).sum(-1, keepdim=True), torch.einsum("bfd,bd->bf", variants, captions)], dim=1)
    return F.cross_entropy(scale * sims, torch.zeros(len(samples), dtype=torch.long))


def _contrastive_loop(name, embed_samples, embed_texts, params, logit_scale, num_samples, texts, labels, steps, batch_size, lr, seed,
                      hard_sets: Sequence[torch.Tensor] = (), embed_variants=None):
    """Cross-entropy of each sample against every training caption (the caption ranks captions), plus:

    - for each of ``hard_sets`` (``variant_sets`` of one field) a cross-entropy among the caption's own variants in
      that field, so that the one attribute they differ in gets its own gradient;
    - with ``embed_variants(idx, g) -> (B, F, D)`` (embeddings of ``variant_videos``) a cross-entropy of the caption
      over its sample and the sample's F variants (the caption ranks samples). A reward model is used the second way:
      a student raises the score of its own video under a fixed prompt, so the score must fall when one attribute
      of the video leaves the prompt's, which the first loss alone does not teach (it compares captions for a fixed
      video)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    losses, accs = [], []
    t0 = time.time()
    for step in tqdm(range(steps), desc=name, mininterval=10):
        idx = torch.randint(num_samples, (batch_size,), generator=g)
        s = F.normalize(embed_samples(idx, g), dim=-1)
        t = F.normalize(embed_texts(texts), dim=-1)
        logits = logit_scale().exp().clamp(max=100) * s @ t.T
        loss = F.cross_entropy(logits, labels[idx])
        if embed_variants is not None:
            loss = loss + sample_ranking_loss(s, F.normalize(embed_variants(idx, g), dim=-1), t[labels[idx]],
                                              logit_scale().exp().clamp(max=100))
        for sets in hard_sets:
            options = sets[labels[idx]]  # (B, K), the true caption in column 0, -1 for no caption
            variant_logits = logits.gather(1, options.clamp(min=0)).masked_fill(options < 0, float("-inf"))
            loss = loss + F.cross_entropy(variant_logits, torch.zeros(len(idx), dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        accs.append(float((logits.argmax(1) == labels[idx]).float().mean()))
        if step % 50 == 0:
            log.info("%s step %d loss %.4f acc %.3f (%.1fs)", name, step, np.mean(losses[-50:]), np.mean(accs[-50:]), time.time() - t0)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": time.time() - t0,
            "final_loss": float(np.mean(losses[-50:])), "final_train_accuracy": float(np.mean(accs[-50:])),
            "loss_curve": losses[:: max(1, steps // 50)]}


def _gallery(seed: int = 123, per_caption: int = 1):
    """One ground-truth video per caption of the whole world (all 270, with held-out)."""
    captions = world.all_captions()
    videos = np.stack([world.sample_for_caption(c, seed=seed, index=i).video for c in captions for i in range(per_caption)])
    return videos, [c for c in captions for _ in range(per_caption)]


def _retrieval(sim: torch.Tensor, query: list[str], gallery: list[str]) -> dict:
    """Top-1 text->video retrieval accuracy, split by seen / held-out query captions."""
    best = sim.argmax(1).tolist()
    hits = [gallery[b] == q for q, b in zip(query, best)]
    held = [world.parse_caption(q).held_out for q in query]
    seen_hits = [h for h, o in zip(hits, held) if not o]
    held_hits = [h for h, o in zip(hits, held) if o]
    return {"seen": float(np.mean(seen_hits)), "held_out": float(np.mean(held_hits)), "num_seen": len(seen_hits), "num_held_out": len(held_hits)}


def attribute_accuracy(sim: torch.Tensor, gallery: list[str], fields=("background", "colour", "shape", "motion")) -> dict:
    """Per attribute: how often a video's own caption scores highest among the captions that differ from it
    in that attribute only (chance 1/3 for background and shape, 1/6 colour, 1/5 motion).

    ``sim``: (videos, captions) similarities over ``gallery``, one video per caption in the same order. Given
    the transpose, (captions, videos), it measures the other direction, the one a student optimising a reward
    meets: how often a caption scores its own video highest among the videos that differ in that attribute only.
    """
    index = {c: i for i, c in enumerate(gallery)}
    out = {}
    for field in fields:
        hits = []
        for i, caption in enumerate(gallery):
            attrs, with_motion = _parse(caption)
            options = [index[world.caption_of(dataclasses.replace(attrs, **{field: v}), with_motion)] for v in ATTRIBUTE_VALUES[field]]
            hits.append(options[int(sim[i, options].argmax())] == i)
        out[field] = float(np.mean(hits))
    return out


def build_image_reward(folder: str | Path | None = None):
    from rewards.image_text import OpenCLIPReward

    tok = MiniWorldTokenizer(strip_motion=True)
    if folder is None:
        return OpenCLIPReward(image_model_config(), None, tokenizer=tok, preprocess=dict(IMAGE_PREPROCESS))
    folder = Path(folder)
    return OpenCLIPReward(str(folder / IMAGE_CONFIG_FILE), folder, checkpoint_file=IMAGE_WEIGHTS_FILE, tokenizer=tok,
                          preprocess=dict(IMAGE_PREPROCESS))


#: the caption fields a frame shows (the image reward's captions have no motion)
IMAGE_FIELDS = ("background", "colour", "shape")
#: the fields of each reward's hard negatives: captions that differ from the sample's in that field only
#: (``variant_sets``), and videos that differ from the sample in that field only (``variant_videos``)
IMAGE_HARD_FIELDS, IMAGE_VARIANT_FIELDS = (), IMAGE_FIELDS
VIDEO_HARD_FIELDS, VIDEO_VARIANT_FIELDS = ("motion",), ("background", "colour", "shape", "motion")


def train_and_save_image_reward(folder, videos: np.ndarray, captions: list[str], steps: int, seed: int = 0,
                                batch_size: int = 64, lr: float = 1e-3, hard_fields: Sequence[str] = IMAGE_HARD_FIELDS,
                                variant_fields: Sequence[str] = IMAGE_VARIANT_FIELDS) -> dict:
    from safetensors.torch import save_file

    if (Path(folder) / STATS_FILE).is_file():  # already trained by an earlier (or parallel) run of the build
        return json.loads((Path(folder) / STATS_FILE).read_text())
    torch.manual_seed(seed)
    reward = build_image_reward(None)
    model = _unfreeze(reward.model)
    texts = sorted({world.strip_motion(c) for c in captions})
    labels = [texts.index(world.strip_motion(c)) for c in captions]
    frames = torch.from_numpy(videos).permute(0, 1, 4, 2, 3)  # (N, T, 3, H, W) uint8

    if variant_fields:
        variants = torch.from_numpy(variant_videos([world.parse_caption(c) for c in captions], variant_fields, seed)[0])
        variants = variants.permute(0, 1, 2, 5, 3, 4)  # (N, F, T, 3, H, W)

    def embed_frames(x):  # (..., 3, H, W) uint8 -> (..., D)
        return model.encode_image(reward.preprocess(x.flatten(0, -4).float() / 255.0)).unflatten(0, x.shape[:-3])

    def embed_samples(idx, g):
        return embed_frames(frames[idx, torch.randint(frames.shape[1], (len(idx),), generator=g)])

    def embed_variants(idx, g):
        return embed_frames(variants[idx, :, torch.randint(frames.shape[1], (1,), generator=g).item()])

    stats = _contrastive_loop("image_reward", embed_samples, lambda tx: model.encode_text(reward.tokenizer(tx)),
                              list(model.parameters()), lambda: model.logit_scale, len(frames), texts, labels, steps,
                              batch_size, lr, seed, hard_sets=[variant_sets(texts, f) for f in hard_fields],
                              embed_variants=embed_variants if variant_fields else None)
    stats["hard_negatives"] = {"captions": list(hard_fields), "videos": list(variant_fields)}
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IMAGE_CONFIG_FILE).write_text(json.dumps(image_model_config(), indent=2))
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(folder / IMAGE_WEIGHTS_FILE))
    # retrieval on a gallery of every motion-free caption (middle frame of one fresh video each)
    loaded = build_image_reward(folder)
    gv, gc = _gallery()
    keep = {}
    for v, c in zip(gv, gc):
        keep.setdefault(world.strip_motion(c), v)
    query = list(keep)
    with torch.no_grad():
        img = loaded.model.encode_image(loaded.preprocess(torch.from_numpy(np.stack([keep[q][4] for q in query])).permute(0, 3, 1, 2).float() / 255))
        txt = loaded.model.encode_text(loaded.tokenizer(query))
    sim = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T
    held = [any((c, s) in world.HELD_OUT_PAIRS for c in world.COLOURS for s in world.SHAPES if f"a {c} {s} " in q) for q in query]
    best = sim.argmax(1).tolist()
    hits = [query[b] == q for q, b in zip(query, best)]
    stats["retrieval_text_to_frame"] = {
        "gallery": f"{len(query)} frames, one per motion-free caption",
        "seen": float(np.mean([h for h, o in zip(hits, held) if not o])),
        "held_out": float(np.mean([h for h, o in zip(hits, held) if o])),
    }
    stats["attribute_accuracy"] = attribute_accuracy(sim.T, query, IMAGE_FIELDS)
    stats["ranking_accuracy"] = attribute_accuracy(sim, query, IMAGE_FIELDS)
    stats["config"] = image_model_config()
    stats["num_parameters"] = sum(p.numel() for p in model.parameters())
    log.info("image reward retrieval %s", stats["retrieval_text_to_frame"])
    (folder / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return stats


def build_video_reward(folder: str | Path | None = None):
    from rewards.video_text import ViCLIPReward

    tok = MiniWorldTokenizer()
    if folder is None:
        return ViCLIPReward(None, video_model_config(), tokenizer=tok, num_frames=8, stride=1, image_size=32)
    folder = Path(folder)
    config = json.loads((folder / VIDEO_CONFIG_FILE).read_text())
    return ViCLIPReward(str(folder / VIDEO_WEIGHTS_FILE), config, tokenizer=tok, num_frames=8, stride=1, image_size=32)


def train_and_save_video_reward(folder, videos: np.ndarray, captions: list[str], steps: int, seed: int = 0,
                                batch_size: int = 32, lr: float = 1e-3, hard_fields: Sequence[str] = VIDEO_HARD_FIELDS,
                                variant_fields: Sequence[str] = VIDEO_VARIANT_FIELDS, init: str | Path | None = None) -> dict:
    """Train the video reward contrastively into ``folder``; ``init``: a saved video reward folder to start from
    (the build's second video-reward phase starts from the first, whose text tower became the teacher's text
    encoder)."""
    from safetensors.torch import save_file

    if (Path(folder) / STATS_FILE).is_file():
        return json.loads((Path(folder) / STATS_FILE).read_text())
    torch.manual_seed(seed)
    reward = build_video_reward(init)
    model = _unfreeze(reward.model)
    # every training-split caption is a class, so each one's motion variants exist even in a small pool
    texts = sorted(world.caption_of(a) for a in world.train_attributes())
    labels = [texts.index(c) for c in captions]

    variants = variant_videos([world.parse_caption(c) for c in captions], variant_fields, seed)[0] if variant_fields else None

    def embed_samples(idx, g):
        pixels = world.to_pixels(videos[idx.numpy()])
        return model.encode_video(reward.preprocess_clip(pixels))

    def embed_variants(idx, g):
        clips = variants[idx.numpy()]  # (B, F, T, H, W, 3)
        return model.encode_video(reward.preprocess_clip(world.to_pixels(clips.reshape(-1, *clips.shape[2:])))).unflatten(0, clips.shape[:2])

    stats = _contrastive_loop("video_reward", embed_samples, lambda tx: model.encode_text(reward.tokenizer(tx)),
                              list(model.parameters()), lambda: _temp(model),
                              len(videos), texts, labels, steps, batch_size, lr, seed,
                              hard_sets=[variant_sets(texts, f) for f in hard_fields],
                              embed_variants=embed_variants if variant_fields else None)
    stats["hard_negatives"] = {"captions": list(hard_fields), "videos": list(variant_fields)}
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / VIDEO_CONFIG_FILE).write_text(json.dumps(video_model_config(), indent=2))
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(folder / VIDEO_WEIGHTS_FILE))
    loaded = build_video_reward(folder)
    gv, gc = _gallery()
    with torch.no_grad():
        vid = loaded.model.encode_video(loaded.preprocess_clip(world.to_pixels(gv)), normalize=True)
        txt = loaded.encode_prompts(gc)
    stats["retrieval_text_to_video"] = {"gallery": f"{len(gc)} videos, one per caption", **_retrieval(txt @ vid.T, gc, gc)}
    stats["attribute_accuracy"] = attribute_accuracy(vid @ txt.T, gc)
    stats["ranking_accuracy"] = attribute_accuracy(txt @ vid.T, gc)
    stats["config"] = video_model_config()
    stats["num_parameters"] = sum(p.numel() for p in model.parameters())
    log.info("video reward retrieval %s, per attribute %s", stats["retrieval_text_to_video"], stats["attribute_accuracy"])
    (folder / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return stats


def _temp(model):
    """log of the logit scale of our ViCLIP (it stores a temperature ``temp``: logits = sim / temp)."""
    return -torch.log(model.temp.clamp(min=1e-3))
