"""VideoCrafter2 checkpoints: ``model.ckpt``, our converted folders, and T2V-Turbo's released UNets.

``model.ckpt`` (hub repo ``VideoCrafter/VideoCrafter2``) is one Lightning checkpoint whose
``state_dict`` holds three models and the noise-schedule buffers:

- ``model.diffusion_model.*``: the UNet (:class:`~t2v_turbo.models.vc2.unet.VC2UNet` names);
- ``first_stage_model.*``: the LDM ``AutoencoderKL``; we run it as diffusers' ``AutoencoderKL``
  through :func:`ldm_vae_to_diffusers` (same network, other names; the mid-block attention's
  q/k/v/proj_out are 1x1 convolutions in LDM and Linear layers in diffusers);
- ``cond_stage_model.*``: OpenCLIP ViT-H-14's text tower (:class:`VC2TextEncoder`);
- 13 top-level buffers (``betas``, ``alphas_cumprod``, ..., ``scale_arr``).

A converted folder (``t2v-turbo convert vc2``) holds ``vc2_config.json`` and one safetensors file
per part (``unet``, ``vae`` in diffusers names, ``text_encoder``, ``schedule``); it loads without
unpickling anything.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2v_turbo.fileio import torch_load
from t2v_turbo.models.vc2.unet import VC2_UNET_CONFIG, VC2UNet

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr",
)
CONFIG_NAME = "vc2_config.json"
PART_FILES = {"unet": "unet.safetensors", "vae": "vae.safetensors", "text_encoder": "text_encoder.safetensors",
              "schedule": "schedule.safetensors"}
WHERE_TO_GET = (
    "VideoCrafter2's checkpoint is `model.ckpt` in the hub repo VideoCrafter/VideoCrafter2; convert it once with "
    "`t2v-turbo convert vc2 --ckpt model.ckpt --out DIR` (see docs/videocrafter2.md)"
)

#: diffusers ``AutoencoderKL`` equivalent of VC2's first stage (ch 128, ch_mult [1,2,4,4], 2 res blocks, z 4)
VC2_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu", latent_channels=4,
    norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)
#: OpenCLIP ViT-H-14 text tower as VC2 uses it (penultimate layer, then the final LayerNorm)
VC2_TEXT_CONFIG: dict[str, Any] = dict(width=1024, layers=24, heads=16, vocab_size=49408, context_length=77,
                                       embed_dim=1024, layer="penultimate")
VC2_DEFAULTS: dict[str, Any] = dict(scale_factor=0.18215, fps=16, num_frames=16, height=320, width=512)


def vc2_config(unet: dict | None = None, vae: dict | None = None, text_encoder: dict | None = None, **defaults) -> dict:
    """The architecture record of a VC2 teacher (real sizes unless overridden); the teacher UNet
    has no ``time_cond_proj``."""
    unet_config = dict(VC2_UNET_CONFIG, time_cond_proj_dim=None, motion_cond_proj_dim=None)
    unet_config.update(unet or {})
    return {
        "family": "vc2",
        "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_config.items()},
        "vae": dict(VC2_VAE_CONFIG, **(vae or {})),
        "text_encoder": dict(VC2_TEXT_CONFIG, **(text_encoder or {})),
        **dict(VC2_DEFAULTS, **defaults),
    }


# ---------------------------------------------------------------------------------------------
# VAE: LDM names <-> diffusers names
# ---------------------------------------------------------------------------------------------
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_vae_key_to_diffusers(key: str, num_levels: int) -> str:
    """One LDM ``AutoencoderKL`` key (without ``first_stage_model.``) -> diffusers' name.

    Decoder levels are numbered bottom-up in LDM (``up.0`` is the full-resolution level) and
    top-down in diffusers (``up_blocks.0`` is the lowest resolution), hence the reversal.
    """
    rules = [
        (r"^(encoder|decoder)\.(conv_in|conv_out)\.(.*)$", lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
        (r"^(encoder|decoder)\.norm_out\.(.*)$", lambda m: f"{m[1]}.conv_norm_out.{m[2]}"),
        (r"^(quant_conv|post_quant_conv)\.(.*)$", lambda m: f"{m[1]}.{m[2]}"),
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(.*)$",
         lambda m: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_RESNET[m[3]]}.{m[4]}"),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.(.*)$", lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(.*)$",
         lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.{_RESNET[m[3]]}.{m[4]}"),
        (r"^decoder\.up\.(\d+)\.upsample\.conv\.(.*)$",
         lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"),
        (r"^(encoder|decoder)\.mid\.block_(\d)\.(\w+)\.(.*)$",
         lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_RESNET[m[3]]}.{m[4]}"),
        (r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(.*)$", lambda m: f"{m[1]}.mid_block.attentions.0.{_ATTN[m[2]]}.{m[3]}"),
    ]
    for pattern, build in rules:
        match = re.match(pattern, key)
        if match:
            return build(match)
    raise KeyError(f"unknown LDM VAE key {key!r}")


def _is_attn_projection(diffusers_key: str) -> bool:
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", diffusers_key))


def ldm_vae_to_diffusers(state: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """An LDM VAE state dict -> diffusers ``AutoencoderKL`` state dict (1x1-conv attention -> Linear)."""
    out = {}
    for key, value in state.items():
        new = ldm_vae_key_to_diffusers(key, num_levels)
        out[new] = value.flatten(1) if _is_attn_projection(new) and value.ndim == 4 else value
    return out


def diffusers_vae_to_ldm(state: dict[str, torch.Tensor], num_levels: int, ldm_keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`ldm_vae_to_diffusers` (used to write ``model.ckpt``-format files)."""
    if ldm_keys is None:
        ldm_keys = ldm_vae_keys(state, num_levels)
    out = {}
    for key in ldm_keys:
        new = ldm_vae_key_to_diffusers(key, num_levels)
        value = state[new]
        out[key] = value[:, :, None, None] if _is_attn_projection(new) else value
    return out


def ldm_vae_keys(diffusers_state: dict[str, torch.Tensor], num_levels: int) -> list[str]:
    """LDM key names of a diffusers VAE state dict, in its order."""
    return [diffusers_vae_key_to_ldm(key, num_levels) for key in diffusers_state]


def diffusers_vae_key_to_ldm(key: str, num_levels: int) -> str:
    """Inverse of :func:`ldm_vae_key_to_diffusers`."""
    rules = [
        (r"^(encoder|decoder)\.(conv_in|conv_out)\.(.*)$", lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
        (r"^(encoder|decoder)\.conv_norm_out\.(.*)$", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"^(quant_conv|post_quant_conv)\.(.*)$", lambda m: f"{m[1]}.{m[2]}"),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)$",
         lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_inverse(_RESNET)[m[3]]}.{m[4]}"),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$", lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}"),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.*)$",
         lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_inverse(_RESNET)[m[3]]}.{m[4]}"),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$",
         lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)\.(.*)$",
         lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_inverse(_RESNET)[m[3]]}.{m[4]}"),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$",
         lambda m: f"{m[1]}.mid.attn_1.{_inverse(_ATTN)[m[2]]}.{m[3]}"),
    ]
    for pattern, build in rules:
        match = re.match(pattern, key)
        if match:
            return build(match)
    raise KeyError(f"no LDM name for diffusers VAE key {key!r}")


def _inverse(mapping: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


def build_vae(config: dict):
    """diffusers ``AutoencoderKL`` from a VAE config record."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


# ---------------------------------------------------------------------------------------------
# text encoder: OpenCLIP ViT-H-14 text tower
# ---------------------------------------------------------------------------------------------
class OpenCLIPTextTower(nn.Module):
    """The text half of an OpenCLIP model, with OpenCLIP's parameter names and state-dict order.

    ``text_projection`` and ``logit_scale`` are kept only so checkpoints load strictly; VC2
    uses the token features, not the projected pooled embedding.
    """

    def __init__(self, width: int, layers: int, heads: int, vocab_size: int, context_length: int, embed_dim: int):
        super().__init__()
        from open_clip.transformer import LayerNorm, Transformer

        self.context_length = context_length
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.full([], math.log(1 / 0.07)))
        self.transformer = Transformer(width, layers, heads, act_layer=nn.GELU, batch_first=True)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.ln_final = LayerNorm(width)

    def causal_mask(self, device, dtype) -> torch.Tensor:
        return torch.full((self.context_length, self.context_length), float("-inf"), device=device, dtype=dtype).triu_(1)


class VC2TextEncoder(nn.Module):
    """VC2's frozen OpenCLIP text encoder: token features of the penultimate layer, then ``ln_final``.

    Input: OpenCLIP BPE token ids (B, 77) (:func:`tokenize`). Output: (B, 77, width). The
    attention is causal over the tokens. (VC2's code feeds the residual blocks token-major, as
    OpenCLIP's sequence-first blocks expected when VC2 was trained; with OpenCLIP's current
    batch-first blocks the equivalent is what we do here: attention over the 77 tokens.)
    """

    def __init__(self, width=1024, layers=24, heads=16, vocab_size=49408, context_length=77, embed_dim=1024, layer="penultimate"):
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"`layer` must be 'last' or 'penultimate', got {layer!r}")
        self.config = dict(width=width, layers=layers, heads=heads, vocab_size=vocab_size, context_length=context_length,
                           embed_dim=embed_dim, layer=layer)
        self.layer_skip = 1 if layer == "penultimate" else 0
        self.model = OpenCLIPTextTower(width, layers, heads, vocab_size, context_length, embed_dim)

    def init_weights(self, generator: torch.Generator) -> "VC2TextEncoder":
        """Deterministic random weights (for tiny test models; real weights come from a checkpoint)."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("logit_scale"):
                    continue
                if param.ndim == 1 and name.endswith("weight"):  # LayerNorm scales around 1
                    param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
                else:
                    param.copy_(0.02 * torch.randn(param.shape, generator=generator))
        return self

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.token_embedding(token_ids) + m.positional_embedding.to(m.token_embedding.weight.dtype)
        mask = m.causal_mask(x.device, x.dtype)
        blocks = m.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_skip]:
            x = block(x, attn_mask=mask)
        return m.ln_final(x)


def tokenize(prompts: list[str], context_length: int = 77) -> torch.Tensor:
    """OpenCLIP's BPE tokenizer (bundled with open_clip, no download): (B, context_length) int64."""
    import open_clip

    return open_clip.tokenize(list(prompts), context_length=context_length)


# ---------------------------------------------------------------------------------------------
# model.ckpt and converted folders
# ---------------------------------------------------------------------------------------------
def split_vc2_state_dict(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a ``model.ckpt`` state dict into unet / vae (LDM names) / text_encoder / schedule.

    Every key must belong to one part: unknown keys raise, naming them.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "text_encoder": {}, "schedule": {}}
    unknown = []
    for key, value in state.items():
        if key.startswith(UNET_PREFIX):
            parts["unet"][key[len(UNET_PREFIX):]] = value
        elif key.startswith(VAE_PREFIX):
            parts["vae"][key[len(VAE_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIX):
            parts["text_encoder"][key[len(TEXT_PREFIX):]] = value
        elif key in SCHEDULE_BUFFERS:
            parts["schedule"][key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the VC2 checkpoint (not UNet/VAE/text/schedule): {unknown[:10]} ({len(unknown)} in all)")
    return parts


def read_vc2_ckpt(path: str | Path, allow_pickle: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VC2 checkpoint not found at {path.resolve()}. {WHERE_TO_GET}")
    raw = torch_load(path, allow_pickle=allow_pickle)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a Lightning checkpoint (a dict with 'state_dict'), got {type(raw).__name__}")
    return split_vc2_state_dict(state)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> nn.Module:
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RuntimeError(f"{source}: {what} keys do not match the architecture; missing={missing[:8]} unexpected={unexpected[:8]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise RuntimeError(f"{source}: {what} {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    module.load_state_dict(state, strict=True, assign=True)
    return module


def build_vc2_modules(config: dict, parts: dict[str, dict[str, torch.Tensor]], source: str, vae_in_ldm_names: bool,
                      dtype: torch.dtype | None = None) -> tuple[VC2UNet, nn.Module, VC2TextEncoder]:
    """UNet, diffusers VAE and text encoder from a config record and their state dicts (strict).

    Modules are built on the meta device and take the given tensors (no double allocation).
    """
    with torch.device("meta"):
        unet = VC2UNet(**config["unet"])
        vae = build_vae(config["vae"])
        text = VC2TextEncoder(**config["text_encoder"])
    vae_state = parts["vae"]
    if vae_in_ldm_names:
        vae_state = ldm_vae_to_diffusers(vae_state, len(config["vae"]["block_out_channels"]))

    def cast(state):
        return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}

    _load_strict(unet, cast(parts["unet"]), "UNet", source)
    _load_strict(vae, cast(vae_state), "VAE", source)
    _load_strict(text, cast(parts["text_encoder"]), "text encoder", source)
    return unet, vae, text


def save_vc2_folder(folder: str | Path, config: dict, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                    schedule: dict[str, torch.Tensor]) -> Path:
    """Write a converted VC2 teacher folder (safetensors + ``vc2_config.json``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, str(folder / PART_FILES[name]), metadata={"format": "pt"})
    save_file({k: v.detach().to("cpu").contiguous() for k, v in schedule.items()}, str(folder / PART_FILES["schedule"]))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def read_vc2_folder(folder: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [f for f in [CONFIG_NAME, *PART_FILES.values()] if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder.resolve()} is not a converted VC2 folder: missing {', '.join(missing)}. {WHERE_TO_GET}"
        )
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    parts = {name: load_file(str(folder / file)) for name, file in PART_FILES.items()}
    return config, parts


# ---------------------------------------------------------------------------------------------
# T2V-Turbo's released full UNets
# ---------------------------------------------------------------------------------------------
def read_unet_file(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A bare UNet state dict from ``unet_mg.pt`` / ``unet_no_mg.pt`` / a merged UNet (``.pt`` or
    ``.safetensors``); a ``state_dict`` wrapper and a ``model.diffusion_model.`` prefix are removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"UNet file not found at {path.resolve()}. The released T2V-Turbo-v2 UNets are `unet_mg.pt` and "
            "`unet_no_mg.pt` in the hub repo jiachenli-ucsb/T2V-Turbo-v2; the merged v1 UNet is in "
            "jiachenli-ucsb/T2V-Turbo-VC2-Merged (see docs/videocrafter2.md)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch_load(path, allow_pickle=allow_pickle)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a UNet state dict, got {type(state).__name__}")
    if any(k.startswith(UNET_PREFIX) for k in state):
        state = {k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    return state


def detect_unet_variant(state: dict[str, torch.Tensor]) -> str:
    """``"v2_motion"`` (unet_mg.pt), ``"guided"`` (has time_cond_proj: unet_no_mg.pt, our merges)
    or ``"no_guidance_layer"`` (a merged UNet saved without time_cond_proj)."""
    if "motion_cond_proj.weight" in state:
        return "v2_motion"
    if "time_cond_proj.weight" in state:
        return "guided"
    return "no_guidance_layer"


def guidance_layer_warning(source: str, what: str) -> None:
    warnings.warn(
        f"{source}: `time_cond_proj.weight` is not in {what}; it is initialised to zeros "
        "(deterministic; the original code builds it with an unseeded random init, so its outputs are not "
        "reproducible either). Our exported students always include this weight.",
        stacklevel=3,
    )
