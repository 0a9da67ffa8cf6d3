"""The `hf` rollout engine: how the policy generates under FSDP2, and the forwards over a rollout.

Before issue 21 generation ran on the sharded policy with reshard-after-forward, so every decode
step all-gathered every block (across nodes, over the network, once per token). Now, when the
whole LM fits beside the training state, it is gathered once per rollout (FSDP2's `unshard()` on
every FSDP module, reshard-after-forward off), generates the whole rollout batch with its KV
cache, and is resharded; otherwise today's per-block gather is the fallback. `decide` is pure: at
run time its inputs are measured (the device's free memory beside what training now holds: the
truth, fragmentation included); at planning time the memory model predicts the same decision from
config.json (`memory_estimate.whole_model_fits_beside_training`, printed by `rlhf-operator estimate`).

The logprob/reference/value forwards over a rollout run in row chunks of at most a token budget
(`chunk_count`, `row_slices`, `chunked`), so a 512-row rollout never materialises the logits of every row at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_operator.memory_estimate import ROLLOUT_TOKEN_BUDGET

#: Modes: `whole` (the LM is not sharded: ddp or one process), `gathered`, `per-block`.
MODES = ("whole", "gathered", "per-block")
#: Tokens (rows x sequence width) per forward over a rollout; the logits of one chunk are
#: rows x response x vocab in the compute dtype, so this bounds them too. The memory model counts
#: the same chunk (one definition, in the operator's torch-free memory_estimate).
DEFAULT_TOKEN_BUDGET = ROLLOUT_TOKEN_BUDGET


@dataclass(frozen=True)
class GatherBudget:
    """What deciding to gather needs, in bytes on one device (or one process's share of the host)."""

    full_model_bytes: int  # the whole LM in the compute dtype: what unshard() materialises
    kv_cache_bytes: int  # the KV cache of the whole rollout batch
    free_bytes: int  # free now, beside what training holds (shards, optimizer, reference)
    headroom: float = 0.9  # fraction of the free memory generation may take


@dataclass(frozen=True)
class Decision:
    mode: str
    reason: str


def decide(sharded: bool, budget: GatherBudget | None) -> Decision:
    """Gather once per rollout when the whole LM and the KV cache fit in the free memory."""
    if not sharded:
        return Decision("whole", "the policy is not sharded: every process holds the whole model")
    if budget is None:
        return Decision("per-block", "no memory figures: gathering block by block")
    need = budget.full_model_bytes + budget.kv_cache_bytes
    room = int(budget.free_bytes * budget.headroom)
    gib = 1024**3
    figures = f"{need / gib:.2f} GiB (weights + KV cache) of {room / gib:.2f} GiB free"
    if need <= room:
        return Decision("gathered", f"gathering the policy once per rollout: {figures}")
    return Decision("per-block", f"gathering block by block: the whole policy does not fit, {figures}")


def kv_cache_bytes(config: Any, rows: int, sequence: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `rows` sequences of `sequence` tokens."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 1))
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 1))
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or hidden // heads)
    return 2 * rows * sequence * layers * kv_heads * head_dim * dtype_bytes


def full_model_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """The whole model in `dtype` (a sharded parameter counts its global size)."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() * size for p in model.parameters())


def free_bytes(device: torch.device, local_processes: int) -> int:
    """Free memory now: the GPU's, or this process's share of the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return available // max(1, local_processes)


def measured_budget(
    lm: nn.Module, dtype: torch.dtype, rows: int, sequence: int, device: torch.device
) -> GatherBudget | None:
    """The gather decision's inputs measured now (None when `lm` is not sharded); the memory
    model (`memory_estimate`) is to supply them instead (phase 2 of issue 21)."""
    if not is_sharded(lm):
        return None
    from rlhf_operator.workloads.distributed import local_processes

    size = torch.empty((), dtype=dtype).element_size()
    return GatherBudget(
        full_model_bytes=full_model_bytes(lm, dtype),
        kv_cache_bytes=kv_cache_bytes(lm.config, rows, sequence, size),
        free_bytes=free_bytes(device, local_processes()),
    )


def is_sharded(model: nn.Module) -> bool:
    return bool(_fsdp_modules(model))


def _fsdp_modules(model: nn.Module) -> list[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _as_root(model: nn.Module, modules: list[Any]) -> Any:
    """The outermost FSDP module of `model` (the root `sharding.shard` made: the LM, or under PEFT
    the model PEFT wraps), its FSDP state initialised.

    FSDP2 makes the first module whose forward runs the root. PEFT's generate() may call an inner
    model directly, so without this an inner block could become the root (and the LoRA policy's
    next forward through its real root fails). `_lazy_init` is private; it is a no-op once done.
    `modules` is in `model.modules()` order, pre-order: the outermost comes first.
    """
    root: Any = modules[0]
    state = root._get_fsdp_state()
    if getattr(state, "_is_root", None) is None:
        state._lazy_init()
    return root


@contextlib.contextmanager
def gathered(model: nn.Module, *, blocks: bool = True) -> Iterator[None]:
    """The FSDP modules of `model` unsharded (once, in the compute dtype) for the block's duration.

    With `blocks` every module, reshard-after-forward off, so the forwards of generate() all-gather
    nothing; afterwards every module is resharded and the defaults come back: blocks reshard
    after forward, the root does not. Without `blocks`, only the root's own parameters (embeddings,
    final norm, head): per-block generation under PEFT, whose generate() skips the root's forward
    and so its unshard.
    """
    modules = _fsdp_modules(model)
    if not modules:
        yield
        return
    root = _as_root(model, modules)
    chosen = modules if blocks else [root]
    if blocks:
        root.set_reshard_after_forward(False)
    for module in chosen:
        module.unshard()
    try:
        yield
    finally:
        for module in chosen:
            module.reshard()
        if blocks:
            root.set_reshard_after_forward(True)
            root.set_reshard_after_forward(False, recurse=False)


def fast_decoding(device: torch.device, mode: str) -> dict[str, Any]:
    """generate() arguments for fast decoding on CUDA: a static KV cache, with which transformers
    compiles the decoding forward. Only on an unsharded (whole or gathered) model; nothing on CPU.
    Unmeasured: no GPU was lent while this was written (docs/benchmarks.md)."""
    if device.type != "cuda" or mode == "per-block" or os.environ.get("RLHF_NO_STATIC_CACHE"):
        return {}
    return {"cache_implementation": "static"}


@torch.no_grad()
def generate(
    lm: Any,
    inputs: dict[str, torch.Tensor],
    *,
    decision: Decision,
    world_size: int,
    **kwargs: Any,
) -> torch.Tensor:
    """lm.generate over the whole rollout batch as `decision` says.

    Per-block generation all-gathers in every forward, so every rank must run the same number of
    decode steps: `synced_gpus` keeps the ranks that finished stepping until all have. Gathered or
    whole, generation runs no collective at all, so each rank stops when its own rows are done.
    """
    synced = decision.mode == "per-block" and world_size > 1
    extra = fast_decoding(inputs["input_ids"].device, decision.mode)
    scope = gathered(lm, blocks=decision.mode == "gathered")
    with scope:
        out: torch.Tensor = lm.generate(**inputs, synced_gpus=synced, **extra, **kwargs)
    return out


def chunk_count(rows: int, width: int, token_budget: int = DEFAULT_TOKEN_BUDGET) -> int:
    """How many row chunks keep each forward within `token_budget` tokens (rows x width)."""
    per_chunk = max(1, token_budget // max(1, width))
    return max(1, -(-rows // per_chunk))


def row_slices(rows: int, count: int) -> list[slice]:
    """`count` contiguous, nearly equal row slices (an empty one where count > rows, so every rank
    can run the same number of forwards)."""
    bounds = [rows * i // count for i in range(count + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(count)]


def chunked(forward: Callable[[slice], Sequence[torch.Tensor]], slices: list[slice]) -> list[torch.Tensor]:
    """`forward(rows)` over each slice of the rollout, each output concatenated by row.

    `forward` returns small per-token tensors (log-probs, values), never the logits: those live
    only inside one chunk.
    """
    parts: list[Sequence[torch.Tensor]] = [forward(s) for s in slices]
    return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
