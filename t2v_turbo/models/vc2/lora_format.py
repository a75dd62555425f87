"""The released T2V-Turbo ``unet_lora.pt`` format, and its conversion to our peft student.

Format (T2V-Turbo (VC2) rank 64 and (MS) rank 32 releases): ``torch.save`` of a plain Python
list ``[up_0, down_0, up_1, down_1, ...]`` of float32 tensors. Names and shapes are not stored:
the position in the list says which layer a pair belongs to. The rule, checked against the
official file's 1150-entry index table in ``tests/test_vc2_lora.py``:

- walk the UNet's ``named_modules()`` (depth first, registration order) and take every module
  whose class is exactly ``nn.Linear``, ``nn.Conv2d`` or ``nn.Conv3d`` (so not ``init_attn``'s
  kernel-1 ``nn.Conv1d`` projections, nor any norm); ``time_cond_proj`` is included;
- each such layer contributes ``up`` then ``down``, with rank ``k = min(r, in, out)`` (channels);
- Linear: ``down`` [k, in], ``up`` [out, k]. Conv: ``down`` has the layer's kernel, stride and
  padding, [k, in, *kernel]; ``up`` is a 1x1(x1) conv, [out, k, 1, 1(, 1)];
- forward: ``y = W x + dropout(up(down(x)))`` (scale 1); merged: ``W += up.flatten(1) @ down.flatten(1)``.

Our student keeps its LoRA in peft layers (``lora_A`` = down, ``lora_B`` = up, alpha = rank so
the scale is 1). Two differences, both documented for users:

- peft applies dropout to the LoRA *input* (``B(A(dropout(x)))``), the released code to the LoRA
  *output*; they differ in train mode only (inference is identical);
- our student never puts LoRA on the guidance layer ``time_cond_proj`` (it is trained or frozen
  as a full weight and always saved). The released pair for ``time_cond_proj`` is therefore
  folded into that weight on import, and on export the pair is written as zeros while the full
  ``time_cond_proj.weight`` goes to a sidecar safetensors file (see :func:`export_lora_list`).
  Layers whose rank is clipped (the input and output convs at rank 64) are zero-padded to the
  peft rank on import and sliced back on export.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: layer classes the released LoRA wraps (exact class match, as the original walk)
LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d, nn.Conv3d)
#: the guidance-embedding layer: ours/VC2's, and diffusers' UNet3DConditionModel's (T2V-Turbo MS)
GUIDANCE_LAYERS = ("time_cond_proj", "time_embedding.cond_proj")
#: sidecar written next to an exported list: the full guidance-layer weight the list cannot hold
SIDECAR_SUFFIX = ".time_cond_proj.safetensors"


# ---------------------------------------------------------------------------------------------
# the index -> layer rule
# ---------------------------------------------------------------------------------------------
def _is_peft_internal(name: str) -> bool:
    parts = name.split(".")
    return any(p in ("lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector") for p in parts)


def lora_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, base layer) of every layer the released format wraps, in list order.

    Works on a plain UNet and on one with peft LoRA injected (peft's ``<name>.base_layer`` is
    reported as ``<name>``, peft's own ``lora_A``/``lora_B`` layers are skipped).
    """
    layers = []
    for name, module in unet.named_modules():
        if type(module) not in LORA_LAYER_TYPES or _is_peft_internal(name):
            continue
        if name.endswith(".base_layer"):
            name = name[: -len(".base_layer")]
        layers.append((name, module))
    if not any(name in GUIDANCE_LAYERS for name, _ in layers):
        raise ValueError(
            f"the UNet has no guidance layer ({' / '.join(GUIDANCE_LAYERS)}); the released LoRA list includes it, so "
            "the layer order is only defined for a student UNet (build it with time_cond_proj_dim=256)"
        )
    return layers


def guidance_layer(unet: nn.Module) -> str:
    """Name of the guidance-embedding layer among the wrapped layers."""
    return next(name for name, _ in lora_layers(unet) if name in GUIDANCE_LAYERS)


def _channels(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels


def lora_shapes(layer: nn.Module, rank: int) -> tuple[list[int], list[int], int]:
    """(up shape, down shape, clipped rank) of one wrapped layer."""
    c_in, c_out = _channels(layer)
    k = min(rank, c_in, c_out)
    if isinstance(layer, nn.Linear):
        return [c_out, k], [k, c_in], k
    ones = [1] * (layer.weight.ndim - 2)
    return [c_out, k, *ones], [k, c_in, *layer.weight.shape[2:]], k


def lora_index_table(unet: nn.Module, rank: int) -> list[dict]:
    """One row per list entry: index, module, which (up/down), shape, base layer and rank."""
    rows = []
    for name, layer in lora_layers(unet):
        up, down, k = lora_shapes(layer, rank)
        for which, shape in (("up", up), ("down", down)):
            rows.append(dict(index=len(rows), module=name, which=which, shape=shape, base_layer=type(layer).__name__,
                             base_weight_shape=list(layer.weight.shape), rank=k))
    return rows


def infer_rank(tensors: Sequence[torch.Tensor]) -> int:
    """The requested rank r of a list: the largest (unclipped) rank among its pairs."""
    return max(int(t.shape[0]) for t in tensors[1::2])


# ---------------------------------------------------------------------------------------------
# reading / writing the list
# ---------------------------------------------------------------------------------------------
def read_lora_list(path_or_list: str | Path | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of an ``unet_lora.pt`` file (loaded with ``weights_only=True``) or a given list."""
    if isinstance(path_or_list, (str, Path)):
        path = Path(path_or_list)
        if not path.is_file():
            raise FileNotFoundError(
                f"LoRA file not found: {path.resolve()}. The released T2V-Turbo LoRA is `unet_lora.pt` in the "
                "hub repos jiachenli-ucsb/T2V-Turbo-VC2 and jiachenli-ucsb/T2V-Turbo-MS (see docs/videocrafter2.md)"
            )
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    else:
        tensors = path_or_list
    if not isinstance(tensors, (list, tuple)) or not all(torch.is_tensor(t) for t in tensors):
        raise ValueError(f"{path_or_list if isinstance(path_or_list, (str, Path)) else 'input'} is not a list of tensors "
                         "(the unet_lora.pt format is a torch.save'd list [up_0, down_0, up_1, down_1, ...])")
    if len(tensors) % 2:
        raise ValueError(f"a LoRA list holds (up, down) pairs; got an odd number of tensors ({len(tensors)})")
    return list(tensors)


def save_lora_list(path: str | Path, tensors: Sequence[torch.Tensor]) -> Path:
    """``torch.save`` the list as the released files are (float32, contiguous, CPU)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([t.detach().to("cpu", torch.float32).contiguous() for t in tensors], path)
    return path


def lora_list_to_pairs(tensors: Sequence[torch.Tensor], unet: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Name each (up, down) pair by the rule above, checking the count and every shape."""
    layers = lora_layers(unet)
    if len(tensors) != 2 * len(layers):
        raise ValueError(
            f"the LoRA list has {len(tensors)} tensors but this UNet has {len(layers)} wrapped layers "
            f"({2 * len(layers)} tensors expected): the file is for a different architecture"
        )
    rank = infer_rank(tensors)
    pairs = {}
    for i, (name, layer) in enumerate(layers):
        up, down = tensors[2 * i], tensors[2 * i + 1]
        up_shape, down_shape, _ = lora_shapes(layer, rank)
        if list(up.shape) != up_shape or list(down.shape) != down_shape:
            raise ValueError(
                f"LoRA list entries {2 * i}/{2 * i + 1} ({name}): shapes {list(up.shape)}/{list(down.shape)}, "
                f"expected {up_shape}/{down_shape} for rank {rank}"
            )
        pairs[name] = (up, down)
    return pairs


def pairs_to_lora_list(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], unet: nn.Module) -> list[torch.Tensor]:
    """Inverse of :func:`lora_list_to_pairs` (every wrapped layer must have a pair)."""
    out = []
    for name, _ in lora_layers(unet):
        if name not in pairs:
            raise KeyError(f"no LoRA pair for layer {name}")
        out += list(pairs[name])
    return out


# ---------------------------------------------------------------------------------------------
# merge into plain weights
# ---------------------------------------------------------------------------------------------
def lora_delta(up: torch.Tensor, down: torch.Tensor, weight_shape: Sequence[int]) -> torch.Tensor:
    """The weight update of one pair: ``up.flatten(1) @ down.flatten(1)`` reshaped like the weight."""
    return (up.flatten(1).float() @ down.flatten(1).float()).reshape(weight_shape)


@torch.no_grad()
def merge_lora_list(unet: nn.Module, path_or_list, scale: float = 1.0) -> nn.Module:
    """Add every pair into the base weights of a plain UNet in place (biases unchanged)."""
    pairs = lora_list_to_pairs(read_lora_list(path_or_list), unet)
    layers = dict(lora_layers(unet))
    for name, (up, down) in pairs.items():
        weight = layers[name].weight
        weight.add_((scale * lora_delta(up, down, weight.shape)).to(weight.dtype))
    return unet


# ---------------------------------------------------------------------------------------------
# peft student <-> list
# ---------------------------------------------------------------------------------------------
def _peft_layers(unet: nn.Module, adapter_name: str) -> dict[str, nn.Module]:
    """Our peft LoRA layers by base name (modules with ``lora_A[adapter_name]``)."""
    found = {}
    for name, module in unet.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter_name in lora_a:
            found[name] = module
    return found


@torch.no_grad()
def load_lora_list(path_or_list, unet: nn.Module, adapter_name: str = "default") -> nn.Module:
    """Load a released LoRA list into a student UNet that already carries our peft LoRA layers.

    The student must have LoRA (rank >= the list's rank, alpha = rank) on every wrapped layer
    except ``time_cond_proj`` (what ``LoraSettings(target_modules="all_linear_conv")`` builds).
    ``lora_A`` <- down and ``lora_B`` <- up, zero-padded to the peft rank; the ``time_cond_proj``
    pair is added into ``time_cond_proj.weight``. In eval mode the result equals the released
    code's LoRA model.
    """
    tensors = read_lora_list(path_or_list)
    pairs = lora_list_to_pairs(tensors, unet)
    peft_layers = _peft_layers(unet, adapter_name)
    missing = [n for n in pairs if n not in GUIDANCE_LAYERS and n not in peft_layers]
    if missing:
        raise ValueError(
            f"the student has no LoRA on {len(missing)} layers the list wraps (e.g. {missing[:3]}); build it with "
            "LoraSettings(rank=<list rank>, alpha=<same>, target_modules='all_linear_conv')"
        )
    layers = dict(lora_layers(unet))
    for name, (up, down) in pairs.items():
        if name in GUIDANCE_LAYERS:
            weight = layers[name].weight
            weight.add_(lora_delta(up, down, weight.shape).to(weight.dtype))
            continue
        module = peft_layers[name]
        a, b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
        scaling = module.scaling[adapter_name]
        if abs(scaling - 1.0) > 1e-12:
            raise ValueError(f"{name}: peft LoRA scale is {scaling}, the released format needs 1 (set alpha = rank)")
        k = down.shape[0]
        if a.shape[0] < k:
            raise ValueError(f"{name}: the student's LoRA rank {a.shape[0]} is below the list's rank {k}")
        a.zero_()
        b.zero_()
        a[:k].copy_(down.to(a.dtype))
        b[:, :k].copy_(up.to(b.dtype))
    return unet


@torch.no_grad()
def export_lora_list(unet: nn.Module, rank: int | None = None, adapter_name: str = "default") -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """A peft student -> (released-format list, ``{"<guidance layer>.weight": full weight}``).

    Each pair is the peft (lora_B, lora_A) sliced to the format's clipped rank
    ``min(rank, in, out)``. If a clipped layer's extra components are not zero (a student trained
    at full peft rank on the 4-channel input/output convs), the pair is the best rank-k
    approximation (SVD) of its update and a warning gives the error. The guidance-layer pair is
    written as zeros: its full weight is returned separately (save it with
    :func:`save_exported_lora`).
    """
    peft_layers = _peft_layers(unet, adapter_name)
    if not peft_layers:
        raise ValueError("the UNet has no peft LoRA layers to export")
    if rank is None:
        rank = max(m.lora_A[adapter_name].weight.shape[0] for m in peft_layers.values())
    out: list[torch.Tensor] = []
    guidance_weight = None
    for name, layer in lora_layers(unet):
        up_shape, down_shape, k = lora_shapes(layer, rank)
        if name in GUIDANCE_LAYERS:
            guidance_name = name
            guidance_weight = layer.weight.detach().float().cpu().clone()
            out += [torch.zeros(up_shape), torch.zeros(down_shape)]
            continue
        if name not in peft_layers:
            raise ValueError(f"layer {name} has no LoRA: the released format needs one on every Linear/Conv2d/Conv3d")
        module = peft_layers[name]
        a = module.lora_A[adapter_name].weight.detach().float().cpu()
        b = module.lora_B[adapter_name].weight.detach().float().cpu() * module.scaling[adapter_name]
        if a.shape[0] < k:
            raise ValueError(f"{name}: LoRA rank {a.shape[0]} is below the requested export rank {k}")
        if a.shape[0] > k and (a[k:].abs().max() > 0 and b[:, k:].abs().max() > 0):
            up, down = _low_rank(b, a, k, layer.weight.shape)
            err = (lora_delta(up, down, layer.weight.shape) - lora_delta(b, a, layer.weight.shape)).abs().max().item()
            warnings.warn(f"{name}: LoRA of rank {a.shape[0]} exported at the format's rank {k} by SVD (max weight error {err:.3g})")
        else:
            up, down = b[:, :k].clone(), a[:k].clone()
        out += [up.reshape(up_shape).contiguous(), down.reshape(down_shape).contiguous()]
    return out, {f"{guidance_name}.weight": guidance_weight}


def _low_rank(b: torch.Tensor, a: torch.Tensor, k: int, weight_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-k (up, down) of the update b.flatten(1) @ a.flatten(1), with down keeping a's kernel."""
    delta = b.flatten(1) @ a.flatten(1)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    up = u[:, :k] * s[:k]
    down = vh[:k].reshape(k, *a.shape[1:])
    return up.reshape(b.shape[0], k, *b.shape[2:]), down


def save_exported_lora(path: str | Path, tensors: Sequence[torch.Tensor], guidance: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    """Write the list (``unet_lora.pt``) and the sidecar holding the guidance layer's full weight."""
    from safetensors.torch import save_file

    path = save_lora_list(path, tensors)
    sidecar = sidecar_path(path)
    save_file({k: v.contiguous() for k, v in guidance.items()}, str(sidecar))
    return path, sidecar


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> dict[str, torch.Tensor] | None:
    """``{"<guidance layer>.weight": tensor}`` saved next to a list by our export, or None (released files)."""
    from safetensors.torch import load_file

    sidecar = sidecar_path(path) if isinstance(path, (str, Path)) else None
    if sidecar is None or not sidecar.is_file():
        return None
    return load_file(str(sidecar))
