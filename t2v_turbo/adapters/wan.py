"""Rectified-flow teachers on diffusers' ``WanTransformer3DModel``: Wan2.1 / Wan2.2 T2V and small custom ones.

A teacher is a diffusers pipeline folder (or hub id, e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``):
``model_index.json`` names ``[library, class]`` per component and ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/`` hold them. The adapter builds only the classes in
``KNOWN_CLASSES`` and dispatches on them (see ARCHITECTURE.md):

- VAE ``AutoencoderKLWan``: Wan's causal 3D VAE. Pixel videos have 1 + 4k frames and 1 + k latent
  frames; latent frame 0 is pixel frame 0 and latent frame k >= 1 covers pixel frames 4k-3..4k.
  Latents are normalised with the VAE config: x = (z - latents_mean) / latents_std (the pipeline
  decodes z = x std + mean). The decoder is causal, so the first K latent frames decode to exactly
  the first 1 + 4(K - 1) pixel frames of a full decode: ``decode_frames`` decodes only those.
- VAE ``AutoencoderKL``: a per-frame 2D VAE (the mini world's), latents = ``scaling_factor`` z.
- text encoder ``UMT5EncoderModel`` / ``T5EncoderModel``: last hidden state over
  ``max_sequence_length`` (512) tokens, zeroed past each prompt's length, prompts cleaned, exactly
  as ``WanPipeline`` encodes them; ``CLIPTextModel``: last hidden state padded to the tokenizer length.
- scheduler: ``UniPCMultistepScheduler`` (``flow_shift``, ``prediction_type="flow_prediction"``) or a
  ``FlowMatch*Scheduler`` (``shift``): the shift s of the training grid sigma_i = s u / (1 + (s - 1) u),
  u = (i + 1) / T (``t2v_turbo.diffusion.flow``).

The network predicts the velocity v = eps - x0 at the timestep T sigma ("flow" prediction type).
Wan's transformer has no ``timestep_cond`` input; students get the guidance layer
``condition_embedder.time_embedder.cond_proj`` (diffusers' ``TimestepEmbedding.cond_proj``, no bias,
zero-initialised), which ``predict`` feeds through a forward pre-hook on the time embedder: the
guidance embedding is added to the sinusoidal timestep features before ``linear_1``, as in
diffusers' UNets, and an export folds it into ``linear_1``'s bias.

Rotary tables: ``WanRotaryPosEmbed`` computes its cos/sin tables in float64 (float32 on MPS); in
diffusers 0.42.1 they are returned in float32, but ``Module.to(torch.bfloat16)`` rounds them to
bf16 (three significant digits of every rotary angle) and float64 tables (other diffusers versions,
or code that upcasts them) run the rotary products of every attention in float64. The adapter
recomputes them in float64 and stores them in float32 (``rotary_tables_in_float32``) at load and
after every dtype change; bench/bench_wan_gpu.py measures the float64 path's cost.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from t2v_turbo.adapters.base import TeacherAdapter, decode_per_frame, posterior_per_frame
from t2v_turbo.adapters.diffusers_t2v import encode_clip_prompts, resolve_model_location
from t2v_turbo.diffusion.flow import eps_from_velocity, flow_model_timesteps, flow_training_sigmas

REQUIRED_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
#: (library, class) pairs a teacher folder's ``model_index.json`` may name, per component
KNOWN_CLASSES = {
    "transformer": {("diffusers", "WanTransformer3DModel")},
    "vae": {("diffusers", "AutoencoderKLWan"), ("diffusers", "AutoencoderKL")},
    "text_encoder": {("transformers", "UMT5EncoderModel"), ("transformers", "T5EncoderModel"),
                     ("transformers", "CLIPTextModel")},
    "scheduler": {("diffusers", "UniPCMultistepScheduler"), ("diffusers", "FlowMatchEulerDiscreteScheduler"),
                  ("diffusers", "FlowMatchLCMScheduler")},
}
T5_ENCODERS = ("UMT5EncoderModel", "T5EncoderModel")
#: state-dict name of the student's guidance layer inside WanTransformer3DModel
GUIDANCE_LAYER_KEY = "condition_embedder.time_embedder.cond_proj.weight"
#: Wan2.1's geometry (480p, 81 frames at 16 fps)
WAN21_GEOMETRY = {"num_frames": 81, "height": 480, "width": 832, "fps": 16}
#: ``WanTransformer3DModel`` configs of the released Wan2.1 T2V models (diffusers layout)
WAN21_TRANSFORMER_CONFIGS = {
    "1.3B": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
    "14B": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
}


def wan21_transformer(size: str = "1.3B", device: str | torch.device = "meta", **overrides) -> nn.Module:
    """A ``WanTransformer3DModel`` of Wan2.1 T2V's real size ("1.3B" or "14B"), on the meta device
    by default (shapes only, no memory), for parameter counts and benchmarks."""
    from diffusers import WanTransformer3DModel

    if size not in WAN21_TRANSFORMER_CONFIGS:
        raise ValueError(f"`size`={size!r} is not one of {sorted(WAN21_TRANSFORMER_CONFIGS)}")
    with torch.device(device):
        return WanTransformer3DModel(**{**WAN21_TRANSFORMER_CONFIGS[size], **overrides})


def rotary_tables_in_float32(transformer: nn.Module) -> nn.Module:
    """Recompute the transformer's rotary tables in float64 and store them in float32 (see the
    module docstring): neither bf16-rounded nor float64 (which would run the rotary products of
    every attention in float64). Outputs equal the float64 tables' to float32 rounding."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    rope = transformer.rope
    fresh = WanRotaryPosEmbed(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    device = rope.freqs_cos.device
    rope.freqs_cos = fresh.freqs_cos.to(device=device, dtype=torch.float32)
    rope.freqs_sin = fresh.freqs_sin.to(device=device, dtype=torch.float32)
    return transformer


def keep_in_float32(transformer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``transformer`` to ``dtype`` except the parameters and buffers of its class's
    ``_keep_in_fp32_modules`` (matched against the parts of each dotted name, as diffusers does)."""
    keep = set(getattr(type(transformer), "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
        if tensor.is_floating_point():
            target = torch.float32 if keep & set(name.split(".")) else dtype
            tensor.data = tensor.data.to(target)
    return transformer


@contextlib.contextmanager
def guidance_condition(transformer: nn.Module, timestep_cond: torch.Tensor | None):
    """While active, ``transformer``'s time embedder receives ``condition=timestep_cond``, so its
    ``cond_proj`` adds the guidance embedding to the timestep features (one row per sample,
    repeated per token when timesteps are per token, as in Wan2.2's ``expand_timesteps``)."""
    if timestep_cond is None:
        yield
        return
    embedder = getattr(transformer, "module", transformer).condition_embedder.time_embedder
    if embedder.cond_proj is None:
        raise ValueError("`timestep_cond` given, but the transformer has no guidance layer "
                         f"({GUIDANCE_LAYER_KEY}); build a student with `build_student_unet`")

    def add_condition(module, args, kwargs):
        sample = args[0]
        cond = timestep_cond.to(device=sample.device, dtype=module.cond_proj.weight.dtype)
        if cond.shape[0] != sample.shape[0]:
            cond = cond.repeat_interleave(sample.shape[0] // cond.shape[0], dim=0)
        return args, {**kwargs, "condition": cond}

    handle = embedder.register_forward_pre_hook(add_condition, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _decoder_step(decoder: nn.Module, latent_frame: torch.Tensor, cache: list, first: bool):
    """One latent frame through Wan's causal decoder; returns (pixels, the causal cache after it).
    The decoder writes its cache in place, so it works on a copy: a checkpointed recomputation
    then starts from the same cache as the original call."""
    cache = list(cache)
    pixels = decoder(latent_frame, feat_cache=cache, feat_idx=[0], first_chunk=first)
    return pixels, cache


def read_model_index(location: str, local_files_only: bool = True, revision: str | None = None) -> dict:
    """``model_index.json`` of a local folder or hub repository, checked against ``KNOWN_CLASSES``."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(location, local_files_only=local_files_only, revision=revision)
    errors = []
    for name, known in KNOWN_CLASSES.items():
        entry = index.get(name)
        if entry is None or tuple(entry) not in known:
            errors.append(f"{name}={entry!r} (known: {sorted(list(k) for k in known)})")
    if errors:
        raise ValueError(
            f"{location}/model_index.json: unsupported component(s) for the wan adapter: {'; '.join(errors)}"
        )
    if index.get("transformer_2") not in (None, [None, None]):
        raise ValueError(f"{location}/model_index.json has a transformer_2 (Wan2.2 A14B's two noise-level experts, "
                         f"boundary_ratio={index.get('boundary_ratio')}); the wan adapter distils one transformer "
                         "(see docs/wan.md, Wan2.2)")
    return index


def _component_class(library: str, name: str):
    import diffusers
    import transformers

    return getattr({"diffusers": diffusers, "transformers": transformers}[library], name)


class WanAdapter(TeacherAdapter):
    """A rectified-flow teacher: ``WanTransformer3DModel`` + (``AutoencoderKLWan`` | ``AutoencoderKL``)
    + (UMT5/T5 | CLIP) text encoder.

    Args:
        transformer, vae, text_encoder, tokenizer: the components (built from a folder by
            ``from_pretrained``, or given directly).
        flow_shift: s of the training grid's shifted sigmas.
        num_train_timesteps: T (the network sees t = T sigma).
        max_sequence_length: text tokens for a T5 encoder (Wan: 512); CLIP uses its tokenizer's length.
        negative_prompt: the unconditional prompt of classifier-free guidance (Wan's pipeline default "").
        expand_timesteps: pass one timestep per latent token (Wan2.2 TI2V-5B's ``expand_timesteps``).
        num_frames, height, width, fps: default geometry (Wan2.1: 81 frames, 480x832, 16 fps).
        scheduler_config: the teacher's own scheduler (class name and config), for teacher sampling.
        rotary_float32: store the rotary tables in float32 (see the module docstring).
    """

    family = "wan"
    prediction_type = "flow"
    vae_scale_factor = 1.0

    def __init__(self, transformer, vae, text_encoder, tokenizer, flow_shift: float = 1.0,
                 num_train_timesteps: int = 1000, max_sequence_length: int = 512, negative_prompt: str = "",
                 expand_timesteps: bool = False, num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, fps: int | None = None, scheduler_config: dict | None = None,
                 source: str | None = None, rotary_float32: bool = True):
        from diffusers import AutoencoderKLWan

        self.unet = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.source = source
        self.flow_shift = float(flow_shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.flow_sigmas = flow_training_sigmas(self.num_train_timesteps, self.flow_shift)
        self.max_sequence_length = int(max_sequence_length)
        self.negative_prompt = negative_prompt
        self.expand_timesteps = bool(expand_timesteps)
        self.scheduler_config = dict(scheduler_config or {})
        self.rotary_float32 = rotary_float32
        self.causal_vae = isinstance(vae, AutoencoderKLWan)
        self.t5_text = type(text_encoder).__name__ in T5_ENCODERS
        if self.causal_vae:
            self.vae_temporal_factor = int(vae.config.scale_factor_temporal)
            self.vae_spatial_factor = int(vae.config.scale_factor_spatial)
            self.latents_mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
            self.latents_std = torch.tensor(vae.config.latents_std, dtype=torch.float32)
            geometry = dict(WAN21_GEOMETRY)
        else:
            self.vae_temporal_factor = 1
            self.vae_spatial_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.vae_scale_factor = float(vae.config.scaling_factor)
            geometry = {"num_frames": 16, "height": 256, "width": 256, "fps": 8}
        given = {"num_frames": num_frames, "height": height, "width": width, "fps": fps}
        geometry.update({k: v for k, v in given.items() if v is not None})
        self.latent_frames(geometry["num_frames"])  # validates the frame rule
        self.default_num_frames, self.default_height = geometry["num_frames"], geometry["height"]
        self.default_width, self.default_fps = geometry["width"], geometry["fps"]
        if rotary_float32:
            rotary_tables_in_float32(self.unet)

    # ---- loading ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        local_files_only: bool = True, device: str | torch.device | None = None,
                        revision: str | None = None, vae_dtype: torch.dtype | None = None, **kwargs) -> "WanAdapter":
        """Load a teacher from a local folder or a hub id (only the local cache unless
        ``local_files_only=False``); frozen, eval mode. Weights load from safetensors only.

        ``vae_dtype`` (default ``torch_dtype``): Wan's own example keeps the VAE in float32.
        ``kwargs`` go to the constructor (``flow_shift`` overrides the scheduler's shift; geometry, ...).
        """
        location, is_local = resolve_model_location(path, REQUIRED_SUBFOLDERS, "Wan / flow teacher")
        common = dict(local_files_only=local_files_only or is_local, revision=revision)
        try:
            index = read_model_index(location, **common)
            modules = {}
            for name, dtype_key, dtype in (("transformer", "torch_dtype", torch_dtype),
                                           ("vae", "torch_dtype", vae_dtype or torch_dtype),
                                           ("text_encoder", "dtype", torch_dtype)):
                library, class_name = index[name]
                modules[name] = _component_class(library, class_name).from_pretrained(
                    location, subfolder=name, use_safetensors=True, **{dtype_key: dtype}, **common)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(location, subfolder="tokenizer", **common)
            scheduler_cls = _component_class(*index["scheduler"])
            scheduler_config = dict(scheduler_cls.load_config(location, subfolder="scheduler", **common))
        except OSError as err:
            if is_local:
                raise
            raise FileNotFoundError(
                f"could not load the hub model {location!r} "
                f"({'from the local cache only' if local_files_only else 'from the hub'}): {err}") from err
        scheduler_config["_class_name"] = index["scheduler"][1]
        if scheduler_config.get("prediction_type", "flow_prediction") != "flow_prediction":
            raise ValueError(f"{location}/scheduler: prediction_type={scheduler_config['prediction_type']!r}; "
                             "the wan adapter needs a flow-prediction teacher")
        kwargs.setdefault("flow_shift", scheduler_config.get("flow_shift", scheduler_config.get("shift", 1.0)))
        kwargs.setdefault("num_train_timesteps", scheduler_config.get("num_train_timesteps", 1000))
        kwargs.setdefault("expand_timesteps", bool(index.get("expand_timesteps") or False))
        adapter = cls(modules["transformer"], modules["vae"], modules["text_encoder"], tokenizer,
                      scheduler_config=scheduler_config, source=location, **kwargs)
        if device is not None:
            adapter.to(device)
        return adapter.freeze()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "WanAdapter":
        """Move the frozen modules; a dtype cast keeps the transformer's ``_keep_in_fp32_modules``
        (time embedder, norms, modulation tables, rotary tables) in float32, as diffusers'
        ``from_pretrained(torch_dtype=...)`` loads them."""
        super().to(device=device)
        if dtype is not None:
            for module in (self.vae, self.text_encoder):
                if module is not None:  # None once released (``release_encoders``)
                    keep_in_float32(module, dtype)
        self.cast_network(self.unet, dtype=dtype)
        return self

    def cast_network(self, network: nn.Module, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> nn.Module:
        """``to(device)``, then the dtype cast of ``keep_in_float32`` and float32 rotary tables."""
        network.to(device=device)
        if dtype is not None:
            keep_in_float32(network, dtype)
        if self.rotary_float32:
            rotary_tables_in_float32(network)
        return network

    # ---- frames -----------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        """1 + (num_frames - 1) // 4 for the causal VAE (``num_frames`` must be 1 + 4k); else ``num_frames``."""
        r = self.vae_temporal_factor
        if r == 1:
            return num_frames
        if num_frames < 1 or (num_frames - 1) % r:
            below = 1 + r * max((num_frames - 1) // r, 0)
            raise ValueError(f"`num_frames`={num_frames}: Wan's causal VAE takes 1 + {r}k frames "
                             f"(e.g. {below} or {below + r})")
        return 1 + (num_frames - 1) // r

    def pixel_frames(self, num_latent_frames: int) -> int:
        return 1 + self.vae_temporal_factor * (num_latent_frames - 1)

    def latent_frames_needed(self, frames: Sequence[int]) -> int:
        """K such that the first K latent frames decode every pixel frame in ``frames``
        (pixel frame p lies in latent frame ceil(p / 4); a causal decode needs all frames before it)."""
        if not self.causal_vae:
            return super().latent_frames_needed(frames)
        r = self.vae_temporal_factor
        return (max(frames) + r - 1) // r + 1

    # ---- text -------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning (B, L, D): T5 as ``WanPipeline`` (cleaned prompts, ``max_sequence_length``
        tokens, zeros past each prompt's length) or CLIP (``encode_clip_prompts``)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not self.t5_text:
            return encode_clip_prompts(self.tokenizer, self.text_encoder, prompts)
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = self.tokenizer([prompt_clean(p) for p in prompts], padding="max_length",
                                max_length=self.max_sequence_length, truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def empty_prompt_embedding(self, batch_size: int) -> torch.Tensor:
        """The unconditional context: the encoding of ``negative_prompt``, repeated."""
        return self.encode_prompts([self.negative_prompt]).expand(batch_size, -1, -1)

    # ---- VAE --------------------------------------------------------------------------
    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        return (z - self.latents_mean.to(z).view(shape)) / self.latents_std.to(z).view(shape)

    def _denormalise(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        return x * self.latents_std.to(x).view(shape) + self.latents_mean.to(x).view(shape)

    def encode_video_posterior(self, pixels: torch.Tensor,
                               frame_chunk_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> (mean, std) of the normalised latents (B, c, T', h, w): the causal VAE's
        posterior N(m, s^2) becomes N((m - latents_mean) / latents_std, (s / latents_std)^2)."""
        if not self.causal_vae:
            return posterior_per_frame(self.vae, pixels, self.vae_scale_factor, frame_chunk_size)
        self.latent_frames(pixels.shape[2])
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(pixels.to(dtype)).latent_dist
        std = self.latents_std.to(posterior.std.device).view(1, -1, 1, 1, 1)
        return self._normalise(posterior.mean.float()), posterior.std.float() / std

    def decode_latents(self, latents: torch.Tensor, frame_chunk_size: int = 8) -> torch.Tensor:
        """Normalised latents -> pixels (B, 3, T, H, W), differentiable (the causal VAE clamps to [-1, 1])."""
        if not self.causal_vae:
            return decode_per_frame(self.vae, latents, self.vae_scale_factor, frame_chunk_size)
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(self._denormalise(latents).to(dtype)).sample

    def decode_frames(self, latents: torch.Tensor, frames: Sequence[int], frame_chunk_size: int = 8,
                      checkpointing: bool = False) -> torch.Tensor:
        """Pixels of the pixel ``frames``: a causal VAE decodes only the first K latent frames that
        hold them (``latent_frames_needed``), one latent frame at a time through the decoder's causal
        cache; with ``checkpointing`` each latent frame's decoder activations are recomputed in
        backward, so the memory kept for the reward's gradient is one latent frame's plus the cache."""
        if not self.causal_vae:
            return super().decode_frames(latents, frames, frame_chunk_size, checkpointing)
        frames = list(frames)
        needed = self.latent_frames_needed(frames)
        z = self._denormalise(latents[:, :, :needed]).to(next(self.vae.parameters()).dtype)
        if not checkpointing:
            return self.vae.decode(z).sample[:, :, frames]
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify

        decoder = self.vae.decoder
        x = self.vae.post_quant_conv(z)
        cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in decoder.modules())
        outputs = []
        for i in range(needed):
            out, cache = checkpoint(_decoder_step, decoder, x[:, :, i : i + 1], cache, i == 0, use_reentrant=False)
            outputs.append(out)
        pixels = torch.cat(outputs, dim=2)
        if self.vae.config.patch_size is not None:
            pixels = unpatchify(pixels, patch_size=self.vae.config.patch_size)
        return pixels.clamp(-1, 1)[:, :, frames]

    # ---- transformer ------------------------------------------------------------------
    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The transformer's timestep T sigma: grid indices (integer tensor) through ``flow_sigmas``;
        a floating tensor is taken as T sigma already (off-grid sampling)."""
        if timesteps.is_floating_point():
            return timesteps.float()
        return flow_model_timesteps(self.flow_sigmas.to(timesteps.device)[timesteps], self.num_train_timesteps)

    def predict(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, text_embedding: torch.Tensor,
                timestep_cond: torch.Tensor | None = None, fps: int | torch.Tensor | None = None) -> torch.Tensor:
        """The velocity v of ``unet`` at (latents, timesteps); ``timestep_cond`` (students) goes through the
        guidance layer; Wan has no fps input, so ``fps`` is ignored."""
        module = getattr(unet, "module", unet)
        dtype = next(module.parameters()).dtype
        t = self.model_timesteps(timesteps)
        if self.expand_timesteps:
            p_t, p_h, p_w = module.config.patch_size
            tokens = (latents.shape[2] // p_t) * (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
            t = t[:, None].expand(-1, tokens)
        with guidance_condition(unet, timestep_cond):
            return unet(hidden_states=latents.to(dtype), timestep=t, encoder_hidden_states=text_embedding.to(dtype),
                        return_dict=False)[0]

    def predict_eps(self, unet: nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, text_embedding: torch.Tensor,
                    timestep_cond: torch.Tensor | None = None, fps: int | torch.Tensor | None = None) -> torch.Tensor:
        """eps = z + (1 - sigma) v from the velocity (``predict``)."""
        v = self.predict(unet, latents, timesteps, text_embedding, timestep_cond, fps)
        sigma = self.model_timesteps(timesteps).to(latents.device) / self.num_train_timesteps
        return eps_from_velocity(latents, v.to(latents.dtype), sigma.reshape(-1, *([1] * (latents.ndim - 1))))

    def build_student_unet(self, time_cond_proj_dim: int = 256) -> nn.Module:
        """A copy of the teacher transformer plus the zero-initialised guidance layer
        ``condition_embedder.time_embedder.cond_proj`` (``time_cond_proj_dim`` -> freq_dim, no bias),
        recorded as ``config.time_cond_proj_dim``. Zero weights: the student equals the teacher at
        every guidance scale when distillation starts, with no seed to reproduce."""
        student = copy.deepcopy(self.unet)
        embedder = student.condition_embedder.time_embedder
        param = embedder.linear_1.weight
        embedder.cond_proj = nn.Linear(time_cond_proj_dim, embedder.linear_1.in_features, bias=False,
                                       device=param.device, dtype=param.dtype)
        nn.init.zeros_(embedder.cond_proj.weight)
        student.register_to_config(time_cond_proj_dim=time_cond_proj_dim)
        missing = set(student.state_dict()) - set(self.unet.state_dict())
        if missing != {GUIDANCE_LAYER_KEY}:
            raise RuntimeError(f"the Wan student should add only {GUIDANCE_LAYER_KEY!r} to the teacher, "
                               f"added {sorted(missing)}")
        return student.eval()


def save_flow_teacher(folder: str | os.PathLike, transformer, vae, text_encoder, tokenizer, scheduler,
                      expand_timesteps: bool = False) -> Path:
    """Write a teacher folder the ``wan`` adapter loads: every component with ``save_pretrained``
    (safetensors) and ``model_index.json``. Stock Wan components (``AutoencoderKLWan`` and a T5
    encoder) are written by ``WanPipeline.save_pretrained``, so stock diffusers loads the folder too;
    other combinations (the mini world's per-frame VAE and CLIP) get a ``model_index.json`` of the
    same form with ``_class_name`` ``FlowTeacher``, which only this adapter reads. ``expand_timesteps``
    is Wan2.2 TI2V's per-token timestep flag (written into ``model_index.json``)."""
    import json

    import diffusers
    from diffusers import AutoencoderKLWan, WanPipeline

    folder = Path(folder)
    if isinstance(vae, AutoencoderKLWan) and type(text_encoder).__name__ in T5_ENCODERS:
        pipeline = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                               transformer=transformer, expand_timesteps=expand_timesteps)
        pipeline.save_pretrained(folder, safe_serialization=True)
        return folder
    components = {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
                  "scheduler": scheduler}
    index = {"_class_name": "FlowTeacher", "_diffusers_version": diffusers.__version__,
             "expand_timesteps": expand_timesteps}
    for name, component in components.items():
        kwargs = {} if name in ("tokenizer", "scheduler") else {"safe_serialization": True}
        component.save_pretrained(folder / name, **kwargs)
        index[name] = [type(component).__module__.split(".")[0], type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder
