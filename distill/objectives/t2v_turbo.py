"""The T2V-Turbo training objective on one batch: consistency distillation + mixed reward.

``objective: {_component_: distill.objectives.T2VTurboObjective, ...}`` in a run config; it trains a
student (a model with the guidance layer). Pure of I/O and of process ranks: it takes latents, text
embeddings and the batch's global sample positions, and returns the loss with each term separately. All randomness of a sample
(solver index n, noise eps, guidance scale w) comes from a generator seeded by
(seed, global position), so a sample's draw does not depend on the batch size, the number of
processes or on resuming; the frames the rewards score are drawn once per batch from a
generator seeded by (seed, first position of the batch).

The noisy latents, the teacher's DDIM step and the consistency function are written with the
adapter's (alpha_t, sigma_t) and ``prediction_type`` (``t2v_turbo.diffusion.prediction``), so
epsilon teachers (ModelScope, VideoCrafter2) and flow teachers (Wan) run the same code.

Objective (T2V-Turbo, arXiv 2405.18750, Algorithm 1 and Eq. 10):

    L = L_CD - sum_i beta_i R_i,
    L_CD = d(f_theta(z_{t_{n+k}}, w, c, t_{n+k}), f_target(z_hat_{t_n}, w, c, t_n)),
    R_i = mean score of reward i on the decoded frames of f_theta(z_{t_{n+k}}, ...)

(with ``reward_max_noise`` s, a departure from the paper: R_i over the samples with sigma_{t_{n+k}} <= s only;
a one-step prediction from more noise is a blur, on which a reward may prefer other things than the caption).

Public-code weighting (``video_only_fraction`` q > 0): samples whose global position p
satisfies ``p mod D >= D - K`` (q = K / D as a reduced fraction) are *video-only*: they compute
only the clip-level reward terms; all other samples compute L_CD and the frame-level terms.
Every term is summed over its samples and divided by the batch size B, so the loss is

    L = (1/B) [ sum_{regular b} (L_CD,b - sum_frame beta R_b) + sum_{video-only b} (- sum_clip beta R_b) ],

whose expectation is (1 - q)(L_CD - sum_frame beta R) + q (- sum_clip beta R). With q = 2/8
and one sample per process on 8 processes this is exactly the public code's
[6 (L_CD - beta_img R_img) + 2 (- beta_vid R_vid)] / 8, but chosen by sample position, not by
rank, so it does not change with the number of processes. q = 0 (default) is the paper's
objective: every sample computes every term.
"""

from __future__ import annotations

import contextlib
import dataclasses
from fractions import Fraction
from typing import Annotated, ClassVar, Literal, Sequence

import torch
from torch import nn

from distill.ema import EMATarget
from distill.losses import consistency_distance
from distill.objectives.base import (
    FRAME_STREAM,
    Objective,
    ObjectiveOutput,
    RunContext,
    TrainingBatch,
    sample_generator,
)
from distill.objectives.rewarding import RewardDecoding, RewardTerm, decode_and_score, pixel_grad_norms
from t2v_turbo.diffusion.prediction import consistency_function, interpolate, x0_eps_from_output
from t2v_turbo.diffusion.schedule import ddim_timesteps, previous_timestep
from t2v_turbo.diffusion.solver import append_dims, cfg_lcm_form, guidance_scale_embedding
from t2v_turbo.schema import Range


@dataclasses.dataclass
class ConsistencySettings:
    """The consistency settings of ``T2VTurboObjective`` (T2V-Turbo v1 defaults)."""

    num_ddim_timesteps: Annotated[int, Range(ge=1)] = 50
    w_min: Annotated[float, Range(ge=0)] = 5.0
    w_max: Annotated[float, Range(ge=0)] = 15.0
    loss_type: Literal["huber", "l2"] = "huber"
    huber_c: Annotated[float, Range(gt=0)] = 0.001
    sigma_data: Annotated[float, Range(gt=0)] = 0.5
    timestep_scaling: Annotated[float, Range(gt=0)] = 10.0
    target: Literal["online", "ema"] = "online"
    ema_decay: Annotated[float, Range(ge=0, le=1)] = 0.95  # 1: theta^- stays at theta_0 (a frozen target)

    def __post_init__(self):
        if self.target not in ("online", "ema"):
            raise ValueError(f"objective.target={self.target!r} is not one of 'online' (public code), 'ema' (paper)")
        if self.loss_type not in ("huber", "l2"):
            raise ValueError(f"objective.loss_type={self.loss_type!r} is not one of 'huber', 'l2'")
        if not self.w_min <= self.w_max:
            raise ValueError(f"objective.w_min={self.w_min} must not exceed objective.w_max={self.w_max}")


@dataclasses.dataclass
class T2VTurboOutput(ObjectiveOutput):
    """``ObjectiveOutput`` plus ``cd_loss`` (the plain mean of L_CD over the samples that computed it,
    logged ``loss/cd``; None when no sample did) and ``video_only`` (B,) bool."""

    cd_loss: torch.Tensor | None = None
    video_only: torch.Tensor | None = None


def video_only_mask(positions: Sequence[int], fraction: float) -> torch.Tensor:
    """(B,) bool: samples at global ``positions`` that compute only the clip-level terms.

    With ``fraction`` = K / D (reduced, D <= 1000), position p is video-only iff p mod D >= D - K.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"objective.video_only_fraction={fraction} must lie in [0, 1)")
    ratio = Fraction(fraction).limit_denominator(1000)
    den, num = ratio.denominator, ratio.numerator
    return torch.tensor([p % den >= den - num for p in positions], dtype=torch.bool)


@dataclasses.dataclass
class T2VTurboObjective(RewardDecoding, ConsistencySettings, Objective):
    """L = L_CD - sum_i beta_i R_i on a batch of latents (see the module docstring).

    Config keys: the consistency settings (``ConsistencySettings``: num_ddim_timesteps, w_min, w_max,
    loss_type, huber_c, sigma_data, timestep_scaling, target, ema_decay), ``video_only_fraction``
    (the public-code weighting), ``decode_chunk_size`` and ``vae_gradient_checkpointing`` (how the
    reward frames are decoded) and ``frame_window`` N (the rewards choose their frames among the first N
    pixel frames only, so a causal VAE decodes only the latent frames those need; null: the whole video) and
    ``reward_max_noise`` s (the rewards score only samples whose noise coefficient sigma_{t_{n+k}} <= s, the
    flow sigma or sqrt(1 - abar_t); null: every sample, as in the paper).
    """

    batch_inputs: ClassVar[str] = "videos"
    model_kinds: ClassVar[tuple[str, ...]] = ("student",)

    video_only_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.0
    frame_window: Annotated[int, Range(ge=1)] | None = None
    reward_max_noise: Annotated[float, Range(gt=0, le=1)] | None = None

    def __post_init__(self):
        Objective.__post_init__(self)  # every field against its annotation
        ConsistencySettings.__post_init__(self)  # and what annotations cannot say (w_min <= w_max)
        self.rewards: list[RewardTerm] = []
        self.ema: EMATarget | None = None

    @property
    def settings(self) -> ConsistencySettings:
        """The consistency part of the objective's fields."""
        return self

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        if self.video_only_fraction > 0 and not any(t.reward.granularity == "clip" for t in run.rewards):
            raise ValueError(
                f"objective.video_only_fraction={self.video_only_fraction} needs a clip-level reward "
                f"(e.g. viclip, internvideo2); the configured rewards are {[t.name for t in run.rewards]}"
            )
        self.adapter = run.adapter
        self.rewards = list(run.rewards)
        self.guidance_embedding_dim = run.model.meta.time_cond_proj_dim
        self.grid = ddim_timesteps(self.adapter.num_train_timesteps, self.settings.num_ddim_timesteps)
        self.skip = self.adapter.num_train_timesteps // self.settings.num_ddim_timesteps
        if self.settings.target == "ema":
            self.ema = EMATarget(run.model.unet, self.settings.ema_decay)

    # ---- the contract with the trainer --------------------------------------------------
    def __call__(self, model: nn.Module, batch: TrainingBatch, grad_norms: bool = False) -> T2VTurboOutput:
        return self.loss(model, batch.latents, batch.text_embedding, batch.uncond_embedding, batch.prompts,
                         batch.positions, seed=self.run.seed, target_unet=self.run.model.unet, ema=self.ema,
                         grad_norms=grad_norms)

    def sharding_errors(self) -> list[str]:
        if self.video_only_fraction > 0:  # the target forward runs only when a process's batch has a CD sample
            return [f"objective.video_only_fraction={self.video_only_fraction}: a process whose samples are all "
                    "video-only skips the target forward the others run; use 0 under FSDP"]
        return []

    def after_optimizer_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.run.model.unet)

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is None:
            super().load_state_dict(state)
            return
        if "ema" not in state:
            raise RuntimeError("objective.target=ema but the checkpoint holds no EMA state")
        self.ema.load_state_dict(state["ema"])

    def weights(self) -> list[tuple[str, torch.Tensor]]:
        return [(f"ema.{name}", value) for name, value in self.ema.shadow.items()] if self.ema is not None else []

    def model_meta(self) -> dict:
        s = self.settings
        return {"num_ddim_timesteps": s.num_ddim_timesteps, "timestep_scaling": s.timestep_scaling,
                "sigma_data": s.sigma_data, "guidance_range": [float(s.w_min), float(s.w_max)]}

    # ---- per-sample draws ---------------------------------------------------------------
    def draw(self, positions: Sequence[int], latent_shape: Sequence[int], seed: int):
        """(n, w, eps) for each sample, from generators seeded by (seed, position)."""
        index, w, noise = [], [], []
        for p in positions:
            g = sample_generator(seed, p)
            index.append(torch.randint(0, len(self.grid), (), generator=g))
            w.append(self.settings.w_min + (self.settings.w_max - self.settings.w_min) * torch.rand((), generator=g))
            noise.append(torch.randn(tuple(latent_shape), generator=g))
        return torch.stack(index), torch.stack(w), torch.stack(noise)

    def coefficients(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) at grid indices ``t`` (B,), shaped to broadcast against an ``ndim`` tensor."""
        alpha, sigma = self.adapter.noise_coefficients()
        return append_dims(alpha.to(t.device)[t], ndim), append_dims(sigma.to(t.device)[t], ndim)

    def x0_eps(self, unet: nn.Module, z_t, t, text_embedding, w_embedding=None):
        """(x0, eps) of ``unet`` at (z_t, t), converted from its output by the adapter's prediction type."""
        output = self.adapter.predict(unet, z_t, t, text_embedding, timestep_cond=w_embedding).to(z_t.dtype)
        return x0_eps_from_output(self.adapter.prediction_type, z_t, output, *self.coefficients(t, z_t.ndim))

    def consistency_fn(self, unet: nn.Module, z_t, t, text_embedding, w_embedding) -> torch.Tensor:
        """f(z_t, w, c, t): c_skip(t) z_t + c_out(t) x0 for epsilon students, x0 for flow students."""
        x0, _ = self.x0_eps(unet, z_t, t, text_embedding, w_embedding)
        return consistency_function(self.adapter.prediction_type, z_t, x0, t, self.settings.sigma_data,
                                    self.settings.timestep_scaling)

    # ---- the loss -----------------------------------------------------------------------
    def loss(
        self,
        student: nn.Module,
        latents: torch.Tensor,
        text_embedding: torch.Tensor,
        uncond_embedding: torch.Tensor,
        prompts: Sequence[str],
        positions: Sequence[int],
        seed: int = 0,
        target_unet: nn.Module | None = None,
        ema: EMATarget | None = None,
        grad_norms: bool = False,
    ) -> T2VTurboOutput:
        """One T2V-Turbo loss on latents z_0 (B, c, T, h, w) at global sample ``positions``.

        ``student`` is called with gradient (it may be a DDP wrapper); ``target_unet`` (default
        ``student``) is the plain module the no-grad target runs on, with the EMA weights
        swapped in when ``ema`` is given.
        """
        s = self.settings
        device, batch = latents.device, latents.shape[0]
        if len(positions) != batch or len(prompts) != batch:
            raise ValueError(f"{len(positions)} positions and {len(prompts)} prompts for a batch of {batch}")
        video_only = video_only_mask(positions, self.video_only_fraction)
        # 1. n ~ U{0..N-1}: t_{n+k} = grid[n], t_n = t_{n+k} - k (floored at 0); w ~ U[w_min, w_max]; eps ~ N(0, I)
        index, w, eps = self.draw(positions, latents.shape[1:], seed)
        t_nk = self.grid[index].to(device)
        t_n = previous_timestep(t_nk, self.skip)
        eps = eps.to(device=device, dtype=latents.dtype)
        w = w.to(device)
        # 2. z_{t_{n+k}} = alpha z_0 + sigma eps (sqrt(abar), sqrt(1 - abar) for epsilon; 1 - sigma, sigma for flow)
        z_nk = interpolate(latents, eps, *self.coefficients(t_nk, latents.ndim))
        # 3. guidance embedding of w (LCM convention: the CFG scale is 1 + w)
        w_emb = guidance_scale_embedding(w, self.guidance_embedding_dim).to(device)

        terms: dict[str, torch.Tensor] = {}
        cd_rows = (~video_only).nonzero().flatten().tolist() if self.video_only_fraction > 0 else list(range(batch))
        cd_loss = None
        if cd_rows:
            # 4-5. teacher CFG + DDIM step to z_hat_{t_n}; target f at t_n without gradient
            rows = torch.tensor(cd_rows, device=device)
            target = self.consistency_target(target_unet or student, z_nk[rows], t_nk[rows], t_n[rows], w[rows], w_emb[rows],
                                 text_embedding[rows], uncond_embedding[rows], ema)
        # 6. student: f_theta(z_{t_{n+k}}, w, c, t_{n+k}) with gradient (computed after the target so
        #    that EMA weights are swapped in and out before any autograd graph of the student exists)
        f_theta = self.consistency_fn(student, z_nk, t_nk, text_embedding, w_emb)
        if cd_rows:
            # 7. L_CD = d(f_theta, f_target), per sample, summed over CD samples / B
            per_sample = torch.stack(
                [consistency_distance(f_theta[b], target[i], s.loss_type, s.huber_c) for i, b in enumerate(cd_rows)]
            )
            cd_loss = per_sample.mean()
            terms["cd"] = per_sample.sum() / batch

        # 8. rewards on the decoded single-step prediction f_theta(z_{t_{n+k}})
        reward_values, norms, decoded, latent_frames = self.reward_terms(
            f_theta, prompts, positions, seed, self.reward_mask(t_nk, video_only), grad_norms, terms
        )
        loss = sum(terms.values()) if terms else f_theta.sum() * 0.0
        scalars = {"loss/cd": cd_loss} if cd_loss is not None else {}
        return T2VTurboOutput(loss, terms, reward_values, scalars, norms, decoded, latent_frames, cd_loss=cd_loss,
                              video_only=video_only)

    @torch.no_grad()
    def consistency_target(self, unet, z_nk, t_nk, t_n, w, w_emb, text_embedding, uncond_embedding, ema):
        """Steps 4-5: teacher CFG + DDIM to z_hat_{t_n}, then the target f at (z_hat_{t_n}, t_n), no grad."""
        teacher = self.adapter.unet
        # 4. teacher (x0, eps) at (z_{t_{n+k}}, t_{n+k}) with the prompt and with the empty prompt;
        #    LCM-form CFG on x0 and eps: x0 = x0_c + w (x0_c - x0_u) (for a flow teacher this is CFG on
        #    the velocity, x0 and eps being affine in it); DDIM step (eta 0; Euler for flow) to t_n
        x0_c, eps_c = self.x0_eps(teacher, z_nk, t_nk, text_embedding)
        x0_u, eps_u = self.x0_eps(teacher, z_nk, t_nk, uncond_embedding)
        w_b = w.reshape(-1, *([1] * (z_nk.ndim - 1))).to(z_nk.dtype)
        x0 = cfg_lcm_form(x0_c, x0_u, w_b)
        eps = cfg_lcm_form(eps_c, eps_u, w_b)
        z_n = interpolate(x0, eps, *self.coefficients(t_n, z_nk.ndim))
        # 5. target f(z_hat_{t_n}, w, c, t_n): the online student (public code) or theta^- (paper)
        swap = ema.swapped_into(unet) if ema is not None else contextlib.nullcontext()
        with swap:
            return self.consistency_fn(unet, z_n, t_n, text_embedding, w_emb)

    def reward_mask(self, t_nk: torch.Tensor, video_only: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,) bool per granularity ("frame", "clip"): the samples its rewards score. Video-only samples
        score only the clip-level rewards (``video_only_fraction``); samples noisier than ``reward_max_noise``
        score none."""
        if self.reward_max_noise is None:
            quiet = torch.ones_like(video_only)
        else:
            quiet = self.coefficients(t_nk, 1)[1].cpu() <= self.reward_max_noise
        if self.video_only_fraction == 0:
            return {"frame": quiet, "clip": quiet}
        return {"frame": quiet & ~video_only, "clip": quiet & video_only}

    def reward_terms(self, f_theta, prompts, positions, seed, scored_by, grad_norms, terms):
        """Decode only the frames some reward needs (per group of samples needing the same
        frames) and add sum_b loss_i(R_i,b) / B (-beta_i R_i for the default linear form) to
        ``terms`` for every reward; ``scored_by`` (``reward_mask``) picks each granularity's samples."""
        if not self.rewards:
            return {}, {}, [], []
        batch, num_frames = f_theta.shape[0], self.adapter.pixel_frames(f_theta.shape[2])
        if self.frame_window is not None:
            num_frames = min(num_frames, self.frame_window)
        g = sample_generator(seed, positions[0], FRAME_STREAM)
        frame_idx = [list(r.reward.frame_indices(num_frames, g)) for r in self.rewards]
        rows = [scored_by["clip" if r.reward.granularity == "clip" else "frame"].nonzero().flatten().tolist()
                for r in self.rewards]
        scored, decoded, latent_frames = decode_and_score(
            self.adapter, f_theta, self.rewards, prompts, frame_idx, rows,
            options=self.decode_options)
        values, by_name = {}, {}
        for term, item in zip(self.rewards, scored):
            if item is None:
                continue
            values[term.name] = item.scores.mean()
            terms[term.name] = term.per_sample_loss(item.scores).sum() / batch
            by_name[term.name] = item
        norms = pixel_grad_norms(terms, by_name) if grad_norms else {}
        return values, norms, decoded, latent_frames
