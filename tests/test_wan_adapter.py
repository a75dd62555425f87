"""The `wan` adapter on tiny random-weight flow teachers saved with save_pretrained and loaded through
the real path: a stock WanPipeline folder (AutoencoderKLWan, UMT5) and a custom one (per-frame
AutoencoderKL, CLIP), as the mini world's teacher is built."""

import json

import pytest
import torch

from t2v_turbo.adapters.wan import (
    GUIDANCE_LAYER_KEY,
    WanAdapter,
    guidance_condition,
    rotary_tables_in_float32,
    save_flow_teacher,
    wan21_transformer,
)
from t2v_turbo.diffusion.flow import flow_training_sigmas
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.testing import build_tiny_wan

PROMPTS = ["a cat running on the beach", "a red car"]


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "teacher", seed=0)


@pytest.fixture(scope="module")
def custom_folder(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("flow") / "teacher", seed=1, vae="per_frame", text_encoder="clip")


@pytest.fixture(scope="module")
def adapter(wan_folder):
    return WanAdapter.from_pretrained(wan_folder, num_frames=9, height=32, width=32, fps=8)


def _latents(adapter, frames=3, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, adapter.unet.config.in_channels, frames, 4, 4, generator=g)


def test_loads_stock_wan_folder_with_its_scheduler_shift(adapter, wan_folder):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    index = json.loads((wan_folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert isinstance(adapter.unet, WanTransformer3DModel) and isinstance(adapter.vae, AutoencoderKLWan)
    assert isinstance(adapter.text_encoder, UMT5EncoderModel)
    assert adapter.family == "wan" and adapter.prediction_type == "flow"
    assert adapter.flow_shift == 3.0 and torch.equal(adapter.flow_sigmas, flow_training_sigmas(1000, 3.0))
    assert not any(p.requires_grad for p in adapter.unet.parameters())
    alpha, sigma = adapter.noise_coefficients()
    assert torch.equal(alpha, 1 - adapter.flow_sigmas) and torch.equal(sigma, adapter.flow_sigmas)


def test_errors_name_the_folder_and_the_unsupported_component(tmp_path, wan_folder):
    with pytest.raises(FileNotFoundError, match="no Wan / flow teacher model folder"):
        WanAdapter.from_pretrained(tmp_path / "missing")
    (tmp_path / "partial" / "transformer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing the subfolder"):
        WanAdapter.from_pretrained(tmp_path / "partial")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(wan_folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderTiny"]
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"vae=\['diffusers', 'AutoencoderTiny'\]"):
        WanAdapter.from_pretrained(bad)


def test_frame_rule(adapter):
    assert adapter.latent_frames(9) == 3 and adapter.latent_frames(81) == 21 and adapter.latent_frames(1) == 1
    assert adapter.pixel_frames(3) == 9 and adapter.pixel_frames(21) == 81
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        adapter.latent_frames(8)
    # pixel frame 0 -> latent 0; frames 1..4 -> latent 1; frames 5..8 -> latent 2
    assert adapter.latent_frames_needed([0]) == 1
    assert adapter.latent_frames_needed([0, 4]) == 2 and adapter.latent_frames_needed([1]) == 2
    assert adapter.latent_frames_needed([5]) == 3 and adapter.latent_frames_needed([2, 8]) == 3


def test_text_embedding_equals_wan_pipeline(adapter, wan_folder):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(wan_folder)
    ours = adapter.encode_prompts(PROMPTS)
    stock, negative = pipe.encode_prompt(PROMPTS, negative_prompt="", max_sequence_length=512, device="cpu")
    assert ours.shape == (2, 512, 32)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.empty_prompt_embedding(2), negative, atol=1e-5, rtol=1e-5)
    lengths = pipe.tokenizer(PROMPTS, return_attention_mask=True).attention_mask
    assert ours[0, len(lengths[0]):].abs().sum() == 0  # zeros after the prompt, as WanPipeline pads


def test_latents_are_normalised_with_the_vae_config(adapter):
    pixels = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    latents = adapter.encode_video(pixels, generator=torch.Generator().manual_seed(3))
    posterior = adapter.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(3))
    mean = torch.tensor(adapter.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(adapter.vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert latents.shape == (1, 4, 3, 4, 4)
    torch.testing.assert_close(latents, (posterior - mean) / std)
    # decoding undoes it: the pipeline decodes z = x std + mean
    torch.testing.assert_close(adapter.decode_latents(latents), adapter.vae.decode(posterior).sample)


def test_predict_is_the_transformer_velocity_at_t_equal_T_sigma(adapter):
    z = _latents(adapter)
    text = adapter.encode_prompts(PROMPTS)
    index = torch.tensor([999, 250])
    sigma = flow_training_sigmas(1000, 3.0)[index]
    v = adapter.predict(adapter.unet, z, index, text)
    direct = adapter.unet(hidden_states=z, timestep=1000 * sigma, encoder_hidden_states=text).sample
    torch.testing.assert_close(v, direct)
    # a float timestep is T sigma already (off-grid sampling)
    torch.testing.assert_close(adapter.predict(adapter.unet, z, 1000 * sigma, text), direct)
    eps = adapter.predict_eps(adapter.unet, z, index, text)
    torch.testing.assert_close(eps, z + (1 - sigma).view(-1, 1, 1, 1, 1) * v)


def test_student_equals_teacher_at_step_zero_and_guidance_enters_the_time_features(adapter):
    student = adapter.build_student_unet(256)
    assert student.config.time_cond_proj_dim == 256
    assert set(student.state_dict()) - set(adapter.unet.state_dict()) == {GUIDANCE_LAYER_KEY}
    assert torch.count_nonzero(student.state_dict()[GUIDANCE_LAYER_KEY]) == 0
    z, text, index = _latents(adapter), adapter.encode_prompts(PROMPTS), torch.tensor([700, 40])
    teacher_v = adapter.predict(adapter.unet, z, index, text)
    for w in (2.0, 7.5):
        w_emb = guidance_scale_embedding(torch.full((2,), w), 256)
        torch.testing.assert_close(adapter.predict(student, z, index, text, timestep_cond=w_emb), teacher_v)
    # a trained guidance layer shifts linear_1's input by cond_proj(emb(w)): check against that formula
    embedder = student.condition_embedder.time_embedder
    torch.nn.init.normal_(embedder.cond_proj.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    w_emb = guidance_scale_embedding(torch.tensor([3.0, 6.0]), 256)
    guided = adapter.predict(student, z, index, text, timestep_cond=w_emb)
    assert (guided - teacher_v).abs().max() > 1e-3
    seen = []
    handle = embedder.linear_1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    adapter.predict(student, z, index, text, timestep_cond=w_emb)
    adapter.predict(student, z, index, text)  # no timestep_cond: the teacher's features
    handle.remove()
    torch.testing.assert_close(seen[0], seen[1] + embedder.cond_proj(w_emb))
    # the hook is gone after the call: without timestep_cond the student is the teacher again
    with guidance_condition(student, None):
        torch.testing.assert_close(adapter.predict(student, z, index, text), teacher_v)
    with pytest.raises(ValueError, match="no guidance layer"):
        adapter.predict(adapter.unet, z, index, text, timestep_cond=w_emb)


@pytest.mark.parametrize("frames", [[0], [0, 3], [2, 5, 8], [1, 2, 3, 4]])
def test_partial_decode_equals_full_decode_on_its_frames(adapter, frames):
    z = _latents(adapter, seed=5)
    full = adapter.decode_latents(z)
    for checkpointing in (False, True):
        part = adapter.decode_frames(z, frames, checkpointing=checkpointing)
        torch.testing.assert_close(part, full[:, :, frames], atol=1e-5, rtol=0)


def test_partial_decode_decodes_only_the_needed_latent_frames_and_checkpointing_keeps_gradients(adapter):
    z = _latents(adapter, seed=6).requires_grad_(True)
    calls = []
    handle = adapter.vae.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[2]))
    adapter.decode_frames(z, [0, 4])
    assert len(calls) == 2  # latent frames 0 and 1; frame 2 is never decoded
    handle.remove()
    grads = []
    for checkpointing in (False, True):
        z.grad = None
        adapter.decode_frames(z, [1, 4], checkpointing=checkpointing).square().sum().backward()
        grads.append(z.grad.clone())
    assert grads[0][:, :, 2].abs().sum() == 0 and grads[0][:, :, :2].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_rotary_tables_stay_float32_through_dtype_casts_and_match_float64_tables(adapter, wan_folder):
    """diffusers 0.42.1 computes the tables in float64 and returns float32; a Module.to(bfloat16)
    of the teacher would round them to bf16. The adapter keeps the float32 tables; float64 tables
    (the issue's description of the float64 path) give the same output to float32 tolerance."""
    from diffusers import WanTransformer3DModel

    plain = WanTransformer3DModel.from_pretrained(wan_folder, subfolder="transformer")
    assert plain.rope.freqs_cos.dtype == torch.float32
    torch.testing.assert_close(plain.rope.freqs_cos, adapter.unet.rope.freqs_cos, atol=0, rtol=0)
    z, text, index = _latents(adapter), adapter.encode_prompts(PROMPTS), torch.tensor([999, 500])
    t = 1000 * flow_training_sigmas(1000, 3.0)[index]
    reference = plain(hidden_states=z, timestep=t, encoder_hidden_states=text).sample
    plain.rope.freqs_cos, plain.rope.freqs_sin = plain.rope.freqs_cos.double(), plain.rope.freqs_sin.double()
    in_float64 = plain(hidden_states=z, timestep=t, encoder_hidden_states=text).sample
    torch.testing.assert_close(in_float64, reference, atol=1e-5, rtol=1e-5)
    assert rotary_tables_in_float32(plain).rope.freqs_sin.dtype == torch.float32
    # a bf16 cast: the stock module rounds its tables to bf16, the adapter restores the float32 ones
    plain.to(torch.bfloat16)
    assert plain.rope.freqs_cos.dtype == torch.bfloat16
    loaded = WanAdapter.from_pretrained(wan_folder, num_frames=9, height=32, width=32)
    loaded.to(dtype=torch.bfloat16)
    assert loaded.unet.rope.freqs_cos.dtype == torch.float32
    torch.testing.assert_close(loaded.unet.rope.freqs_cos, adapter.unet.rope.freqs_cos, atol=0, rtol=0)
    assert (plain.rope.freqs_cos.float() - adapter.unet.rope.freqs_cos).abs().max() > 1e-4


def test_custom_flow_teacher_per_frame_vae_and_clip(custom_folder):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    index = json.loads((custom_folder / "model_index.json").read_text())
    assert index["_class_name"] == "FlowTeacher" and index["vae"] == ["diffusers", "AutoencoderKL"]
    adapter = WanAdapter.from_pretrained(custom_folder, num_frames=8, height=32, width=32)
    assert isinstance(adapter.vae, AutoencoderKL) and isinstance(adapter.text_encoder, CLIPTextModel)
    assert adapter.latent_frames(8) == 8 and adapter.pixel_frames(8) == 8 and adapter.latent_frames_needed([1, 6]) == 2
    pixels = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    latents = adapter.encode_video(pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 4, 4)
    # frame 5 of video 1, encoded alone with the same draw order, is its slot in the video
    frame = adapter.vae.encode(pixels[:, :, 5]).latent_dist
    assert frame.mean.shape == (2, 4, 4, 4)
    decoded = adapter.decode_frames(latents, [2, 6])
    torch.testing.assert_close(decoded[:, :, 1], adapter.vae.decode(latents[:, :, 6] / 0.5).sample)
    text = adapter.encode_prompts(PROMPTS)
    assert text.shape == (2, 16, 32)
    v = adapter.predict(adapter.unet, latents, torch.tensor([999, 10]), text)
    assert v.shape == latents.shape


def test_save_flow_teacher_round_trip(tmp_path, adapter):
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = save_flow_teacher(tmp_path / "copy", adapter.unet, adapter.vae, adapter.text_encoder, adapter.tokenizer,
                               FlowMatchEulerDiscreteScheduler(shift=5.0))
    again = WanAdapter.from_pretrained(folder, num_frames=9, height=32, width=32)
    assert again.flow_shift == 5.0  # FlowMatch schedulers call it `shift`
    for key, value in adapter.unet.state_dict().items():
        assert torch.equal(again.unet.state_dict()[key], value), key


def test_real_size_parameter_counts_on_the_meta_device():
    """diffusers 0.42.1's WanTransformer3DModel at Wan2.1's 1.3B and 14B configs (flow.md)."""
    counts = {size: sum(p.numel() for p in wan21_transformer(size).parameters()) for size in ("1.3B", "14B")}
    assert counts == {"1.3B": 1_418_996_800, "14B": 14_288_491_584}


@pytest.mark.parametrize("size, dim, layers", [("1.3B", 1536, 30), ("14B", 5120, 40)])
def test_real_size_student_adds_lora_and_guidance_parameters(size, dim, layers):
    """What the student adds at real size: LoRA rank r on the 4 projections of both attentions of every
    block adds layers * 2 * 4 * 2 r dim; the guidance layer 256 x freq_dim (256)."""
    from types import SimpleNamespace

    from t2v_turbo.student import LoraSettings, build_student

    teacher = SimpleNamespace(unet=wan21_transformer(size))
    adapter = SimpleNamespace(build_student_unet=lambda dim_: WanAdapter.build_student_unet(teacher, dim_))
    student = build_student(adapter, 256, lora=LoraSettings(rank=64, alpha=64.0, target_modules="attention"))
    lora = sum(p.numel() for n, p in student.named_parameters() if ".lora_" in n)
    guidance = sum(p.numel() for n, p in student.named_parameters() if "cond_proj" in n)
    assert lora == layers * 2 * 4 * 2 * 64 * dim and guidance == 256 * 256
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) == lora + guidance


def test_wan22_ti2v_layout_loads_with_per_token_timesteps(tmp_path):
    """Wan2.2 TI2V-5B's differences: a patchified residual VAE (16x in space) and one timestep per
    latent token (``expand_timesteps``), which for text-to-video equals one timestep per sample."""
    folder = build_tiny_wan(tmp_path / "wan22", seed=2, vae="wan22")
    adapter = WanAdapter.from_pretrained(folder, num_frames=9, height=64, width=64)
    assert adapter.expand_timesteps and adapter.vae_spatial_factor == 16
    pixels = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    latents = adapter.encode_video(pixels, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 3, 4, 4)
    text = adapter.encode_prompts(PROMPTS[:1])
    index = torch.tensor([600])
    per_token = adapter.predict(adapter.unet, latents, index, text)
    t = 1000 * flow_training_sigmas(1000, 3.0)[index]
    per_sample = adapter.unet(hidden_states=latents, timestep=t, encoder_hidden_states=text).sample
    torch.testing.assert_close(per_token, per_sample, atol=1e-5, rtol=1e-5)
    full = adapter.decode_latents(latents)
    torch.testing.assert_close(adapter.decode_frames(latents, [0, 3], checkpointing=True), full[:, :, [0, 3]],
                               atol=1e-5, rtol=0)
    index_file = json.loads((folder / "model_index.json").read_text())
    index_file["transformer_2"] = ["diffusers", "WanTransformer3DModel"]
    index_file["boundary_ratio"] = 0.875
    (folder / "model_index.json").write_text(json.dumps(index_file))
    with pytest.raises(ValueError, match="transformer_2"):
        WanAdapter.from_pretrained(folder)
