"""Student UNet: LoRA presets, trainable parameters, strict save/load round trips."""

import json

import pytest
import torch

from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.student import (
    LoraSettings,
    StudentMeta,
    build_student,
    load_student,
    resolve_target_modules,
    save_student,
    trainable_parameter_names,
)
from t2v_turbo.testing import build_tiny_diffusers_t2v, randomise_trainable

GUIDANCE = "time_embedding.cond_proj.weight"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return DiffusersT2VAdapter.from_pretrained(build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher")))


@pytest.fixture(scope="module")
def inputs(adapter):
    g = torch.Generator().manual_seed(3)
    return dict(
        latents=torch.randn(2, 4, 4, 8, 8, generator=g),
        timesteps=torch.tensor([999, 259]),
        text_embedding=adapter.encode_prompts(["a cat running", "a blue car"]),
        timestep_cond=guidance_scale_embedding(torch.tensor([7.5, 12.0]), 256),
    )


def eps(adapter, unet, inputs):
    with torch.no_grad():
        return adapter.predict_eps(unet, **inputs)


def test_attention_preset_trains_exactly_lora_and_guidance_layer(adapter):
    unet = build_student(adapter, 256, lora=LoraSettings(rank=4, alpha=4, target_modules="attention"))
    names = set(trainable_parameter_names(unet))
    targets = resolve_target_modules(adapter.build_student_unet(256), "attention")
    expected = {f"{m}.lora_{ab}.default.weight" for m in targets for ab in "AB"} | {GUIDANCE}
    assert names == expected
    assert all(m.rsplit(".", 1)[-1] in {"to_q", "to_k", "to_v", "0"} for m in targets)
    assert len(targets) % 4 == 0


def test_all_linear_conv_preset_covers_every_linear_and_conv(adapter):
    unet = adapter.build_student_unet(256)
    targets = resolve_target_modules(unet, "all_linear_conv")
    kinds = {type(m).__name__ for n, m in unet.named_modules() if n in set(targets)}
    assert kinds == {"Linear", "Conv2d", "Conv3d"}
    assert "conv_in" in targets and "conv_out" in targets and "time_embedding.cond_proj" not in targets
    expected = [n for n, m in unet.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)]
    assert targets == [n for n in expected if n != "time_embedding.cond_proj"]


def test_full_finetune_and_frozen_guidance_layer(adapter):
    full = build_student(adapter, 256, lora=None)
    assert set(trainable_parameter_names(full)) == {n for n, _ in full.named_parameters()}
    frozen = build_student(adapter, 256, lora=LoraSettings(rank=2, alpha=2), train_guidance_layer=False)
    assert GUIDANCE not in trainable_parameter_names(frozen)
    assert torch.count_nonzero(frozen.time_embedding.cond_proj.weight) == 0


def test_student_starts_equal_to_the_teacher(adapter, inputs):
    teacher = eps(adapter, adapter.unet, {**inputs, "timestep_cond": None})
    for lora in (None, LoraSettings(rank=4, alpha=8, target_modules="all_linear_conv")):
        torch.testing.assert_close(eps(adapter, build_student(adapter, 256, lora=lora), inputs), teacher, atol=1e-6, rtol=0)


def test_build_is_deterministic(adapter):
    settings = LoraSettings(rank=4, alpha=4)
    a = build_student(adapter, 256, lora=settings).state_dict()
    b = build_student(adapter, 256, lora=settings).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("lora", [LoraSettings(rank=4, alpha=8, dropout=0.1, target_modules="attention"), None])
def test_save_load_round_trip(adapter, inputs, lora, tmp_path):
    unet = build_student(adapter, 256, lora=lora)
    randomise_trainable(unet, seed=5, scale=0.05)
    save_student(tmp_path, unet, StudentMeta.for_adapter(adapter, lora=lora, guidance_scale=6.0))
    meta = json.loads((tmp_path / "student.json").read_text())
    assert meta["teacher_adapter"] == "t2v_turbo.adapters.diffusers_t2v.DiffusersT2VAdapter"
    assert meta["guidance_scale"] == 6.0 and meta["time_cond_proj_dim"] == 256
    loaded, loaded_meta = load_student(tmp_path, adapter)
    assert loaded_meta.lora == (lora.to_dict() if lora else None)
    unet.eval()
    saved, reloaded = unet.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    # two model instances: equal weights (bit for bit, above), outputs up to float reordering
    torch.testing.assert_close(eps(adapter, loaded, inputs), eps(adapter, unet, inputs), atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob("*.tmp*"))


def test_lora_checkpoint_holds_only_lora_and_guidance_layer(adapter, tmp_path):
    from safetensors.torch import load_file

    unet = build_student(adapter, 256, lora=LoraSettings(rank=4, alpha=4))
    save_student(tmp_path, unet, StudentMeta.for_adapter(adapter, lora=LoraSettings(rank=4, alpha=4)))
    keys = set(load_file(str(tmp_path / "student.safetensors")))
    assert GUIDANCE in keys
    assert all(k == GUIDANCE or k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert len(keys) == 1 + 2 * len(resolve_target_modules(adapter.build_student_unet(256), "attention"))


def test_strict_load_rejects_other_keys(adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    settings = LoraSettings(rank=4, alpha=4)
    save_student(tmp_path, build_student(adapter, 256, lora=settings), StudentMeta.for_adapter(adapter, lora=settings))
    tensors = load_file(str(tmp_path / "student.safetensors"))
    del tensors[GUIDANCE]
    save_file(tensors, str(tmp_path / "student.safetensors"))
    with pytest.raises(RuntimeError, match="time_embedding.cond_proj.weight"):
        load_student(tmp_path, adapter)


def test_missing_checkpoint_names_the_folder(adapter, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_student(tmp_path / "nothing_here", adapter)


def test_relative_teacher_path_is_resolved_beside_the_student(tmp_path):
    from t2v_turbo.student import StudentMeta, resolve_teacher_path

    (tmp_path / "teacher").mkdir()
    (tmp_path / "student").mkdir()
    meta = StudentMeta(teacher_adapter="x.Y", teacher_path="../teacher", family="diffusers")
    assert resolve_teacher_path(meta, tmp_path / "student") == str(tmp_path / "student" / "../teacher")
    hub = StudentMeta(teacher_adapter="x.Y", teacher_path="ali-vilab/text-to-video-ms-1.7b", family="diffusers")
    assert resolve_teacher_path(hub, tmp_path / "student") == "ali-vilab/text-to-video-ms-1.7b"
