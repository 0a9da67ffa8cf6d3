"""Precision and data/model parallelism for training, on torch's own engines (FSDP2 or DDP).

Full fine-tuning keeps fp32 master weights (so the fp32 optimizer states and small learning rates
still move them) and computes in the model's dtype: FSDP2's `MixedPrecisionPolicy` under `fsdp`,
`torch.autocast` otherwise. Under `fsdp` every transformer block is its own `fully_shard` unit, the
LM and the value head are separate roots (generate() calls the LM directly, and clip_grad_norm_
needs every parameter on the same mesh), and the frozen reference is sharded too. With
`hybridShard` (several nodes) the mesh is 2-D: parameters are sharded over the GPUs of a node and
replicated across nodes (HSDP), so the per-layer all-gathers stay inside a node.

The models are sharded while still on the meta device (`loading.py` then allocates and fills each
process's shards), so the casts here cost no memory.
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
    hybrid_shard: bool = False
    nodes: int = 1

    def parameter_device(self, device: torch.device) -> torch.device:
        """Where the (sharded) parameters live: the host under cpuOffload."""
        return torch.device("cpu") if self.strategy == "fsdp" and self.cpu_offload else device

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


_MESHES: dict[tuple[str, int, int], Any] = {}


def device_mesh(plan: TrainPlan) -> Any:
    """The 2-D (replicate across nodes, shard within a node) mesh of hybridShard; None: FSDP's own
    1-D mesh over every process."""
    import torch.distributed as dist

    if not plan.hybrid_shard or plan.nodes <= 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (device, plan.nodes, world)
    if key not in _MESHES:
        _MESHES[key] = init_device_mesh(
            device, (plan.nodes, world // plan.nodes), mesh_dim_names=("replicate", "shard")
        )
    return _MESHES[key]


def _fsdp_kwargs(plan: TrainPlan, dtype: torch.dtype | None) -> dict[str, Any]:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs: dict[str, Any] = {}
    mesh = device_mesh(plan)
    if mesh is not None:
        kwargs["mesh"] = mesh
    if dtype is not None and dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if plan.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def shard(model: nn.Module, plan: TrainPlan, compute_dtype: torch.dtype | None) -> nn.Module:
    """fully_shard each transformer block, then the model itself as the root (under PEFT the model
    it wraps: generate() calls that one's forward, so its hooks must gather the embeddings)."""
    from torch.distributed.fsdp import fully_shard

    kwargs = _fsdp_kwargs(plan, compute_dtype)
    for block in transformer_blocks(model):
        fully_shard(block, **kwargs)
    base: Any = getattr(model, "get_base_model", None)
    fully_shard(base() if callable(base) else model, **kwargs)
    return model


def prepare_trainable_lm(lm: nn.Module, plan: TrainPlan, *, lora: bool) -> nn.Module:
    """fp32 master weights for what is trained (the whole LM, or only the adapter under LoRA);
    sharded under fsdp. Called on the meta device, before `loading.materialize`."""
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
    return lm


def prepare_value_head(head: nn.Module, plan: TrainPlan, info: DistInfo) -> nn.Module:
    head.float()
    if plan.strategy == "fsdp":
        return shard(head, plan, None)
    return head.to(info.device)


def prepare_reference(ref: nn.Module, plan: TrainPlan) -> nn.Module:
    """The frozen reference in the model's dtype; sharded like the policy under fsdp. Called on the
    meta device, before `loading.materialize`."""
    ref.eval().requires_grad_(False)
    ref.to(plan.compute_dtype)
    if plan.strategy == "fsdp":
        return shard(ref, plan, None)
    return ref


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


def set_full_state_dict(model: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
    """Whole tensors (the same on every process) into a possibly sharded model: each process keeps
    its own slices. A collective under fsdp."""
    import torch.distributed as dist

    if not dist.is_initialized():
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, tensor in state.items():
                params[name].copy_(tensor)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=strict))


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
