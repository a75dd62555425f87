"""Every shipped YAML in configs/ is valid for the command it is written for (validated against signatures,
nothing built): reward-model configs (``*reward_model*.yaml``, for ``t2v-turbo train-reward``) against the
reward-model schema, every other one as a run config (``t2v-turbo train``)."""

from pathlib import Path

import pytest

from distill.reward_model import resolve_reward_model_config
from distill.trainer import resolve_run_config
from t2v_turbo.config import load_yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
REWARD_MODEL_CONFIGS = [p for p in CONFIGS if "reward_model" in p.name]
RUN_CONFIGS = [p for p in CONFIGS if p not in REWARD_MODEL_CONFIGS]


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=[p.name for p in RUN_CONFIGS])
def test_shipped_run_config_is_valid(path):
    resolved = resolve_run_config(load_yaml(path))
    assert resolved["teacher"]["_component_"] and resolved["data"]["_component_"]


@pytest.mark.parametrize("path", REWARD_MODEL_CONFIGS, ids=[p.name for p in REWARD_MODEL_CONFIGS])
def test_shipped_reward_model_config_is_valid(path):
    resolved = resolve_reward_model_config(load_yaml(path))
    assert resolved["model"]["_component_"] and resolved["data"]["_component_"] and resolved["loss"]["name"]


def test_configs_are_found():
    assert {"tiny.yaml", "t2v_turbo_ms.yaml"} <= {p.name for p in CONFIGS}


def test_ms_config_has_the_paper_settings():
    cfg = resolve_run_config(load_yaml(CONFIGS[0].parent / "t2v_turbo_ms.yaml"))
    assert cfg["teacher"]["path"] == "ali-vilab/text-to-video-ms-1.7b"
    assert cfg["model"]["lora"] == {"rank": 32, "alpha": 32.0, "dropout": 0.1, "target_modules": "attention"}
    assert [(r["name"], r["weight"]) for r in cfg["rewards"]] == [("hpsv2.1", 2.0), ("viclip", 3.0)]
    assert (cfg["data"]["num_frames"], cfg["data"]["height"], cfg["data"]["width"]) == (16, 256, 256)
    assert cfg["optimizer"]["lr"] == 1e-5 and cfg["lr_scheduler"]["name"] == "constant"
    assert cfg["objective"] == {"_component_": "distill.objectives.T2VTurboObjective", "num_ddim_timesteps": 50,
                                "w_min": 5.0, "w_max": 15.0, "loss_type": "huber", "huber_c": 0.001, "sigma_data": 0.5,
                                "timestep_scaling": 10.0, "target": "online", "ema_decay": 0.95,
                                "video_only_fraction": 0.0, "decode_chunk_size": 4, "vae_gradient_checkpointing": True,
                                "frame_window": None, "reward_max_noise": None}
    assert cfg["train"]["max_steps"] == 10000 and cfg["train"]["mixed_precision"] == "bf16"
    assert cfg["train"]["max_grad_norm"] == 1.0
