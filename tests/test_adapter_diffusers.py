"""DiffusersT2VAdapter on a tiny ModelScope-layout model written with save_pretrained."""

import json
import shutil

import pytest
import torch

from t2v_turbo.adapters.diffusers_t2v import GUIDANCE_LAYER_KEY, DiffusersT2VAdapter
from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.testing import build_tiny_diffusers_t2v


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher"), seed=0)


@pytest.fixture(scope="module")
def adapter(teacher_dir):
    return DiffusersT2VAdapter.from_pretrained(teacher_dir)


def test_builder_is_deterministic_and_stock_diffusers_loads_it(teacher_dir, tmp_path):
    from diffusers import TextToVideoSDPipeline
    from safetensors.torch import load_file

    again = build_tiny_diffusers_t2v(tmp_path / "again", seed=0)
    for sub, name in [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")]:
        a, b = load_file(str(teacher_dir / sub / name)), load_file(str(again / sub / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    index = json.loads((teacher_dir / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    pipe = TextToVideoSDPipeline.from_pretrained(teacher_dir)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.set_alpha_to_one is False


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        DiffusersT2VAdapter.from_pretrained(missing)


def test_missing_subfolder_is_named(teacher_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(teacher_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"broken is missing the subfolder\(s\) vae"):
        DiffusersT2VAdapter.from_pretrained(broken)


def test_schedule_and_scale_come_from_the_configs(adapter):
    from diffusers import DDIMScheduler

    assert adapter.vae_scale_factor == pytest.approx(0.18215)
    expected = scaled_linear_alphas_cumprod(1000, 0.00085, 0.012)
    assert torch.equal(adapter.alphas_cumprod, expected)
    diffusers_values = DDIMScheduler.from_config(adapter.scheduler_config).alphas_cumprod
    torch.testing.assert_close(adapter.alphas_cumprod, diffusers_values, atol=1e-6, rtol=1e-5)
    assert adapter.alphas_cumprod[-1].item() == pytest.approx(0.00466, abs=1e-5)


def test_text_encoding_pads_truncates_and_empty_prompt(adapter):
    long_prompt = " ".join(["cat"] * 40)
    emb = adapter.encode_prompts(["a red car", long_prompt, ""])
    assert emb.shape == (3, adapter.tokenizer.model_max_length, 32)
    torch.testing.assert_close(adapter.empty_prompt_embedding(2), emb[2:3].expand(2, -1, -1))
    assert not torch.allclose(emb[0], emb[2])


def test_vae_round_trip_shapes_chunking_and_gradient(adapter):
    pixels = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    latents = adapter.encode_video(pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 5, 8, 8)
    # frame 3 of video 1 decoded alone equals its slot in the chunked full decode
    latents = latents.detach().requires_grad_(True)
    full = adapter.decode_latents(latents, frame_chunk_size=2)
    single = adapter.decode_latents(latents[1:2, :, 3:4], frame_chunk_size=8)
    assert full.shape == (2, 3, 5, 16, 16)
    torch.testing.assert_close(full[1:2, :, 3:4], single, atol=1e-5, rtol=1e-5)
    full.square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in adapter.vae.parameters())


def test_student_unet_uses_timestep_cond_and_starts_as_the_teacher(adapter):
    student = adapter.build_student_unet(time_cond_proj_dim=256)
    assert student.time_embedding.cond_proj.weight.shape == (student.config.block_out_channels[0], 256)
    assert GUIDANCE_LAYER_KEY in student.state_dict() and GUIDANCE_LAYER_KEY not in adapter.unet.state_dict()
    assert torch.count_nonzero(student.time_embedding.cond_proj.weight) == 0
    z = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 259])
    text = adapter.encode_prompts(["a cat", "a dog"])
    w_emb = guidance_scale_embedding(torch.tensor([7.5, 2.0]), 256)
    with torch.no_grad():
        teacher = adapter.predict_eps(adapter.unet, z, t, text)
        start = adapter.predict_eps(student, z, t, text, timestep_cond=w_emb)
        torch.testing.assert_close(start, teacher, atol=1e-6, rtol=0)
        # diffusers feeds timestep_cond through time_embedding.cond_proj: a non-zero layer changes eps
        torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.5)
        moved = adapter.predict_eps(student, z, t, text, timestep_cond=w_emb)
    assert (moved - teacher).abs().max() > 1e-3
