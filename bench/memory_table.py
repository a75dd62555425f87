"""Per-GPU memory of the model states of a distillation run under DDP, FSDP (FSDP2, full shard) and DeepSpeed ZeRO-2.

Prints JSON: for the VideoCrafter2 recipe (configs/t2v_turbo_vc2.yaml) and the Wan2.1-1.3B recipe
(configs/t2v_turbo_wan21_1.3b.yaml), and that recipe on Wan2.1-14B, N GPUs (``--gpus``), the bytes each GPU holds for the frozen teacher (denoiser,
VAE, text encoder), the student (frozen base weights, LoRA + guidance layer), its gradients and AdamW moments, and the
rewards (HPSv2.1, InternVideo2), and their sum. ``--markdown`` prints the table of docs/training.md instead.

Parameter counts come from the models built on the meta device from their configs (our VC2 UNet with its LoRA, the
Wan2.1 transformer, Wan's VAE, UMT5-XXL's encoder, open_clip ViT-H-14) and from the parameter counts recorded in
tests/fixtures/reference (VC2's VAE and OpenCLIP text encoder, InternVideo2-1B); nothing is downloaded.

Bytes per parameter, as the trainer holds them under ``train.mixed_precision: bf16``, ``teacher_dtype: bfloat16``,
``reward_options``/reward ``dtype: bfloat16``:

- teacher and rewards: 2 (bf16), whole on every GPU under every engine (never passed to ``prepare``);
- the student's frozen base: the dtype the teacher was loaded in (``--base-bytes``, 4 for a float32 checkpoint loaded
  without ``torch_dtype``); FSDP shards it (1/N), DDP keeps it whole, ZeRO-2 keeps it whole and casts it to bf16 (2);
- trainable parameters (LoRA, guidance layer), ZeRO paper accounting: DDP 4 (fp32 weight) + 4 (grad) + 4 (DDP's
  gradient bucket) + 8 (AdamW moments); FSDP (4 + 4 + 8) / N; ZeRO-2 2 (bf16 weight) + 2 (bf16 grad) + (4 fp32
  master + 8 moments) / N;
- FSDP also holds, while a unit runs, its weights gathered in bf16: the root's (kept for the whole step) and two
  blocks' (the one running and the one prefetched) of the largest block.

Activations are left out: they depend on frames, resolution, batch and checkpointing (bench/bench_vc2_gpu.py and
bench/bench_wan_gpu.py measure a whole step on a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REFERENCE = REPO / "tests" / "fixtures" / "reference"
GIB = 2 ** 30

#: google/umt5-xxl's encoder (Wan2.1's text encoder)
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_student(network: torch.nn.Module, lora: dict) -> tuple[int, int]:
    """(frozen base, LoRA) parameter counts of ``network`` with ``lora`` injected (on the meta device)."""
    from t2v_turbo.student import LoraSettings, inject_lora

    base = count(network)
    inject_lora(network, LoraSettings(**lora))
    return base, count(network) - base


def shard_units(network: torch.nn.Module, unit_classes: tuple[str, ...]) -> tuple[int, int]:
    """(largest wrapped block, root remainder) parameter counts: what FSDP all-gathers per unit."""
    units = [count(m) for m in network.modules() if type(m).__name__ in unit_classes]
    return max(units), count(network) - sum(units)


def vc2_models() -> dict:
    from t2v_turbo.models.vc2.unet import VC2UNet

    full = json.loads((REFERENCE / "vc2_full_manifest.json").read_text())["num_params"]
    internvideo2 = json.loads((REFERENCE / "internvideo2_manifest.json").read_text())["num_params"]
    with torch.device("meta"):
        student = VC2UNet(time_cond_proj_dim=256)
    guidance = count(student.time_cond_proj)
    base, lora = lora_student(student, {"rank": 64, "alpha": 64.0, "target_modules": "all_linear_conv"})
    block, root = shard_units(student, ("TimestepEmbedSequential",))
    return {"teacher": {"unet": full["unet_vc2"], "vae": full["vae"], "text_encoder": full["text_encoder"]},
            "student_base": base - guidance, "trainable": lora + guidance, "lora": lora, "guidance": guidance,
            "fsdp_block": block, "fsdp_root": root,
            "rewards": {"hpsv2.1": hps_count(), "internvideo2": internvideo2}}


def wan_models(size: str = "1.3B") -> dict:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from t2v_turbo.adapters.wan import wan21_transformer

    internvideo2 = json.loads((REFERENCE / "internvideo2_manifest.json").read_text())["num_params"]
    transformer = wan21_transformer(size)
    teacher_size = count(transformer)
    with torch.device("meta"):
        vae, text = count(AutoencoderKLWan()), count(UMT5EncoderModel(UMT5Config(**UMT5_XXL)))
    guidance = 256 * transformer.condition_embedder.time_embedder.linear_1.in_features  # time_cond_proj_dim x freq_dim
    base, lora = lora_student(transformer, {"rank": 64, "alpha": 64.0, "target_modules": "attention"})
    block, root = shard_units(transformer, ("WanTransformerBlock",))
    return {"teacher": {"transformer": teacher_size, "vae": vae, "text_encoder": text},
            "student_base": base, "trainable": lora + guidance, "lora": lora, "guidance": guidance,
            "fsdp_block": block, "fsdp_root": root + guidance,
            "rewards": {"hpsv2.1": hps_count(), "internvideo2": internvideo2}}


def hps_count() -> int:
    import open_clip

    with torch.device("meta"):
        return count(open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14")))


def per_gpu(models: dict, engine: str, gpus: int, base_bytes: int) -> dict[str, float]:
    """Bytes per GPU of each part under ``engine`` (see the module docstring), in GiB."""
    n, trainable = gpus, models["trainable"]
    parts = {"teacher (bf16)": 2 * sum(models["teacher"].values()), "rewards (bf16)": 2 * sum(models["rewards"].values())}
    if engine == "ddp":
        parts["student frozen base"] = base_bytes * models["student_base"]
        parts["trainable weights + grads"] = (4 + 4 + 4) * trainable
        parts["AdamW moments"] = 8 * trainable
    elif engine == "fsdp":
        parts["student frozen base"] = base_bytes * models["student_base"] / n
        parts["trainable weights + grads"] = (4 + 4) * trainable / n
        parts["AdamW moments"] = 8 * trainable / n
        parts["FSDP gathered units (bf16)"] = 2 * (models["fsdp_root"] + 2 * models["fsdp_block"])
    elif engine == "zero2":
        parts["student frozen base"] = 2 * models["student_base"]
        parts["trainable weights + grads"] = (2 + 2) * trainable + 4 * trainable / n
        parts["AdamW moments"] = 8 * trainable / n
    else:
        raise ValueError(f"engine {engine!r} is not one of ddp, fsdp, zero2")
    out = {key: value / GIB for key, value in parts.items()}
    out["total"] = sum(out.values())
    return out


def table(gpus: int, base_bytes: int) -> dict:
    result = {"gpus": gpus, "student_base_bytes_per_param": base_bytes, "models": {}}
    for name, build in (("vc2", vc2_models), ("wan2.1-1.3b", wan_models), ("wan2.1-14b", lambda: wan_models("14B"))):
        models = build()
        result["models"][name] = {"params": models, "per_gpu_gib": {e: per_gpu(models, e, gpus, base_bytes)
                                                                    for e in ("ddp", "fsdp", "zero2")}}
    return result


def markdown(result: dict) -> str:
    lines = []
    for name, entry in result["models"].items():
        engines = entry["per_gpu_gib"]
        lines += [f"**{name}** ({result['gpus']} GPUs, GiB per GPU)", "",
                  "| part | DDP | FSDP | ZeRO-2 |", "|---|---|---|---|"]
        parts = list(dict.fromkeys([*engines["ddp"], *engines["fsdp"]]))
        parts.remove("total")
        for part in [*parts, "total"]:
            row = [f"{engines[e][part]:.2f}" if part in engines[e] else "-" for e in ("ddp", "fsdp", "zero2")]
            lines.append(f"| {'**total**' if part == 'total' else part} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--base-bytes", type=int, default=4, choices=(2, 4),
                        help="bytes per parameter of the student's frozen base (the teacher's load dtype)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    result = table(args.gpus, args.base_bytes)
    print(markdown(result) if args.markdown else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
