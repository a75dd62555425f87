"""VADER: reward gradients through the sampling chain (Prabhudesai et al. 2024, arXiv 2407.08737).

``objective: {_component_: distill.objectives.VADERObjective, ...}``; the batches are prompts
(``distill.data.PromptDataset``, or the captions of a video dataset, whose clips are then never
encoded). Per micro-batch:

1. z_T ~ N(0, I) per sample (generator keyed by the sample's position);
2. sample with the model's own sampler: DDIM + classifier-free guidance for a full-step model (VC2
   setting: 25 steps, eta 1.0, CFG 12), the multistep consistency sampler for a student (4 steps, the
   guidance scale in its embedding), ``t2v_turbo.distill.objectives.sampling``;
3. truncated backpropagation: only the steps from ``first_grad_step`` on run with gradient
   (``backprop: last`` with ``backprop_steps`` K, K = 1 by default; ``random``; ``specific`` with
   ``backprop_cutoff``); the earlier steps build no graph. Gradient checkpointing of the denoiser is the
   trainer's ``train.gradient_checkpointing``;
4. decode with gradient only the frames the rewards need (``decode_frames``: ``random`` = one random
   frame, ``first_middle_last``, ``every_second``, ``all``, ``first``/``middle``/``last``, or ``reward``
   = each reward's own choice), and score them;
5. loss = sum_i mean_b loss_i(r_i,b), each reward's loss form from its config entry (``reward_loss``:
   -weight r by default; VADER's aesthetic 0.1 |10 - r|, HPS 1 - s, PickScore |1 - s / 100|).

Logs: ``reward/<name>``, ``reward_term/<name>``, ``vader/grad_steps`` (K of this batch).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

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
from distill.objectives.sampling import ModelSampling, draw_noise, first_grad_step, model_chain
from rewards.frames import preset_frames, random_frames
from t2v_turbo.schema import Range

#: frame choices that give a clip-level reward a single frame
SINGLE_FRAME = ("random", "first", "middle", "last")


@dataclasses.dataclass
class VADERObjective(RewardDecoding, ModelSampling, Objective):
    """Reward fine-tuning by backpropagation through (the last steps of) the sampling chain.

    Args:
        num_inference_steps: sampling steps (default: 25 DDIM steps for a full-step model, the student's
            own step count for a student).
        guidance_scale: CFG scale of a full-step model (default 12, VADER's VC2 setting) or the guidance-
            embedding scale of a student (default: the student's).
        eta: DDIM stochasticity (1.0 = VADER's setting; ignored by the consistency sampler).
        backprop, backprop_steps, backprop_cutoff: the truncated backpropagation (see the module docstring).
        decode_frames: which frames are decoded and scored (see the module docstring).

    The sampled videos' ``num_frames``, ``height``, ``width`` (``ModelSampling``) and ``decode_chunk_size``,
    ``vae_gradient_checkpointing`` (``RewardDecoding``) are the shared keys of objectives that sample and decode.
    """

    batch_inputs: ClassVar[str] = "prompts"
    needs_rewards: ClassVar[bool] = True
    full_step_steps: ClassVar[int] = 25
    full_step_guidance: ClassVar[float] = 12.0

    eta: Annotated[float, Range(ge=0, le=1)] = 1.0
    backprop: Literal["last", "random", "specific"] = "last"
    backprop_steps: Annotated[int, Range(ge=1)] = 1
    backprop_cutoff: Annotated[int, Range(ge=0)] | None = None
    decode_frames: Literal["reward", "random", "first", "middle", "last", "first_middle_last", "every_second",
                           "all"] = "random"

    def __post_init__(self):
        super().__post_init__()
        if self.backprop == "specific" and self.backprop_cutoff is None:
            raise ValueError("objective.backprop=specific needs objective.backprop_cutoff (a step index)")

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        self.adapter = run.adapter
        self.bind_sampler(self.adapter, run.model.meta)
        first_grad_step(self.steps, self.backprop, self.backprop_steps, self.backprop_cutoff)  # checks K / cut-off
        clip = [t.name for t in run.rewards if t.reward.granularity == "clip"]
        if clip and self.decode_frames in SINGLE_FRAME:
            raise ValueError(f"objective.decode_frames={self.decode_frames!r} gives one frame, but the clip-level "
                             f"reward(s) {clip} score a clip: use 'all', 'every_second', 'first_middle_last' or 'reward'")

    def frame_indices(self, num_frames: int, generator: torch.Generator) -> list[list[int]]:
        """The frames of a ``num_frames`` video each reward scores: its own choice (``reward``) or one choice
        shared by all."""
        if self.decode_frames == "reward":
            return [list(t.reward.frame_indices(num_frames, generator)) for t in self.run.rewards]
        if self.decode_frames == "random":
            shared = random_frames(num_frames, 1, generator)
        else:
            shared = preset_frames(num_frames, self.decode_frames)
        return [shared for _ in self.run.rewards]

    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> ObjectiveOutput:
        run, device = self.run, batch.text_embedding.device
        generators = [sample_generator(run.seed, p, CHAIN_STREAM) for p in batch.positions]
        batch_generator = sample_generator(run.seed, batch.positions[0], FRAME_STREAM)
        first_grad = first_grad_step(self.steps, self.backprop, self.backprop_steps, self.backprop_cutoff,
                                     batch_generator)
        # 1-3. z_T, then the sampler with gradient only from step `first_grad` on
        z = draw_noise(generators, self.sample_shape).to(device)
        latents = model_chain(self.adapter, run.model.meta, model, run.model.unet, z, self.timesteps,
                              batch.text_embedding, batch.uncond_embedding, self.scale, self.eta, first_grad,
                              lambda i: draw_noise(generators, self.sample_shape))
        # 4-5. decode the frames the rewards need, score, loss
        frames = self.frame_indices(self.adapter.pixel_frames(latents.shape[2]), batch_generator)
        scored, decoded, latent_frames = decode_and_score(self.adapter, latents, run.rewards, batch.prompts, frames,
                                                          options=self.decode_options)
        terms, rewards, norms = batch_mean_terms(run.rewards, scored, grad_norms)
        scalars = {"vader/grad_steps": float(self.steps - first_grad)}
        return ObjectiveOutput(sum(terms.values()), terms, rewards, scalars, norms, decoded, latent_frames)
