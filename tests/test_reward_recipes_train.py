"""VADER and InstructVideo through the real CLI on the tiny configs (configs/tiny_vader.yaml,
configs/tiny_instructvideo.yaml): train, resume bit-exactly, export, sample; a distilled student trained
further (distill.model.from_student); config checks of the objective against model, rewards and data."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.trainer import TrainingRecipe, resolve_run_config
from t2v_turbo.cli import main
from t2v_turbo.config import ConfigError, load_config, load_yaml
from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CAPTIONS = ["a red circle moving left on a black background", "a green square staying still on a teal background",
            "a blue triangle moving up on a gray background"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"teacher": build_tiny_diffusers_t2v(root / "teacher"), "videos": write_caption_folder(root / "videos", CAPTIONS)}


def train_args(config, assets, out, *overrides):
    return ["train", str(CONFIGS / config), f"teacher.path={assets['teacher']}", f"output_dir={out}",
            "logging.tensorboard=false", *overrides]


def weights(folder):
    return load_file(str(Path(folder) / "student.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("config, extra", [
    ("tiny_vader.yaml", []),
    ("tiny_instructvideo.yaml", ["data.folder={videos}"]),
])
def test_recipe_trains_resumes_bit_exactly_exports_and_samples(config, extra, assets, tmp_path, capsys):
    extra = [e.format(**assets) for e in extra]
    common = ["train.checkpoint_every=1", "train.keep_checkpoints=5", *extra]
    assert main(train_args(config, assets, tmp_path / "full", "train.max_steps=3", *common)) == 0
    assert main(train_args(config, assets, tmp_path / "cut", "train.max_steps=2", *common)) == 0
    assert main(train_args(config, assets, tmp_path / "cut", "train.max_steps=3", *common, "--resume", "latest")) == 0
    full, cut = tmp_path / "full" / "model", tmp_path / "cut" / "model"  # a full-step model: no guidance layer
    assert_same_weights(full, cut)
    saved = weights(full)
    assert all(".lora_" in key for key in saved)  # the LoRA only: the teacher's weights are not copied
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in saved.items() if ".lora_B." in k)
    # export through the CLI: a peft adapter, a merged UNet, a stock pipeline with the teacher's DDIM scheduler
    for fmt in ("lora", "merged", "diffusers"):
        assert main(["export", str(full), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0, capsys.readouterr().err
    from diffusers import DDIMScheduler, TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(str(tmp_path / "diffusers"))
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.unet.config.time_cond_proj_dim is None
    assert "fine-tuned" in (tmp_path / "diffusers" / "README.md").read_text()
    frames = pipe("a red circle", num_inference_steps=2, guidance_scale=4.0, num_frames=2, height=16, width=16,
                  output_type="pt").frames
    assert torch.isfinite(torch.as_tensor(frames)).all()
    assert main(["sample", "--checkpoint", str(full), "--prompt", "a red circle", "--steps", "2",
                 "--out", str(tmp_path / "sample.mp4")]) == 0
    assert (tmp_path / "sample.mp4").stat().st_size > 0


@pytest.mark.slow
def test_a_distilled_student_trained_further_with_vader(assets, tmp_path):
    from t2v_turbo.student import load_student, read_student_meta

    distil = ["train", str(CONFIGS / "tiny.yaml"), f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
              f"output_dir={tmp_path / 'cd'}", "logging.tensorboard=false", "train.max_steps=1", "objective.num_ddim_timesteps=25"]
    assert main(distil) == 0
    source = tmp_path / "cd" / "student"
    vader = train_args("tiny_vader.yaml", assets, tmp_path / "vader", "train.max_steps=2",
                       "model={_component_: distill.model.from_student, path: " + str(source) + "}",
                       "objective.num_inference_steps=null", "objective.guidance_scale=null", "objective.backprop_steps=2")
    assert main(vader) == 0
    result = tmp_path / "vader" / "student"  # still a student: its folder name, LoRA and grid carry over
    meta, before = read_student_meta(result), read_student_meta(source)
    assert meta.lora == before.lora and meta.num_ddim_timesteps == 25 and meta.is_student
    trained, original = weights(result), weights(source)
    assert trained.keys() == original.keys()
    assert any(not torch.equal(trained[k], original[k]) for k in trained)
    from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter

    load_student(result, DiffusersT2VAdapter.from_pretrained(assets["teacher"]))  # strict
    assert main(["export", str(result), "--format", "lora", "--out", str(tmp_path / "lora")]) == 0


def test_objective_model_rewards_and_data_are_checked_before_anything_loads(assets, tmp_path):
    base = [f"teacher.path={tmp_path / 'missing-teacher'}", f"output_dir={tmp_path / 'run'}", "logging.tensorboard=false"]
    with pytest.raises(ConfigError, match="rewards: VADERObjective needs at least one reward"):
        resolve_run_config(load_config(CONFIGS / "tiny_vader.yaml", [*base, "rewards=[]"]))
    with pytest.raises(ConfigError, match="T2VTurboObjective trains a student, but model: builds a teacher"):
        resolve_run_config(load_config(CONFIGS / "tiny.yaml", [*base, "model.time_cond_proj_dim=null"]))
    with pytest.raises(ConfigError, match=r"objective.eta=3 must be .* <= 1; objective.backprop='lastt' must be one of"):
        resolve_run_config(load_config(CONFIGS / "tiny_vader.yaml", [*base, "objective.backprop=lastt", "objective.eta=3"]))
    with pytest.raises(ConfigError, match="rewards\\[0\\].loss='square' must be one of 'linear', 'abs'"):
        resolve_run_config(load_config(CONFIGS / "tiny_vader.yaml", [*base, "rewards=[{name: miniworld-image, loss: square}]"]))
    # a prompt dataset for an objective that trains on clips: named before the (missing) teacher loads
    recipe = TrainingRecipe(load_config(CONFIGS / "tiny.yaml", [*base, "data={_component_: distill.data.PromptDataset, "
                                                                "prompts: [a cat]}"]))
    try:
        with pytest.raises(ConfigError, match="gives prompts only, but T2VTurboObjective trains on video clips"):
            recipe.setup()
    finally:
        recipe.cleanup()


def test_a_config_of_the_legacy_layout_reads_as_the_current_one():
    current = load_yaml(CONFIGS / "tiny.yaml")
    objective = {k: v for k, v in current["objective"].items() if k != "_component_"}
    decode = {k: objective.pop(k) for k in ("video_only_fraction", "vae_gradient_checkpointing", "decode_chunk_size",
                                             "frame_window")}
    legacy = {k: v for k, v in current.items() if k not in ("model", "objective", "reward_options")}
    legacy["student"] = {k: v for k, v in current["model"].items() if k != "_component_"}
    legacy["distill"] = objective
    legacy["reward_options"] = {**current["reward_options"], **decode}
    assert resolve_run_config(legacy) == resolve_run_config(current)
    resolved = resolve_run_config(legacy)
    assert resolved["objective"]["video_only_fraction"] == 0.0 and resolved["reward_options"] == {"dtype": "float32"}


def test_prompt_dataset(tmp_path):
    from distill.data import PromptDataset, collate_samples

    file = tmp_path / "prompts.txt"
    file.write_text("a cat\n\n  a dog running  \n")
    data = PromptDataset(file=file)
    assert len(data) == 2 and data[1] == {"caption": "a dog running", "index": 1, "skipped": []}
    batch = collate_samples([data[0], data[1]])
    assert batch["captions"] == ["a cat", "a dog running"] and "pixels" not in batch
    with pytest.raises(ValueError, match="exactly one of `prompts`"):
        PromptDataset(prompts=["a"], file=file)
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        PromptDataset(file=tmp_path / "none.txt")
