"""The distillation recipe end to end on a tiny diffusers teacher and real mp4 files (CPU)."""

from pathlib import Path

import pytest
import torch

from distill.trainer import CHECKPOINT_PREFIX, TrainingRecipe, enable_gradient_checkpointing, list_checkpoints
from distill.trainer import run_training as run
from t2v_turbo.config import load_config
from t2v_turbo.testing import build_tiny_diffusers_t2v, write_caption_folder

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
CAPTIONS = ["a cat running", "a red car on the street", "a bird flying in the sky", "a dog on the beach"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    teacher = build_tiny_diffusers_t2v(root / "teacher")
    videos = write_caption_folder(root / "videos", CAPTIONS)
    return {"teacher": teacher, "videos": videos}


def tiny_config(assets, output_dir, *overrides):
    return load_config(
        TINY_CONFIG,
        [f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}", f"output_dir={output_dir}",
         "logging.tensorboard=false", *overrides],
    )


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.state_dict().items()}


def test_a_step_changes_exactly_the_lora_and_guidance_parameters(assets, tmp_path):
    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "train.max_steps=2", "validation.every=2"))
    recipe.setup()
    student_before = {n: p.detach().clone() for n, p in recipe.network.named_parameters()}
    frozen = {name: snapshot(m) for name, m in recipe.adapter.modules().items()}
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    changed = {n for n, p in recipe.network.named_parameters() if not torch.equal(p.detach(), student_before[n])}
    trainable = set(recipe.trainable_names)
    assert trainable == {n for n in student_before if ".lora_" in n} | {"time_embedding.cond_proj.weight"}
    # LoRA B starts at zero (so A gets no gradient in step 1); after two steps every trainable tensor moved
    assert changed == trainable
    for name, module in recipe.adapter.modules().items():
        after = snapshot(module)
        assert all(torch.equal(after[k], frozen[name][k]) for k in after), f"teacher {name} changed"
        assert not any(p.requires_grad for p in module.parameters())
    assert (tmp_path / "validation" / "step-000002.gif").is_file()
    assert (tmp_path / "student" / "student.safetensors").is_file()


def test_a_step_descends_the_cd_loss_as_its_gradient_predicts(assets, tmp_path):
    """With the target frozen (EMA decay 1: theta^- = theta_0) the CD loss on a fixed batch is a function of
    the student alone, so one SGD step of size lr must lower it by lr * |g|^2 to first order, and a few
    small steps must lower it every time. Deterministic: fixed batch, per-position draws, seeded dropout."""
    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "objective.target=ema", "objective.ema_decay=1.0",
                                        "optimizer._component_=torch.optim.SGD", "~optimizer.betas",
                                        "optimizer.lr=1.0", "train.max_steps=1"))
    recipe.setup()
    params = [p for p in recipe.network.parameters() if p.requires_grad]

    def loss(backward=False):
        torch.manual_seed(0)  # the same dropout masks (UNet3D's temporal convs) at every evaluation
        out = recipe.compute_loss(batch)
        if backward:
            recipe.accelerator.backward(out.loss)
        return out.cd_loss.item()

    try:
        batch = next(iter(recipe.dataloader))
        losses = [loss(backward=True)]
        g2 = sum(float((p.grad**2).sum()) for p in params)
        lr = 0.01 * losses[0] / g2  # a step predicted to lower the loss by 1 %
        for group in recipe.optimizer.param_groups:
            group["lr"] = lr
        recipe.optimizer.step()
        recipe.optimizer.zero_grad(set_to_none=True)
        losses.append(loss(backward=True))
        predicted = lr * g2
        assert (losses[0] - losses[1]) / predicted == pytest.approx(1.0, abs=0.1), (losses, predicted)
        for _ in range(3):
            recipe.optimizer.step()
            recipe.optimizer.zero_grad(set_to_none=True)
            losses.append(loss(backward=True))
    finally:
        recipe.cleanup()
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_interrupted_run_resumes_to_the_uninterrupted_weights(assets, tmp_path):
    # LoRA dropout draws from the global RNG, the data order and the per-sample noise from positions; the EMA
    # target and the LR warmup (4 steps, longer than the cut run) are state a resume must restore too
    common = ["train.checkpoint_every=2", "model.lora.dropout=0.1", "train.keep_checkpoints=5",
              "objective.target=ema", "objective.ema_decay=0.5", "lr_scheduler.name=constant_with_warmup",
              "lr_scheduler.warmup_steps=4"]
    full = run(tiny_config(assets, tmp_path / "full", "train.max_steps=4", *common))
    # the "crashed" run stops after step 3; its last checkpoint is step 2
    run(tiny_config(assets, tmp_path / "cut", "train.max_steps=3", *common))
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == [f"{CHECKPOINT_PREFIX}2"]
    (tmp_path / "cut" / f"{CHECKPOINT_PREFIX}4.tmp").mkdir()  # a half-written checkpoint is ignored and removed
    resumed = run(tiny_config(assets, tmp_path / "cut", "train.max_steps=4", *common), resume="latest")
    assert resumed.global_step == 4 and resumed.micro_step == 4
    assert not (tmp_path / "cut" / f"{CHECKPOINT_PREFIX}4.tmp").exists()
    full_params = dict(full.network.named_parameters())
    for name, param in resumed.network.named_parameters():
        assert torch.equal(param, full_params[name]), name
    resumed_ema, full_ema = resumed.objective.ema.shadow, full.objective.ema.shadow
    assert full_ema and all(torch.equal(resumed_ema[n], full_ema[n]) for n in full_ema)
    assert resumed.lr_scheduler.get_last_lr() == full.lr_scheduler.get_last_lr()
    checkpoint = tmp_path / "cut" / f"{CHECKPOINT_PREFIX}4"
    assert {p.name for p in checkpoint.iterdir()} >= {"student", "training_state.pt", "rng_state_0.pt", "config.yaml"}


def test_checkpoint_rotation_and_final_student_loads(assets, tmp_path):
    from t2v_turbo.student import load_student

    recipe = run(tiny_config(assets, tmp_path, "train.max_steps=4", "train.checkpoint_every=1",
                             "train.keep_checkpoints=2", "logging.tensorboard=true", "train.log_every=2"))
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"{CHECKPOINT_PREFIX}3", f"{CHECKPOINT_PREFIX}4"]
    unet, meta = load_student(tmp_path / "student", recipe.adapter)
    assert meta.lora["rank"] == 4 and meta.teacher_path == str(assets["teacher"].resolve())
    trained = dict(recipe.network.named_parameters())
    for name, param in unet.named_parameters():
        assert torch.equal(param, trained[name].detach()), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "loss/cd", "lr", "grad_norm/model", "data/skipped_videos"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [2, 4]


def test_ema_target_follows_the_update_rule(assets, tmp_path):
    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "objective.target=ema", "objective.ema_decay=0.9",
                                            "train.max_steps=1"))
    recipe.setup()
    theta0 = {n: recipe.objective.ema.shadow[n].clone() for n in recipe.trainable_names}
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    params = dict(recipe.network.named_parameters())
    for name in recipe.trainable_names:
        expected = 0.9 * theta0[name] + 0.1 * params[name].detach()
        assert torch.allclose(recipe.objective.ema.shadow[name], expected, atol=1e-7), name
    assert any(not torch.equal(recipe.objective.ema.shadow[n], params[n]) for n in recipe.trainable_names)


def test_rewards_train_the_student_and_stay_frozen(assets, tmp_path):
    from rewards.testing import TINY_REWARD_KWARGS

    hps = {k: str(v) if not isinstance(v, dict) else v for k, v in TINY_REWARD_KWARGS["hpsv2.1"](tmp_path / "hps").items()}
    cfg = tiny_config(assets, tmp_path / "run", "train.max_steps=2", "data.num_frames=8", "train.log_every=1")
    cfg["rewards"] = [
        {"name": "hpsv2.1", "weight": 2.0, "args": {**hps, "frame_selection": {"num_frames": 2}}},
        {"name": "viclip", "weight": 3.0, "args": {"config": "tiny", "checkpoint": None, "stride": 1}},
    ]
    recipe = TrainingRecipe(cfg)
    recipe.setup()
    rewards = {t.name: snapshot(t.reward) for t in recipe.objective.rewards}
    before = {n: p.detach().clone() for n, p in recipe.network.named_parameters() if p.requires_grad}
    try:
        batch = next(iter(recipe.dataloader))
        out = recipe.compute_loss(batch, grad_norms=True)
        assert set(out.rewards) == {"hpsv2.1", "viclip"} and set(out.reward_grad_norms) == {"hpsv2.1", "viclip"}
        assert out.decoded == [(2, 8)]  # viclip takes all 8 frames at stride 1
        recipe.optimizer.zero_grad()
        recipe.train()
    finally:
        recipe.cleanup()
    for term in recipe.objective.rewards:
        after = snapshot(term.reward)
        assert all(torch.equal(after[k], rewards[term.name][k]) for k in after)
        assert not term.reward.training
    assert all(not torch.equal(p.detach(), before[n]) for n, p in recipe.network.named_parameters() if n in before)


def test_gradient_checkpointing_gives_the_same_gradients(assets, tmp_path):
    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "train.max_steps=1"))
    recipe.setup()
    try:
        batch = next(iter(recipe.dataloader))
        grads = []
        for checkpointing in (False, True):
            if checkpointing:
                enable_gradient_checkpointing(recipe.network)
            torch.manual_seed(0)  # the same dropout masks (UNet3D's temporal convs have dropout 0.1)
            out = recipe.compute_loss(batch)
            out.loss.backward()
            grads.append({n: p.grad.clone() for n, p in recipe.network.named_parameters() if p.requires_grad})
            recipe.network.zero_grad(set_to_none=True)
    finally:
        recipe.cleanup()
    assert recipe.network.checkpointed_blocks == 5  # 2 down, mid, 2 up: diffusers' UNet3D has no switch: its blocks are wrapped
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("precision,compute_dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_mixed_precision_runs_the_student_in_the_configured_dtype(assets, tmp_path, precision, compute_dtype):
    """The dtype the student's layers compute in, observed inside a training step; weights stay float32."""
    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "train.max_steps=1", f"train.mixed_precision={precision}",
                                        "train.device=cpu", "train.checkpoint_every=0"))
    recipe.setup()
    seen = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
             for m in recipe.network.modules() if isinstance(m, torch.nn.Linear)]
    try:
        recipe.train()
    finally:
        for hook in hooks:
            hook.remove()
        recipe.cleanup()
    assert seen and set(seen) == {compute_dtype}, set(seen)
    assert all(p.dtype == torch.float32 for p in recipe.network.parameters() if p.requires_grad)
    assert torch.isfinite(torch.stack([p.detach().abs().sum() for p in recipe.network.parameters()])).all()


def test_train_command_runs_and_resumes(assets, tmp_path, capsys):
    from t2v_turbo.cli import main

    args = ["train", str(TINY_CONFIG), f"teacher.path={assets['teacher']}", f"data.folder={assets['videos']}",
            f"output_dir={tmp_path}", "logging.tensorboard=false", "train.checkpoint_every=1"]
    assert main(args + ["train.max_steps=1"]) == 0
    assert (tmp_path / "student" / "student.json").is_file() and (tmp_path / "config.yaml").is_file()
    assert main(args + ["train.max_steps=2", "--resume", "latest"]) == 0
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"{CHECKPOINT_PREFIX}1", f"{CHECKPOINT_PREFIX}2"]
    assert load_config(tmp_path / f"{CHECKPOINT_PREFIX}2" / "config.yaml")["train"]["max_steps"] == 2
    assert main(args + ["--resume", str(tmp_path / "nowhere")]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err


def test_video_only_fraction_needs_a_clip_reward(assets, tmp_path):
    from t2v_turbo.config import ConfigError

    recipe = TrainingRecipe(tiny_config(assets, tmp_path, "objective.video_only_fraction=0.25"))
    try:
        with pytest.raises(ConfigError, match=r"video_only_fraction=0.25 needs a clip-level reward.*\[\]"):
            recipe.setup()
    finally:
        recipe.cleanup()
