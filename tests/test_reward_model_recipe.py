"""The reward-model recipe (distill/reward_model.py) through the CLI on tiny mini-world pairs: training,
bit-exact resume, evaluation, and the trained model loading as the ``videoreward`` reward."""

import json
import math
from pathlib import Path

import pytest
import torch

from distill.reward_model import pair_loss, resolve_reward_model_config
from miniworld import preferences
from rewards import build_reward
from t2v_turbo.cli import main
from t2v_turbo.config import ConfigError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "miniworld_reward_model.yaml"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    preferences.preference_pairs(folder, num_pairs=12, seed=0)
    preferences.preference_pairs(folder, num_pairs=6, seed=1, split="all")
    return folder


def overrides(pairs, out, loss="btt", steps=4, space="pixels"):
    return [f"output_dir={out}", f"data.folder={pairs}", "data.num_pairs=12", f"eval_data.folder={pairs}",
            "eval_data.num_pairs=6", "model.width=8", "model.depth=2", f"model.space={space}",
            "dataloader.batch_size=3", f"train.max_steps={steps}", "train.checkpoint_every=2", "train.log_every=1",
            "train.eval_every=0", "train.device=cpu", f"loss.name={loss}", "lr_scheduler.warmup_steps=1"]


VIDEOREWARD_MODEL = ["model._component_=miniworld.reward_model.videoreward_model", "~model.space", "~model.width",
                     "~model.depth", "~model.teacher", "+model.hidden_size=16", "+model.num_layers=1",
                     "+model.vision_depth=1"]


def trained_state(folder):
    state = torch.load(folder / "checkpoint-4" / "training_state.pt", weights_only=False)
    return state["trainable"]


@pytest.mark.slow
@pytest.mark.parametrize("space", ["pixels", "latents"])
def test_trains_resumes_bit_exactly_and_evaluates(pairs, tmp_path, space):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["train-reward", str(CONFIG), *overrides(pairs, full, space=space)]) == 0
    assert main(["train-reward", str(CONFIG), *overrides(pairs, resumed, steps=2, space=space)]) == 0
    assert main(["train-reward", str(CONFIG), *overrides(pairs, resumed, space=space), "--resume", "latest"]) == 0
    a, b = trained_state(full), trained_state(resumed)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    summary = json.loads((full / "eval.json").read_text())
    assert summary["pairs"] == 6 and set(summary["accuracy"]) == {"VQ", "MQ", "TA", "overall"}
    for values in summary["accuracy"].values():
        assert 0 <= values["with_ties"] <= 1
        assert math.isnan(values["without_ties"]) or 0 <= values["without_ties"] <= 1
    lines = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    if space == "latents":
        with pytest.raises(ValueError, match="noisy latents scores no decoded videos"):
            build_reward("preference-model", checkpoint=full / "model")
        return
    # the final model is a `preference-model` reward whose inference_config z-normalises its own eval scores
    stats = summary["inference_config"]
    reward = build_reward("preference-model", checkpoint=full / "model", weights={"TA": 1.0})
    sample = preferences.preference_pairs(pairs, num_pairs=6, seed=1, split="all")[0]
    frames, prompt = sample["pixels_a"][None], [sample["prompt"]]
    torch.testing.assert_close(reward.score(frames, prompt), (reward.model(frames, prompt)[:, 2] - stats["TA_mean"])
                               / stats["TA_std"])


@pytest.mark.slow
def test_videoreward_architecture_trains_and_loads_as_videoreward(pairs, tmp_path):
    out = tmp_path / "qwen"
    args = [*overrides(pairs, out, steps=2), f"+model.folder={pairs / 'base'}", *VIDEOREWARD_MODEL]
    assert main(["train-reward", str(CONFIG), *args]) == 0
    stats = json.loads((out / "eval.json").read_text())["inference_config"]
    reward = build_reward("videoreward", checkpoint=out / "model", weights={"TA": 1.0})
    sample = preferences.preference_pairs(pairs, num_pairs=6, seed=1, split="all")[0]
    frames = sample["pixels_a"][None][:, :, reward.frame_indices(8)]
    raw = reward.model(frames, [sample["prompt"]])
    torch.testing.assert_close(reward.score(frames, [sample["prompt"]]),
                               (raw[:, 2] - stats["TA_mean"]) / stats["TA_std"])


@pytest.mark.slow
def test_regression_and_bt_losses_train(pairs, tmp_path):
    for loss in ("reg", "bt"):
        assert main(["train-reward", str(CONFIG), *overrides(pairs, tmp_path / loss, loss=loss, steps=2)]) == 0
        reward = build_reward("preference-model", checkpoint=tmp_path / loss / "model")
        sample = preferences.preference_pairs(pairs, num_pairs=6, seed=1, split="all")[0]
        scores = reward.score(sample["pixels_a"][None], [sample["prompt"]])
        assert scores.shape == (1,) and torch.isfinite(scores).all()


def test_config_errors_are_listed(capsys):
    with pytest.raises(ConfigError) as err:
        resolve_reward_model_config({"model": {"_component_": "miniworld.reward_model.videoreward_model", "depth": 2},
                                     "data": {"_component_": "miniworld.preferences.preference_pairs"},
                                     "loss": {"name": "hinge", "theta": 1.0}, "train": {"max_steps": 0}})
    message = str(err.value)
    for part in ("model.depth", "loss.name='hinge'", "loss.theta=1.0", "train.max_steps=0"):
        assert part in message
    assert main(["train-reward", str(CONFIG), "loss.name=hinge"]) == 2
    assert "loss.name='hinge' must be one of 'btt', 'bt', 'reg'" in capsys.readouterr().err


def test_pair_loss_is_the_mean_over_dimensions():
    delta = torch.tensor([[1.0, -0.5], [0.2, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[1, 0], [-1, 1]])
    ln5 = math.log(5.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    first = -(math.log(sig(1.0 - ln5)) + math.log(sig(-0.2 - ln5))) / 2
    second = -(math.log(24 * sig(-0.5 - ln5) * sig(0.5 - ln5)) + math.log(sig(0.0 - ln5))) / 2
    loss = pair_loss({"name": "btt", "theta": 5.0, "center": 0.0}, delta, labels)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="needs the absolute scores"):
        pair_loss({"name": "reg", "theta": 5.0, "center": 0.0}, delta, labels)
