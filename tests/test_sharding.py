"""The FSDP launch config against the real model families, and the settings the trainer refuses (no processes;
tests/test_fsdp.py trains under FSDP on two)."""

from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin

from distill.objectives import T2VTurboObjective
from distill.sharding import blocks_to_wrap, fsdp_plugin_errors

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"


def shipped_fsdp_config() -> dict:
    return yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"]


def real_size_networks():
    """ModelScope's UNet3D (diffusers' default config), our VideoCrafter2 UNet and Wan2.1-1.3B, on the meta device."""
    from diffusers import UNet3DConditionModel

    from t2v_turbo.adapters.wan import wan21_transformer
    from t2v_turbo.models.vc2.unet import VC2UNet

    with torch.device("meta"):
        unet3d, vc2 = UNet3DConditionModel(), VC2UNet(time_cond_proj_dim=256)
    return {"unet3d": unet3d, "vc2": vc2, "wan": wan21_transformer("1.3B")}


def test_the_fsdp_config_names_the_blocks_of_each_model_family_and_they_hold_its_weights():
    names = shipped_fsdp_config()["fsdp_transformer_layer_cls_to_wrap"].split(",")
    expected = {"unet3d": ["CrossAttnDownBlock3D", "DownBlock3D", "UNetMidBlock3DCrossAttn", "CrossAttnUpBlock3D", "UpBlock3D"],
                "vc2": ["TimestepEmbedSequential"], "wan": ["WanTransformerBlock"]}
    for family, network in real_size_networks().items():
        kept = blocks_to_wrap(names, network)
        assert kept == expected[family], family
        total = sum(p.numel() for p in network.parameters())
        in_units = sum(p.numel() for m in network.modules() if type(m).__name__ in kept for p in m.parameters())
        # what stays in the root unit (embeddings, in/out convolutions) is gathered for the whole step: keep it small
        assert 1 - in_units / total < 0.02, (family, 1 - in_units / total)


def test_a_network_with_none_of_the_named_blocks_is_refused_by_name():
    with pytest.raises(ValueError, match=r"none of them a block of Sequential"):
        blocks_to_wrap(["WanTransformerBlock"], torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_the_shipped_fsdp_settings_pass_and_the_unsupported_ones_are_named():
    shipped = shipped_fsdp_config()
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=shipped["fsdp_version"], activation_checkpointing=shipped["fsdp_activation_checkpointing"],
        cpu_ram_efficient_loading=shipped["fsdp_cpu_ram_efficient_loading"])
    assert fsdp_plugin_errors(plugin) == []
    refused = FullyShardedDataParallelPlugin(fsdp_version=2, activation_checkpointing=True)
    refused.cpu_ram_efficient_loading = True  # set after construction: constructed with it, the plugin wants a GPU
    errors = fsdp_plugin_errors(refused) + fsdp_plugin_errors(FullyShardedDataParallelPlugin(fsdp_version=1))
    assert [e.split(":")[0] for e in errors] == ["fsdp_activation_checkpointing", "fsdp_cpu_ram_efficient_loading",
                                                 "fsdp_version"]


def test_video_only_samples_are_refused_under_fsdp():
    """A process whose samples are all video-only would skip the target forward the others run (a collective)."""
    assert T2VTurboObjective().sharding_errors() == []
    errors = T2VTurboObjective(video_only_fraction=0.5).sharding_errors()
    assert len(errors) == 1 and errors[0].startswith("objective.video_only_fraction=0.5")
