"""Exports: a peft adapter folder that stock peft loads, a merged UNet, a stock-diffusers pipeline
folder, each with a model card."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.cli import main as cli_main
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.export import MODEL_CARD_NAME, export_student, fold_guidance_scale, merge_student
from t2v_turbo.pipeline import load_student_pipeline
from t2v_turbo.student import (
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    LoraSettings,
    StudentMeta,
    build_student,
    save_student,
)
from t2v_turbo.testing import build_tiny_diffusers_t2v, randomise_trainable

GEOMETRY = dict(num_frames=3, height=16, width=16)
SETTINGS = LoraSettings(rank=4, alpha=8, target_modules="all_linear_conv")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return DiffusersT2VAdapter.from_pretrained(build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def student_dir(adapter, tmp_path_factory):
    unet = randomise_trainable(build_student(adapter, 256, lora=SETTINGS), seed=21)
    folder = tmp_path_factory.mktemp("student")
    save_student(folder, unet, StudentMeta.for_adapter(adapter, lora=SETTINGS, guidance_scale=6.0))
    return folder


@pytest.fixture(scope="module")
def student_pipe(student_dir):
    return load_student_pipeline(student_dir, fuse_lora=False)  # peft's layers: the trained form


@pytest.fixture(scope="module")
def unet_inputs(adapter):
    g = torch.Generator().manual_seed(8)
    return dict(
        sample=torch.randn(2, 4, 3, 8, 8, generator=g),
        timestep=torch.tensor([999, 259]),
        encoder_hidden_states=adapter.encode_prompts(["a cat", "a dog running"]),
    )


# Runs in a fresh interpreter that imports only torch, diffusers, peft and safetensors: the export
# must load with stock libraries, as a user without this toolkit would load it.
STOCK_PEFT_SCRIPT = textwrap.dedent("""
    import sys

    import torch
    from diffusers import LCMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    teacher, adapter, io = sys.argv[1:4]
    inputs = load_file(io + "/inputs.safetensors")
    call = dict(sample=inputs["sample"], timestep=inputs["timestep"], encoder_hidden_states=inputs["text"])
    out = {}
    with torch.no_grad():
        unet = UNet3DConditionModel.from_pretrained(teacher, subfolder="unet").eval()
        out["teacher"] = unet(**call).sample
        model = PeftModel.from_pretrained(unet, adapter).eval()
        out["peft"] = model(**call).sample
        merged = model.merge_and_unload()
        out["merged"] = merged(**call).sample
    pipe = TextToVideoSDPipeline.from_pretrained(teacher, unet=merged)
    pipe.scheduler = LCMScheduler.from_pretrained(adapter, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    out["latents"] = pipe(["a cat running on the beach", "a red car"], num_inference_steps=4, guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(0), output_type="latent",
                          num_frames=3, height=16, width=16).frames
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("t2v_turbo", "distill", "rewards", "eval", "miniworld"))
    assert not ours, ours
    save_file({k: v.contiguous() for k, v in out.items()}, io + "/outputs.safetensors")
""")


def test_lora_export_is_a_peft_adapter_that_stock_peft_and_diffusers_load(student_dir, student_pipe, unet_inputs, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "lora"
    assert cli_main(["export", str(student_dir), "--format", "lora", "--guidance-scale", "6", "--out", str(out)]) == 0
    assert {PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, MODEL_CARD_NAME, "export.json", "scheduler"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / PEFT_CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["modules_to_save"] == ["time_embedding.linear_1"]
    save_file({"sample": unet_inputs["sample"], "timestep": unet_inputs["timestep"],
               "text": unet_inputs["encoder_hidden_states"].contiguous()}, str(tmp_path / "inputs.safetensors"))
    teacher = student_pipe.adapter.source
    run = subprocess.run([sys.executable, "-c", STOCK_PEFT_SCRIPT, teacher, str(out), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    stock = load_file(str(tmp_path / "outputs.safetensors"))
    cond = guidance_scale_embedding(torch.tensor([6.0, 6.0]), 256)
    with torch.no_grad():
        expected = student_pipe.unet(**unet_inputs, timestep_cond=cond).sample
    torch.testing.assert_close(stock["peft"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stock["merged"], expected, atol=1e-5, rtol=1e-5)
    assert (stock["peft"] - stock["teacher"]).abs().max() > 1e-3  # the adapter changes the teacher's output
    # the stock pipeline with the adapter and its LCMScheduler is our sampler with LCM spacing
    student_pipe.scheduler.register_to_config(spacing="lcm")
    ours = student_pipe(["a cat running on the beach", "a red car"], num_inference_steps=4, guidance_scale=6.0,
                        generator=torch.Generator().manual_seed(0), output_type="latent", **GEOMETRY)
    student_pipe.scheduler.register_to_config(spacing="t2v_turbo")
    torch.testing.assert_close(stock["latents"], ours, atol=1e-4, rtol=1e-4)


def test_merged_unet_equals_lora_student(student_pipe, unet_inputs, tmp_path):
    from diffusers import UNet3DConditionModel

    merged = merge_student(student_pipe.unet)
    assert not any("lora" in k for k in merged.state_dict())
    cond = guidance_scale_embedding(torch.tensor([7.5, 3.0]), 256)
    with torch.no_grad():
        lora_out = student_pipe.unet(**unet_inputs, timestep_cond=cond).sample
        merged_out = merged(**unet_inputs, timestep_cond=cond).sample
    torch.testing.assert_close(merged_out, lora_out, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = UNet3DConditionModel.from_pretrained(tmp_path).eval()
    saved = merged.state_dict()
    assert all(torch.equal(reloaded.state_dict()[k], saved[k]) for k in saved)
    with torch.no_grad():  # two model instances: equal weights (above), outputs up to float reordering
        torch.testing.assert_close(reloaded(**unet_inputs, timestep_cond=cond).sample, merged_out, atol=1e-5, rtol=1e-5)


def test_folded_guidance_equals_the_diffusers_forward_with_timestep_cond(student_pipe, unet_inputs):
    folded = fold_guidance_scale(student_pipe.unet, 6.0)
    assert folded.config.time_cond_proj_dim is None and folded.time_embedding.cond_proj is None
    cond = guidance_scale_embedding(torch.tensor([6.0, 6.0]), 256)
    with torch.no_grad():
        expected = student_pipe.unet(**unet_inputs, timestep_cond=cond).sample
        other_w = student_pipe.unet(**unet_inputs, timestep_cond=guidance_scale_embedding(torch.tensor([12.0, 12.0]), 256)).sample
        got = folded(**unet_inputs).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (other_w - expected).abs().max() > 1e-3  # the fold is not vacuous


def test_stock_diffusers_pipeline_equals_our_sampler(student_dir, student_pipe, tmp_path):
    from diffusers import LCMScheduler, TextToVideoSDPipeline

    out = export_student(student_dir, tmp_path / "pipe", "diffusers", guidance_scale=6.0)
    stock = TextToVideoSDPipeline.from_pretrained(out)
    stock.set_progress_bar_config(disable=True)
    assert isinstance(stock.scheduler, LCMScheduler)
    assert stock.scheduler.config.original_inference_steps == 50 and stock.scheduler.config.timestep_scaling == 10.0
    assert stock.scheduler.config.set_alpha_to_one is False
    prompts = ["a cat running on the beach", "a red car"]
    stock_latents = stock(
        prompts, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
        output_type="latent", **GEOMETRY,
    ).frames
    assert stock.scheduler.timesteps.tolist() == [999, 759, 499, 259]
    student_pipe.scheduler.register_to_config(spacing="lcm")
    ours = student_pipe(
        prompts, num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator().manual_seed(0),
        output_type="latent", **GEOMETRY,
    )
    student_pipe.scheduler.register_to_config(spacing="t2v_turbo")
    # T2V-Turbo's spacing in stock diffusers (the snippet in docs/core.md): the pipeline calls
    # scheduler.set_timesteps(num_inference_steps) itself, so rebind it on the instance.
    set_timesteps = stock.scheduler.set_timesteps
    stock.scheduler.set_timesteps = lambda num_inference_steps, device=None: set_timesteps(
        timesteps=[999, 759, 519, 279], device=device
    )
    stock_t2v_turbo = stock(
        prompts, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
        output_type="latent", **GEOMETRY,
    ).frames
    ours_t2v_turbo = student_pipe(
        prompts, num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator().manual_seed(0),
        output_type="latent", **GEOMETRY,
    )
    torch.testing.assert_close(ours_t2v_turbo, stock_t2v_turbo, atol=1e-4, rtol=1e-4)
    stock.scheduler.set_timesteps = set_timesteps
    # Tolerance 1e-4: the bias fold (float32 reassociation) and alpha_bar computed in float64 by us,
    # float32 by diffusers; both are ~1e-6 per step, and |latents| is O(1).
    torch.testing.assert_close(ours, stock_latents, atol=1e-4, rtol=1e-4)
    stock_pixels = stock(
        prompts, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
        output_type="pt", **GEOMETRY,
    ).frames  # (B, T, 3, H, W) in [0, 1]
    ours_pixels = student_pipe.adapter.decode_latents(ours).clamp(-1, 1)
    torch.testing.assert_close((ours_pixels.transpose(1, 2) + 1) / 2, stock_pixels, atol=1e-4, rtol=1e-4)
    # our pipeline's diffusers-layout output (.frames) matches the stock pipeline's, np and pt
    student_pipe.scheduler.register_to_config(spacing="lcm")
    for output_type in ("np", "pt"):
        stock_frames = stock(prompts, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                             output_type=output_type, **GEOMETRY).frames
        our_frames = student_pipe(prompts, num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator().manual_seed(0),
                                  output_type=output_type, return_dict=True, **GEOMETRY).frames
        assert type(our_frames) is type(stock_frames) and our_frames.shape == stock_frames.shape
        torch.testing.assert_close(torch.as_tensor(our_frames), torch.as_tensor(stock_frames), atol=1e-4, rtol=1e-4)
    student_pipe.scheduler.register_to_config(spacing="t2v_turbo")


def test_lora_format_rejects_a_full_finetune_student(adapter, tmp_path):
    save_student(tmp_path / "full", build_student(adapter, 256, lora=None), StudentMeta.for_adapter(adapter))
    with pytest.raises(ValueError, match="needs a LoRA student"):
        export_student(tmp_path / "full", tmp_path / "out", "lora")


def test_every_export_folder_has_a_model_card(student_dir, tmp_path):
    (student_dir / "config.yaml").write_text(
        "rewards: [{name: hpsv2.1, weight: 1.0}]\ntrain: {max_steps: 7}\ndataloader: {batch_size: 2}\n"
        "optimizer: {lr: 0.001}\ndistill: {target: ema}\n")
    metrics = tmp_path / "minibench.json"
    metrics.write_text(json.dumps({"overall": {"total": 0.75, "count": 90}, "videos": [{"a": 1}]}))
    try:
        for format in ("lora", "merged", "diffusers"):
            out = export_student(student_dir, tmp_path / format, format, metrics=[metrics])
            card = (out / MODEL_CARD_NAME).read_text()
            assert card.startswith("---\n") and f"base_model: {student_dir / 'teacher'}" not in card
            assert f"`{json.loads((out / 'export.json').read_text())['student']['teacher_path']}`" in card
            assert "hpsv2.1 (weight 1.0)" in card and "7 steps, batch 2" in card  # recipe from the run config
            assert "| overall.total | 0.75 |" in card and "videos" not in card.split("## Evaluation")[1].split("##")[0]
            assert "```python" in card and "```yaml" in card
        assert "PeftModel.from_pretrained" in (tmp_path / "lora" / MODEL_CARD_NAME).read_text()
        assert "guidance w = 6 (folded into the weights)" in (tmp_path / "diffusers" / MODEL_CARD_NAME).read_text()
    finally:
        (student_dir / "config.yaml").unlink()
