"""Cached VAE posteriors and text embeddings of a run's dataset: ``t2v-turbo cache`` writes them once, the
``CachedLatents`` dataset reads them, and the trainer then runs without the VAE encoder and the text encoder.

What is cached, per item of the run's ``data`` (a video dataset) and per cached epoch: the clip exactly as the
data config samples it (frames, fps, size, crop, and the clip start drawn from (data seed, epoch, index)),
encoded by the teacher's VAE into its posterior N(mean, std^2) in the latent space the network sees (scaled or
normalised); per item, the caption's text embedding; once, the unconditional embedding and the run's validation
prompts. The trainer draws latents = mean + std * eps with eps from the same per-sample generator as the video
path (``sample_generator(seed, position, VAE_STREAM)``), so for the same sample the loss equals the video
path's (``t2v_turbo.adapters.base.sample_posterior``); a cache of the mean alone could not give that.

A cache folder::

    manifest.json          what it was encoded from, refused by name when a run differs: the teacher and data
                           nodes, geometry, latent and text shapes, storage dtype, epochs; the counts once complete
    prompts.safetensors    "uncond" (the unconditional context) and "prompt.<i>" for the prompts named in its metadata
    shard-00000.safetensors ...   items [k S, (k + 1) S) of the dataset (S = shard_size): "<index>.text_embedding",
                           "<index>.posterior_mean.<epoch>", "<index>.posterior_std.<epoch>"; metadata: the items'
                           names and captions, and the videos skipped with their reasons

Why safetensors shards (not Parquet): tensors keep their dtype and shape with no reshaping or extra dependency
(``safetensors`` already reads every weight file here), a reader maps one tensor of a shard without loading the
rest, and loading runs no code. Parquet's strengths (columnar scans, predicate push-down over metadata) buy
nothing for a dataset read item by item, and it would add ``pyarrow``.

Text embeddings are stored without their trailing all-zero rows (Wan's T5 embedding is zero past each prompt's
length: 512 x 4096 values of which a caption uses a few dozen rows) and padded back when read, so they read
back identical. A cache is written shard by shard, each shard atomically: an interrupted ``t2v-turbo cache``
continues with the missing shards. Under ``accelerate launch`` process r writes shards r, r + n, ...
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from distill.data import VideoDecodeError, count_reasons
from t2v_turbo.config import COMPONENT_KEY
from t2v_turbo.fileio import atomic_write, read_folder_json

logger = logging.getLogger(__name__)

FORMAT = "t2v-turbo latent cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PROMPTS_NAME = "prompts.safetensors"
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: manifest keys that must agree for a cache to be continued (everything but the counts)
IDENTITY_KEYS = ("format", "version", "teacher", "teacher_family", "data", "geometry", "latent_shape", "text_shape",
                 "dtype", "encode_dtype", "epochs", "shard_size", "num_items", "prompts")


class CacheMismatchError(ValueError):
    """A cache does not belong to this run (the message names each differing key)."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def trim_trailing_zero_rows(embedding: torch.Tensor) -> torch.Tensor:
    """(L, D) -> (L', D): the rows up to the last one that is not all zeros (at least one row)."""
    nonzero = (embedding != 0).any(dim=-1).nonzero()
    return embedding[: int(nonzero.max()) + 1 if len(nonzero) else 1]


def pad_rows(embedding: torch.Tensor, length: int) -> torch.Tensor:
    """(L', D) -> (length, D), zero rows appended (the inverse of ``trim_trailing_zero_rows``)."""
    return torch.cat([embedding, embedding.new_zeros(length - embedding.shape[0], embedding.shape[1])])


def _same_value(a: Any, b: Any) -> bool:
    """Equal config values; two strings naming one existing path are equal however they are written."""
    if isinstance(a, str) and isinstance(b, str) and a != b and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return a == b


def node_differences(cached: Any, current: Any, where: str) -> list[str]:
    """``"<where>.<key>: the cache has X, this run has Y"`` for every key whose value differs."""
    if isinstance(cached, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(cached) | set(current), key=str):
            out += node_differences(cached.get(key), current.get(key), f"{where}.{key}")
        return out
    return [] if _same_value(cached, current) else [f"{where}: the cache has {cached!r}, this run has {current!r}"]


# ---------------------------------------------------------------------------------------------------- writing


def cache_identity(cfg: dict, adapter, dataset, epochs: int, shard_size: int, dtype: str) -> dict:
    """The manifest of a cache of ``cfg``'s data encoded by ``adapter`` (before anything is encoded)."""
    geometry = {key: getattr(dataset, key) for key in ("num_frames", "fps", "height", "width")}
    latent_shape = list(adapter.latent_shape(1, dataset.num_frames, dataset.height, dataset.width)[1:])
    uncond = adapter.empty_prompt_embedding(1)[0]
    prompts = list(dict.fromkeys(cfg["validation"]["prompts"]))
    return {"format": FORMAT, "version": FORMAT_VERSION, "teacher": cfg["teacher"], "teacher_family": adapter.family,
            "data": cfg["data"], "geometry": geometry, "latent_shape": latent_shape, "text_shape": list(uncond.shape),
            "dtype": dtype, "encode_dtype": cfg["train"]["teacher_dtype"], "epochs": epochs,
            "shard_size": shard_size, "num_items": len(dataset), "prompts": prompts}


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_NAME
    manifest = read_folder_json(folder, MANIFEST_NAME, "latent cache", "write one with `t2v-turbo cache CONFIG --out FOLDER`")
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} of version {FORMAT_VERSION} "
                         f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    atomic_write(folder / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def start_manifest(folder: Path, identity: dict) -> None:
    """Write ``identity`` as the manifest, or check it against the one a previous run of the cache wrote."""
    if (folder / MANIFEST_NAME).is_file():
        old = read_manifest(folder)
        errors = []
        for key in IDENTITY_KEYS:
            errors += node_differences(old.get(key), identity.get(key), key)
        if errors:
            raise CacheMismatchError(f"{folder} holds a cache of another configuration; continuing it would mix two. "
                                     "Differences:\n  " + "\n  ".join(errors) + "\nUse another --out folder.")
        return
    write_manifest(folder, {**identity, "complete": False})


class ClipsToEncode(torch.utils.data.Dataset):
    """(index, epoch) pairs of a video dataset decoded as ``load`` decodes them (in DataLoader workers); a clip
    that cannot be decoded comes back as its error, so it is skipped and counted instead of replaced."""

    def __init__(self, dataset, pairs: Sequence[tuple[int, int]]):
        self.dataset, self.pairs = dataset, list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        index, epoch = self.pairs[i]
        self.dataset.set_epoch(epoch)
        try:
            return {"index": index, "epoch": epoch, "pixels": self.dataset.load(index), "error": None}
        except VideoDecodeError as err:
            return {"index": index, "epoch": epoch, "pixels": None, "error": str(err)}


@torch.no_grad()
def encode_shard(adapter, dataset, shard: int, shard_size: int, epochs: int, dtype: torch.dtype, batch_size: int,
                 num_workers: int, progress=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of shard ``shard``: every item in it that decodes in all ``epochs``."""
    indices = range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
    pairs = [(index, epoch) for index in indices for epoch in range(epochs)]
    loader = torch.utils.data.DataLoader(ClipsToEncode(dataset, pairs), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=list)
    device = adapter.device
    tensors: dict[str, torch.Tensor] = {}
    failed: dict[int, str] = {}
    for clips in loader:
        good = [c for c in clips if c["error"] is None]
        for clip in clips:
            if clip["error"] is not None and clip["index"] not in failed:
                failed[clip["index"]] = clip["error"]
                logger.warning("skipping video %s: %s", dataset.items[clip["index"]][0], clip["error"])
        if good:
            mean, std = adapter.encode_video_posterior(torch.stack([c["pixels"] for c in good]).to(device))
            for clip, m, s in zip(good, mean, std):
                tensors[f"{clip['index']}.posterior_mean.{clip['epoch']}"] = m.to("cpu", dtype).contiguous()
                tensors[f"{clip['index']}.posterior_std.{clip['epoch']}"] = s.to("cpu", dtype).contiguous()
        if progress is not None:
            progress.update(len(clips))
    kept = [index for index in indices if index not in failed]
    for start in range(0, len(kept), batch_size):
        chunk = kept[start:start + batch_size]
        embeddings = adapter.encode_prompts([dataset.items[i][1] for i in chunk]).float().cpu()
        for index, embedding in zip(chunk, embeddings):
            tensors[f"{index}.text_embedding"] = trim_trailing_zero_rows(embedding).to(dtype).contiguous()
    for index in failed:  # an item is cached only when every epoch's clip decodes
        for epoch in range(epochs):
            tensors.pop(f"{index}.posterior_mean.{epoch}", None)
            tensors.pop(f"{index}.posterior_std.{epoch}", None)
    metadata = {
        "items": json.dumps([[i, dataset.items[i][0], dataset.items[i][1]] for i in kept], ensure_ascii=False),
        "skipped": json.dumps([[dataset.items[i][0], failed[i].split(":")[0]] for i in sorted(failed)],
                              ensure_ascii=False),
    }
    return tensors, metadata


def write_cache(cfg: dict, out: str | os.PathLike, shard_size: int = 64, batch_size: int = 4, epochs: int = 1,
                dtype: str = "float32", device: str | None = None, progress: bool = True) -> dict:
    """Encode the dataset of the resolved run config ``cfg`` into the cache folder ``out`` (see the module
    docstring); this process's shards only under a launcher. Returns the manifest (complete on the main process)."""
    from accelerate import PartialState
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from distill.trainer import DTYPES
    from t2v_turbo.config import instantiate

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    state = PartialState(cpu=device == "cpu")
    if state.num_processes > 1 and device.startswith("cuda") and ":" not in device:
        device = f"cuda:{state.local_process_index}"
    folder = Path(out)
    dataset = instantiate(cfg["data"])
    if not getattr(dataset, "has_videos", True) or not hasattr(dataset, "load"):
        raise ValueError(f"data: {cfg['data'][COMPONENT_KEY]} gives no video clips; only a video dataset "
                         "(distill.data.VideoCaptionCSV / VideoCaptionFolder / VideoCaptionShards) can be cached")
    adapter = instantiate(cfg["teacher"]).freeze()
    adapter.to(device=device, dtype=DTYPES[cfg["train"]["teacher_dtype"]])
    identity = cache_identity(cfg, adapter, dataset, epochs, shard_size, dtype)
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        start_manifest(folder, identity)
        if not (folder / PROMPTS_NAME).is_file():
            prompts = identity["prompts"]
            tensors = {"uncond": adapter.empty_prompt_embedding(1)[0].float().cpu().contiguous()}
            if prompts:
                for i, embedding in enumerate(adapter.encode_prompts(prompts).float().cpu()):
                    tensors[f"prompt.{i}"] = embedding.contiguous()
            atomic_write(folder / PROMPTS_NAME, lambda tmp: save_file(
                tensors, tmp, metadata={"prompts": json.dumps(prompts, ensure_ascii=False)}))
    state.wait_for_everyone()

    num_shards = math.ceil(len(dataset) / shard_size)
    mine = [k for k in range(state.process_index, num_shards, state.num_processes)
            if not (folder / shard_name(k)).is_file()]
    clips = sum(min(shard_size, len(dataset) - k * shard_size) for k in mine) * epochs
    bar = tqdm(total=clips, desc=f"cache [{state.process_index + 1}/{state.num_processes}]", unit="clip",
               disable=not progress, position=state.process_index)
    for k in mine:
        tensors, metadata = encode_shard(adapter, dataset, k, shard_size, epochs, STORAGE_DTYPES[dtype], batch_size,
                                         cfg["dataloader"]["num_workers"], bar)
        atomic_write(folder / shard_name(k), lambda tmp: save_file(tensors, tmp, metadata=metadata))
    bar.close()
    state.wait_for_everyone()
    manifest = identity
    if state.is_main_process:
        manifest = {**identity, **count_shards(folder, num_shards), "complete": True}
        write_manifest(folder, manifest)
        logger.info("latent cache %s: %d items cached, %d videos skipped%s", folder, manifest["cached_items"],
                    len(manifest["skipped"]), f" ({count_reasons(manifest['skipped'])})" if manifest["skipped"] else "")
    state.wait_for_everyone()
    return manifest


def read_shard_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return {"items": json.loads(metadata.get("items", "[]")), "skipped": json.loads(metadata.get("skipped", "[]"))}


def count_shards(folder: Path, num_shards: int) -> dict:
    """``cached_items`` and ``skipped`` ([name, reason] pairs) over the shards of a complete cache."""
    cached, skipped = 0, []
    for k in range(num_shards):
        metadata = read_shard_metadata(folder / shard_name(k))
        cached += len(metadata["items"])
        skipped += metadata["skipped"]
    return {"cached_items": cached, "skipped": skipped}


# ---------------------------------------------------------------------------------------------------- reading


def check_cache_source(folder: str | os.PathLike, data: dict) -> None:
    """Refuse, naming each differing key, a cache that was not encoded from the data node ``data``."""
    errors = node_differences(read_manifest(folder)["data"], data, "data")
    if errors:
        raise CacheMismatchError(f"the latent cache {folder} was not encoded from this config's data:\n  "
                                 + "\n  ".join(errors))


class CachedLatents(torch.utils.data.Dataset):
    """A dataset of cached encodings (``t2v-turbo cache``): samples carry ``posterior_mean``, ``posterior_std``
    (c, T, h, w), ``text_embedding`` and ``uncond_embedding`` (L, D) (all float32), ``caption``, ``index``.

    ``path``: the cache folder (``t2v-turbo train --latent-cache`` checks it against the config's own data node
    with ``check_cache_source`` first). The run's teacher and validation prompts are checked by ``check_run``
    before the teacher loads. Epoch e of the training run reads
    the clips of cached epoch e mod ``epochs`` (one cached epoch: every epoch sees the same clip of a video).
    Videos that could not be decoded when the cache was written are left out and listed in ``invalid_items``.
    """

    has_videos = True

    def __init__(self, path: str | os.PathLike):
        self.folder = Path(path)
        self.manifest = read_manifest(self.folder)
        if not self.manifest.get("complete"):
            raise ValueError(f"{self.folder}: the cache is incomplete (its writing stopped); run `t2v-turbo cache` "
                             "again with the same config and --out to finish it")
        for key in ("num_frames", "fps", "height", "width"):
            setattr(self, key, self.manifest["geometry"][key])
        self.latent_shape = tuple(self.manifest["latent_shape"])
        self.text_length = self.manifest["text_shape"][0]
        self.epochs = self.manifest["epochs"]
        self.epoch = 0
        num_shards = math.ceil(self.manifest["num_items"] / self.manifest["shard_size"])
        missing = [shard_name(k) for k in range(num_shards) if not (self.folder / shard_name(k)).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.folder}: {len(missing)} shard file(s) missing (first {missing[0]})")
        #: (shard path, source index, name, caption) of every cached item
        self.entries: list[tuple[Path, int, str, str]] = []
        self.invalid_items: list[tuple[str, str]] = []
        for k in range(num_shards):
            metadata = read_shard_metadata(self.folder / shard_name(k))
            self.entries += [(self.folder / shard_name(k), index, name, caption)
                             for index, name, caption in metadata["items"]]
            self.invalid_items += [tuple(item) for item in metadata["skipped"]]
        if not self.entries:
            raise ValueError(f"{self.folder}: the cache holds no items")
        if self.invalid_items:
            logger.warning("%s: %d video(s) were skipped when the cache was written (%s)", self.folder,
                           len(self.invalid_items), count_reasons(self.invalid_items))
        self.uncond_embedding, self.prompt_embeddings = self._read_prompts()

    def _read_prompts(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from safetensors import safe_open

        with safe_open(str(self.folder / PROMPTS_NAME), framework="pt") as f:
            prompts = json.loads((f.metadata() or {}).get("prompts", "[]"))
            return f.get_tensor("uncond").float(), {p: f.get_tensor(f"prompt.{i}").float() for i, p in enumerate(prompts)}

    def check_run(self, cfg: dict) -> list[str]:
        """Problems of using this cache in the run ``cfg`` (its teacher, the validation prompts it samples),
        found before the teacher loads."""
        errors = node_differences(self.manifest["teacher"], cfg["teacher"], "teacher")
        if cfg["validation"]["every"]:
            missing = [p for p in cfg["validation"]["prompts"] if p not in self.prompt_embeddings]
            if missing:
                errors.append(f"validation.prompts: {missing[0]!r} is not among the prompts encoded in the cache "
                              f"{self.folder} (the text encoder is not loaded); cache them with this config, or set "
                              "validation.every=0")
        return [f"{error} (latent cache {self.folder})" for error in errors]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        from safetensors import safe_open

        path, source_index, _, caption = self.entries[index]
        epoch = self.epoch % self.epochs
        with safe_open(str(path), framework="pt") as f:
            mean = f.get_tensor(f"{source_index}.posterior_mean.{epoch}").float()
            std = f.get_tensor(f"{source_index}.posterior_std.{epoch}").float()
            text = pad_rows(f.get_tensor(f"{source_index}.text_embedding").float(), self.text_length)
        return {"posterior_mean": mean, "posterior_std": std, "text_embedding": text,
                "uncond_embedding": self.uncond_embedding, "caption": caption, "index": index, "skipped": []}
