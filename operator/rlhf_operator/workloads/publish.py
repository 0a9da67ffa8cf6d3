"""The trained model as a plain transformers directory, gathered one tensor at a time.

Every process walks the model's parameters in the same order; a sharded one (a DTensor) is gathered
with `full_tensor()` (a collective), so no process ever holds more than one whole tensor of it.
Global rank 0 casts each to the published dtype and writes safetensors files of at most
`max_shard_bytes` (the Hugging Face sharded layout with its `model.safetensors.index.json`), so its
host memory stays near one file's worth whatever the model's size. A LoRA model is merged on the way
(each adapted weight plus its B @ A x scaling, as PEFT merges), so the result loads with
`AutoModel*.from_pretrained` and vLLM without peft; no process calls `merge_and_unload`, which under
FSDP2 is a collective that one process alone would hang in.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rlhf_operator.memory_estimate import PUBLISH_FILE_BYTES
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.loading import dtype_of, file_key

_SAFETENSORS_METADATA = {"format": "pt"}


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (a collective for a DTensor: call it on every process)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return tensor.detach()
    local = tensor.to_local()
    if local.device.type == "cpu" and torch.cuda.is_available():
        # CPU-offloaded shards: NCCL gathers device tensors only.
        tensor = DTensor.from_local(local.cuda(), tensor.device_mesh, tensor.placements, run_check=False)
    return tensor.full_tensor().detach()


def _lora_delta(model: nn.Module, layer_name: str) -> torch.Tensor | None:
    """B @ A x scaling of the LoRA layer `layer_name` (None when it is not one), in fp32."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer
    from peft.utils.other import transpose

    layer = model.get_submodule(layer_name)
    if not isinstance(layer, LoraLayer):
        return None
    if not isinstance(layer, LoraLinear):
        raise StageConfigError(
            f"{layer_name} has a {type(layer).__name__} LoRA adapter; only linear layers can be merged "
            "into the published model: set lora.targetModules to linear layers.",
            "UnsupportedLoraTarget",
        )
    adapter = layer.active_adapters[0]
    a = gathered(layer.lora_A[adapter].weight).float()
    b = gathered(layer.lora_B[adapter].weight).float()
    delta: torch.Tensor = transpose(b @ a, layer.fan_in_fan_out) * layer.scaling[adapter]
    return delta


def published_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name in the plain model, whole tensor) for every weight, LoRA merged; a collective."""
    for fqn, param in model.named_parameters():
        if "lora_" in fqn or ".original_module." in fqn:
            continue  # adapters are merged below; PEFT's untouched copy of a trained head is dropped
        full = gathered(param)
        if fqn.endswith(".base_layer.weight"):
            delta = _lora_delta(model, fqn.removesuffix(".base_layer.weight"))
            if delta is not None:
                full = (full.float() + delta.to(full.device)).to(full.dtype)
        yield file_key(fqn), full
    persistent = set(model.state_dict(keep_vars=True))
    for fqn, buffer in model.named_buffers():
        if fqn in persistent:
            yield file_key(fqn), buffer.detach()


def _write(out_dir: str, tensors: dict[str, torch.Tensor], number: int) -> tuple[str, int]:
    from safetensors.torch import save_file

    name = f"part-{number:05d}.safetensors"
    save_file(tensors, os.path.join(out_dir, name), metadata=_SAFETENSORS_METADATA)
    return name, sum(t.numel() * t.element_size() for t in tensors.values())


def _finish_files(out_dir: str, files: list[tuple[str, list[str]]], total: int) -> None:
    """Renames the parts to transformers' names, with the index when there is more than one."""
    if len(files) == 1:
        os.replace(os.path.join(out_dir, files[0][0]), os.path.join(out_dir, "model.safetensors"))
        return
    weight_map: dict[str, str] = {}
    for number, (part, names) in enumerate(files, start=1):
        final = f"model-{number:05d}-of-{len(files):05d}.safetensors"
        os.replace(os.path.join(out_dir, part), os.path.join(out_dir, final))
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=2)


def _plain_config(model: nn.Module) -> Any:
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return base.config, getattr(base, "generation_config", None)


def publish_model(
    model: nn.Module,
    dtype: torch.dtype,
    out_dir: str,
    *,
    is_main: bool,
    max_shard_bytes: int = PUBLISH_FILE_BYTES,
) -> bool:
    """Writes `model` as a plain transformers directory in `dtype` into `out_dir` on global rank 0
    (True there); every process must call it (the gathers are collectives)."""
    files: list[tuple[str, list[str]]] = []
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total = 0
    for name, full in published_tensors(model):
        if not is_main:
            continue
        tensor = full.to(dtype=dtype if full.is_floating_point() else full.dtype, device="cpu").contiguous()
        pending[name] = tensor
        pending_bytes += tensor.numel() * tensor.element_size()
        if pending_bytes >= max_shard_bytes:
            part, size = _write(out_dir, pending, len(files) + 1)
            files.append((part, list(pending)))
            total, pending, pending_bytes = total + size, {}, 0
    if not is_main:
        return False
    if pending or not files:
        part, size = _write(out_dir, pending, len(files) + 1)
        files.append((part, list(pending)))
        total += size
    _finish_files(out_dir, files, total)
    config, generation = _plain_config(model)
    config = copy.deepcopy(config)
    config.dtype = dtype
    config.save_pretrained(out_dir)
    if generation is not None:
        generation.save_pretrained(out_dir)
    return True


def publish_trained(trainer: Any, dtype: str, tokenizer: Any, uri: str, marker: dict[str, Any]) -> None:
    """The trained model as a plain transformers directory in `baseModel.dtype` (merged under LoRA)
    at `uri`. Every process calls it: under FSDP2 each weight is gathered in turn (a collective), and
    global rank 0 writes and publishes."""
    from rlhf_operator.workloads import storage

    model = trainer.accelerator.unwrap_model(trainer.model)
    config, _ = _plain_config(model)
    main = trainer.is_world_process_zero()
    with tempfile.TemporaryDirectory(prefix="rlhf-publish-") as work:
        if publish_model(model, dtype_of(config, dtype), work, is_main=main):
            tokenizer.save_pretrained(work)
            storage.publish_dir(work, uri, marker)
    trainer.accelerator.wait_for_everyone()
