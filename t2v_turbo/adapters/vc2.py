"""VideoCrafter2 teacher: our VC2 UNet, the LDM VAE run as diffusers' AutoencoderKL, OpenCLIP text.

Loads either VC2's single Lightning checkpoint ``model.ckpt`` (hub repo ``VideoCrafter/VideoCrafter2``)
or a folder converted from it by ``t2v-turbo convert vc2`` (safetensors + ``vc2_config.json``).

Facts this adapter follows (shared/spec/t2v_turbo.md, section 1): 1000-step scaled-linear
schedule (``alphas_cumprod`` of the checkpoint's buffers, equal to ``linspace(sqrt(0.00085),
sqrt(0.012), 1000)**2``), epsilon prediction, latent scale 0.18215, 16 frames at 320x512
(latents 40x64), fps conditioning with default 16, OpenCLIP ViT-H-14 text features of the
penultimate layer over 77 tokens, unconditional context = the encoding of the empty string.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from t2v_turbo.adapters.base import TeacherAdapter, decode_per_frame, posterior_per_frame
from t2v_turbo.diffusion.schedule import scaled_linear_alphas_cumprod
from t2v_turbo.models.vc2 import checkpoint as ckpt
from t2v_turbo.models.vc2.unet import VC2UNet

#: the layers a student adds to the teacher UNet (zero-initialised, never in model.ckpt)
STUDENT_ONLY_KEYS = ("time_cond_proj.weight", "motion_cond_proj.weight", "combine_proj.weight")


class VC2Adapter(TeacherAdapter):
    """VideoCrafter2 teacher behind the ``TeacherAdapter`` interface.

    Args:
        unet: the teacher ``VC2UNet`` (no ``time_cond_proj``).
        vae: diffusers ``AutoencoderKL`` holding VC2's first-stage weights.
        text_encoder: :class:`~t2v_turbo.models.vc2.checkpoint.VC2TextEncoder`.
        config: the architecture record (``vc2_config.json``), see ``checkpoint.vc2_config``.
        schedule: the checkpoint's schedule buffers (kept for a lossless conversion); ``None``
            computes the scaled-linear schedule.
        motion_cond_proj_dim: build students with T2V-Turbo v2's motion-conditioning layers.
    """

    family = "vc2"

    def __init__(self, unet: VC2UNet, vae: nn.Module, text_encoder: nn.Module, config: dict,
                 schedule: dict[str, torch.Tensor] | None = None, source: str | None = None,
                 motion_cond_proj_dim: int | None = None):
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.config = config
        self.source = source
        self.motion_cond_proj_dim = motion_cond_proj_dim
        self.schedule = dict(schedule or {})
        self.alphas_cumprod = self._alphas_cumprod(self.schedule)
        self.vae_scale_factor = float(config.get("scale_factor", 0.18215))
        self.vae_spatial_factor = 2 ** (len(config["vae"]["block_out_channels"]) - 1)
        self.default_fps = int(config.get("fps", 16))
        self.default_num_frames = int(config.get("num_frames", 16))
        self.default_height = int(config.get("height", 320))
        self.default_width = int(config.get("width", 512))

    @staticmethod
    def _alphas_cumprod(schedule: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scaled-linear schedule (float64-computed, shared with the trainer and samplers);
        the checkpoint's ``alphas_cumprod`` buffer must agree with it (VC2's does, to 0)."""
        reference = scaled_linear_alphas_cumprod(1000, 0.00085, 0.012)
        stored = schedule.get("alphas_cumprod")
        if stored is not None:
            stored = stored.float().cpu()
            if stored.shape != reference.shape or (stored - reference).abs().max() > 1e-5:
                warnings.warn("the checkpoint's alphas_cumprod differs from VC2's scaled-linear schedule; using the checkpoint's")
                return stored.clone()
        return reference

    # ---- loading ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: dict | str | None = None, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, allow_pickle: bool = False,
                        motion_cond_proj_dim: int | None = None) -> "VC2Adapter":
        """Load from ``model.ckpt`` (a file) or a converted folder; frozen, eval mode.

        ``config`` (a dict or a JSON path) overrides the architecture for a ``model.ckpt``
        (default: VideoCrafter2's real sizes); a converted folder carries its own.
        """
        location = Path(path).expanduser()
        if location.is_dir():
            record, parts = ckpt.read_vc2_folder(location)
            ldm_vae = False
        elif location.is_file():
            record = _read_config(config)
            parts = ckpt.read_vc2_ckpt(location, allow_pickle=allow_pickle)
            ldm_vae = True
        else:
            raise FileNotFoundError(f"no VideoCrafter2 checkpoint at {location.resolve()} (looked for a model.ckpt file or a "
                                    f"converted folder with {ckpt.CONFIG_NAME}). {ckpt.WHERE_TO_GET}")
        unet, vae, text = ckpt.build_vc2_modules(record, parts, str(location), vae_in_ldm_names=ldm_vae, dtype=torch_dtype)
        adapter = cls(unet, vae, text, record, schedule=parts["schedule"], source=str(location.resolve()),
                      motion_cond_proj_dim=motion_cond_proj_dim)
        if device is not None:
            adapter.to(device)
        return adapter.freeze()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the converted folder (what ``t2v-turbo convert vc2`` produces)."""
        schedule = self.schedule or {"alphas_cumprod": self.alphas_cumprod.float()}
        return ckpt.save_vc2_folder(folder, self.config, self.unet, self.vae, self.text_encoder, schedule)

    # ---- text -------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """OpenCLIP penultimate-layer token features (B, 77, 1024) for VC2's cross-attention."""
        if isinstance(prompts, str):
            prompts = [prompts]
        length = self.text_encoder.config["context_length"]
        tokens = ckpt.tokenize(list(prompts), context_length=length)
        return self.text_encoder(tokens.to(next(self.text_encoder.parameters()).device))

    # ---- VAE --------------------------------------------------------------------------
    def encode_video_posterior(self, pixels: torch.Tensor,
                               frame_chunk_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> (mean, std) of the scaled latents (B, 4, T, H/8, W/8), frame by frame."""
        return posterior_per_frame(self.vae, pixels, self.vae_scale_factor, frame_chunk_size)

    def decode_latents(self, latents: torch.Tensor, frame_chunk_size: int = 8) -> torch.Tensor:
        """Scaled latents -> pixels (B, 3, T, H, W), unclamped, frame by frame; differentiable."""
        return decode_per_frame(self.vae, latents, self.vae_scale_factor, frame_chunk_size)

    # ---- UNet -------------------------------------------------------------------------
    def predict_eps(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, text_embedding: torch.Tensor,
                    timestep_cond: torch.Tensor | None = None, fps: int | torch.Tensor | None = None) -> torch.Tensor:
        """eps of ``unet``; ``fps`` defaults to the family's 16 (VC2 is fps-conditioned)."""
        dtype = next(unet.parameters()).dtype
        if timestep_cond is not None:
            timestep_cond = timestep_cond.to(dtype)
        return unet(latents.to(dtype), timesteps, text_embedding.to(dtype),
                    fps=self.default_fps if fps is None else fps, timestep_cond=timestep_cond)

    def build_student_unet(self, time_cond_proj_dim: int = 256) -> nn.Module:
        """The teacher UNet plus ``time_cond_proj`` (and v2's motion layers when configured).

        The teacher's weights load strictly; the student-only layers (``STUDENT_ONLY_KEYS``) are
        the only keys allowed to be missing and are zero-initialised (the student starts as the
        teacher at every guidance scale; no seed needed).
        """
        config = dict(self.unet.config, time_cond_proj_dim=time_cond_proj_dim, motion_cond_proj_dim=self.motion_cond_proj_dim)
        param = next(self.unet.parameters())
        with torch.device("meta"):
            student = VC2UNet(**config)
        student = student.to(dtype=param.dtype).to_empty(device=param.device)  # no float32 detour
        missing, unexpected = student.load_state_dict(self.unet.state_dict(), strict=False)
        if unexpected or not set(missing) <= set(STUDENT_ONLY_KEYS) or "time_cond_proj.weight" not in missing:
            raise RuntimeError(f"loading the teacher UNet into the student: expected only {STUDENT_ONLY_KEYS} to be missing, "
                               f"got missing={sorted(missing)} unexpected={sorted(unexpected)}")
        with torch.no_grad():
            for key in missing:
                student.get_parameter(key).zero_()
        return student.eval()


class VC2MotionAdapter(VC2Adapter):
    """VC2 teacher whose students carry T2V-Turbo v2's motion-conditioning layers (``unet_mg.pt``)."""

    @classmethod
    def from_pretrained(cls, path, motion_cond_proj_dim: int | None = 256, **kwargs) -> "VC2MotionAdapter":
        return super().from_pretrained(path, motion_cond_proj_dim=motion_cond_proj_dim, **kwargs)


def _read_config(config: dict | str | None) -> dict:
    import json

    if config is None:
        return ckpt.vc2_config()
    if isinstance(config, (str, os.PathLike)):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    return config
