"""The preference objectives (distill/objectives/preference.py) on tiny epsilon and flow teachers: the DPO and
RWR losses against the formulas computed here from the teacher's own network, online DPO's pair choice, the
reference refresh, and each objective training, resuming bit-exactly and exporting through the CLI."""

import math
from pathlib import Path

import pytest
import torch

from distill.model import from_teacher
from distill.objectives import DPOObjective, OnlineDPOObjective, RunContext, RWRObjective
from distill.objectives.rewarding import RewardTerm
from distill.preference_data import PreferencePairs
from distill.trainer import CHECKPOINT_PREFIX, TrainingRecipe
from rewards import build_reward
from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.adapters.wan import WanAdapter
from t2v_turbo.cli import main
from t2v_turbo.config import ConfigError, load_config
from t2v_turbo.testing import build_tiny_diffusers_t2v, build_tiny_wan, write_caption_folder, write_preference_pairs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CAPTIONS = ["a cat running", "a red car on the street", "a bird flying in the sky", "a dog on the beach",
            "a blue boat on the sea", "a horse in the snow"]
TINY_VICLIP = {"name": "viclip", "weight": 1.0, "args": {"config": "tiny", "checkpoint": None, "stride": 1}}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    return {"epsilon": build_tiny_diffusers_t2v(root / "teacher"), "flow": build_tiny_wan(root / "wan"),
            "pairs": write_preference_pairs(root / "pairs", CAPTIONS, seed=3)}


def adapter_of(assets, kind):
    if kind == "epsilon":
        return DiffusersT2VAdapter.from_pretrained(assets["epsilon"]).freeze()
    return WanAdapter.from_pretrained(assets["flow"], num_frames=9, height=32, width=32).freeze()


def geometry(kind):
    return {"num_frames": 4, "height": 16, "width": 16} if kind == "epsilon" else {"num_frames": 9, "height": 32,
                                                                                  "width": 32}


def draws(seed, position, shape, steps=1000):
    """The contract of the objectives' draws: t then eps from the generator of (seed, position, stream 0)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + position) * 8)
    return torch.randint(0, steps, (), generator=g), torch.randn(tuple(shape), generator=g)


def bound(objective, adapter, student=False, rewards=(), seed=0):
    model = from_teacher(adapter, time_cond_proj_dim=256 if student else None, train_guidance_layer=False,
                         lora={"rank": 4, "alpha": 4.0, "dropout": 0.0, "target_modules": "attention"}, seed=seed)
    objective.bind(RunContext(adapter, model, list(rewards), seed, torch.device("cpu")))
    return model


def perturb_lora(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=g))


def oracle_errors(adapter, network, x0, eps, t, text):
    """mean((output - target)^2) per clip, target eps (epsilon) or eps - x0 (flow), written out."""
    if adapter.prediction_type == "epsilon":
        abar = adapter.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        z, target = abar.sqrt() * x0 + (1 - abar).sqrt() * eps, eps
    else:
        sigma = adapter.flow_sigmas[t].view(-1, 1, 1, 1, 1)
        z, target = (1 - sigma) * x0 + sigma * eps, eps - x0
    network.eval()
    with torch.no_grad():
        output = adapter.predict(network, z, t, text)
    return ((output - target) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("schedule", ["constant", "time"])
def test_dpo_loss_against_the_formula_with_the_teacher_as_reference(assets, kind, schedule):
    adapter = adapter_of(assets, kind)
    objective = DPOObjective(beta=300.0, beta_schedule=schedule)
    model = bound(objective, adapter)
    perturb_lora(model.unet)  # the policy moves away from the reference (LoRA at B = 0: the teacher itself)
    g = geometry(kind)
    shape = adapter.latent_shape(2, g["num_frames"], g["height"], g["width"])
    gen = torch.Generator().manual_seed(7)
    winners, losers = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    text = adapter.encode_prompts(CAPTIONS[:2])
    positions = [5, 11]
    out = objective.dpo(model.unet, winners, losers, text, positions)

    drawn = [draws(0, p, shape[1:]) for p in positions]
    t, eps = torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])
    x0, eps2, t2, text2 = torch.cat([winners, losers]), torch.cat([eps, eps]), torch.cat([t, t]), torch.cat([text] * 2)
    policy = oracle_errors(adapter, model.unet, x0, eps2, t2, text2)
    reference = oracle_errors(adapter, adapter.unet, x0, eps2, t2, text2)
    alpha = adapter.alphas_cumprod[t].sqrt() if kind == "epsilon" else 1 - adapter.flow_sigmas[t]
    beta = 300.0 * (alpha**2 if schedule == "time" else torch.ones(2))
    inside = -(beta / 2) * ((policy[:2] - reference[:2]) - (policy[2:] - reference[2:]))
    expected = torch.stack([-torch.log(torch.sigmoid(x)) for x in inside]).mean()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(policy, reference)


def test_dpo_starts_at_log_2_and_its_gradient_reaches_only_the_trained_weights(assets):
    adapter = adapter_of(assets, "epsilon")
    objective = DPOObjective(beta=5000.0)
    model = bound(objective, adapter, student=True)
    model.unet.train()  # training mode: DPO still runs without the UNet's dropout
    shape = adapter.latent_shape(2, 4, 16, 16)
    winners, losers = torch.randn(shape), torch.randn(shape)
    out = objective.dpo(model.unet, winners, losers, adapter.encode_prompts(CAPTIONS[:2]), [0, 1])
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    out.loss.backward()
    grads = {n for n, p in model.unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".lora_" in n for n in grads)
    assert model.unet.training


def test_reference_refresh_every_n_steps_and_state_round_trip(assets):
    adapter = adapter_of(assets, "epsilon")
    objective = DPOObjective(reference_refresh_every=2)
    model = bound(objective, adapter)
    perturb_lora(model.unet)
    lora_b = {n: p.detach().clone() for n, p in model.unet.named_parameters() if ".lora_B." in n}
    objective.after_optimizer_step()
    assert all(objective.reference.shadow[n].abs().sum() == 0 for n in lora_b)  # still the initial weights
    objective.after_optimizer_step()
    assert all(torch.equal(objective.reference.shadow[n], v) for n, v in lora_b.items())  # refreshed
    state = objective.state_dict()
    fresh = DPOObjective(reference_refresh_every=2)
    bound(fresh, adapter)
    fresh.load_state_dict(state)
    assert fresh.optimizer_steps == 2
    assert all(torch.equal(fresh.reference.shadow[n], v) for n, v in lora_b.items())
    with pytest.raises(RuntimeError, match="no reference weights"):
        fresh.load_state_dict({})


def test_online_dpo_pairs_are_the_best_and_worst_of_the_policy_samples(assets):
    adapter = adapter_of(assets, "epsilon")
    adapter.default_num_frames, adapter.default_height, adapter.default_width = 4, 16, 16
    reward = build_reward("viclip", **TINY_VICLIP["args"])
    objective = OnlineDPOObjective(num_samples=3, num_inference_steps=2, beta=300.0)
    model = bound(objective, adapter, student=True, rewards=[RewardTerm("viclip", reward, 2.0)])
    perturb_lora(model.unet)
    prompts, positions = CAPTIONS[:2], [4, 9]
    text = adapter.encode_prompts(prompts)
    from distill.objectives.base import TrainingBatch

    out = objective(model.unet, TrainingBatch(prompts, positions, text, adapter.empty_prompt_embedding(2)))
    winners, losers = [], []
    for prompt, position in zip(prompts, positions):
        latents = objective.sample(prompt, position)
        assert latents.shape == (3, *adapter.latent_shape(1, 4, 16, 16)[1:])
        frames = adapter.decode_latents(latents)
        frame_generator = torch.Generator().manual_seed((0 * 1_000_003 + position) * 8 + 1)
        scores = 2.0 * reward(frames, [prompt] * 3, frame_generator)
        winners.append(latents[scores.argmax()])
        losers.append(latents[scores.argmin()])
    expected = objective.dpo(model.unet, torch.stack(winners), torch.stack(losers), text, positions)
    torch.testing.assert_close(out.loss, expected.loss)
    assert out.scalars["online/pairs"] == 2.0 and "viclip" in out.rewards


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
def test_rwr_weights_the_denoising_loss_by_the_softmax_of_the_rewards(assets, kind):
    adapter = adapter_of(assets, kind)
    reward = build_reward("viclip", **TINY_VICLIP["args"])
    objective = RWRObjective(temperature=0.05)
    model = bound(objective, adapter, rewards=[RewardTerm("viclip", reward, 1.5)])
    g = geometry(kind)
    shape = adapter.latent_shape(3, g["num_frames"], g["height"], g["width"])
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    prompts, positions = CAPTIONS[:3], [0, 1, 2]
    text = adapter.encode_prompts(prompts)
    from distill.objectives.base import TrainingBatch

    model.unet.eval()
    out = objective(model.unet, TrainingBatch(prompts, positions, text, adapter.empty_prompt_embedding(3), latents))
    with torch.no_grad():  # the frames come from the generator of (seed 0, the first position, stream 1)
        frame_generator = torch.Generator().manual_seed((0 * 1_000_003 + positions[0]) * 8 + 1)
        scores = 1.5 * reward(adapter.decode_latents(latents), prompts, frame_generator)
    weights = torch.exp(scores / 0.05) / torch.exp(scores / 0.05).sum()
    drawn = [draws(0, p, shape[1:]) for p in positions]
    errors = oracle_errors(adapter, model.unet, latents, torch.stack([d[1] for d in drawn]),
                           torch.stack([d[0] for d in drawn]), text)
    torch.testing.assert_close(out.loss.detach(), (weights * errors).sum(), rtol=1e-4, atol=1e-6)


def test_pairs_dataset_orients_winners_and_leaves_out_ties(assets):
    import csv

    rows = list(csv.DictReader(open(assets["pairs"])))
    data = PreferencePairs(assets["pairs"], preferred="TA", num_frames=4, fps=8, height=16, width=16)
    kept = [i for i, r in enumerate(rows) if r["TA"] != "tie"]
    assert len(data) == len(kept) and len(data.invalid_items) == len(rows) - len(kept)
    assert all(reason == "a tie on TA" for _, reason in data.invalid_items)
    from distill.preference_data import PreferencePairsCSV

    both = PreferencePairsCSV(assets["pairs"], num_frames=4, fps=8, height=16, width=16)
    for j, i in enumerate(kept):
        sample, pair = data[j], both[i]
        winner = "pixels_a" if rows[i]["TA"] == "A" else "pixels_b"
        loser = "pixels_b" if winner == "pixels_a" else "pixels_a"
        assert torch.equal(sample["pixels"], pair[winner]) and torch.equal(sample["pixels_loser"], pair[loser])
    overall = PreferencePairs(assets["pairs"], preferred="Overall", num_frames=4, fps=8, height=16, width=16)
    assert len(overall) == sum(r["Overall"] != "tie" for r in rows)


def config(assets, kind, objective_config, output_dir, *overrides):
    """A tiny run config of ``objective_config`` on the epsilon or flow teacher."""
    cfg = load_config(CONFIGS / objective_config, [f"output_dir={output_dir}", "logging.tensorboard=false",
                                                   "train.checkpoint_every=2", "train.keep_checkpoints=5",
                                                   "train.log_every=1", *overrides])
    if kind == "flow":
        cfg["teacher"] = {"_component_": "t2v_turbo.adapters.wan.WanAdapter.from_pretrained",
                          "path": str(assets["flow"]), "num_frames": 9, "height": 32, "width": 32, "fps": 8}
        if "csv_path" in cfg["data"]:
            cfg["data"].update(geometry("flow"))
        if cfg["objective"]["_component_"].endswith("OnlineDPOObjective"):
            cfg["objective"].update(geometry("flow"))
    else:
        cfg["teacher"]["path"] = str(assets["epsilon"])
    if "csv_path" in cfg["data"]:
        cfg["data"]["csv_path"] = str(assets["pairs"])
    return cfg


OBJECTIVE_CONFIGS = ["tiny_dpo.yaml", "tiny_online_dpo.yaml", "tiny_rwr.yaml"]


def cli_overrides(assets, kind, objective_config):
    """``config``'s changes as command-line overrides of ``t2v-turbo train``."""
    cfg = load_config(CONFIGS / objective_config)
    if kind == "epsilon":
        out = [f"teacher.path={assets['epsilon']}"]
    else:
        out = ["teacher={_component_: t2v_turbo.adapters.wan.WanAdapter.from_pretrained, path: " + str(assets["flow"])
               + ", num_frames: 9, height: 32, width: 32, fps: 8}"]
        sections = (["data"] if "csv_path" in cfg["data"] else []) + (["objective"] if "num_frames" in cfg["objective"]
                                                                      else [])
        out += [f"{section}.{key}={value}" for section in sections for key, value in geometry("flow").items()]
    if "csv_path" in cfg["data"]:
        out.append(f"data.csv_path={assets['pairs']}")
    return out


def saved_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "student.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("objective_config", OBJECTIVE_CONFIGS)
def test_trains_resumes_bit_exactly_and_exports_through_the_cli(assets, tmp_path, kind, objective_config, capsys):
    def train(out, steps, *extra):
        args = ["train", str(CONFIGS / objective_config), f"output_dir={tmp_path / out}", "logging.tensorboard=false",
                "train.checkpoint_every=2", "train.keep_checkpoints=5", f"train.max_steps={steps}",
                *cli_overrides(assets, kind, objective_config), *extra]
        assert main(args) == 0, capsys.readouterr().err

    train("full", 3)
    train("cut", 2)
    train("cut", 3, "--resume", "latest")
    folder = "student" if "online" in objective_config else "model"  # tiny_online_dpo trains a student
    full, resumed = saved_weights(tmp_path / "full" / folder), saved_weights(tmp_path / "cut" / folder)
    assert full.keys() == resumed.keys() and any(".lora_B." in k for k in full)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert any(v.abs().sum() > 0 for k, v in full.items() if ".lora_B." in k)  # trained away from LoRA off
    state = torch.load(tmp_path / "cut" / f"{CHECKPOINT_PREFIX}2" / "training_state.pt", weights_only=True)
    assert ("reference" in state["objective"]) == ("rwr" not in objective_config)
    assert main(["export", str(tmp_path / "full" / folder), "--format", "lora", "--out", str(tmp_path / "lora")]) == 0
    lora_file = "adapter_model.safetensors" if kind == "epsilon" else "pytorch_lora_weights.safetensors"  # peft | diffusers
    assert (tmp_path / "lora" / lora_file).is_file()


def test_objectives_refuse_data_they_cannot_train_on(assets, tmp_path):
    cfg = config(assets, "epsilon", "tiny_dpo.yaml", tmp_path / "a")
    videos = write_caption_folder(tmp_path / "videos", CAPTIONS[:2])
    cfg["data"] = {"_component_": "distill.data.VideoCaptionFolder", "folder": str(videos), "num_frames": 4,
                   "height": 16, "width": 16}
    recipe = TrainingRecipe(cfg)
    with pytest.raises(ConfigError, match="gives no preference pairs.*PreferencePairs"):
        recipe.setup()
    recipe.cleanup()
    with pytest.raises(ConfigError, match="OnlineDPOObjective needs at least one reward"):
        TrainingRecipe(config(assets, "epsilon", "tiny_online_dpo.yaml", tmp_path / "b", "rewards=[]"))
    with pytest.raises(ConfigError, match="objective.beta_schedule='linear' must be one of"):
        TrainingRecipe(config(assets, "epsilon", "tiny_dpo.yaml", tmp_path / "c", "objective.beta_schedule=linear"))
