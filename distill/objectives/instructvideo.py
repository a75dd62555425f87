"""InstructVideo: reward fine-tuning as editing (Yuan et al. 2023, arXiv 2312.12490).

``objective: {_component_: distill.objectives.InstructVideoObjective, ...}``; the batches are clips with
captions (the clip is edited) or prompts only (a sample of the model, drawn without gradient, is
edited). Per micro-batch:

1. z_0: the clip's VAE latents, or a sample of the model's own sampler (no gradient);
2. corrupt to the step where the last tau of the chain begins: with the model's sampler timesteps
   t_1 > ... > t_n (20 leading DDIM steps, steps_offset 1: 951, ..., 1), start at t_s, s = n - round(tau n)
   (tau = 0.6: t_s = 551, 12 steps left): z = alpha_s z_0 + sigma_s eps, where
   eps = N(0, I) + offset N(0, I) of shape (B, c, T, 1, 1) (temporal offset noise, 0.1: one offset per
   frame and channel);
3. denoise the remaining steps (DDIM + CFG for a full-step model, the consistency sampler for a student),
   with gradient only through the last ``backprop_steps`` (1) of them; checkpoint the denoiser with
   ``train.gradient_checkpointing``;
4. decode only the SegVR frames: the F frames split into S segments (4), one random frame in each
   (``rewards.frames.segmental_frames``); score each with the frame-level reward(s), weighted by TAR
   gamma_f = exp(-lambda |f - F/2|) (lambda 1; ``tar_lambda: null`` turns it off):
   r = mean over segments of gamma_f score_f;
5. loss = mean_b loss(r_b), the reward's loss form (the paper's 1 - r: ``{weight: 1, target: 1}``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar

import torch
from torch import nn

from distill.objectives.base import (
    CHAIN_STREAM,
    FRAME_STREAM,
    Objective,
    ObjectiveOutput,
    RunContext,
    TrainingBatch,
    sample_generator,
)
from distill.objectives.rewarding import RewardDecoding, batch_mean_terms, decode_and_score
from distill.objectives.sampling import ModelSampling, draw_noise, model_chain
from rewards.frames import segmental_frames, temporal_attenuation_weights
from t2v_turbo.diffusion.prediction import interpolate
from t2v_turbo.schema import Range


def noise_with_temporal_offset(generators: list[torch.Generator], shape: tuple[int, ...], strength: float) -> torch.Tensor:
    """eps = N(0, I) + strength * N(0, I) of shape (c, T, 1, 1) per sample: noise with a random offset per
    frame and channel (InstructVideo's temporal offset noise, strength 0.1)."""
    noise = draw_noise(generators, shape)
    if strength == 0:
        return noise
    return noise + strength * draw_noise(generators, (*shape[:2], 1, 1))


def editing_start(num_steps: int, fraction: float) -> int:
    """Index s of the step where the edit begins: the last round(fraction n) of n steps remain."""
    remaining = round(fraction * num_steps)
    if not 1 <= remaining <= num_steps:
        raise ValueError(f"objective.start_fraction={fraction} leaves {remaining} of {num_steps} steps; "
                         "it must leave at least one")
    return num_steps - remaining


@dataclasses.dataclass
class InstructVideoObjective(RewardDecoding, ModelSampling, Objective):
    """Reward fine-tuning as editing: corrupt a video part way, denoise the rest, reward the result.

    Args:
        num_inference_steps: steps of the whole chain (20 DDIM steps; a student's own step count by default).
        start_fraction: tau, the fraction of the chain that is re-run (0.6).
        guidance_scale: CFG scale of a full-step model (9, VGen's default) or a student's guidance scale
            (default: the student's).
        eta: DDIM stochasticity of the edit (0: deterministic).
        backprop_steps: the last steps run with gradient (1).
        segments, tar_lambda: SegVR segments (4) and the TAR lambda (1.0; null = unweighted frames).
        temporal_offset_noise: strength of the per-frame offset in the corruption noise (0.1).

    ``num_frames``, ``height``, ``width`` (``ModelSampling``) are the geometry of the videos sampled for prompt-only
    batches; ``decode_chunk_size``, ``vae_gradient_checkpointing`` (``RewardDecoding``) how frames are decoded.
    """

    batch_inputs: ClassVar[str] = "videos_or_prompts"
    needs_rewards: ClassVar[bool] = True
    full_step_steps: ClassVar[int] = 20
    full_step_guidance: ClassVar[float] = 9.0

    start_fraction: Annotated[float, Range(gt=0, le=1)] = 0.6
    eta: Annotated[float, Range(ge=0, le=1)] = 0.0
    backprop_steps: Annotated[int, Range(ge=1)] = 1
    segments: Annotated[int, Range(ge=1)] = 4
    tar_lambda: Annotated[float, Range(ge=0)] | None = 1.0
    temporal_offset_noise: Annotated[float, Range(ge=0)] = 0.1

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        self.adapter = run.adapter
        self.bind_sampler(self.adapter, run.model.meta)
        self.start = editing_start(self.steps, self.start_fraction)
        remaining = self.steps - self.start
        if self.backprop_steps > remaining:
            raise ValueError(f"objective.backprop_steps={self.backprop_steps} exceeds the {remaining} steps the edit runs")
        clip = [t.name for t in run.rewards if t.reward.granularity != "frame"]
        if clip:
            raise ValueError(f"rewards: InstructVideo scores single frames (SegVR); {clip} are clip-level rewards")

    @property
    def start_timestep(self) -> int:
        """t_s, the noise level the videos are corrupted to (551 for tau = 0.6 of 20 leading DDIM steps)."""
        return self.timesteps[self.start]

    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> ObjectiveOutput:
        run, adapter, meta = self.run, self.adapter, self.run.model.meta
        device = batch.text_embedding.device
        generators = [sample_generator(run.seed, p, CHAIN_STREAM) for p in batch.positions]
        z0 = batch.latents
        if z0 is None:  # 1. a sample of the model itself, without gradient
            z = draw_noise(generators, self.sample_shape).to(device)
            with torch.no_grad():
                z0 = model_chain(adapter, meta, run.model.unet, run.model.unet, z, self.timesteps,
                                 batch.text_embedding, batch.uncond_embedding, self.scale, self.eta,
                                 len(self.timesteps), lambda i: draw_noise(generators, self.sample_shape))
        shape = tuple(z0.shape[1:])
        # 2. corrupt to t_s with temporal offset noise
        alpha, sigma = (c.to(device) for c in adapter.noise_coefficients())
        t_start = self.start_timestep
        eps = noise_with_temporal_offset(generators, shape, self.temporal_offset_noise).to(z0)
        z = interpolate(z0, eps, alpha[t_start], sigma[t_start])
        # 3. denoise the remaining steps, gradient only through the last `backprop_steps`
        remaining = self.timesteps[self.start:]
        latents = model_chain(adapter, meta, model, run.model.unet, z, remaining, batch.text_embedding,
                              batch.uncond_embedding, self.scale, self.eta, len(remaining) - self.backprop_steps,
                              lambda i: draw_noise(generators, shape))
        # 4. SegVR frames (one per segment), TAR weights
        num_frames = adapter.pixel_frames(latents.shape[2])
        frames = segmental_frames(num_frames, self.segments, sample_generator(run.seed, batch.positions[0], FRAME_STREAM))
        weights = None if self.tar_lambda is None else temporal_attenuation_weights(frames, num_frames, self.tar_lambda)
        count = len(run.rewards)
        scored, decoded, latent_frames = decode_and_score(adapter, latents, run.rewards, batch.prompts, [frames] * count,
                                                          frame_weights=[weights] * count, options=self.decode_options)
        # 5. loss per reward term
        terms, rewards, norms = batch_mean_terms(run.rewards, scored, grad_norms)
        return ObjectiveOutput(sum(terms.values()), terms, rewards, {}, norms, decoded, latent_frames)
