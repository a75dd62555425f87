"""VADER and InstructVideo objectives (distill/objectives/) on a tiny diffusers teacher: the sampling
chains against the samplers and the formulas written out here, truncated backpropagation, the frames
decoded, the reward loss forms, SegVR + TAR and the editing corruption."""

import math

import pytest
import torch
from torch import nn

from distill.model import from_teacher
from distill.objectives import InstructVideoObjective, RewardTerm, RunContext, TrainingBatch, VADERObjective
from distill.objectives.instructvideo import editing_start, noise_with_temporal_offset
from distill.objectives.rewarding import reward_loss
from distill.objectives.sampling import ddim_cfg_chain, first_grad_step, model_chain, sampler_timesteps
from rewards.base import VideoReward
from t2v_turbo.adapters.diffusers_t2v import DiffusersT2VAdapter
from t2v_turbo.pipeline import TeacherPipeline
from t2v_turbo.student import StudentMeta
from t2v_turbo.testing import build_tiny_diffusers_t2v

PROMPTS = ["a cat running", "a red car"]


class MeanColourReward(VideoReward):
    """A small differentiable frame reward: a frozen linear map of each frame's mean colour; it records the
    frames it scored and accepts per-frame weights (mean of weight x score, as the frame rewards do)."""

    def __init__(self, granularity="frame"):
        super().__init__()
        self.granularity = granularity
        self.head = nn.Linear(3, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.5, -0.3, 0.2]]))
            self.head.bias.fill_(0.1)
        self.requires_grad_(False)
        self.calls = []

    def frame_indices(self, num_frames, generator=None):
        return [0, num_frames - 1]

    def per_frame(self, frames):
        return self.head(frames.mean(dim=(3, 4)).transpose(1, 2)).squeeze(-1)

    def score(self, frames, prompts, frame_weights=None):
        self.calls.append((tuple(frames.shape), None if frame_weights is None else frame_weights.tolist()))
        scores = self.per_frame(frames)
        if frame_weights is not None:
            scores = scores * frame_weights
        return scores.mean(dim=1)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return DiffusersT2VAdapter.from_pretrained(build_tiny_diffusers_t2v(tmp_path_factory.mktemp("teacher") / "tiny"))


@pytest.fixture
def full_step(adapter):
    """The teacher as a full-step model with LoRA, moved off LoRA's zero initialisation."""
    model = from_teacher(adapter, time_cond_proj_dim=None, lora={"rank": 4, "alpha": 4.0, "target_modules": "attention"})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.unet.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def bind(objective, adapter, model, rewards, seed=0):
    objective.bind(RunContext(adapter, model, list(rewards), seed, torch.device("cpu")))
    return objective


def text_batch(adapter, prompts=PROMPTS, positions=(0, 1), latents=None):
    with torch.no_grad():
        text, uncond = adapter.encode_prompts(prompts), adapter.empty_prompt_embedding(len(prompts))
    return TrainingBatch(list(prompts), list(positions), text, uncond, latents)


def test_first_grad_step_modes():
    assert first_grad_step(25, "last") == 24 and first_grad_step(25, "last", backprop_steps=25) == 0
    assert first_grad_step(25, "specific", cutoff=15) == 15
    draws = {first_grad_step(4, "random", generator=torch.Generator().manual_seed(s)) for s in range(40)}
    assert draws == {0, 1, 2, 3}  # uniform over the steps (VADER's 'rand')
    with pytest.raises(ValueError, match="backprop_steps`=26 must be in \\[1, 25\\]"):
        first_grad_step(25, "last", backprop_steps=26)
    with pytest.raises(ValueError, match="backprop_cutoff`=None"):
        first_grad_step(25, "specific")


def test_reward_loss_forms_of_the_public_code():
    r = torch.tensor([7.0, 12.0])
    assert reward_loss(r, "abs", 0.1, 10.0).tolist() == pytest.approx([0.3, 0.2])  # aesthetic 0.1 |r - 10|
    assert reward_loss(torch.tensor([0.3]), "linear", 1.0, 1.0).tolist() == pytest.approx([0.7])  # HPS 1 - s
    assert reward_loss(torch.tensor([21.0]), "abs", 0.01, 100.0).tolist() == pytest.approx([abs(1 - 21 / 100)])  # PickScore
    assert reward_loss(r, "linear", 2.0).tolist() == [-14.0, -24.0]  # T2V-Turbo: -beta r
    with pytest.raises(ValueError, match="'square' is not one of"):
        reward_loss(r, "square")


def test_deterministic_ddim_cfg_chain_equals_the_teacher_sampler(adapter):
    """eta = 0, no gradient: the chain is the teacher's DDIM + CFG sampler (DDIMCFGScheduler, one call per step)."""
    batch = text_batch(adapter)
    z = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = sampler_timesteps(adapter, StudentMeta.for_adapter(adapter, time_cond_proj_dim=None), 5)
    assert timesteps == [801, 601, 401, 201, 1]  # leading, the scheduler's steps_offset 1
    with torch.no_grad():
        ours = ddim_cfg_chain(adapter, adapter.unet, adapter.unet, z, timesteps, batch.text_embedding,
                              batch.uncond_embedding, 7.5, 0.0, first_grad=5)
        reference = TeacherPipeline(adapter)(PROMPTS, num_inference_steps=5, guidance_scale=7.5, num_frames=3,
                                             latents=z, output_type="latent")
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_consistency_chain_follows_the_multistep_formula(adapter):
    """A student's chain: denoised = c_skip z + c_out x0; z = sqrt(abar') denoised + sqrt(1 - abar') noise."""
    model = from_teacher(adapter, 256, lora={"rank": 4, "alpha": 4.0})
    model.meta.num_ddim_timesteps = 50
    batch = text_batch(adapter)
    timesteps = sampler_timesteps(adapter, model.meta, 2)
    assert timesteps == [999, 499]
    z = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    noises = [torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        ours = model_chain(adapter, model.meta, model.unet, model.unet, z, timesteps, batch.text_embedding,
                           batch.uncond_embedding, 3.0, 0.0, 2, lambda i: noises[i])
        abar = adapter.alphas_cumprod
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        w = torch.full((2,), 3.0)
        emb = torch.cat([torch.sin(1000 * w[:, None] * freqs), torch.cos(1000 * w[:, None] * freqs)], 1)
        x = z
        for i, t in enumerate(timesteps):
            eps = model.unet(x, torch.full((2,), t), encoder_hidden_states=batch.text_embedding, timestep_cond=emb).sample
            x0 = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
            c_skip = 0.25 / ((10.0 * t) ** 2 + 0.25)
            c_out = 10.0 * t / ((10.0 * t) ** 2 + 0.25) ** 0.5
            denoised = c_skip * x + c_out * x0
            if i + 1 < len(timesteps):
                x = abar[timesteps[i + 1]].sqrt() * denoised + (1 - abar[timesteps[i + 1]]).sqrt() * noises[i]
    torch.testing.assert_close(ours, denoised, atol=1e-5, rtol=1e-5)


def grad_calls(unet):
    """Record, per forward call of ``unet``, whether it ran with gradient enabled."""
    calls = []
    handle = unet.register_forward_pre_hook(lambda module, args: calls.append(torch.is_grad_enabled()))
    return calls, handle


@pytest.mark.parametrize("backprop_steps", [1, 4])
def test_vader_backpropagates_through_only_the_last_k_steps(adapter, full_step, backprop_steps):
    reward = MeanColourReward()
    objective = bind(VADERObjective(num_inference_steps=4, guidance_scale=5.0, eta=1.0, backprop_steps=backprop_steps,
                                    decode_frames="first_middle_last", num_frames=5),
                     adapter, full_step, [RewardTerm("colour", reward, 0.1, "abs", 10.0)])
    calls, handle = grad_calls(full_step.unet)
    decoded = []
    hook = adapter.vae.decoder.register_forward_pre_hook(lambda m, args: decoded.append(args[0].shape[0]))
    try:
        out = objective(full_step.unet, text_batch(adapter))
        out.loss.backward()
    finally:
        handle.remove()
        hook.remove()
    # one CFG call (conditional and unconditional rows together) per step; the last K with gradient
    assert calls == [False] * (4 - backprop_steps) + [True] * backprop_steps
    assert out.scalars["vader/grad_steps"] == backprop_steps
    assert out.decoded == [(2, 3)] and sum(decoded) == 6  # frames 0, 2, 4 of each video, nothing else
    assert reward.calls[0][0] == (2, 3, 3, 16, 16)
    grads = {n: p.grad for n, p in full_step.unet.named_parameters() if p.requires_grad}
    assert grads and all(".lora_" in n for n in grads) and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in adapter.unet.parameters()) and all(p.grad is None for p in adapter.vae.parameters())
    # loss = 0.1 mean_b |10 - r_b| with r recomputed from an independent decode of the same chain
    objective.run.seed = 0
    with torch.no_grad():
        from distill.objectives.base import CHAIN_STREAM, sample_generator
        from distill.objectives.sampling import draw_noise

        gens = [sample_generator(0, p, CHAIN_STREAM) for p in (0, 1)]
        batch = text_batch(adapter)
        z = draw_noise(gens, (4, 5, 8, 8))
        latents = model_chain(adapter, full_step.meta, full_step.unet, full_step.unet, z, [751, 501, 251, 1],
                              batch.text_embedding, batch.uncond_embedding, 5.0, 1.0, 4,
                              lambda i: draw_noise(gens, (4, 5, 8, 8)))
        r = reward.per_frame(adapter.decode_latents(latents)[:, :, [0, 2, 4]]).mean(dim=1)
    assert out.rewards["colour"].item() == pytest.approx(r.mean().item(), rel=1e-4)
    assert out.loss.item() == pytest.approx((0.1 * (10 - r).abs()).mean().item(), rel=1e-4)


def test_vader_on_a_student_uses_the_consistency_chain_and_checks_its_frames(adapter):
    student = from_teacher(adapter, 256, lora={"rank": 4, "alpha": 4.0})
    objective = bind(VADERObjective(decode_frames="random", num_frames=4), adapter, student,
                     [RewardTerm("colour", MeanColourReward(), 1.0)])
    assert objective.steps == student.meta.num_inference_steps and objective.scale == student.meta.guidance_scale
    calls, handle = grad_calls(student.unet)
    try:
        out = objective(student.unet, text_batch(adapter))
    finally:
        handle.remove()
    assert calls == [False] * (objective.steps - 1) + [True] and out.decoded == [(2, 1)]
    with pytest.raises(ValueError, match="decode_frames='random' gives one frame, but the clip-level reward"):
        bind(VADERObjective(), adapter, student, [RewardTerm("clip", MeanColourReward("clip"), 1.0)])
    with pytest.raises(ValueError, match="objective.backprop=specific needs objective.backprop_cutoff"):
        VADERObjective(backprop="specific")


def test_instructvideo_corrupts_to_tau_and_denoises_the_rest(adapter, full_step):
    objective = InstructVideoObjective(num_inference_steps=20, start_fraction=0.6, guidance_scale=4.0, segments=2)
    bind(objective, adapter, full_step, [RewardTerm("colour", MeanColourReward(), 1.0, "linear", 1.0)])
    assert objective.start_timestep == 551 and len(objective.timesteps[objective.start:]) == 12
    assert editing_start(20, 0.6) == 8
    with pytest.raises(ValueError, match="start_fraction=0.01 leaves 0 of 20 steps"):
        editing_start(20, 0.01)
    latents = torch.randn(2, 4, 6, 8, 8, generator=torch.Generator().manual_seed(3))
    calls, handle = grad_calls(full_step.unet)
    try:
        out = objective(full_step.unet, text_batch(adapter, latents=latents), grad_norms=True)
    finally:
        handle.remove()
    assert calls == [False] * 11 + [True]  # gradient only through the last step of the edit
    # SegVR: one frame in each of 2 segments of 6 frames, weighted by TAR exp(-|f - 3|)
    (shape, weights), = [c for c in objective.run.rewards[0].reward.calls]
    assert shape == (2, 3, 2, 16, 16)
    assert out.decoded == [(2, 2)] and out.reward_grad_norms["colour"] > 0
    # recompute: same corruption and chain, frames and weights written out here
    from distill.objectives.base import CHAIN_STREAM, FRAME_STREAM, sample_generator
    from distill.objectives.sampling import draw_noise

    gens = [sample_generator(0, p, CHAIN_STREAM) for p in (0, 1)]
    frame_gen = sample_generator(0, 0, FRAME_STREAM)
    frames = [int(torch.randint(0, 3, (1,), generator=frame_gen)), int(torch.randint(3, 6, (1,), generator=frame_gen))]
    assert weights == pytest.approx([math.exp(-abs(f - 3)) for f in frames])
    batch = text_batch(adapter, latents=latents)
    with torch.no_grad():
        eps = draw_noise(gens, (4, 6, 8, 8)) + 0.1 * draw_noise(gens, (4, 6, 1, 1))
        abar = adapter.alphas_cumprod[551]
        z = abar.sqrt() * latents + (1 - abar).sqrt() * eps
        edited = ddim_cfg_chain(adapter, full_step.unet, full_step.unet, z, list(range(551, 0, -50)),
                                batch.text_embedding, batch.uncond_embedding, 4.0, 0.0, 12)
        per_frame = objective.run.rewards[0].reward.per_frame(adapter.decode_latents(edited)[:, :, frames])
        r = (per_frame * torch.tensor(weights)).mean(dim=1)
    assert out.loss.item() == pytest.approx((1 - r).mean().item(), rel=1e-4)


def test_instructvideo_edits_samples_for_prompt_batches_and_refuses_clip_rewards(adapter, full_step):
    objective = bind(InstructVideoObjective(num_inference_steps=5, start_fraction=0.4, tar_lambda=None, num_frames=4),
                     adapter, full_step, [RewardTerm("colour", MeanColourReward(), 1.0)])
    calls, handle = grad_calls(full_step.unet)
    try:
        out = objective(full_step.unet, text_batch(adapter))
    finally:
        handle.remove()
    # the sample (5 steps, no gradient), then the edit's 2 steps, the last with gradient
    assert calls == [False] * 5 + [False, True] and out.decoded == [(2, 4)]
    assert objective.run.rewards[0].reward.calls[-1][1] is None  # no TAR weights
    with pytest.raises(ValueError, match="InstructVideo scores single frames"):
        bind(InstructVideoObjective(), adapter, full_step, [RewardTerm("clip", MeanColourReward("clip"), 1.0)])


def test_temporal_offset_noise_adds_one_offset_per_frame_and_channel():
    gens = [torch.Generator().manual_seed(5)]
    noise = noise_with_temporal_offset(gens, (2, 3, 4, 4), 0.1)
    g = torch.Generator().manual_seed(5)
    expected = torch.randn(2, 3, 4, 4, generator=g) + 0.1 * torch.randn(2, 3, 1, 1, generator=g)
    torch.testing.assert_close(noise[0], expected)
