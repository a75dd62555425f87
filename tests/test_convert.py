"""``t2v-turbo convert`` on tiny files in the real formats: VC2 model.ckpt, unet_lora.pt, full UNets."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

from t2v_turbo.adapters.vc2 import VC2Adapter, VC2MotionAdapter
from t2v_turbo.cli import main
from t2v_turbo.models.vc2 import lora_format as lf
from t2v_turbo.models.vc2.tiny import save_tiny_vc2_ckpt
from t2v_turbo.models.vc2.unet import VC2UNet
from t2v_turbo.student import load_student, load_teacher_for, read_student_meta


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    ckpt_path, config_path = save_tiny_vc2_ckpt(root / "raw", seed=0)
    out = root / "vc2"
    assert main(["convert", "vc2", "--ckpt", str(ckpt_path), "--config", str(config_path), "--out", str(out)]) == 0
    return dict(root=root, ckpt=ckpt_path, config=config_path, folder=out, adapter=VC2Adapter.from_pretrained(out))


def _random_lora_list(adapter, rank: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    table = lf.lora_index_table(adapter.build_student_unet(256), rank)
    return [0.05 * torch.randn(row["shape"], generator=gen) for row in table]


def _inputs(adapter, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 4, 8, 8, generator=gen)
    from t2v_turbo.diffusion.solver import guidance_scale_embedding

    return z, torch.tensor([999, 259]), adapter.encode_prompts(["a cat", "a dog"]), guidance_scale_embedding(torch.tensor([7.5, 3.0]), 256)


def test_convert_vc2_ckpt_to_folder(teacher):
    folder = teacher["folder"]
    assert {p.name for p in folder.iterdir()} == {"vc2_config.json", "unet.safetensors", "vae.safetensors",
                                                  "text_encoder.safetensors", "schedule.safetensors"}
    raw = torch.load(teacher["ckpt"], weights_only=True)["state_dict"]
    unet = load_file(str(folder / "unet.safetensors"))
    assert all(torch.equal(unet[k], raw["model.diffusion_model." + k]) for k in unet)
    assert len(unet) == sum(k.startswith("model.diffusion_model.") for k in raw)
    schedule = load_file(str(folder / "schedule.safetensors"))
    assert all(torch.equal(schedule[k], raw[k]) for k in schedule) and len(schedule) == 13
    direct = VC2Adapter.from_pretrained(teacher["ckpt"], config=str(teacher["config"]))
    z, t, text, _ = _inputs(direct)
    with torch.no_grad():  # two model instances of the same weights (above): outputs up to float reordering
        converted = teacher["adapter"]
        torch.testing.assert_close(direct.predict_eps(direct.unet, z, t, text),
                                   converted.predict_eps(converted.unet, z, t, text), atol=1e-5, rtol=1e-5)


def test_convert_lora_list_and_back_is_lossless(teacher, tmp_path):
    adapter = teacher["adapter"]
    tensors = _random_lora_list(adapter, rank=8, seed=1)  # rank 8 > 4 channels: clipped layers too
    lora_path = lf.save_lora_list(tmp_path / "unet_lora.pt", tensors)
    student_dir = tmp_path / "student"
    with pytest.warns(UserWarning, match="time_cond_proj"):
        assert main(["convert", "t2v-turbo-lora", "--teacher", str(teacher["folder"]), "--lora", str(lora_path),
                     "--out", str(student_dir)]) == 0
    meta = read_student_meta(student_dir)
    assert meta.family == "vc2" and meta.lora["rank"] == 8 and meta.lora["alpha"] == 8.0
    assert meta.lora["target_modules"] == "all_linear_conv"
    # loaded through the normal path: teacher from the meta, then the student
    student, _ = load_student(student_dir, load_teacher_for(meta))
    # reference: the released merge rule on a plain UNet (teacher weights + zero guidance layer)
    plain = adapter.build_student_unet(256)
    lf.merge_lora_list(plain, tensors)
    z, t, text, w = _inputs(adapter)
    with torch.no_grad():
        ours = adapter.predict_eps(student, z, t, text, w)
        reference = adapter.predict_eps(plain, z, t, text, w)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    # the stored guidance layer = 0 + its LoRA delta (indices 8/9)
    stored = load_file(str(student_dir / "student.safetensors"))
    torch.testing.assert_close(stored["time_cond_proj.weight"], tensors[8] @ tensors[9], atol=1e-7, rtol=0)

    exported = tmp_path / "exported" / "unet_lora.pt"
    assert main(["convert", "lora-list", "--teacher", str(teacher["folder"]), "--student", str(student_dir),
                 "--out", str(exported)]) == 0
    again = torch.load(exported, weights_only=True)
    assert isinstance(again, list) and len(again) == len(tensors)
    for i, (a, b) in enumerate(zip(tensors, again)):
        assert torch.equal(b, torch.zeros_like(a)) if i in (8, 9) else torch.equal(a, b), i
    assert lf.sidecar_path(exported).is_file()
    # and the exported list converts back to the identical student (no warning: the sidecar has the layer)
    student_dir2 = tmp_path / "student2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        main(["convert", "t2v-turbo-lora", "--teacher", str(teacher["folder"]), "--lora", str(exported), "--out", str(student_dir2)])
    s1, s2 = stored, load_file(str(student_dir2 / "student.safetensors"))
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def _full_unet(adapter, motion: bool, guidance: bool, seed: int) -> dict[str, torch.Tensor]:
    config = dict(adapter.unet.config, time_cond_proj_dim=256 if guidance else None, motion_cond_proj_dim=256 if motion else None)
    torch.manual_seed(seed)
    unet = VC2UNet(**config)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return {k: v.clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("name,motion,guidance,variant", [
    ("unet_mg.pt", True, True, "v2_motion"),
    ("unet_no_mg.pt", False, True, "guided"),
    ("merged_unet.pt", False, False, "no_guidance_layer"),
])
def test_convert_full_unets(teacher, tmp_path, name, motion, guidance, variant):
    adapter = teacher["adapter"]
    state = _full_unet(adapter, motion, guidance, seed=len(name))
    path = tmp_path / name
    torch.save(state, path)
    out = tmp_path / "student"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["convert", "t2v-turbo-unet", "--teacher", str(teacher["folder"]), "--unet", str(path), "--out", str(out)]) == 0
    assert any("time_cond_proj" in str(w.message) for w in caught) == (not guidance)
    meta = read_student_meta(out)
    assert meta.lora is None and meta.extra["source_format"] == variant
    assert meta.teacher_adapter.endswith("VC2MotionAdapter" if motion else "VC2Adapter")
    loaded_teacher = load_teacher_for(meta)
    assert isinstance(loaded_teacher, VC2MotionAdapter) == motion
    student, _ = load_student(out, loaded_teacher)
    got = student.state_dict()
    expected_keys = set(state) | {"time_cond_proj.weight"}
    assert set(got) == expected_keys
    for key, value in state.items():
        assert torch.equal(got[key], value), key
    if not guidance:
        assert torch.count_nonzero(got["time_cond_proj.weight"]) == 0
    # safetensors export is the student file itself: bit-identical weights
    stored = load_file(str(out / "student.safetensors"))
    assert all(torch.equal(stored[k], state[k]) for k in state)


def test_convert_refuses_a_foreign_unet(teacher, tmp_path, capsys):
    state = _full_unet(teacher["adapter"], motion=False, guidance=True, seed=0)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="extra.weight"):
        main(["convert", "t2v-turbo-unet", "--teacher", str(teacher["folder"]), "--unet", str(tmp_path / "bad.pt"),
              "--out", str(tmp_path / "s")])
    # a missing file is a user error: one line naming where to get the released UNets, exit code 2
    assert main(["convert", "t2v-turbo-unet", "--teacher", str(teacher["folder"]), "--unet", str(tmp_path / "nope.pt"),
                 "--out", str(tmp_path / "s")]) == 2
    assert "T2V-Turbo-v2" in capsys.readouterr().err


def test_lora_list_on_a_diffusers_modelscope_teacher(tmp_path):
    """T2V-Turbo (MS): the same list rule on diffusers' UNet3DConditionModel (guidance layer
    ``time_embedding.cond_proj``); unmerged student == merged reference, and the round trip."""
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
    from t2v_turbo.testing import build_tiny_diffusers_t2v

    folder = build_tiny_diffusers_t2v(tmp_path / "ms")
    adapter = DiffusersT2VAdapter.from_pretrained(folder)
    plain = adapter.build_student_unet(256)
    layers = [name for name, _ in lf.lora_layers(plain)]
    assert "time_embedding.cond_proj" in layers and not any("lora" in n for n in layers)
    gen = torch.Generator().manual_seed(2)
    tensors = [0.05 * torch.randn(r["shape"], generator=gen) for r in lf.lora_index_table(plain, 4)]
    lora_path = lf.save_lora_list(tmp_path / "unet_lora.pt", tensors)
    with pytest.warns(UserWarning, match="time_cond_proj"):
        main(["convert", "t2v-turbo-lora", "--teacher", str(folder), "--lora", str(lora_path), "--out", str(tmp_path / "s")])
    meta = read_student_meta(tmp_path / "s")
    assert meta.family == "diffusers"
    student, _ = load_student(tmp_path / "s", load_teacher_for(meta))
    lf.merge_lora_list(plain, tensors)
    z = torch.randn(1, 4, 2, 8, 8, generator=gen)
    text = adapter.encode_prompts(["a cat"])
    from t2v_turbo.diffusion.solver import guidance_scale_embedding

    w = guidance_scale_embedding(torch.tensor([7.5]), 256)
    with torch.no_grad():
        torch.testing.assert_close(adapter.predict_eps(student, z, torch.tensor([500]), text, w),
                                   adapter.predict_eps(plain, z, torch.tensor([500]), text, w), atol=1e-4, rtol=1e-4)
    exported = tmp_path / "out" / "unet_lora.pt"
    main(["convert", "lora-list", "--teacher", str(folder), "--student", str(tmp_path / "s"), "--out", str(exported)])
    guidance_index = 2 * layers.index("time_embedding.cond_proj")
    for i, (a, b) in enumerate(zip(tensors, torch.load(exported, weights_only=True))):
        assert torch.count_nonzero(b) == 0 if i in (guidance_index, guidance_index + 1) else torch.equal(a, b), i
    assert list(lf.read_sidecar(exported)) == ["time_embedding.cond_proj.weight"]
