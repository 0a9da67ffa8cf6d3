"""Loading a model so that no process holds more of it than it keeps.

Every process builds the model on the meta device (no memory: shapes only), shards it when the
plan says so, then allocates only its own part and fills it from the model's safetensors files
through torch.distributed.checkpoint's `HuggingFaceStorageReader`: each process reads the slices of
its own shards (the files are memory-mapped), cast straight into the dtype it trains in. So a
trained weight's fp32 master copy exists only as shards, and a frozen reference only as shards in
the compute dtype.

When the files cannot be read that way (no safetensors, tensor names transformers converts on load,
weights the model adds that the files lack, such as a new classification head), global rank 0 loads
the model with `from_pretrained` on the CPU and torch's `set_model_state_dict(...,
broadcast_from_rank0=True)` hands every process its shards: then only rank 0 holds a whole copy.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rlhf_operator.workloads.distributed import DistInfo
from rlhf_operator.workloads.errors import StageConfigError

#: How the files were read, as `load_weights` reports it.
FROM_SHARDS = "safetensors, each process its own shards"
FROM_RANK0 = "from_pretrained on rank 0, broadcast"
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+\.")


def model_config(path: str, what: str, revision: str | None = None) -> Any:
    """The transformers config of the model at `path`, with an error that says what to fix."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        raise StageConfigError(f"cannot read the config of {what} at {path}: {exc}", "ModelNotFound") from exc


def dtype_of(config: Any, name: str | None) -> torch.dtype:
    """`baseModel.dtype` as a torch dtype; auto is the dtype the config records (float32 if none)."""
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name in (None, "auto"):
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(stored, torch.dtype):
            return stored
        return names.get(str(stored), torch.float32)
    if name not in names:
        raise StageConfigError(
            f"baseModel.dtype must be one of auto, {', '.join(sorted(names))}, not {name!r}.", "InvalidDtype"
        )
    return names[name]


def empty_model(factory: Callable[[], nn.Module]) -> nn.Module:
    """`factory()` with its parameters on the meta device, its buffers real, its weights tied."""
    from accelerate import init_empty_weights

    # Buffers stay real: rotary frequencies and the like are computed from the config, not stored.
    with init_empty_weights(include_buffers=False):
        model = factory()
    tie: Any = getattr(model, "tie_weights", None)
    if callable(tie):  # init_empty_weights leaves tied embeddings as two meta tensors
        tie()
    return model


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocates every (local shard of a) parameter on `device`, keeping the buffers' values."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    shared: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    # to_empty gives an unsharded module new Parameter objects, untying tied embeddings: tie again.
    for first, *aliases in (names for names in shared.values() if len(names) > 1):
        keep = model.get_parameter(first)
        for alias in aliases:
            owner, _, attr = alias.rpartition(".")
            if model.get_parameter(alias) is not keep:
                setattr(model.get_submodule(owner), attr, keep)


def file_key(fqn: str) -> str:
    """The name a parameter of `model` (PEFT-wrapped or not) has in the base model's files."""
    key = fqn.removeprefix("base_model.model.")
    key = key.replace(".base_layer.", ".").replace(".original_module.", ".")
    return _MODULES_TO_SAVE.sub(".", key)


def stored_names(path: str) -> set[str] | None:
    """Tensor names in the safetensors files of a model directory (None: none to read)."""
    if not os.path.isdir(path):
        return None
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as handle:
            return set(json.load(handle)["weight_map"])
    files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    if not files:
        return None
    from safetensors import safe_open

    names: set[str] = set()
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as handle:
            names.update(handle.keys())
    return names


def loadable(model: nn.Module, skip: Callable[[str], bool]) -> dict[str, list[str]]:
    """Parameter name -> every name it has in the files (tied weights have several)."""
    aliases: dict[int, list[str]] = {}
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if skip(name):
            continue
        first.setdefault(id(param), name)
        aliases.setdefault(id(param), []).append(file_key(name))
    return {first[k]: names for k, names in aliases.items()}


def load_weights(
    model: nn.Module,
    path: str,
    pretrained: Callable[[], nn.Module],
    info: DistInfo,
    skip: Callable[[str], bool] = lambda name: "lora_" in name,
) -> str:
    """Fills `model`'s materialized parameters (except `skip`'s) from the model directory `path`.

    A collective when the model is sharded: every process calls it. Returns how it was read."""
    wanted = loadable(model, skip)
    stored = stored_names(path)
    params = dict(model.named_parameters())
    if stored is not None and all(any(a in stored for a in names) for names in wanted.values()):
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
        from torch.distributed.checkpoint.state_dict_loader import load

        targets = {next(a for a in names if a in stored): params[name] for name, names in wanted.items()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            load(targets, storage_reader=HuggingFaceStorageReader(path), no_dist=info.world_size == 1)
        return FROM_SHARDS
    _broadcast_from_rank0(model, wanted, pretrained, info)
    return FROM_RANK0


def _broadcast_from_rank0(
    model: nn.Module, wanted: dict[str, list[str]], pretrained: Callable[[], nn.Module], info: DistInfo
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full: dict[str, Any] = {}
    if info.is_main:
        source = pretrained().state_dict()
        full = {name: source[next(a for a in names if a in source)] for name, names in wanted.items()}
    if info.world_size == 1:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, tensor in full.items():
                params[name].copy_(tensor)
        return
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, full, options=options)
