"""Precision and data/model parallelism for training, on torch's own engines (FSDP2 or DDP).

Full fine-tuning keeps fp32 master weights (so the fp32 optimizer states and small learning rates
still move them) and computes in the model's dtype: FSDP2's `MixedPrecisionPolicy` under `fsdp`,
`torch.autocast` otherwise. Under `fsdp` every transformer block is its own `fully_shard` unit, the
LM and the value head are separate roots (generate() calls the LM directly, and clip_grad_norm_
needs every parameter on the same mesh), and the frozen reference is sharded too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_operator.workloads.distributed import DistInfo

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class TrainPlan:
    """How a model is trained: the API's `distributed`, `activationCheckpointing` and dtype."""

    strategy: str = "ddp"
    compute_dtype: torch.dtype = torch.float32
    cpu_offload: bool = False
    activation_checkpointing: bool = False

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != torch.float32


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks: the modules named in `_no_split_modules` (transformers' own list)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def enable_activation_checkpointing(model: nn.Module) -> None:
    # transformers >= 5.20 calls it activation_checkpointing_enable; older 5.x gradient_checkpointing_enable.
    kwargs = {"use_reentrant": False}
    new: Any = getattr(model, "activation_checkpointing_enable", None)
    if new is not None:
        new(activation_checkpointing_kwargs=kwargs)
    else:
        old: Any = model.gradient_checkpointing_enable
        old(gradient_checkpointing_kwargs=kwargs)
    # Checkpointed blocks need an input that requires grad when the embeddings are frozen (LoRA).
    enable_inputs = getattr(model, "enable_input_require_grads", None)
    if callable(enable_inputs):
        enable_inputs()


def _fsdp_kwargs(plan: TrainPlan, dtype: torch.dtype | None) -> dict[str, Any]:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs: dict[str, Any] = {}
    if dtype is not None and dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if plan.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def shard(model: nn.Module, plan: TrainPlan, compute_dtype: torch.dtype | None) -> nn.Module:
    """fully_shard each transformer block, then the model itself as the root."""
    from torch.distributed.fsdp import fully_shard

    kwargs = _fsdp_kwargs(plan, compute_dtype)
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def prepare_trainable_lm(lm: nn.Module, plan: TrainPlan, info: DistInfo, *, lora: bool) -> nn.Module:
    """fp32 master weights for what is trained (the whole LM, or only the adapter under LoRA)."""
    if plan.activation_checkpointing:
        enable_activation_checkpointing(lm)
    if lora:
        # PEFT keeps adapter weights in fp32 over a bf16 base; the frozen base stays in its dtype.
        for p in lm.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        lm.float()
    if plan.strategy == "fsdp":
        return shard(lm, plan, plan.compute_dtype)
    return lm.to(info.device)


def prepare_value_head(head: nn.Module, plan: TrainPlan, info: DistInfo) -> nn.Module:
    head.float()
    if plan.strategy == "fsdp":
        return shard(head, plan, None)
    return head.to(info.device)


def prepare_reference(ref: nn.Module, plan: TrainPlan, info: DistInfo) -> nn.Module:
    """The frozen reference in the model's dtype; sharded like the policy under fsdp."""
    ref.eval().requires_grad_(False)
    ref.to(plan.compute_dtype)
    if plan.strategy == "fsdp":
        return shard(ref, plan, None)
    return ref.to(info.device)


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP over the processes for strategy ddp (the module itself when there is one process)."""
    if info.world_size <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


@contextlib.contextmanager
def compute(plan: TrainPlan, device: torch.device) -> Iterator[None]:
    """Autocast to the model's dtype for ddp; FSDP2's policy already casts its parameters."""
    if plan.mixed and plan.strategy != "fsdp":
        with torch.autocast(device.type, dtype=plan.compute_dtype):
            yield
    else:
        yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on the CPU of every rank (a collective under fsdp: call on all ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return state


def set_full_state_dict(model: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=strict))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def local_bytes(tensors: Any) -> int:
    """Bytes this process holds for `tensors` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return local_bytes(
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    )
