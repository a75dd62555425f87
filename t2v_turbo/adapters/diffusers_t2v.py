"""Teachers in the diffusers ModelScope-T2V layout.

A model folder (or hub repository, e.g. ``ali-vilab/text-to-video-ms-1.7b``) holds
``unet/`` (``UNet3DConditionModel``), ``vae/`` (``AutoencoderKL``), ``text_encoder/``
(``CLIPTextModel``), ``tokenizer/`` and ``scheduler/`` (a DDIM-style scheduler config, which
gives the noise schedule). The UNet takes latents (B, c, T, h, w), has no fps conditioning,
and accepts the guidance embedding as ``timestep_cond``: diffusers adds
``time_embedding.cond_proj(timestep_cond)`` to the sinusoidal timestep features before
``time_embedding.linear_1``, which is exactly where T2V-Turbo's ``time_cond_proj`` enters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from t2v_turbo.adapters.base import TeacherAdapter, decode_per_frame, posterior_per_frame
from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod

#: components a ModelScope-layout folder must hold
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: state-dict name of the guidance-embedding layer inside diffusers' UNet3DConditionModel
GUIDANCE_LAYER_KEY = "time_embedding.cond_proj.weight"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_model_location(
    path: str | os.PathLike, required: Sequence[str] = REQUIRED_SUBFOLDERS, kind: str = "diffusers text-to-video"
) -> tuple[str, bool]:
    """(location, is_local) for a local model folder or a hub id.

    A local folder must hold every subfolder in ``required``; a string that is not an existing
    folder is treated as a hub id only if it looks like one (``owner/name``).
    """
    location = str(path)
    folder = Path(location).expanduser()
    if folder.is_dir():
        missing = [name for name in required if not (folder / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{kind} folder {folder.resolve()} is missing the subfolder(s) "
                f"{', '.join(missing)} (expected {', '.join(required)})"
            )
        return str(folder.resolve()), True
    if _HUB_ID.match(location) and not location.startswith((".", "~")):
        return location, False
    raise FileNotFoundError(
        f"no {kind} model folder at {folder.resolve()} "
        f"(expected a folder with {', '.join(required)} or a hub id owner/name)"
    )


def encode_clip_prompts(tokenizer, text_encoder: nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP last hidden state (B, L, D), padded to ``tokenizer.model_max_length`` and truncated,
    as ``TextToVideoSDPipeline`` encodes prompts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    device = next(text_encoder.parameters()).device
    return text_encoder(tokens.input_ids.to(device))[0]


def check_hub_model(repo_id: str, revision: str | None = None, local_files_only: bool = True) -> None:
    """Fail early, and say why, when a hub model cannot be loaded: not in the local cache (cache-only
    loading), or the hub unreachable / the repository unknown (loading from the hub). Without this
    check an offline load retries each file for ~25 s and ends with "does not appear to have a file
    named config.json"."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    local_hint = (f"pass a local folder holding {', '.join(f'{n}/' for n in REQUIRED_SUBFOLDERS)} "
                  "(e.g. `--teacher /path/to/model`, or `path:` in the config's teacher section)")
    if local_files_only:
        if not isinstance(try_to_load_from_cache(repo_id, "unet/config.json", revision=revision), str):
            raise FileNotFoundError(
                f"the hub model {repo_id!r} is not in the local cache {constants.HF_HUB_CACHE} (hub ids are read from the "
                f"cache only); download it on a machine with internet (`hf download {repo_id}`), or {local_hint}")
        return
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=10)
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"the hub has no model {repo_id!r} (or it is private or gated); check the id, or {local_hint}") from err
    except Exception as err:  # the HTTP client's connection errors
        raise FileNotFoundError(f"the Hugging Face hub is unreachable ({type(err).__name__}: {err}) while loading "
                                f"{repo_id!r}; check the connection, or {local_hint}") from err


class DiffusersT2VAdapter(TeacherAdapter):
    """ModelScope-T2V style teacher: ``UNet3DConditionModel`` + ``AutoencoderKL`` + CLIP text."""

    family = "diffusers"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, source: str | None = None):
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler.config)
        #: where the teacher was loaded from (written into student checkpoints)
        self.source = source
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = self._alphas_cumprod_from_scheduler(scheduler)
        self.vae_scale_factor = float(vae.config.scaling_factor)
        #: pixels per latent pixel: 2 ** (number of VAE downsamplings)
        self.vae_spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.default_height = self.default_width = int(unet.config.sample_size) * self.vae_spatial_factor

    @staticmethod
    def _alphas_cumprod_from_scheduler(scheduler) -> torch.Tensor:
        """alpha_bar_t of the scheduler config.

        For "scaled_linear" betas the schedule is recomputed in float64 by
        ``t2v_turbo.diffusion.schedule.scaled_linear_alphas_cumprod`` (the trainer and samplers share it);
        diffusers computes the same values in float32 (they agree to about 1e-7). Other beta
        schedules are taken from the scheduler as it computes them.
        """
        config = scheduler.config
        if config.get("trained_betas") is None and config.beta_schedule == "scaled_linear":
            return scaled_linear_alphas_cumprod(config.num_train_timesteps, config.beta_start, config.beta_end)
        return scheduler.alphas_cumprod.detach().clone().float()

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool = True,
        device: str | torch.device | None = None,
        revision: str | None = None,
    ) -> "DiffusersT2VAdapter":
        """Load a teacher from a local folder or a hub id (only the local cache unless
        ``local_files_only=False``). The returned adapter is frozen and in eval mode."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        location, is_local = resolve_model_location(path)
        if not is_local:
            check_hub_model(location, revision, local_files_only)
        common = dict(local_files_only=local_files_only or is_local, revision=revision)
        try:
            unet = UNet3DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=torch_dtype, **common)
            vae = AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=torch_dtype, **common)
            text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", dtype=torch_dtype, **common)
            tokenizer = AutoTokenizer.from_pretrained(location, subfolder="tokenizer", **common)
            scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler", **common)
        except OSError as err:
            if is_local:
                raise
            raise FileNotFoundError(
                f"could not load the hub model {location!r} "
                f"({'from the local cache only' if local_files_only else 'from the hub'}): {err}"
            ) from err
        adapter = cls(unet, vae, text_encoder, tokenizer, scheduler, source=location)
        if device is not None:
            adapter.to(device)
        return adapter.freeze()

    # ---- text -------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP last hidden state (B, L, D) (``encode_clip_prompts``)."""
        return encode_clip_prompts(self.tokenizer, self.text_encoder, prompts)

    # ---- VAE --------------------------------------------------------------------------
    def encode_video_posterior(self, pixels: torch.Tensor,
                               frame_chunk_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) pixels in [-1, 1] -> (mean, std) of the scaled latents (B, c, T, h, w), frame by frame."""
        return posterior_per_frame(self.vae, pixels, self.vae_scale_factor, frame_chunk_size)

    def decode_latents(self, latents: torch.Tensor, frame_chunk_size: int = 8) -> torch.Tensor:
        """Scaled latents (B, c, T, h, w) -> pixels (B, 3, T, H, W), unclamped; differentiable."""
        return decode_per_frame(self.vae, latents, self.vae_scale_factor, frame_chunk_size)

    # ---- UNet -------------------------------------------------------------------------
    def predict_eps(
        self,
        unet: nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embedding: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        fps: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """eps of ``unet`` at (latents, timesteps); ModelScope has no fps input, so ``fps`` is ignored."""
        dtype = next(unet.parameters()).dtype
        if timestep_cond is not None:
            timestep_cond = timestep_cond.to(dtype)
        return unet(
            latents.to(dtype),
            timesteps,
            encoder_hidden_states=text_embedding.to(dtype),
            timestep_cond=timestep_cond,
        ).sample

    def build_student_unet(self, time_cond_proj_dim: int = 256) -> nn.Module:
        """The teacher UNet plus ``time_embedding.cond_proj`` (guidance-embedding layer, no bias).

        The teacher's weights load strictly: ``time_embedding.cond_proj.weight`` is the only key
        allowed to be missing. It is zero-initialised, so the student's output equals the
        teacher's at every guidance scale when distillation starts (the consistency targets are
        then the teacher's own predictions), and the initialisation needs no seed to reproduce.
        """
        from diffusers import UNet3DConditionModel

        config = {k: v for k, v in self.unet.config.items() if not k.startswith("_")}
        config["time_cond_proj_dim"] = time_cond_proj_dim
        student = UNet3DConditionModel.from_config(config)
        missing, unexpected = student.load_state_dict(self.unet.state_dict(), strict=False)
        if set(missing) != {GUIDANCE_LAYER_KEY} or unexpected:
            raise RuntimeError(
                f"loading the teacher UNet into the student: expected only {GUIDANCE_LAYER_KEY!r} to be "
                f"missing, got missing={sorted(missing)} unexpected={sorted(unexpected)}"
            )
        nn.init.zeros_(student.time_embedding.cond_proj.weight)
        param = next(self.unet.parameters())
        if param.dtype != student.dtype:
            student.to(dtype=param.dtype)
        return student.to(param.device).eval()
