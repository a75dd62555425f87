"""A small multi-dimensional reward model trained on preference pairs, on decoded videos or on noisy latents.

``PreferenceRewardModel`` scores a clip against its prompt on each dimension (VQ, MQ, TA by default) with a
3D convolution tower whose every block is FiLM-modulated by the prompt (the mean of the teacher's text
encoding over tokens) and, for latent models, by the noise level. Two spaces:

- ``pixels``: decoded videos (B, 3, T, H, W) in [-1, 1], with the frame-to-frame differences as 3 more
  channels (what motion and temporal steadiness are made of); registered as the clip reward
  ``preference-model``, it can pick online DPO's pairs or join T2V-Turbo's mixed reward;
- ``latents``: noisy latents z_t = alpha_t x0 + sigma_t eps with their noise level sigma_t: VideoAlign's reward
  model for **reward guidance** at sampling time, v_hat = v - w grad_z sum_k lambda_k r_k(z_t, t)
  (``guidance``; the samplers take it as ``reward_guidance``). Trained from the same pairs on noised latents:
  a pair's two clips are encoded by the teacher's VAE and noised with the same t and eps.

Trained by the reward-model recipe (``distill.reward_model``, ``score_pair``); saved as a folder with
``preference_model.safetensors`` (the tower) and ``preference_model.json`` (architecture, dimensions, the
teacher adapter's class and path, and the z-normalisation statistics ``inference_config``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rewards.base import VideoReward, check_video_batch, register_reward
from t2v_turbo.fileio import read_folder_json

WEIGHTS_NAME = "preference_model.safetensors"
CONFIG_NAME = "preference_model.json"
SPACES = ("pixels", "latents")
#: r(z_t, t) -> (B,): what the samplers' ``reward_guidance`` takes
GuidanceReward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def noise_level_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (B, dim) of 1000 sigma (sigma in [0, 1], the noise std of z_t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    angles = 1000.0 * sigma.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class VideoScoreNet(nn.Module):
    """(x (B, C, T, H, W), condition (B, cond_dim)) -> scores (B, num_outputs).

    ``depth`` blocks of 3x3x3 convolution, GroupNorm, FiLM (scale and shift from the condition) and SiLU; the
    spatial size is halved (average pooling) after each block while above 4, the time axis once, after the
    middle block. Head: the spatial mean of each of ``time_slots`` time slots and the overall maximum, an MLP.
    """

    def __init__(self, in_channels: int, cond_dim: int, num_outputs: int, width: int = 32, depth: int = 4,
                 time_slots: int = 4):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv3d(in_channels if i == 0 else width, width, 3, padding=1)
                                    for i in range(depth)])
        self.films = nn.ModuleList([nn.Linear(cond_dim, 2 * width) for _ in range(depth)])
        self.time_slots = time_slots
        self.head = nn.Sequential(nn.Linear((time_slots + 1) * width, width), nn.SiLU(), nn.Linear(width, num_outputs))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        for i, (conv, film) in enumerate(zip(self.convs, self.films)):
            scale, shift = film(condition)[:, :, None, None, None].chunk(2, dim=1)
            x = F.silu(F.group_norm(conv(x), 8) * (1 + scale) + shift)
            if min(x.shape[-2:]) > 4:
                x = F.avg_pool3d(x, (1, 2, 2))
            if i == len(self.convs) // 2 - 1 and x.shape[2] > 2:
                x = F.avg_pool3d(x, (2, 1, 1), ceil_mode=True)
        slots = F.adaptive_avg_pool1d(x.mean(dim=(3, 4)), self.time_slots).flatten(1)
        return self.head(torch.cat([slots, x.amax(dim=(2, 3, 4))], dim=1))


class PreferenceRewardModel(nn.Module):
    """Multi-dimensional reward on pixels or noisy latents (module docstring).

    Args:
        teacher: the teacher adapter whose text encoder conditions the model (and, for ``latents``, whose
            VAE and noise schedule it works in); not part of the model's weights.
        dimensions: one score each.
        space: ``pixels`` or ``latents``.
        width, depth: the convolution tower's channels and blocks.
        seed: draws the initial weights.
    """

    def __init__(self, teacher, dimensions: Sequence[str] = ("VQ", "MQ", "TA"), space: str = "pixels",
                 width: int = 32, depth: int = 4, seed: int = 0):
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"`space`={space!r} is not one of {SPACES}")
        self.teacher, self.dimensions, self.space = teacher, tuple(dimensions), space
        self.architecture = {"width": width, "depth": depth}
        text_dim = teacher.encode_prompts([""]).shape[-1]
        in_channels = 6 if space == "pixels" else teacher.unet.config.in_channels
        self.time_dim = 32 if space == "latents" else 0
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = VideoScoreNet(in_channels, text_dim + self.time_dim, len(self.dimensions), width, depth)
        self._text: dict[str, torch.Tensor] = {}

    def text_vectors(self, prompts: Sequence[str]) -> torch.Tensor:
        """The mean over tokens of the teacher's text encoding of each prompt (B, D), no gradient, cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            with torch.no_grad():
                encoded = self.teacher.encode_prompts(missing).float().mean(dim=1)
            self._text.update(zip(missing, encoded))
        return torch.stack([self._text[p] for p in prompts])

    def forward(self, x: torch.Tensor, prompts: Sequence[str], sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, D) of clips ``x``: pixels in [-1, 1], or latents z_t at noise levels ``sigma`` (B,)."""
        condition = self.text_vectors(prompts).to(x.device)
        if self.space == "pixels":
            motion = torch.cat([x[:, :, 1:] - x[:, :, :-1], torch.zeros_like(x[:, :, :1])], dim=2)
            x = torch.cat([x, motion], dim=1)
        else:
            if sigma is None:
                raise ValueError("a latent reward model needs the noise level `sigma` of its latents")
            condition = torch.cat([condition, noise_level_embedding(sigma.to(x.device), self.time_dim)], dim=1)
        return self.net(x.float(), condition)

    def score_pair(self, pixels_a: torch.Tensor, pixels_b: torch.Tensor, prompts: Sequence[str], video_fps: float,
                   generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, D) of two clips per prompt (the reward-model recipe's interface). Latent models encode each
        pair's clips (posterior samples) and noise both at one grid index t ~ U{0..T-1} with one eps, all drawn
        from the pair's generator."""
        if self.space == "pixels":
            return self(pixels_a, prompts), self(pixels_b, prompts)
        alpha, sigma = self.teacher.noise_coefficients()
        noisy, levels = ([], []), []
        with torch.no_grad():
            for b, g in enumerate(generators):
                t = int(torch.randint(0, len(sigma), (), generator=g))
                clean = [self.teacher.encode_video(p[b: b + 1], generator=g).float() for p in (pixels_a, pixels_b)]
                eps = torch.randn(clean[0].shape, generator=g).to(clean[0].device)
                for side, x0 in zip(noisy, clean):
                    side.append(alpha[t] * x0 + sigma[t] * eps)
                levels.append(sigma[t])
        levels = torch.stack(levels).float()
        return self(torch.cat(noisy[0]), prompts, levels), self(torch.cat(noisy[1]), prompts, levels)

    def guidance(self, prompts: Sequence[str], weights: dict[str, float],
                 noise_level: Callable[[torch.Tensor], torch.Tensor]) -> GuidanceReward:
        """r(z_t, t) = sum_k lambda_k r_k(z_t, sigma(t)) for the samplers' reward guidance (latent models);
        ``noise_level`` maps the sampler's timesteps to sigma_t."""
        if self.space != "latents":
            raise ValueError("reward guidance needs a reward model on noisy latents (space: latents)")
        unknown = sorted(set(weights) - set(self.dimensions))
        if unknown:
            raise ValueError(f"guidance weights name dimensions {unknown}; the model scores {list(self.dimensions)}")
        lam = torch.tensor([float(weights.get(d, 0.0)) for d in self.dimensions])

        def reward(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self(z, list(prompts), noise_level(t)) @ lam.to(z.device)

        return reward

    def to(self, device: torch.device | str | None = None) -> "PreferenceRewardModel":
        """Move the tower and the teacher adapter (a plain attribute, not a submodule) to ``device``."""
        super().to(device)
        self.teacher.to(device=device)
        self._text = {k: v.to(device) for k, v in self._text.items()}
        return self

    def save_pretrained(self, folder: str | os.PathLike, step: int = 0, inference_config: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME))
        teacher = type(self.teacher)
        config = {"dimensions": list(self.dimensions), "space": self.space, **self.architecture, "step": step,
                  "teacher_adapter": f"{teacher.__module__}.{teacher.__qualname__}",
                  "teacher_path": str(getattr(self.teacher, "source", "")), "inference_config": inference_config}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder


def load_preference_model(folder: str | os.PathLike, teacher=None, teacher_path: str | os.PathLike | None = None,
                          ) -> tuple[PreferenceRewardModel, dict]:
    """(model in eval mode, its config) from a saved folder, strictly; ``teacher`` defaults to the recorded
    adapter class (which must be a ``TeacherAdapter`` of a trusted module) loaded from ``teacher_path``, by
    default the recorded path."""
    from safetensors.torch import load_file

    from t2v_turbo.adapters.base import TeacherAdapter
    from t2v_turbo.config import resolve_component

    folder = Path(folder)
    path = folder / CONFIG_NAME
    config = read_folder_json(folder, CONFIG_NAME, "preference reward model")
    if teacher is None:
        adapter_cls = resolve_component(config["teacher_adapter"], f"{path}: teacher_adapter")
        if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, TeacherAdapter)):
            raise ValueError(f"{path}: teacher_adapter {config['teacher_adapter']!r} is not a TeacherAdapter class")
        teacher = adapter_cls.from_pretrained(teacher_path or config["teacher_path"]).freeze()
    model = PreferenceRewardModel(teacher, config["dimensions"], config["space"], config["width"], config["depth"])
    state = load_file(str(folder / WEIGHTS_NAME))
    own = set(model.net.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise RuntimeError(f"{folder / WEIGHTS_NAME}: keys do not match the model; missing={missing[:5]} "
                           f"unexpected={unexpected[:5]}")
    model.net.load_state_dict(state)
    return model.eval(), config


@register_reward("preference-model")
class PreferenceModelReward(VideoReward):
    """A pixel-space ``PreferenceRewardModel`` as a clip reward: ``sum_k w_k (r_k - mu_k) / sd_k`` over all frames.

    Args:
        checkpoint: the saved folder; ``weights``: per-dimension weights (default 1 each; left out: 0);
        ``normalize``: z-normalise with the folder's ``inference_config``; ``teacher_path``: load the recorded
        teacher adapter class from this folder instead of the recorded path.
    """

    granularity = "clip"

    def __init__(self, checkpoint: str | os.PathLike, weights: dict[str, float] | None = None, normalize: bool = True,
                 teacher_path: str | os.PathLike | None = None):
        super().__init__()
        folder = Path(checkpoint)
        self.model, config = load_preference_model(folder, teacher_path=teacher_path)
        if config["space"] != "pixels":
            raise ValueError(f"{folder}: a reward model on noisy latents scores no decoded videos; use it for reward "
                             "guidance (t2v-turbo sample --reward-guidance)")
        dims = list(self.model.dimensions)
        weights = dict(weights) if weights is not None else {d: 1.0 for d in dims}
        unknown = sorted(set(weights) - set(dims))
        if unknown:
            raise ValueError(f"`weights` names dimensions {unknown}; the model scores {dims}")
        stats = config.get("inference_config") or {}
        if normalize and not stats:
            raise ValueError(f"{folder / CONFIG_NAME} has no inference_config to z-normalise with; "
                             "pass normalize=false")
        self.register_buffer("mean", torch.tensor([stats.get(f"{d}_mean", 0.0) if normalize else 0.0 for d in dims]),
                             persistent=False)
        self.register_buffer("std", torch.tensor([stats.get(f"{d}_std", 1.0) if normalize else 1.0 for d in dims]),
                             persistent=False)
        self.register_buffer("weights", torch.tensor([float(weights.get(d, 0.0)) for d in dims]), persistent=False)
        self.requires_grad_(False).eval()

    def frame_indices(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        return list(range(num_frames))

    def dimension_scores(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raw = self.model(frames, list(prompts))
        return (raw - self.mean.to(raw.device)) / self.std.to(raw.device)

    def score(self, frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_video_batch(frames, prompts)
        return self.dimension_scores(frames, prompts) @ self.weights.to(frames.device)
