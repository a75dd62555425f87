"""Export round trips: LoRA safetensors, merged UNet, and a stock-diffusers pipeline folder."""

import json

import pytest
import torch

from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.cli import main as cli_main
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.export import LORA_WEIGHTS_NAME, export_student, fold_guidance_scale, merge_student
from t2v_turbo.pipeline import load_student_pipeline
from t2v_turbo.student import LoraSettings, StudentMeta, build_student, save_student, student_state_dict
from t2v_turbo.testing import build_tiny_diffusers_t2v

GEOMETRY = dict(num_frames=3, height=16, width=16)
SETTINGS = LoraSettings(rank=4, alpha=8, target_modules="all_linear_conv")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return DiffusersT2VAdapter.from_pretrained(build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def student_dir(adapter, tmp_path_factory):
    unet = build_student(adapter, 256, lora=SETTINGS)
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in unet.named_parameters() if p.requires_grad):
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("student")
    save_student(folder, unet, StudentMeta.for_adapter(adapter, lora=SETTINGS, guidance_scale=6.0))
    return folder


@pytest.fixture(scope="module")
def student_pipe(student_dir):
    return load_student_pipeline(student_dir)


@pytest.fixture(scope="module")
def unet_inputs(adapter):
    g = torch.Generator().manual_seed(8)
    return dict(
        sample=torch.randn(2, 4, 3, 8, 8, generator=g),
        timestep=torch.tensor([999, 259]),
        encoder_hidden_states=adapter.encode_prompts(["a cat", "a dog running"]),
    )


def test_lora_export_reloads_equal(student_dir, student_pipe, tmp_path):
    from safetensors.torch import load_file

    assert cli_main(["export", str(student_dir), "--format", "lora", "--out", str(tmp_path)]) == 0
    exported = load_file(str(tmp_path / LORA_WEIGHTS_NAME))
    saved = student_state_dict(student_pipe.unet)
    assert exported.keys() == saved.keys()
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    assert json.loads((tmp_path / "export.json").read_text())["student"]["lora"]["rank"] == 4


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


def test_lora_format_rejects_a_full_finetune_student(adapter, tmp_path):
    save_student(tmp_path / "full", build_student(adapter, 256, lora=None), StudentMeta.for_adapter(adapter))
    with pytest.raises(ValueError, match="needs a LoRA student"):
        export_student(tmp_path / "full", tmp_path / "out", "lora")
