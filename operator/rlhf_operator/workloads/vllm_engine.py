"""The `vllm` rollout engine: vLLM colocated with the trainer, weights pushed in after each step.

As the anchors' hybrid engines (veRL, OpenRLHF, TRL's `vllm_mode="colocate"`): every training
process holds its own vLLM engine in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, so the engine
core and its one worker live in this process) over the same device. vLLM loads the base model
once at start; after each optimizer step the trainer's current weights are handed to the model's
own `load_weights` as tensors (`push_weights`): no checkpoint is written, nothing is serialised.
Under FSDP2 each parameter is gathered (`full_tensor()`, collective) one at a time, in the same
order on every rank, so a rank never holds two full copies of the model.

Sleep mode (weights and KV cache released while training, `LLM.sleep`/`wake_up`) is CUDA only:
vLLM's CPU worker logs "sleep mode is not supported on CPU" and ignores it, so on CPU `sleep()`
is a no-op. Under torchrun the engine joins the trainer's processes (vLLM's `external_launcher`, as
TRL's colocate mode): with `tensor_parallel_size` N, each N consecutive processes (one pod's GPUs)
form one engine's tensor parallel group and generate their prompts together.

vLLM pins its own torch and transformers (vLLM 0.31: torch 2.13, transformers < 5.18), so it runs
in an environment of its own (hack/install-vllm-env.sh; the trainer-vllm image variant); the
module imports vLLM only when an engine starts, and an engine that cannot start fails the stage
with exit 78 (`check_engine`) before any training step.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_operator.workloads.errors import StageConfigError

REPO = Path(__file__).resolve().parents[3]
FIX = (
    "run the policy stage in the trainer-vllm image (its environment: hack/install-vllm-env.sh, "
    "docs/rollouts.md), or set stages.policy.generation.engine: hf"
)
#: Name prefixes wrappers add that vLLM's load_weights does not know (activation checkpointing).
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def vllm_python() -> str | None:
    """The vLLM environment's python (RLHF_VLLM_PYTHON, else the one install-vllm-env.sh built)."""
    given = os.environ.get("RLHF_VLLM_PYTHON")
    if given:
        return given
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "install-vllm-env.sh"), "--python"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


@dataclass(frozen=True)
class VllmSettings:
    model: str  # the directory vLLM loads at start (the base model; the trainer's weights follow)
    max_model_len: int
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3  # colocated: the rest of the GPU is the trainer's
    seed: int = 0
    kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE


def check_engine(architectures: list[str]) -> Any:
    """vLLM's module, or StageConfigError (exit 78) naming the engine, what is wrong and the fix."""
    try:
        import vllm
    except ImportError as exc:
        raise StageConfigError(
            f"generation.engine vllm cannot start: vLLM is not installed in this image ({exc}); {FIX}.",
            "RolloutEngineUnavailable",
        ) from exc
    supported = set(vllm.ModelRegistry.get_supported_archs())
    missing = [a for a in architectures if a not in supported]
    if not architectures or missing:
        raise StageConfigError(
            f"generation.engine vllm cannot start: vLLM {vllm.__version__} does not support the "
            f"architecture {', '.join(missing or ['(none in config.json)'])}; set "
            "stages.policy.generation.engine: hf.",
            "RolloutEngineUnsupported",
        )
    return vllm


class ColocatedVllm:
    """One vLLM engine in this process, generating rollouts from the trainer's pushed weights."""

    def __init__(self, settings: VllmSettings, architectures: list[str]) -> None:
        vllm = check_engine(architectures)
        # The engine core in this process (weights are handed over as tensors), and vLLM's own
        # sockets on loopback only.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
        self.cuda = torch.cuda.is_available()
        self.llm = vllm.LLM(
            model=settings.model,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            # Under torchrun vLLM joins the trainer's process group instead of starting its own
            # workers: each training process is one rank of its engine's tensor parallel group.
            distributed_executor_backend="external_launcher" if _launched() else None,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
            enable_sleep_mode=self.cuda,
            enforce_eager=not self.cuda,
        )
        self.sleeping = False

    def sleep(self) -> None:
        """Release vLLM's weights and KV cache while the trainer trains (CUDA; a no-op on CPU)."""
        if self.cuda and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Loads (name, tensor) pairs into vLLM's model in place; returns how many were pushed.

        vLLM's own weight-update path, `reload_weights` on every worker (`collective_rpc`): it takes
        checkpoint-format tensors and redoes the kernel-format processing (the CPU build repacks
        linear weights at load, so a plain `model.load_weights` cannot reload them)."""
        self.wake()
        return reload_weights(self.llm, weights)

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        stop_ids: list[int],
        seeds: list[int],
    ) -> list[list[int]]:
        """`n` completions (token ids, each ending at its first stop id) per prompt, prompt-major;
        each prompt sampled from its own seed."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=n,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                stop_token_ids=stop_ids,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(c.token_ids) for out in outputs for c in out.outputs]

    def logprobs(self, prompt: list[int], response: list[int], temperature: float = 1.0) -> list[float]:
        """log p(response token | everything before it) under vLLM's current weights."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=temperature, prompt_logprobs=0)
        out = self.llm.generate([{"prompt_token_ids": prompt + response}], params, use_tqdm=False)[0]
        scored = out.prompt_logprobs or []
        ids = prompt + response
        return [float(scored[i][ids[i]].logprob) for i in range(len(prompt), len(ids))]

    def close(self) -> None:
        """Shuts the engine down now, while the process group it joined is still there. vLLM's
        teardown destroys its own groups, then the default one; left to the interpreter's exit, it
        runs after ours has destroyed them and prints a traceback into a succeeded pod's log."""
        self.llm.llm_engine.engine_core.shutdown()


def reload_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    """(name, tensor) pairs into the engine's model through vLLM's `reload_weights`, on every worker;
    returns how many were pushed."""
    pushed: list[str] = []

    def counted() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            pushed.append(name)
            yield name, tensor

    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted(), "is_checkpoint_format": True})
    llm.collective_rpc(_refresh_cpu_gemm)
    # Cached prefixes hold keys and values computed with the old weights.
    llm.reset_prefix_cache()
    return len(pushed)


def sync_trl_through_reload(generation: Any) -> None:
    """TRL's colocated engine (rloo, grpo) on vLLM's CPU build: TRL's `sync_weights` hands each
    tensor to the model's `load_weights`, which cannot redo the CPU build's repacked linear weights
    (AttributeError: 'Parameter' object has no attribute 'weight_loader'); the same tensors, walked
    by TRL (its PEFT merge and FSDP gathers), go through `reload_weights` instead. CUDA keeps TRL's."""

    pushes: list[int] = []

    def sync_weights() -> None:
        pushes.append(reload_weights(generation.llm, generation._iter_named_params()))
        if len(pushes) == 1 and generation.accelerator.is_main_process:
            print(
                f"vllm engine (TRL colocate): {pushes[0]} tensors pushed through reload_weights", flush=True
            )

    generation.sync_weights = sync_weights


def _launched() -> bool:
    return torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _refresh_cpu_gemm(worker: Any) -> int:
    """Rebuilds the CPU GEMM kernels of layers that keep their weight (the embedding, and the LM
    head tied to it): vLLM 0.31's CPU reload leaves their packed copy stale, so a tied LM head would
    go on scoring with the loaded weights (seen on the tiny GPT-2). A no-op off the CPU."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    refreshed = 0
    for module in worker.model_runner.model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            refreshed += 1
    return refreshed


def policy_weights(lm: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The LM's parameters as full tensors under their Hugging Face names (a tied weight once);
    with a LoRA adapter, each adapted layer's merged weight (base + scale * B @ A) instead.

    Under FSDP2 each `full_tensor()` is a collective: every rank must iterate this in the same
    order (named_parameters is), whether or not its engine loads the result. A LoRA layer's base
    weight and its A and B are held until all three are here (PEFT registers them one after the
    other), so one layer's parts are the most this holds beyond the tensor being pushed.
    """
    adapted = {name: module for name, module in lm.named_modules() if _is_lora_layer(module)}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in lm.named_parameters():
        full = (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach()
        layer, part = _lora_part(name, adapted)
        if layer is None:
            yield hf_name(name), (full.to(dtype) if dtype is not None else full)
            continue
        if part == "base_layer.bias":
            yield hf_name(f"{layer}.bias"), (full.to(dtype) if dtype is not None else full)
            continue
        held = parts.setdefault(layer, {})
        held[part] = full
        if len(held) == 3:
            del parts[layer]
            merged = merged_weight(adapted[layer], held["base_layer.weight"], held["lora_A"], held["lora_B"])
            yield hf_name(f"{layer}.weight"), merged.to(dtype or held["base_layer.weight"].dtype)


def merged_weight(
    layer: nn.Module, base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor
) -> torch.Tensor:
    """PEFT's merge of one layer, on full tensors: base + scaling * B @ A (transposed for GPT-2's
    Conv1D, whose weight is stored in x out), in fp32 so a bf16 base does not lose the update."""
    adapter = str(layer.active_adapters[0])  # type: ignore[index]
    scaling: dict[str, float] = layer.scaling  # type: ignore[assignment]
    delta: torch.Tensor = (lora_b.float() @ lora_a.float()) * float(scaling[adapter])
    if getattr(layer, "fan_in_fan_out", False):
        delta = delta.T
    return base.float() + delta


def hf_name(name: str) -> str:
    """A parameter's name in the model's own checkpoint: without PEFT's and the wrappers' prefixes."""
    name = name.removeprefix("base_model.model.")
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "scaling")


def _lora_part(name: str, adapted: dict[str, nn.Module]) -> tuple[str | None, str]:
    """(the LoRA layer a parameter belongs to, which part of it) or (None, name) for any other."""
    for marker in (".base_layer.", ".lora_A.", ".lora_B."):
        layer, found, rest = name.partition(marker)
        if found and layer in adapted:
            part = marker.strip(".")
            return layer, f"{part}.{rest}" if part == "base_layer" else part
    if "lora_" in name:  # an adapter on an embedding (lora_embedding_A/B) or another kind
        raise StageConfigError(
            f"generation.engine vllm cannot push {name}: only LoRA on linear layers is merged into "
            "vLLM; leave embeddings out of stages.policy.lora.targetModules or set "
            "stages.policy.generation.engine: hf.",
            "RolloutEngineUnsupported",
        )
    return None, name
