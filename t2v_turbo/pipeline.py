"""Prompts -> videos: the 4-step student (``T2VTurboPipeline``) and the teacher (``TeacherPipeline``).

Both talk to the model only through a ``TeacherAdapter`` (text encoding, ``predict``, VAE
decode), so they work for every teacher family; the scheduler follows the adapter's prediction
type. Videos come back as (B, 3, T, H, W) in [-1, 1] (``output_type="pt"``) or as latents
(``output_type="latent"``). With ``return_dict=True`` they come back as diffusers' video
pipelines return them: an output whose ``.frames`` are, for ``output_type`` "np", (B, T, H, W, 3)
floats in [0, 1]; "pt", (B, T, 3, H, W) in [0, 1]; "pil", lists of PIL images; "latent", the latents.

A student loads the diffusers way, ``T2VTurboPipeline.from_pretrained(folder)``, with its LoRA
merged into the weights (``fuse_lora=False`` keeps peft's unmerged layers) and the sampling defaults
of its ``student.json`` (steps, guidance scale, geometry, fps); a guidance scale outside the range
the student was trained on gives a warning.

Random draws follow diffusers' pipelines: the initial latents are ``torch.randn((B, c, T, h, w),
generator)``; epsilon students step with frames as a batch (B·T, c, h, w), as
``TextToVideoSDPipeline`` does, flow students on (B, c, T, h, w) with diffusers'
``FlowMatchLCMScheduler``, as ``WanPipeline`` does. So a student exported with ``t2v_turbo.export``
and run by stock diffusers with the same random draws reproduces our samples.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers.utils import BaseOutput
from torch import nn

from t2v_turbo.diffusion.solver import guidance_scale_embedding
from t2v_turbo.sampler.flow_consistency import flow_consistency_scheduler, set_flow_timesteps
from t2v_turbo.sampler.scheduling_ddim_cfg import DDIMCFGScheduler, classifier_free_guidance
from t2v_turbo.sampler.scheduling_t2v_turbo import T2VTurboScheduler


@dataclasses.dataclass
class VideoPipelineOutput(BaseOutput):
    """diffusers' output convention for video pipelines (``return_dict=True``), as
    ``TextToVideoSDPipeline`` returns it: ``.frames`` (also ``output[0]``, ``output["frames"]``)."""

    frames: Any


class GuidanceRangeWarning(UserWarning):
    """A student sampled at a guidance scale outside the range it was trained on."""


def frames_as_batch(latents: torch.Tensor) -> torch.Tensor:
    """(B, c, T, h, w) -> (B·T, c, h, w), the layout diffusers' video pipelines step in."""
    return latents.transpose(1, 2).flatten(0, 1)


def frames_from_batch(flat: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Inverse of ``frames_as_batch``."""
    return flat.unflatten(0, (batch_size, -1)).transpose(1, 2)


def _sampling(call):
    """Run a pipeline's ``__call__`` under ``torch.inference_mode`` when the pipeline allows it
    (``inference_mode``) and no ``reward_guidance`` needs gradients, else under ``torch.no_grad``.
    Inference mode skips autograd's bookkeeping altogether (the 4-step mini-world student samples 0.8 %
    faster than under no_grad, bench/RESULTS.md); its tensors can never enter autograd later, which
    is why a network that is being trained samples with ``inference_mode=False``."""

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        use_inference_mode = self.inference_mode and kwargs.get("reward_guidance") is None
        with torch.inference_mode() if use_inference_mode else torch.no_grad():
            return call(self, *args, **kwargs)

    return wrapper


class _VideoPipelineBase:
    """Shared geometry, initial noise and decoding of the two pipelines."""

    def __init__(self, adapter, unet: nn.Module, scheduler, meta=None, inference_mode: bool = True):
        self.adapter = adapter
        self.unet = unet
        self.scheduler = scheduler
        #: the trained model's ``StudentMeta`` (sampling defaults and geometry), or None
        self.meta = meta
        #: sample under ``torch.inference_mode`` (False for a network in training: under FSDP its gathered
        #: parameters would become inference tensors, which its next training step cannot use)
        self.inference_mode = inference_mode
        #: UNet forward passes and batch rows evaluated since construction (for benchmarks)
        self.unet_calls = 0
        self.unet_evaluations = 0

    def _predict(self, latents, timestep, text, timestep_cond, fps):
        """The network output (eps or velocity) for every row at the scheduler's ``timestep``: a grid
        index for epsilon schedulers, the model timestep T sigma (float) for flow schedulers."""
        self.unet_calls += 1
        self.unet_evaluations += latents.shape[0]
        flow = self.adapter.prediction_type == "flow"
        t = torch.full((latents.shape[0],), float(timestep) if flow else int(timestep), device=latents.device)
        return self.adapter.predict(self.unet, latents, t, text, timestep_cond=timestep_cond, fps=fps)

    def _reward_guided(self, output, z, timestep, reward, scale):
        """``reward_guidance``: output - w grad_z r(z_t, t) (``reward_guided_output``); the output as is without it."""
        if reward is None or scale == 0:
            return output
        flow = self.adapter.prediction_type == "flow"
        t = torch.full((z.shape[0],), float(timestep) if flow else int(timestep), device=z.device)
        return reward_guided_output(output, z, t, reward, scale)

    def _initial_latents(self, batch_size, num_frames, height, width, generator, latents, device, dtype):
        shape = self.adapter.latent_shape(batch_size, num_frames, height, width)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}")
            return latents.to(device=device, dtype=dtype)
        noise_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=noise_device, dtype=dtype).to(device)

    def _finish(self, latents, output_type, frame_chunk_size, return_dict=False):
        allowed = ("pt", "np", "pil", "latent") if return_dict else ("pt", "latent")
        if output_type not in allowed:
            raise ValueError(f"`output_type`={output_type!r} is not one of {allowed} (return_dict={return_dict})")
        video = latents
        if output_type != "latent":
            video = self.adapter.decode_latents(latents, frame_chunk_size=frame_chunk_size).float().clamp(-1, 1)
        if not return_dict:
            return video
        from diffusers.video_processor import VideoProcessor

        if output_type != "latent":
            video = VideoProcessor(do_resize=False).postprocess_video(video, output_type=output_type)
        return VideoPipelineOutput(frames=video)

    def _geometry(self, num_frames, height, width, fps):
        m, a = self.meta, self.adapter
        if m is not None:
            num_frames, height, width, fps = num_frames or m.num_frames, height or m.height, width or m.width, fps or m.fps
        return (num_frames or a.default_num_frames, height or a.default_height, width or a.default_width, fps or a.default_fps)


class T2VTurboPipeline(_VideoPipelineBase):
    """Multistep consistency sampling of a student: one UNet call per step, guidance scale w
    passed only through the guidance embedding (``timestep_cond``).

    ``meta`` (the student's ``StudentMeta``) supplies the defaults of steps, guidance scale and
    geometry, and the trained guidance range that a warning checks; without it the defaults are
    4 steps, w = 7.5 and the teacher's geometry.
    """

    def __init__(self, adapter, unet: nn.Module, scheduler=None, spacing: str = "t2v_turbo",
                 num_ddim_timesteps: int = 50, meta=None, inference_mode: bool = True):
        """``scheduler`` defaults to ``T2VTurboScheduler`` (epsilon students, spacing in its config) or
        diffusers' ``FlowMatchLCMScheduler`` (flow students, ``spacing`` and ``num_ddim_timesteps`` here)."""
        if scheduler is None:
            flow = adapter.prediction_type == "flow"
            scheduler = flow_consistency_scheduler(adapter) if flow else T2VTurboScheduler.from_adapter(adapter)
        super().__init__(adapter, unet, scheduler, meta, inference_mode)
        self.spacing = spacing
        self.num_ddim_timesteps = num_ddim_timesteps

    @classmethod
    def from_pretrained(cls, student_folder: str | Path, device=None, dtype=None, spacing: str = "t2v_turbo",
                        fuse_lora: bool = True) -> "T2VTurboPipeline":
        """The student saved in ``student_folder`` on its teacher (see ``load_student_pipeline``)."""
        return load_student_pipeline(student_folder, device=device, dtype=dtype, spacing=spacing, fuse_lora=fuse_lora)

    @_sampling
    def __call__(
        self,
        prompts: str | Sequence[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
        fps: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        timesteps: list[int] | None = None,
        frame_chunk_size: int = 8,
        return_dict: bool = False,
        *,
        reward_guidance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reward_guidance_scale: float = 1.0,
    ):
        """Sample videos (B, 3, T, H, W) in [-1, 1] (or latents with ``output_type="latent"``, or
        diffusers' output with ``return_dict=True``, see the module docstring).

        ``timesteps`` overrides ``num_inference_steps`` with an explicit descending list. Steps and
        guidance scale default to the student's (``meta``), else 4 and 7.5. ``reward_guidance`` r(z_t, t)
        -> (B,) steers every step by ``reward_guidance_scale`` w (``reward_guided_output``).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        num_inference_steps = num_inference_steps or (self.meta.num_inference_steps if self.meta else 4)
        if guidance_scale is None:
            guidance_scale = self.meta.guidance_scale if self.meta else 7.5
        warning = self.meta.guidance_warning(guidance_scale) if self.meta else None
        if warning:
            warnings.warn(warning, GuidanceRangeWarning, stacklevel=3)  # past the `_sampling` wrapper
        num_frames, height, width, fps = self._geometry(num_frames, height, width, fps)
        device, dtype = self.adapter.device, next(self.unet.parameters()).dtype
        text = self.adapter.encode_prompts(prompts).to(device=device, dtype=dtype)
        batch = len(prompts)
        w = torch.full((batch,), float(guidance_scale), device=device)
        w_embedding = guidance_scale_embedding(w, self.unet.config.time_cond_proj_dim).to(dtype)
        z = self._initial_latents(batch, num_frames, height, width, generator, latents, device, dtype)
        if self.adapter.prediction_type == "flow":
            steps = None if timesteps is not None else num_inference_steps
            set_flow_timesteps(self.scheduler, steps, self.spacing, self.num_ddim_timesteps, timesteps, device)
            for t in self.scheduler.timesteps:
                velocity = self._predict(z, t, text, w_embedding, fps)
                velocity = self._reward_guided(velocity, z, t, reward_guidance, reward_guidance_scale)
                z = self.scheduler.step(velocity.float(), t, z.float(), generator=generator).prev_sample.to(dtype)
            return self._finish(z, output_type, frame_chunk_size, return_dict)
        z = z * self.scheduler.init_noise_sigma
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.scheduler.timesteps:
            eps = self._predict(z, t, text, w_embedding, fps)
            eps = self._reward_guided(eps, z, t, reward_guidance, reward_guidance_scale)
            step = self.scheduler.step(frames_as_batch(eps), t, frames_as_batch(z), generator=generator)
            z = frames_from_batch(step.prev_sample, batch)
        return self._finish(z, output_type, frame_chunk_size, return_dict)


class TeacherPipeline(_VideoPipelineBase):
    """The teacher's DDIM (eta = 0) sampler with classifier-free guidance, standard scale s:
    eps = eps_u + s (eps_c - eps_u). Conditional and unconditional rows share one UNet call."""

    def __init__(self, adapter, unet: nn.Module | None = None, scheduler=None, meta=None, inference_mode: bool = True):
        """``scheduler`` defaults to ``DDIMCFGScheduler`` (epsilon teachers) or the flow teacher's own
        scheduler (Wan: ``UniPCMultistepScheduler`` with flow sigmas) built from its config."""
        if scheduler is None:
            scheduler = teacher_flow_scheduler(adapter) if adapter.prediction_type == "flow" else (
                DDIMCFGScheduler.from_adapter(adapter))
        super().__init__(adapter, unet if unet is not None else adapter.unet, scheduler, meta, inference_mode)

    @_sampling
    def __call__(
        self,
        prompts: str | Sequence[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
        fps: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        negative_prompts: Sequence[str] | None = None,
        frame_chunk_size: int = 8,
        return_dict: bool = False,
        *,
        reward_guidance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reward_guidance_scale: float = 1.0,
    ):
        """Sample videos (B, 3, T, H, W) in [-1, 1]; ``guidance_scale`` 1 disables guidance. Steps and scale
        default to a fine-tuned model's ``meta``, else 50 and 7.5. ``output_type``, ``return_dict`` and
        ``reward_guidance`` (applied after classifier-free guidance) as for ``T2VTurboPipeline``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        num_inference_steps = num_inference_steps or (self.meta.num_inference_steps if self.meta else 50)
        if guidance_scale is None:
            guidance_scale = self.meta.guidance_scale if self.meta else 7.5
        num_frames, height, width, fps = self._geometry(num_frames, height, width, fps)
        device, dtype = self.adapter.device, next(self.unet.parameters()).dtype
        batch = len(prompts)
        text = self.adapter.encode_prompts(prompts)
        use_cfg = guidance_scale > 1.0
        if use_cfg:
            uncond = self.adapter.encode_prompts(negative_prompts) if negative_prompts else self.adapter.empty_prompt_embedding(batch)
            text = torch.cat([uncond, text])
        text = text.to(device=device, dtype=dtype)
        z = self._initial_latents(batch, num_frames, height, width, generator, latents, device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.scheduler.timesteps:
            model_input = torch.cat([z, z]) if use_cfg else z
            output = self._predict(model_input, t, text, None, fps)
            if use_cfg:
                output_uncond, output_cond = output.chunk(2)
                output = classifier_free_guidance(output_cond, output_uncond, guidance_scale)
            output = self._reward_guided(output, z, t, reward_guidance, reward_guidance_scale)
            z = self.scheduler.step(output.to(z.dtype), t, z).prev_sample
        return self._finish(z, output_type, frame_chunk_size, return_dict)


def reward_guided_output(output: torch.Tensor, z: torch.Tensor, timesteps: torch.Tensor,
                         reward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scale: float) -> torch.Tensor:
    """Reward guidance at sampling time (VideoAlign): the network output minus w grad_z r(z_t, t).

    For a flow model that is v_hat = v - w grad_z sum_k lambda_k r_k(z_t, t); the same shift of eps for an
    epsilon model. Both move the step's x0 estimate up the reward gradient: x0 = z - sigma v gains
    sigma w grad r, x0 = (z - sigma eps) / alpha gains (sigma / alpha) w grad r. ``reward`` (a reward model on
    noisy latents, weighted per dimension) takes the latents and the sampler's timesteps.
    """
    with torch.enable_grad():
        latents = z.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(reward(latents, timesteps).sum(), latents)
    return output - scale * grad.to(output.dtype)


def sampler_noise_level(adapter, timesteps: torch.Tensor) -> torch.Tensor:
    """sigma_t (the noise std of z_t = alpha_t x0 + sigma_t eps) at the samplers' timesteps: grid indices for
    epsilon families (sqrt(1 - abar_t)), the flow model timestep T sigma for flow families."""
    if adapter.prediction_type == "flow":
        return timesteps.float() / adapter.num_train_timesteps
    return adapter.noise_coefficients()[1].to(timesteps.device)[timesteps.long()]


def teacher_flow_scheduler(adapter):
    """The flow teacher's own sampler from its scheduler config (``adapter.scheduler_config``, with
    ``_class_name``), or ``FlowMatchEulerDiscreteScheduler`` on its shift when it has none."""
    import diffusers

    config = dict(getattr(adapter, "scheduler_config", None) or {})
    if not config:
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=adapter.num_train_timesteps,
                                                         shift=adapter.flow_shift)
    return getattr(diffusers, config["_class_name"]).from_config(config)


def load_student_pipeline(
    student_folder: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    spacing: str = "t2v_turbo",
    fuse_lora: bool = True,
) -> T2VTurboPipeline | TeacherPipeline:
    """The model saved in ``student_folder`` on its teacher (loaded from the path in its ``student.json``):
    a student with a scheduler configured from its distillation grid and the sampling defaults of its
    meta, or a fine-tuned full-step model (no guidance layer) with the teacher's sampler (DDIM + CFG, or
    the flow teacher's). A LoRA model is merged into its weights (``fuse_lora``): one plain network call
    per step; ``fuse_lora=False`` keeps peft's layers (the trained form)."""
    from t2v_turbo.student import fuse_lora as fuse
    from t2v_turbo.student import has_lora, load_student, load_teacher_for, read_student_meta

    meta = read_student_meta(student_folder)
    adapter = load_teacher_for(meta, student_folder, torch_dtype=dtype)
    unet, meta = load_student(student_folder, adapter)
    if device is not None or dtype is not None:
        adapter.to(device=device, dtype=dtype)
        adapter.cast_network(unet, device=device, dtype=dtype)
    if fuse_lora and has_lora(unet):
        fuse(unet)
    return model_pipeline(adapter, unet, meta, spacing=spacing)


def model_pipeline(adapter, network: nn.Module, meta, spacing: str = "t2v_turbo",
                   inference_mode: bool = True) -> T2VTurboPipeline | TeacherPipeline:
    """The sampler of a trained model (``meta``: its ``StudentMeta``, which also gives the sampling defaults): a
    student's multistep consistency sampler on its distillation grid (``T2VTurboScheduler`` configured from
    ``meta`` for an epsilon teacher, ``FlowMatchLCMScheduler`` for a flow one), or a fine-tuned full-step model's
    teacher sampler. ``inference_mode=False`` for a network in training (``_sampling``)."""
    if not meta.is_student:
        return TeacherPipeline(adapter, network, meta=meta, inference_mode=inference_mode)
    scheduler = None  # the flow student's FlowMatchLCMScheduler (spacing and grid are the pipeline's)
    if adapter.prediction_type != "flow":
        scheduler = T2VTurboScheduler.from_adapter(adapter, num_ddim_timesteps=meta.num_ddim_timesteps,
                                                   sigma_data=meta.sigma_data, timestep_scaling=meta.timestep_scaling,
                                                   spacing=spacing)
    return T2VTurboPipeline(adapter, network, scheduler, spacing=spacing, num_ddim_timesteps=meta.num_ddim_timesteps,
                            meta=meta, inference_mode=inference_mode)
