"""The trained network sharded over processes (FSDP2 through accelerate): what the trainer does beyond DDP.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``, applied by ``accelerator.prepare`` with
``configs/accelerate/fsdp.yaml``) every parameter of the trained network becomes a ``DTensor``
holding 1/N of its rows on each of the N processes; a wrapped block all-gathers its weights before its
forward and frees them after, and the backward reduce-scatters its gradients (each process keeps the
mean gradient of its rows). AdamW's moments are sharded alike. Hence:

- whatever reads a weight as a whole (a checkpoint's training state, the saved student, EMA weights)
  gathers it (``gathered``): every process takes part (a collective), the main one keeps the result;
- whatever writes a whole tensor into a sharded one (resume) keeps this process's rows (``shard_like``,
  ``copy_full_``), so a checkpoint holds the same full tensors under one process, DDP or FSDP;
- value checks (NaN, Inf) read this process's rows (``local_view``) and the processes agree on the answer;
- every process calls the trained network the same number of times, each forward being a collective:
  validation samples on every process and the main one writes the grid;
- weights swapped into the shards for one forward (EMA target, reference snapshot) are framed by ``reshard``: FSDP2
  keeps the root unit's gathered weights after a forward, and the next forward would use those instead.

Only the trained network is sharded. The frozen teacher and the rewards are not passed to ``prepare``: they
stay whole on every process, in ``train.teacher_dtype`` / ``reward_options.dtype`` (docs/training.md says why).
"""

from __future__ import annotations

from typing import Any

import torch


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a sharded parameter, gradient or optimizer moment)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_view(tensor: torch.Tensor) -> torch.Tensor:
    """This process's rows of a sharded tensor; any other tensor as it is."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def gathered(obj: Any, keep: bool = True) -> Any:
    """``obj`` (a tensor or nested dicts, lists and tuples) with every sharded tensor gathered whole, on the CPU.

    A collective: every process calls it with the same structure. With ``keep=False`` (the processes that
    write nothing) the gathered tensors are dropped as soon as they arrive and ``None`` is returned."""
    if is_sharded(obj):
        full = obj.full_tensor()
        return full.cpu() if keep else None
    if isinstance(obj, dict):
        out = {key: gathered(value, keep) for key, value in obj.items()}
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(gathered(value, keep) for value in obj)
    else:
        out = obj
    return out if keep else None


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (every process holds the same whole tensor) cut as ``like`` is: this process's rows as a
    ``DTensor`` of ``like``'s mesh and placements, in ``like``'s dtype. No communication. ``full`` as it is
    when ``like`` is not sharded."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    if tuple(full.shape) != tuple(like.shape):
        raise RuntimeError(f"a tensor of shape {tuple(full.shape)} cannot be loaded into one of shape {tuple(like.shape)}")
    return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements,
                             src_data_rank=None)


@torch.no_grad()
def copy_full_(dst: torch.Tensor, full: torch.Tensor) -> None:
    """``dst.copy_(full)`` where ``dst`` may be sharded and ``full`` is the whole tensor."""
    dst.copy_(shard_like(full, dst))


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full ``optimizer.state_dict()`` (as written by one process or gathered) cut to this process's rows:
    every per-parameter tensor of a parameter's shape (AdamW's moments) is sharded as the parameter is."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state["param_groups"] for i in group["params"]]
    by_id = dict(zip(ids, params))
    per_param = {}
    for key, values in state["state"].items():
        param = by_id[key]
        per_param[key] = {name: shard_like(value, param) if torch.is_tensor(value) and value.shape == param.shape
                          else value for name, value in values.items()}
    return {**state, "state": per_param}


def reshard(module: torch.nn.Module) -> None:
    """Drop every gathered copy of ``module``'s sharded weights (FSDP2 keeps the root unit's gathered after its
    forward, until its backward): the next forward gathers the shards again. Needed around weights swapped into the
    shards (an EMA target, a reference snapshot), which a kept copy would otherwise hide. No-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def fsdp_plugin_errors(plugin) -> list[str]:
    """What the trainer refuses in accelerate's FSDP plugin (the launch config), each naming its key: FSDP1; accelerate's
    activation checkpointing, which wraps each block in a ``CheckpointWrapper`` and so renames its parameters
    (``_checkpoint_wrapped_module``) and the saved student's keys; its meta-device loading, which moves the network to
    the meta device on all but the main process, and with it the frozen weights a LoRA full-step model shares with
    the teacher."""
    errors = []
    if plugin.fsdp_version != 2:
        errors.append(f"fsdp_version: {plugin.fsdp_version}; the trainer shards with FSDP2 (fsdp_version: 2, "
                      "configs/accelerate/fsdp.yaml)")
    if plugin.activation_checkpointing:
        errors.append("fsdp_activation_checkpointing: true renames the wrapped blocks' parameters and so the saved "
                      "student's keys; set it to false and use the run config's train.gradient_checkpointing")
    if plugin.cpu_ram_efficient_loading:
        errors.append("fsdp_cpu_ram_efficient_loading: true moves the network to the meta device on all but the main "
                      "process, and with it the frozen weights a LoRA network shares with the teacher; set it to false")
    return errors


def blocks_to_wrap(names: list[str], network: torch.nn.Module) -> list[str]:
    """The classes of ``names`` (``fsdp_transformer_layer_cls_to_wrap``) that ``network`` has, in their order: one
    launch config names the blocks of every model family, and accelerate refuses a class the model lacks. Raises
    ``ValueError`` when it has none of them."""
    present = {type(module).__name__ for module in network.modules()}
    kept = [name for name in names if name in present]
    if not kept:
        raise ValueError(f"FSDP: fsdp_transformer_layer_cls_to_wrap names {names}, none of them a block of "
                         f"{type(network).__name__}; add its block class")
    return kept


def any_process(flag: bool, accelerator) -> bool:
    """Whether ``flag`` holds on any process (every process calls it)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(float(flag), device=accelerator.device)
    return float(accelerator.reduce(value, "sum")) > 0
