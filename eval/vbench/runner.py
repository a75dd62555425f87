"""Run VBench on a folder of ``{prompt}-{i}.mp4`` videos and collect ``*_eval_results.json``.

Two ways, same results:

- **in-process** (``vbench_python=None``): ``vbench`` is importable here (installed with
  ``--no-deps`` plus decord and opencv, see ``.ci/install_vbench.sh``); we call
  ``VBench(device, full_info_json, out_dir).evaluate(videos_path, name, dimension_list=..., local=..., mode=...)``.
- **separate interpreter** (``vbench_python="/path/to/vbench-env/bin/python"``): VBench's own
  environment (its pinned transformers etc.). A small driver script is written next to the
  results and run with ``subprocess``; it makes the same call.

Before starting, every requested dimension's weights are looked up in the VBench cache
(``$VBENCH_CACHE_DIR``, default ``~/.cache/vbench``), using the paths VBench 0.1.5 reads in its
``local=True`` mode (``vbench.utils.init_submodules`` and the dimension modules). Missing files are
listed with the path where VBench expects them, and the run stops unless ``allow_download=True``
(then VBench fetches them itself, with ``local=False``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Sequence

from eval.vbench.aggregate import DIMENSIONS
from eval.vbench.naming import expected_names
from eval.vbench.suite import Suite, prompts_for_dimension

VIDEO_SUFFIXES = (".mp4", ".gif", ".jpg", ".png")

_CLIP_B32 = "clip_model/ViT-B-32.pt"
_GRIT = "grit_model/grit_b_densecap_objectdet.pth"
_VICLIP = ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz")

#: files (relative to the VBench cache) each dimension reads in VBench 0.1.5 with local=True
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main/", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": (_CLIP_B32,),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "object_class": (_GRIT,),
    "multiple_objects": (_GRIT,),
    "color": (_GRIT,),
    "spatial_relationship": (_GRIT,),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "scene": ("caption_model/tag2text_swin_14m.pth",),
    "appearance_style": (_CLIP_B32,),
    "temporal_style": _VICLIP,
    "overall_consistency": _VICLIP,
}
#: things outside the VBench cache that a dimension also needs (reported, not checked)
EXTRA_REQUIREMENTS: dict[str, str] = {
    "scene": "the Hugging Face 'bert-base-uncased' tokenizer/config (HF cache)",
    "imaging_quality": "the pyiqa package",
    "object_class": "detectron2", "multiple_objects": "detectron2", "color": "detectron2", "spatial_relationship": "detectron2",
}


class VBenchSetupError(RuntimeError):
    """VBench cannot start: weights, videos or the package are missing."""


def vbench_cache_dir() -> Path:
    env = os.environ.get("VBENCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vbench"


def missing_weights(dimensions: Sequence[str], cache_dir: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """{dimension: [expected paths that are absent]} for the dimensions that miss something."""
    cache = Path(cache_dir) if cache_dir is not None else vbench_cache_dir()
    out: dict[str, list[Path]] = {}
    for dim in dimensions:
        if dim not in WEIGHT_FILES:
            raise KeyError(f"unknown VBench dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
        absent = [cache / rel for rel in WEIGHT_FILES[dim]
                  if not ((cache / rel).is_dir() if rel.endswith("/") else (cache / rel).is_file())]
        if absent:
            out[dim] = absent
    return out


def format_missing_weights(missing: dict[str, list[Path]], cache_dir: Path) -> str:
    lines = [f"VBench weights missing from the cache {cache_dir} (set $VBENCH_CACHE_DIR to use another):"]
    for dim, paths in missing.items():
        lines += [f"  {dim}: {p}" for p in paths]
    lines.append("Copy them there from a machine that has them, or pass allow_download / --vbench-download to let VBench fetch them.")
    return "\n".join(lines)


def check_videos_folder(videos_dir: str | os.PathLike) -> str:
    """The folder holds only video files of one suffix (VBench takes the suffix of the first it lists); return it."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise VBenchSetupError(f"videos folder not found: {videos_dir}")
    names = os.listdir(videos_dir)
    if not names:
        raise VBenchSetupError(f"videos folder is empty: {videos_dir}")
    others = [n for n in names if Path(n).suffix.lower() not in VIDEO_SUFFIXES]
    suffixes = {Path(n).suffix for n in names}
    if others or len(suffixes) != 1:
        raise VBenchSetupError(
            f"{videos_dir} must hold only videos of one suffix (VBench reads the suffix of the first file it lists); "
            f"found suffixes {sorted(suffixes)}, non-video entries {sorted(others)[:5]}"
        )
    return suffixes.pop()


def missing_videos(suite: Suite, dimensions: Sequence[str], videos_dir: str | os.PathLike, num_samples: int = 5) -> list[str]:
    """Names VBench's standard mode will look for (``-0`` .. ``-4``) that are not in ``videos_dir``."""
    present = set(os.listdir(videos_dir))
    wanted: dict[str, None] = {}
    for dim in dimensions:
        for prompt in prompts_for_dimension(suite, dim):
            wanted.update(dict.fromkeys(expected_names(prompt, num_samples)))
    return [n for n in wanted if n not in present]


@dataclass
class RunRecord:
    results_path: Path
    info_path: Path
    vbench_version: str | None


DRIVER = textwrap.dedent(
    """
    # Written by t2v-turbo (eval.vbench.runner): runs VBench in its own interpreter.
    import json, sys
    from importlib import metadata
    args = json.load(open(sys.argv[1], encoding="utf-8"))
    import torch
    from vbench import VBench
    bench = VBench(torch.device(args["device"]), args["full_info"], args["out_dir"])
    bench.evaluate(videos_path=args["videos"], name=args["name"], dimension_list=args["dimensions"],
                   local=args["local"], mode=args["mode"])
    json.dump({"vbench_version": metadata.version("vbench"), "python": sys.version}, open(sys.argv[2], "w"))
    """
).lstrip()


def _point_loaded_vbench_at(cache: Path) -> None:
    for name, module in list(sys.modules.items()):
        if (name == "vbench" or name.startswith("vbench.")) and isinstance(getattr(module, "CACHE_DIR", None), str):
            module.CACHE_DIR = str(cache)


def run_vbench(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dimensions: Sequence[str],
    full_info: str | os.PathLike,
    name: str = "t2v_turbo",
    device: str = "cuda",
    mode: str = "vbench_standard",
    vbench_python: str | None = None,
    allow_download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    extra_info: dict | None = None,
) -> RunRecord:
    """Evaluate ``dimensions`` on ``videos_dir``; write ``<out_dir>/<name>_eval_results.json``.

    ``extra_info`` is stored in ``<name>_run_info.json`` next to the results (manifest, notes).
    """
    videos_dir, out_dir = Path(videos_dir).resolve(), Path(out_dir).resolve()
    dimensions = list(dimensions)
    cache = Path(cache_dir) if cache_dir is not None else vbench_cache_dir()
    check_videos_folder(videos_dir)
    missing = missing_weights(dimensions, cache)
    if missing and not allow_download:
        raise VBenchSetupError(format_missing_weights(missing, cache))
    local = not missing
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / f"{name}_eval_results.json"
    args = {"device": device, "full_info": str(Path(full_info).resolve()), "out_dir": str(out_dir), "videos": str(videos_dir),
            "name": name, "dimensions": dimensions, "local": local, "mode": mode}
    env = dict(os.environ, VBENCH_CACHE_DIR=str(cache))

    if vbench_python is None:
        # vbench reads $VBENCH_CACHE_DIR once, at import: set it for a first import, and point the
        # modules already loaded (this process may have imported vbench before) at the checked cache.
        os.environ["VBENCH_CACHE_DIR"] = str(cache)
        _point_loaded_vbench_at(cache)
        try:
            import torch
            from vbench import VBench
        except ImportError as err:
            raise VBenchSetupError(
                f"vbench is not importable in {sys.executable} ({err}). Install it with .ci/install_vbench.sh "
                "(pip install --no-deps vbench==0.1.5 plus decord and opencv) or pass --vbench-python PATH."
            ) from err
        bench = VBench(torch.device(device), args["full_info"], args["out_dir"])
        bench.evaluate(videos_path=args["videos"], name=name, dimension_list=dimensions, local=local, mode=mode)
        version = metadata.version("vbench")
    else:
        driver = out_dir / ".vbench_driver.py"
        driver.write_text(DRIVER, encoding="utf-8")
        args_file, version_file = out_dir / f".{name}_args.json", out_dir / f".{name}_driver_out.json"
        args_file.write_text(json.dumps(args), encoding="utf-8")
        proc = subprocess.run([vbench_python, str(driver), str(args_file), str(version_file)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"VBench driver failed in {vbench_python} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        version = json.loads(version_file.read_text(encoding="utf-8"))["vbench_version"]

    if not results.is_file():
        raise RuntimeError(f"VBench finished but wrote no {results}")
    info = out_dir / f"{name}_run_info.json"
    record = {"vbench_version": version, "device": device, "mode": mode, "dimensions": dimensions, "videos": str(videos_dir),
              "local_weights": local, "interpreter": vbench_python or sys.executable, **(extra_info or {})}
    info.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    return RunRecord(results_path=results, info_path=info, vbench_version=version)
