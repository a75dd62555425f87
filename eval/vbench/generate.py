"""Sample the VBench suite: ``{prompt}-{i}.mp4`` for every prompt, one recorded seed per video.

Output layout (``out`` is the run folder)::

    out/videos/       only the mp4 files VBench reads (nothing else: VBench takes the video suffix
                      from the first file it lists)
    out/.partial/     files being written; moved into videos/ with os.replace when complete
    out/manifest.json model, checkpoint hash, every video's seed, sampler settings, versions

The model is any ``VideoFn``: ``fn(prompts, seeds) -> sequence of uint8 (T, H, W, 3) videos``, one
per prompt, each sampled from its own seed (so a video does not depend on batching or sharding).
:func:`pipeline_video_fn` wraps the project's pipelines into one.

Resuming: a video whose file exists and decodes to the configured number of frames is skipped;
a missing, truncated or undecodable one is generated again.

Sharding: under a launcher (``torchrun``, ``accelerate launch``) each process takes every
``num_processes``-th job starting at its ``process_index`` (only the job list is split; nothing is
gathered); :func:`process_layout` reads the layout from the launcher's environment and refuses to
run when accelerate sees fewer processes than were launched (which would make every process run
the whole suite).

Claims: before sampling a video a process claims it, an OS lock on ``out/.claims/<key>.lock``
held until the finished file is in ``videos/`` (the ``filelock`` package, as the training run's
folder lock), with ``<key>.json`` recording who (host, PID, process index) and when. A video whose
claim another live process holds is left to it; a claim whose holder died is free again (the OS
drops the lock), and a video is checked for completeness after its claim is taken, so processes
started by hand on one output folder (on one machine, or on several sharing a file system with
working locks) divide the suite between them without generating any video twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from eval.vbench.naming import check_case_collisions, video_filename
from eval.vbench.suite import Suite, samples_per_prompt
from t2v_turbo.fileio import atomic_write
from t2v_turbo.video_io import count_frames, to_uint8_videos, write_mp4

VideoFn = Callable[[list[str], list[int]], Sequence[np.ndarray]]
VIDEOS_DIR = "videos"
PARTIAL_DIR = ".partial"
CLAIMS_DIR = ".claims"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_VERSION_PACKAGES = ("t2v-turbo", "torch", "diffusers", "transformers", "accelerate", "av", "numpy", "vbench")


@dataclass(frozen=True)
class VideoJob:
    prompt: str  # names the file
    sample_prompt: str  # what the model is given (augmented prompt or the prompt itself)
    index: int
    seed: int

    @property
    def filename(self) -> str:
        return video_filename(self.prompt, self.index)


@dataclass
class GenerationSettings:
    num_frames: int = 16
    height: int = 320
    width: int = 512
    fps: int = 16
    num_samples: int = 5
    flicker_samples: int = 25
    base_seed: int = 0
    sampler: dict | None = None  # steps, guidance, scheduler name ... recorded verbatim


@dataclass
class GenerationSummary:
    total: int
    shard: int
    generated: int
    skipped: int
    redone: int
    seconds: float
    claimed_elsewhere: int = 0  # left to other processes that held their claims


def seed_for(prompt: str, index: int, base_seed: int = 0) -> int:
    """Deterministic 31-bit seed from (base_seed, prompt, index): the same on every machine and shard."""
    digest = hashlib.sha256(f"{base_seed}\x00{prompt}\x00{index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def build_jobs(suite: Suite, settings: GenerationSettings) -> list[VideoJob]:
    jobs = []
    for entry in suite.entries:
        n = samples_per_prompt(entry, settings.num_samples, settings.flicker_samples)
        for i in range(n):
            jobs.append(VideoJob(entry.prompt, entry.text_for_sampling, i, seed_for(entry.prompt, i, settings.base_seed)))
    return jobs


def shard_jobs(jobs: Sequence[VideoJob], process_index: int, num_processes: int) -> list[VideoJob]:
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} outside 0..{num_processes - 1}")
    return list(jobs[process_index::num_processes])


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, set by ``torchrun`` and ``accelerate launch``; 1
    for a process started by hand)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_layout(cpu: bool = False) -> tuple[int, int, bool]:
    """(process_index, num_processes, is_main_process) from accelerate's ``PartialState``.

    ``cpu``: the processes sample on CPU. accelerate joins a launcher's processes on CPU (gloo) only when asked
    for the CPU, otherwise it finds no accelerator and gives each process a world of one; the layout is
    checked against the launcher's ``WORLD_SIZE`` so that never happens silently.
    """
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    launched = launched_world_size()
    if state.num_processes != launched:
        raise RuntimeError(
            f"the launcher started {launched} processes (WORLD_SIZE), but accelerate sees {state.num_processes} "
            f"({state.distributed_type}); each process would generate the whole suite. Sample on the launcher's "
            "devices (--device cuda under torchrun on GPUs, --device cpu for CPU processes)"
        )
    return state.process_index, state.num_processes, state.is_main_process


class VideoClaim:
    """One process's claim of one video (see the module docstring): an OS lock on ``<key>.lock`` in the
    claims folder, and ``<key>.json`` naming the holder. ``acquire()`` is False when another live
    process holds it."""

    def __init__(self, claims: Path, job: VideoJob, process_index: int, num_processes: int):
        from filelock import FileLock

        key = hashlib.sha1(job.filename.encode("utf-8")).hexdigest()[:20]  # video names can reach 255 bytes
        self.record_path = claims / f"{key}.json"
        self._lock = FileLock(str(claims / f"{key}.lock"))
        self.record = {"file": job.filename, "host": socket.gethostname(), "pid": os.getpid(),
                       "process_index": process_index, "num_processes": num_processes}

    def acquire(self) -> bool:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self._write(claimed=time.strftime("%Y-%m-%d %H:%M:%S %z"))
        return True

    def _write(self, **fields) -> None:
        self.record.update(fields)
        text = json.dumps(self.record, ensure_ascii=False) + "\n"
        atomic_write(self.record_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def release(self, finished: bool) -> None:
        """Let the claim go; ``finished``: the video is in place (recorded in ``<key>.json``)."""
        if finished:
            self._write(finished=time.strftime("%Y-%m-%d %H:%M:%S %z"))
        self._lock.release()


def read_claims(out: str | os.PathLike) -> list[dict]:
    """The claim records of a run folder (who generated which video), in file order."""
    folder = Path(out) / CLAIMS_DIR
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


# ---------------------------------------------------------------------------------------- mp4 io


def is_complete(path: str | os.PathLike, num_frames: int) -> bool:
    return Path(path).is_file() and count_frames(path) == num_frames


# ---------------------------------------------------------------------------------------- manifest


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hash_checkpoint(path: str | os.PathLike | None) -> str | None:
    """sha256 over a file, or over (relative path, content) of every file in a folder; None if no path."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint to hash not found: {path}")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode("utf-8") + b"\x00")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _identity(model: dict, settings: GenerationSettings) -> dict:
    """What must match for a resumed run to continue an existing folder."""
    return {"model": model, "settings": asdict(settings)}


def write_manifest(out: Path, suite: Suite, jobs: Sequence[VideoJob], settings: GenerationSettings, model: dict, num_processes: int) -> Path:
    path = out / MANIFEST
    identity = _identity(model, settings)
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_identity = {"model": old.get("model"), "settings": old.get("settings")}
        if old_identity != identity:
            diff = [k for k in ("model", "settings") if old_identity[k] != identity[k]]
            raise ValueError(
                f"{path} describes a different run (differs in: {', '.join(diff)}); resuming would mix videos "
                f"of two configurations. Use another --out folder or delete {out / VIDEOS_DIR} and {path}."
            )
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        **identity,
        "suite": {"source": suite.source, "dimensions": suite.dimensions, "num_prompts": len(suite)},
        "num_processes": num_processes,
        "versions": package_versions(),
        "videos": [
            {"file": j.filename, "prompt": j.prompt, "sample_prompt": j.sample_prompt, "index": j.index, "seed": j.seed}
            for j in jobs
        ],
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    # a temporary name of its own per write: two writers never move each other's file
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------- driver


def generate_suite(
    video_fn: VideoFn,
    suite: Suite,
    out: str | os.PathLike,
    settings: GenerationSettings,
    model: dict | None = None,
    batch_size: int = 1,
    process_index: int | None = None,
    num_processes: int | None = None,
    case_sensitive: bool | None = None,
    progress: bool = True,
) -> GenerationSummary:
    """Generate this process's share of the suite into ``out/videos`` (resumable, atomic)."""
    from tqdm.auto import tqdm

    out = Path(out)
    videos, partial = out / VIDEOS_DIR, out / PARTIAL_DIR
    videos.mkdir(parents=True, exist_ok=True)
    partial.mkdir(parents=True, exist_ok=True)
    check_case_collisions(suite.prompts, videos, case_sensitive=case_sensitive)
    if process_index is None or num_processes is None:
        process_index, num_processes, is_main = process_layout()
    else:
        is_main = process_index == 0
    jobs = build_jobs(suite, settings)
    if is_main:
        write_manifest(out, suite, jobs, settings, model or {}, num_processes)
    mine = shard_jobs(jobs, process_index, num_processes)

    start = time.perf_counter()
    todo, skipped, redone = [], 0, 0
    for job in mine:
        target = videos / job.filename
        if target.exists():
            if is_complete(target, settings.num_frames):
                skipped += 1
                continue
            redone += 1  # truncated or unreadable: generate again
        todo.append(job)

    claims_dir = out / CLAIMS_DIR
    claims_dir.mkdir(parents=True, exist_ok=True)
    counts = {"generated": 0, "skipped": skipped, "elsewhere": 0}
    bar = tqdm(total=len(todo), desc=f"VBench videos [{process_index + 1}/{num_processes}]", unit="video",
               position=process_index, disable=not progress, dynamic_ncols=True)

    def claimed_batches():
        """Batches of up to ``batch_size`` (job, claim) pairs whose claims this process took."""
        batch = []
        for job in todo:
            claim = VideoClaim(claims_dir, job, process_index, num_processes)
            if not claim.acquire():
                counts["elsewhere"] += 1  # another live process is generating it
                bar.update(1)
            elif is_complete(videos / job.filename, settings.num_frames):
                claim.release(finished=False)  # another process finished it before its claim was free
                counts["skipped"] += 1
                bar.update(1)
            else:
                batch.append((job, claim))
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    for batch in claimed_batches():
        try:
            frames = list(video_fn([j.sample_prompt for j, _ in batch], [j.seed for j, _ in batch]))
            if len(frames) != len(batch):
                raise RuntimeError(f"video function returned {len(frames)} videos for {len(batch)} prompts")
            for (job, claim), video in zip(batch, frames):
                video = np.asarray(video)
                expected = (settings.num_frames, settings.height, settings.width, 3)
                if video.shape != expected:
                    raise ValueError(f"video for {job.filename!r} has shape {video.shape}, settings ask for {expected}")
                key = hashlib.sha1(job.prompt.encode()).hexdigest()[:12]
                tmp = partial / f"p{process_index}-{os.getpid()}-{job.index}-{key}.mp4"
                write_mp4(tmp, video, settings.fps)
                os.replace(tmp, videos / job.filename)
                claim.release(finished=True)
                counts["generated"] += 1
        finally:  # a failed batch frees the claims it still holds, so another process can take them
            for _, claim in batch:
                if claim.held:
                    claim.release(finished=False)
        bar.update(len(batch))
    bar.close()
    return GenerationSummary(total=len(jobs), shard=len(mine), generated=counts["generated"], skipped=counts["skipped"],
                             redone=redone, seconds=time.perf_counter() - start, claimed_elsewhere=counts["elsewhere"])


# ---------------------------------------------------------------------------------------- models


def pipeline_video_fn(pipeline, settings: GenerationSettings, num_inference_steps: int, guidance_scale: float, device: str = "cpu") -> VideoFn:
    """Wrap a project pipeline (``T2VTurboPipeline`` / ``TeacherPipeline``: prompts -> (B,C,T,H,W) in [-1,1]).

    Each video gets its own ``torch.Generator`` seeded with its recorded seed and is sampled alone,
    so its content depends only on (prompt, seed, settings).
    """
    import torch

    def fn(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        out = []
        for prompt, seed in zip(prompts, seeds):
            generator = torch.Generator(device=device).manual_seed(int(seed))
            with torch.no_grad():
                video = pipeline([prompt], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 num_frames=settings.num_frames, height=settings.height, width=settings.width,
                                 generator=generator, fps=settings.fps)
            out.extend(to_uint8_videos(video))
        return out

    return fn


def diffusers_video_fn(folder: str | os.PathLike, settings: GenerationSettings, num_inference_steps: int, guidance_scale: float, device: str = "cpu") -> VideoFn:
    """Stock diffusers ``TextToVideoSDPipeline`` from a ModelScope-layout folder (a teacher without our pipeline)."""
    import torch
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(str(folder)).to(device)
    pipe.set_progress_bar_config(disable=True)

    def fn(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        out = []
        for prompt, seed in zip(prompts, seeds):
            generator = torch.Generator(device=device).manual_seed(int(seed))
            frames = pipe(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          num_frames=settings.num_frames, height=settings.height, width=settings.width,
                          generator=generator, output_type="pt").frames  # (B, T, C, H, W) in [0, 1]
            v = frames[0].permute(0, 2, 3, 1).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
            out.append(np.ascontiguousarray(v))
        return out

    return fn


def load_model_video_fn(
    settings: GenerationSettings,
    checkpoint: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float = 7.5,
    device: str = "cpu",
    hash_weights: bool = True,
) -> tuple[VideoFn, dict]:
    """(video function, manifest model record) for a student folder or a teacher path.

    A student samples with ``T2VTurboPipeline`` (default 4 steps), a teacher with ``TeacherPipeline``
    (DDIM + CFG, default 50 steps). ``settings.sampler`` is filled with what was used.
    """
    if (checkpoint is None) == (teacher is None):
        raise ValueError("give exactly one of a student checkpoint folder or a teacher path")
    if checkpoint is not None:
        from t2v_turbo.pipeline import load_student_pipeline

        steps = num_inference_steps or 4
        pipe = load_student_pipeline(checkpoint, device=device)
        record = {"kind": "student", "path": str(Path(checkpoint).resolve()), "sha256": hash_checkpoint(checkpoint) if hash_weights else None}
        sampler = "T2VTurboPipeline (multistep consistency)"
    else:
        from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
        from t2v_turbo.pipeline import TeacherPipeline

        steps = num_inference_steps or 50
        adapter = DiffusersT2VAdapter.from_pretrained(str(teacher)).to(device=device)
        pipe = TeacherPipeline(adapter)
        local = Path(teacher).exists()
        record = {"kind": "teacher", "path": str(Path(teacher).resolve()) if local else str(teacher),
                  "sha256": hash_checkpoint(teacher) if (hash_weights and local) else None}
        sampler = "TeacherPipeline (DDIM + classifier-free guidance)"
    settings.sampler = {"pipeline": sampler, "num_inference_steps": steps, "guidance_scale": guidance_scale, "device": device}
    return pipeline_video_fn(pipe, settings, steps, guidance_scale, device=device), record
