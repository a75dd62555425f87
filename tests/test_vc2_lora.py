"""The released ``unet_lora.pt`` list format: index rule, unmerged/merged fixture outputs, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2v_turbo.models.vc2 import lora_format as lf
from t2v_turbo.models.vc2.unet import VC2_UNET_CONFIG, VC2UNet
from t2v_turbo.student import LoraSettings, inject_lora

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
ATOL = RTOL = 1e-4
LVDM_ONLY_KWARGS = ("use_checkpoint", "temporal_selfatt_only", "use_relative_position", "use_causal_attention")
TABLE_FIELDS = ("index", "module", "which", "shape", "base_layer", "base_weight_shape", "rank")


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    spec = json.loads((REFERENCE / "t2v_turbo_lora_tiny.json").read_text())
    kwargs = {k: v for k, v in spec["base_constructor_kwargs"].items() if k not in LVDM_ONLY_KWARGS}
    base = load_file(str(REFERENCE / "vc2_unet_tiny.safetensors"))
    lora = load_file(str(REFERENCE / "t2v_turbo_lora_tiny.safetensors"))
    count = sum(k.startswith("lora.") for k in lora)
    tensors = [lora[f"lora.{i}"].clone() for i in range(count)]  # numeric order, not the file's
    state = {k[len("state_dict."):]: v for k, v in base.items() if k.startswith("state_dict.")}
    inputs = {k[len("input."):]: v.clone() for k, v in base.items() if k.startswith("input.")}
    return dict(spec=spec, kwargs=kwargs, state=state, inputs=inputs, tensors=tensors, ref=lora)


def _plain(fx) -> VC2UNet:
    unet = VC2UNet(**fx["kwargs"])
    unet.load_state_dict(fx["state"], strict=True)
    return unet.eval()


def _student(fx, rank=4) -> VC2UNet:
    unet = _plain(fx)
    inject_lora(unet, LoraSettings(rank=rank, alpha=rank, dropout=0.1, target_modules="all_linear_conv"))
    return unet.eval()


def _eps(unet, inputs):
    with torch.no_grad():
        return unet(inputs["x"], inputs["timesteps"], inputs["context"], fps=inputs["fps"], timestep_cond=inputs["timestep_cond"])


def test_official_r64_index_table_equals_our_traversal():
    manifest = json.loads((REFERENCE / "t2v_turbo_lora_r64_manifest.json").read_text())
    with torch.device("meta"):
        unet = VC2UNet(**VC2_UNET_CONFIG)
    table = lf.lora_index_table(unet, rank=64)
    assert len(table) == manifest["num_tensors"] == 1150
    assert table == [{k: row[k] for k in TABLE_FIELDS} for row in manifest["index_table"]]
    assert sum(torch.Size(r["shape"]).numel() for r in table) == manifest["num_lora_params"]
    assert [r["module"] for r in table[8:10]] == ["time_cond_proj", "time_cond_proj"]
    assert not any(r["module"].startswith("init_attn") and "proj_" in r["module"] for r in table)


def test_tiny_index_table_and_order(fixture):
    table = lf.lora_index_table(_plain(fixture), rank=4)
    assert table == [{k: row[k] for k in TABLE_FIELDS} for row in fixture["spec"]["index_table"]]
    assert [list(t.shape) for t in fixture["tensors"]] == [r["shape"] for r in table]
    # the walk is the same on a peft-injected student
    assert lf.lora_index_table(_student(fixture), rank=4) == table


def test_unmerged_lora_reproduces_eps_lora(fixture):
    student = _student(fixture)
    lf.load_lora_list(fixture["tensors"], student)
    torch.testing.assert_close(_eps(student, fixture["inputs"]), fixture["ref"]["output.eps_lora"], atol=ATOL, rtol=RTOL)


def test_merged_lora_reproduces_eps_merged_and_weights(fixture):
    unet = lf.merge_lora_list(_plain(fixture), fixture["tensors"])
    torch.testing.assert_close(_eps(unet, fixture["inputs"]), fixture["ref"]["output.eps_merged"], atol=ATOL, rtol=RTOL)
    state = unet.state_dict()
    spot = {k[len("merged_state_dict."):]: v for k, v in fixture["ref"].items() if k.startswith("merged_state_dict.")}
    assert len(spot) == 6
    for key, value in spot.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=1e-6)


def test_list_file_round_trip_is_bitwise(fixture, tmp_path):
    path = lf.save_lora_list(tmp_path / "unet_lora.pt", fixture["tensors"])
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, list) and len(raw) == len(fixture["tensors"])  # a plain list, as released
    again = lf.read_lora_list(path)
    pairs = lf.lora_list_to_pairs(again, _plain(fixture))
    back = lf.pairs_to_lora_list(pairs, _plain(fixture))
    for a, b in zip(fixture["tensors"], back):
        assert torch.equal(a, b)


def test_student_export_round_trip_with_clipped_ranks(fixture, tmp_path):
    """rank 8 > 4 channels: input_blocks.0.0 and out.2 are clipped to 4 and padded in peft."""
    gen = torch.Generator().manual_seed(3)
    table = lf.lora_index_table(_plain(fixture), rank=8)
    assert {r["module"] for r in table if r["rank"] == 4} == {"input_blocks.0.0", "out.2"}
    tensors = [0.05 * torch.randn(r["shape"], generator=gen) for r in table]
    student = _student(fixture, rank=8)
    guidance_before = student.time_cond_proj.weight.detach().clone()
    lf.load_lora_list(tensors, student)
    exported, guidance = lf.export_lora_list(student, rank=8)
    for i, (a, b) in enumerate(zip(tensors, exported)):
        if table[i]["module"] == "time_cond_proj":
            assert torch.count_nonzero(b) == 0  # its full weight travels in the sidecar
        else:
            assert torch.equal(a, b), table[i]
    up, down = tensors[8], tensors[9]
    assert list(guidance) == ["time_cond_proj.weight"]
    torch.testing.assert_close(guidance["time_cond_proj.weight"], guidance_before + up @ down, atol=1e-6, rtol=0)
    list_path, sidecar = lf.save_exported_lora(tmp_path / "unet_lora.pt", exported, guidance)
    assert torch.equal(lf.read_sidecar(list_path)["time_cond_proj.weight"], guidance["time_cond_proj.weight"])
    # re-import into a fresh student: every student weight is identical
    fresh = _student(fixture, rank=8)
    lf.load_lora_list(lf.read_lora_list(list_path), fresh)
    with torch.no_grad():
        fresh.time_cond_proj.weight.copy_(lf.read_sidecar(list_path)["time_cond_proj.weight"])
    ref, new = student.state_dict(), fresh.state_dict()
    assert ref.keys() == new.keys()
    for key in ref:
        assert torch.equal(ref[key], new[key]), key


def test_wrong_list_is_refused(fixture):
    with pytest.raises(ValueError, match="different architecture"):
        lf.lora_list_to_pairs(fixture["tensors"][:-2], _plain(fixture))
    bad = list(fixture["tensors"])
    bad[0] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="time_embed.0"):
        lf.lora_list_to_pairs(bad, _plain(fixture))
    with pytest.raises(FileNotFoundError, match="T2V-Turbo-VC2"):
        lf.read_lora_list("/nonexistent/unet_lora.pt")


def test_peft_dropout_only_differs_in_train_mode(fixture):
    student = _student(fixture)
    lf.load_lora_list(fixture["tensors"], student)
    student.train()
    torch.manual_seed(0)
    out_train = _eps(student, fixture["inputs"])
    student.eval()
    assert (out_train - fixture["ref"]["output.eps_lora"]).abs().max() > 1e-3
