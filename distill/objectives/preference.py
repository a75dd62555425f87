"""Preference objectives: Diffusion-/Flow-DPO from offline pairs, OnlineVPO's online DPO, and Flow-RWR.

All three train the network's own denoising target at a noise level t: z_t = alpha_t x0 + sigma_t eps,
target eps for epsilon models and the velocity v = eps - x0 for flow models
(``t2v_turbo.diffusion.prediction.training_target``), the error e = mean((output - target)^2) over a
clip's elements. One objective serves both families: the adapter's ``prediction_type`` picks the target.

- ``DPOObjective`` (Diffusion-DPO, Wallace et al. 2024; Flow-DPO, VideoAlign arXiv 2501.13918), on
  preference pairs (``distill.preference_data.PreferencePairs``): the preferred clip x_w and the rejected
  x_l share t and eps;

      L = -log sigmoid( -(beta_t / 2) [ (e_w - e_ref,w) - (e_l - e_ref,l) ] ),

  with beta_t = beta (``beta_schedule: constant``, VideoAlign's choice) or beta alpha_t^2 (``time``: the
  time-dependent weight that Diffusion-DPO's eps loss puts on a flow model's velocity error, since
  eps - eps_theta = alpha_t (v - v_theta); VideoAlign found it reward-hacks).
- ``OnlineDPOObjective`` (OnlineVPO, arXiv 2412.15159): each step samples ``num_samples`` clips per prompt
  from the current policy with its own sampler (a student's few consistency steps: that is what makes it
  cheap), scores them with the configured rewards (sum_i weight_i r_i), and applies the DPO loss to the
  best and worst clip of each prompt.
- ``RWRObjective`` (VideoAlign's Flow-RWR): the denoising loss of each clip weighted by
  softmax_b(r_b / temperature) over the batch, r_b = sum_i weight_i r_i of the clip (decoded, no gradient).

The reference model is the trained network with its trainable weights at a snapshot: their values when
training started (for a LoRA starting at B = 0 that is exactly the LoRA switched off; for a student trained
further, the student), refreshed from the policy every ``reference_refresh_every`` optimizer steps (online
DPO's reference update; 0 keeps the initial one). Only the trainable tensors are copied, never the network.

A student is trained at guidance scale ``guidance_scale`` (its guidance embedding); a full-step model takes none.
Timesteps are drawn per sample, uniformly over the training grid or logit-normal (flow_grpo's DPO). DPO's
forwards run without dropout (eval mode): the policy equals the reference at equal weights, so the loss
starts at log 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Annotated, ClassVar, Iterator, Literal, Sequence

import torch
from torch import nn

from distill.ema import EMATarget
from distill.losses import dpo_loss, reward_weights
from distill.objectives.base import (
    CHAIN_STREAM,
    FRAME_STREAM,
    LOSER_VAE_STREAM,
    Objective,
    ObjectiveOutput,
    RunContext,
    TrainingBatch,
    sample_generator,
)
from distill.objectives.rewarding import decode_and_score
from t2v_turbo.diffusion.prediction import interpolate, training_target
from t2v_turbo.diffusion.solver import append_dims, guidance_scale_embedding
from t2v_turbo.schema import Range


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout) inside the block, its former mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@dataclasses.dataclass
class DenoisingLoss(Objective):
    """What the preference objectives share: per-sample timestep and noise draws, the denoising error of a
    network and the guidance embedding a student is trained with."""

    guidance_scale: Annotated[float, Range(ge=0)] = 7.5
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        self.adapter = run.adapter

    def draw(self, positions: Sequence[int], latent_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, eps) per sample from generators seeded by (seed, position): t a grid index, uniform or
        floor(T sigmoid(u)) with u ~ N(0, 1) (logit-normal)."""
        steps = self.adapter.num_train_timesteps
        index, noise = [], []
        for p in positions:
            g = sample_generator(self.run.seed, p)
            if self.timestep_sampling == "uniform":
                index.append(torch.randint(0, steps, (), generator=g))
            else:
                index.append((torch.sigmoid(torch.randn((), generator=g)) * steps).long().clamp(0, steps - 1))
            noise.append(torch.randn(tuple(latent_shape), generator=g))
        return torch.stack(index), torch.stack(noise)

    def guidance_embedding(self, batch: int, device) -> torch.Tensor | None:
        meta = self.run.model.meta
        if not meta.is_student:
            return None
        w = torch.full((batch,), float(self.guidance_scale), device=device)
        return guidance_scale_embedding(w, meta.time_cond_proj_dim).to(device)

    def denoising_errors(self, network: nn.Module, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                         text: torch.Tensor) -> torch.Tensor:
        """e_b = mean((output - target)^2) of ``network`` at z_t = alpha_t x0 + sigma_t eps, (B,)."""
        alpha, sigma = (append_dims(c.to(x0.device)[t], x0.ndim) for c in self.adapter.noise_coefficients())
        z_t = interpolate(x0, eps, alpha, sigma)
        target = training_target(self.adapter.prediction_type, x0, eps)
        output = self.adapter.predict(network, z_t, t, text, timestep_cond=self.guidance_embedding(x0.shape[0],
                                                                                                    x0.device))
        return ((output.float() - target.float()) ** 2).flatten(1).mean(1)


@dataclasses.dataclass
class DPOObjective(DenoisingLoss):
    """Diffusion-DPO (epsilon models) / Flow-DPO (flow models) on preference pairs (module docstring).

    Config keys: ``beta`` (VideoDPO used 5000 on VideoCrafter2, flow_grpo's Flow-DPO 100), ``beta_schedule``
    (``constant`` | ``time``), ``guidance_scale`` (a student's w in the loss), ``timestep_sampling``
    (``uniform`` | ``logit_normal``), ``reference_refresh_every`` (0: the initial reference throughout).
    """

    batch_inputs: ClassVar[str] = "videos"
    needs_pairs: ClassVar[bool] = True
    uses_rewards: ClassVar[bool] = False

    beta: Annotated[float, Range(gt=0)] = 5000.0
    beta_schedule: Literal["constant", "time"] = "constant"
    reference_refresh_every: Annotated[int, Range(ge=0, note="0 keeps the initial reference")] = 0

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        self.reference = EMATarget(run.model.unet, decay=1.0)
        self.optimizer_steps = 0

    @torch.no_grad()
    def reference_errors(self, x0, eps, t, text) -> torch.Tensor:
        """The denoising errors of the reference (the trained network with the snapshot weights swapped in;
        called before any autograd graph of the network exists)."""
        unet = self.run.model.unet
        with self.reference.swapped_into(unet):
            return self.denoising_errors(unet, x0, eps, t, text)

    def after_optimizer_step(self) -> None:
        self.optimizer_steps += 1
        if self.reference_refresh_every and self.optimizer_steps % self.reference_refresh_every == 0:
            self.reference.reset(self.run.model.unet)

    def state_dict(self) -> dict:
        return {"reference": self.reference.state_dict(), "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        if "reference" not in state:
            raise RuntimeError(f"{type(self).__name__}: the checkpoint holds no reference weights")
        self.reference.load_state_dict(state["reference"])
        self.optimizer_steps = state["optimizer_steps"]

    def weights(self) -> list[tuple[str, torch.Tensor]]:
        return [(f"reference.{name}", value) for name, value in self.reference.shadow.items()]

    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> ObjectiveOutput:
        return self.dpo(model, batch.latents, self.loser_latents(batch), batch.text_embedding, batch.positions)

    @torch.no_grad()
    def loser_latents(self, batch: TrainingBatch) -> torch.Tensor:
        """The rejected clips' latents: ``latents_loser`` of the batch, or its ``pixels_loser`` VAE-encoded (sample b's
        posterior sample from the generator of (seed, its position, LOSER_VAE_STREAM): the same draw whatever batch or
        process the pair is in)."""
        if "latents_loser" in batch.extras:
            return batch.extras["latents_loser"].float()
        generators = [sample_generator(self.run.seed, p, LOSER_VAE_STREAM) for p in batch.positions]
        return self.adapter.encode_video(batch.extras["pixels_loser"], generator=generators).float()

    def dpo(self, model: nn.Module, winners: torch.Tensor, losers: torch.Tensor, text: torch.Tensor,
            positions: Sequence[int]) -> ObjectiveOutput:
        """The DPO loss of (winner, loser) latent pairs (B, c, T, h, w) with text (B, L, D)."""
        size, device = winners.shape[0], winners.device
        # 1. one t and one eps per pair, shared by winner and loser
        t, eps = self.draw(positions, winners.shape[1:])
        t, eps = t.to(device), eps.to(device=device, dtype=winners.dtype)
        x0, eps2 = torch.cat([winners, losers]), torch.cat([eps, eps])
        t2, text2 = torch.cat([t, t]), torch.cat([text, text])
        # 2. reference errors (no gradient), then the policy's (with gradient), both without dropout (the
        #    teacher's temporal-conv dropout, LoRA dropout): it would make the two differ at equal weights,
        #    noise that beta amplifies
        with eval_mode(self.run.model.unet):
            reference = self.reference_errors(x0, eps2, t2, text2)
            policy = self.denoising_errors(model, x0, eps2, t2, text2)
        # 3. beta_t: constant, or beta alpha_t^2 (Diffusion-DPO's eps weighting of the velocity error)
        beta = torch.full((size,), self.beta, device=device)
        if self.beta_schedule == "time":
            beta = beta * self.adapter.noise_coefficients()[0].to(device)[t] ** 2
        losses = dpo_loss(policy[:size], policy[size:], reference[:size], reference[size:], beta)
        margin = (policy[size:] - reference[size:]) - (policy[:size] - reference[:size])  # > 0: the policy prefers w
        scalars = {"loss/dpo": losses.mean().detach(), "dpo/accuracy": (margin > 0).float().mean(),
                   "dpo/margin": margin.mean().detach(), "dpo/error_winner": policy[:size].mean().detach(),
                   "dpo/error_loser": policy[size:].mean().detach()}
        return ObjectiveOutput(losses.mean(), {"dpo": losses.mean()}, scalars=scalars)


@dataclasses.dataclass
class OnlineDPOObjective(DPOObjective):
    """OnlineVPO's online DPO: pairs sampled from the current policy each step (module docstring).

    Config keys: DPO's, plus ``num_samples`` K (clips per prompt), ``num_inference_steps`` (the policy's
    sampler: a student's consistency steps at ``guidance_scale``; a full-step model's DDIM + CFG at
    ``sample_guidance_scale``), ``num_frames`` / ``height`` / ``width`` (default: the model's or the
    teacher's geometry) and ``reference_refresh_every`` N (OnlineVPO refreshes the reference every N steps).
    A prompt whose K clips all score the same carries no preference and is left out of the loss.
    """

    batch_inputs: ClassVar[str] = "prompts"
    needs_pairs: ClassVar[bool] = False  # the pairs come from the policy's own samples, not from the data
    uses_rewards: ClassVar[bool] = True
    needs_rewards: ClassVar[bool] = True

    num_samples: Annotated[int, Range(ge=2)] = 4
    num_inference_steps: Annotated[int, Range(ge=1)] = 4
    sample_guidance_scale: Annotated[float, Range(ge=0)] = 7.5
    num_frames: Annotated[int, Range(ge=1)] | None = None
    height: Annotated[int, Range(ge=1)] | None = None
    width: Annotated[int, Range(ge=1)] | None = None
    reference_refresh_every: Annotated[int, Range(ge=0, note="0 keeps the initial reference")] = 10

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        self.rewards = list(run.rewards)

    @torch.no_grad()
    def sample(self, prompt: str, position: int) -> torch.Tensor:
        """K latents of ``prompt`` from the current policy (its own sampler), from the generator of (seed,
        position, CHAIN_STREAM)."""
        from t2v_turbo.pipeline import model_pipeline

        unet, meta = self.run.model.unet, self.run.model.meta
        pipeline = model_pipeline(self.adapter, unet, meta, inference_mode=False)
        scale = self.guidance_scale if meta.is_student else self.sample_guidance_scale
        generator = sample_generator(self.run.seed, position, CHAIN_STREAM)
        with eval_mode(unet):
            latents = pipeline([prompt] * self.num_samples, num_inference_steps=self.num_inference_steps,
                               guidance_scale=scale, num_frames=self.num_frames, height=self.height,
                               width=self.width, generator=generator, output_type="latent")
        return latents.float()

    @torch.no_grad()
    def score(self, latents: torch.Tensor, prompt: str, position: int) -> tuple[torch.Tensor, dict]:
        """(sum_i weight_i r_i per clip (K,), each reward's scores) of K decoded clips of ``prompt``."""
        frames = self.adapter.pixel_frames(latents.shape[2])
        g = sample_generator(self.run.seed, position, FRAME_STREAM)
        indices = [list(term.reward.frame_indices(frames, g)) for term in self.rewards]
        scored, _, _ = decode_and_score(self.adapter, latents, self.rewards, [prompt] * latents.shape[0], indices)
        total = sum(term.weight * item.scores for term, item in zip(self.rewards, scored))
        return total, {term.name: item.scores for term, item in zip(self.rewards, scored)}

    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> ObjectiveOutput:
        winners, losers, rows, best, worst, means = [], [], [], [], [], {}
        for row, (prompt, position) in enumerate(zip(batch.prompts, batch.positions)):
            latents = self.sample(prompt, position)
            total, per_reward = self.score(latents, prompt, position)
            for name, scores in per_reward.items():
                means.setdefault(name, []).append(scores.mean())
            if total.max() == total.min():
                continue  # no preference among the K clips
            winners.append(latents[int(total.argmax())])
            losers.append(latents[int(total.argmin())])
            rows.append(row)
            best.append(total.max())
            worst.append(total.min())
        rewards = {name: torch.stack(values).mean() for name, values in means.items()}
        if not rows:
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return ObjectiveOutput(zero, {"dpo": zero}, rewards, {"online/pairs": 0.0})
        out = self.dpo(model, torch.stack(winners), torch.stack(losers), batch.text_embedding[rows],
                       [batch.positions[r] for r in rows])
        out.rewards = rewards
        out.scalars.update({"online/pairs": float(len(rows)), "online/reward_best": torch.stack(best).mean(),
                            "online/reward_worst": torch.stack(worst).mean()})
        return out


@dataclasses.dataclass
class RWRObjective(DenoisingLoss):
    """Reward-weighted regression (VideoAlign's Flow-RWR; eps regression for epsilon models), module docstring.

    Config keys: ``temperature`` tau of the weights softmax_b(r_b / tau) over the batch (a batch of one
    clip has weight 1: plain fine-tuning), ``guidance_scale``, ``timestep_sampling``.
    """

    batch_inputs: ClassVar[str] = "videos"
    uses_rewards: ClassVar[bool] = True
    needs_rewards: ClassVar[bool] = True

    temperature: Annotated[float, Range(gt=0)] = 1.0

    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> ObjectiveOutput:
        latents, device = batch.latents, batch.latents.device
        with torch.no_grad():
            frames = self.adapter.pixel_frames(latents.shape[2])
            g = sample_generator(self.run.seed, batch.positions[0], FRAME_STREAM)
            indices = [list(term.reward.frame_indices(frames, g)) for term in self.run.rewards]
            scored, _, _ = decode_and_score(self.adapter, latents, self.run.rewards, batch.prompts, indices)
            rewards = sum(term.weight * item.scores for term, item in zip(self.run.rewards, scored))
            weights = reward_weights(rewards, self.temperature).to(device)
        t, eps = self.draw(batch.positions, latents.shape[1:])
        errors = self.denoising_errors(model, latents, eps.to(device=device, dtype=latents.dtype), t.to(device),
                                       batch.text_embedding)
        loss = (weights * errors).sum()
        scalars = {"loss/rwr": loss.detach(), "rwr/weight_max": weights.max(), "rwr/error": errors.mean().detach()}
        means = {term.name: item.scores.mean() for term, item in zip(self.run.rewards, scored)}
        return ObjectiveOutput(loss, {"rwr": loss}, means, scalars)
