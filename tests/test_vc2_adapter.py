"""VC2 teacher: full-checkpoint manifest equality (meta device) and model.ckpt -> folder round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2v_turbo.adapters.vc2 import VC2Adapter
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.models.vc2 import checkpoint as ckpt
from t2v_turbo.models.vc2.tiny import build_tiny_vc2, save_tiny_vc2_ckpt, vc2_ckpt_state_dict
from t2v_turbo.models.vc2.unet import VC2UNet

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"


@pytest.fixture(scope="module")
def manifest():
    return json.loads((REFERENCE / "vc2_full_manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vc2")
    ckpt_path, config_path = save_tiny_vc2_ckpt(folder / "raw", seed=0)
    from_ckpt = VC2Adapter.from_pretrained(ckpt_path, config=str(config_path))
    converted = from_ckpt.save_pretrained(folder / "converted")
    from_folder = VC2Adapter.from_pretrained(converted)
    return dict(ckpt=ckpt_path, config=config_path, folder=converted, a=from_ckpt, b=from_folder)


def test_real_vae_keys_match_manifest_through_mapping(manifest):
    config = ckpt.vc2_config()
    with torch.device("meta"):
        vae = ckpt.build_vae(config["vae"])
    ldm = {k[len(ckpt.VAE_PREFIX):]: torch.empty(v, device="meta") for k, v in manifest["vae"]["state_dict"].items()}
    assert len(ldm) == manifest["entries_per_prefix"]["first_stage_model."] == 248
    mapped = ckpt.ldm_vae_to_diffusers(ldm, num_levels=4)
    ours = vae.state_dict()
    assert set(mapped) == set(ours)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert sum(p.numel() for p in vae.parameters()) == manifest["num_params"]["vae"]
    # mid-block attention: 1x1 convs in LDM, Linear in diffusers
    assert list(manifest["vae"]["state_dict"]["first_stage_model.decoder.mid.attn_1.q.weight"]) == [512, 512, 1, 1]
    assert tuple(ours["decoder.mid_block.attentions.0.to_q.weight"].shape) == (512, 512)
    # and back: the inverse names are exactly the checkpoint's
    back = ckpt.diffusers_vae_to_ldm(ours, num_levels=4)
    assert {VAE_KEY(k): list(v.shape) for k, v in back.items()} == manifest["vae"]["state_dict"]
    assert manifest["vae"]["config"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4]
    assert config["scale_factor"] == 0.18215


def VAE_KEY(key: str) -> str:
    return ckpt.VAE_PREFIX + key


def test_real_text_encoder_and_unet_match_manifest(manifest):
    config = ckpt.vc2_config()
    with torch.device("meta"):
        text = ckpt.VC2TextEncoder(**config["text_encoder"])
        unet = VC2UNet(**config["unet"])
    text_keys = [(ckpt.TEXT_PREFIX + k, list(v.shape)) for k, v in text.state_dict().items()]
    assert text_keys == list(manifest["text_encoder"]["state_dict"].items())
    assert sum(p.numel() for p in text.parameters()) == manifest["num_params"]["text_encoder"]
    unet_keys = [(ckpt.UNET_PREFIX + k, list(v.shape)) for k, v in unet.state_dict().items()]
    assert unet_keys == list(manifest["unet"]["state_dict"].items())
    assert set(manifest["top_level_buffers"]) == set(ckpt.SCHEDULE_BUFFERS)


def test_schedule_matches_vc2_buffers():
    from safetensors.torch import load_file

    buffers = load_file(str(REFERENCE / "vc2_schedule_buffers.safetensors"))
    adapter_schedule = VC2Adapter._alphas_cumprod(buffers)
    torch.testing.assert_close(adapter_schedule, buffers["alphas_cumprod"], atol=1e-7, rtol=0)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(betas.float(), buffers["betas"], atol=1e-9, rtol=1e-6)
    assert abs(buffers["alphas_cumprod"][-1].item() - 0.00466) < 1e-4


def test_ckpt_round_trip_identical_outputs(tiny):
    a, b = tiny["a"], tiny["b"]
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), name
    prompts = ["a red car on the street", ""]
    ta, tb = a.encode_prompts(prompts), b.encode_prompts(prompts)
    assert ta.shape == (2, 77, 32)
    torch.testing.assert_close(ta, tb, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.empty_prompt_embedding(3), ta[1:].expand(3, -1, -1))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 4, 8, 8, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        # equal weights (above, bit for bit); outputs of two model instances only up to float reordering,
        # which depends on the thread count and the memory layout
        torch.testing.assert_close(a.predict_eps(a.unet, z, t, ta[:1]), b.predict_eps(b.unet, z, t, tb[:1]),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.decode_latents(z), b.decode_latents(z), atol=1e-5, rtol=1e-5)
        # fps is an input (default 8 for the tiny config, 16 for VC2)
        assert not torch.equal(a.predict_eps(a.unet, z, t, ta[:1], fps=24), a.predict_eps(a.unet, z, t, ta[:1]))
    assert a.decode_latents(z).shape == (1, 3, 4, 16, 16)
    assert a.encode_video(torch.zeros(1, 3, 4, 16, 16), generator=gen).shape == (1, 4, 4, 8, 8)


def test_ckpt_file_layout_and_vae_names_round_trip(tiny):
    raw = torch.load(tiny["ckpt"], weights_only=True)
    prefixes = {k.split(".")[0] for k in raw["state_dict"]}
    assert prefixes >= {"model", "first_stage_model", "cond_stage_model", "betas", "scale_arr"}
    config, unet, vae, text, schedule = build_tiny_vc2(seed=0)
    state = vc2_ckpt_state_dict(config, unet, vae, text, schedule)
    assert state.keys() == raw["state_dict"].keys()
    assert all(torch.equal(state[k], raw["state_dict"][k]) for k in state)
    ldm = {k[len(ckpt.VAE_PREFIX):]: v for k, v in state.items() if k.startswith(ckpt.VAE_PREFIX)}
    assert ldm["encoder.mid.attn_1.q.weight"].ndim == 4
    again = ckpt.diffusers_vae_to_ldm(ckpt.ldm_vae_to_diffusers(ldm, 2), 2, list(ldm))
    assert all(torch.equal(again[k], ldm[k]) for k in ldm)


class _Skip(torch.nn.Module):
    def forward(self, x, attn_mask=None):
        return x


def test_text_encoder_is_penultimate_layer_then_ln_final(tiny):
    encoder = tiny["a"].text_encoder
    tokens = ckpt.tokenize(["a dog running on the beach"])
    tower = encoder.model
    # reference through open_clip's own Transformer.forward with the last block removed
    blocks = tower.transformer.resblocks
    last = blocks[-1]
    blocks[-1] = _Skip()
    try:
        x = tower.token_embedding(tokens) + tower.positional_embedding
        mask = torch.full((77, 77), float("-inf")).triu_(1)
        reference = tower.ln_final(tower.transformer(x, attn_mask=mask))
    finally:
        blocks[-1] = last
    with torch.no_grad():
        ours = encoder(tokens)
        torch.testing.assert_close(ours, reference.detach(), atol=1e-6, rtol=1e-6)
        # causal: a token's feature does not depend on later tokens
        other = ckpt.tokenize(["a dog running on the snow"])
        same_prefix = 5  # [SOT] a dog running on
        torch.testing.assert_close(encoder(other)[:, :same_prefix], ours[:, :same_prefix])


def test_student_unet_starts_as_teacher(tiny):
    a = tiny["a"]
    student = a.build_student_unet(256)
    assert torch.count_nonzero(student.time_cond_proj.weight) == 0
    assert student.motion_cond_proj is None
    teacher_params = dict(a.unet.named_parameters())
    student_params = dict(student.named_parameters())
    assert set(student_params) - set(teacher_params) == {"time_cond_proj.weight"}
    assert set(student.state_dict()) - set(a.unet.state_dict()) == {"time_cond_proj.weight"}
    # every teacher weight, matched by name: the same values in storage of the student's own
    for name, teacher_param in teacher_params.items():
        student_param = student_params[name]
        assert torch.equal(student_param, teacher_param), name
        assert student_param.untyped_storage().data_ptr() != teacher_param.untyped_storage().data_ptr(), name
    z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = a.encode_prompts(["a cat"])
    w = guidance_scale_embedding(torch.tensor([9.0]), 256)
    with torch.no_grad():
        torch.testing.assert_close(a.predict_eps(student, z, torch.tensor([300]), text, w),
                                   a.predict_eps(a.unet, z, torch.tensor([300]), text), atol=1e-5, rtol=1e-5)
    # the student owns its weights: training it never changes the teacher
    name = next(iter(teacher_params))
    with torch.no_grad():
        student_params[name].add_(1.0)
    assert not torch.equal(student_params[name], teacher_params[name])


def test_errors_say_where_to_get_the_checkpoint(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="VideoCrafter/VideoCrafter2"):
        VC2Adapter.from_pretrained(tmp_path / "missing" / "model.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vc2_config.json"):
        VC2Adapter.from_pretrained(tmp_path / "empty")
    raw = torch.load(tiny["ckpt"], weights_only=True)
    raw["state_dict"]["model_ema.decay"] = torch.tensor(0.99)
    torch.save(raw, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="model_ema.decay"):
        VC2Adapter.from_pretrained(tmp_path / "bad.ckpt", config=str(tiny["config"]))
