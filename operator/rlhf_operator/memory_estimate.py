"""Per-GPU memory of a training stage, estimated from the model's shape and the job's settings.

Pure arithmetic (no torch), shared by the operator (refuse what cannot fit), docs/scaling.md and the
benchmarks, which compare it with measured peaks. The terms follow how the stage programs train:

- full fine-tuning: fp32 master weights, fp32 gradients, fp32 AdamW moments (16 bytes/parameter),
  divided over the GPUs under fsdp; ddp adds its gradient buckets (4 B/p) and autocast's copy of
  the weights in the compute dtype (2 B/p);
- LoRA: the frozen base in its dtype (sharded under fsdp) plus 16 bytes per adapter parameter, and no
  reference model (the adapter switched off is the reference);
- the reference, for ppo and KL-regularised rloo/grpo without LoRA, in the compute dtype;
- activations ~34 x tokens x hidden bytes per layer in 16-bit (Korthikanti et al. 2022, with a fused
  attention kernel, so no sequence^2 term); with activation checkpointing one layer's input per
  layer plus one layer's working set;
- the response logits in the compute dtype, their gradient, and a few rows in fp32 (logprobs.py);
- the KV cache of generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int
    kv_dim: int  # key/value width per layer (kv heads x head dim)
    intermediate: int = 0

    @staticmethod
    def llama(  # noqa: PLR0917 - the numbers of a Llama config.json
        hidden: int, layers: int, vocab: int, intermediate: int, kv_heads: int, heads: int, tied: bool = False
    ) -> ModelShape:
        """A Llama-shaped decoder (GQA attention, SwiGLU MLP)."""
        kv_dim = hidden * kv_heads // heads
        per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate + 2 * hidden
        params = layers * per_layer + (1 if tied else 2) * vocab * hidden + hidden
        return ModelShape(params, hidden, layers, vocab, kv_dim, intermediate)


#: Published shapes (config.json of each model family).
SHAPES: dict[str, ModelShape] = {
    "llama-3.2-1b": ModelShape.llama(2048, 16, 128_256, 8192, 8, 32, tied=True),
    "llama-3.1-8b": ModelShape.llama(4096, 32, 128_256, 14_336, 8, 32),
    "llama-3.1-70b": ModelShape.llama(8192, 80, 128_256, 28_672, 8, 64),
}


@dataclass(frozen=True)
class Setup:
    algorithm: str = "ppo"  # ppo | rloo | grpo | dpo | reward
    strategy: str = "ddp"  # ddp | fsdp
    gpus: int = 1  # processes training together (nodes x GPUs per node)
    compute_bytes: int = 2  # 2 for bf16/fp16, 4 for fp32
    lora_rank: int | None = None
    lora_targets_per_layer: int = 4  # q, k, v, o projections (PEFT's default for Llama is q, v: 2)
    cpu_offload: bool = False
    activation_checkpointing: bool = False
    micro_batch: int = 8  # sequences per forward/backward on one GPU
    prompt_length: int = 256
    response_length: int = 256
    generation_batch: int = 32  # sequences generated together on one GPU
    kl: bool = True  # rloo/grpo: a reference is needed when beta > 0


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def gib(self) -> float:
        return self.total / GIB

    def describe(self) -> str:
        return (
            ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if v)
            + f" (GiB; total {self.gib:.1f})"
        )


def lora_params(shape: ModelShape, setup: Setup) -> int:
    rank = setup.lora_rank or 0
    return shape.layers * setup.lora_targets_per_layer * rank * (shape.hidden + shape.hidden)


def _weights(shape: ModelShape, setup: Setup) -> dict[str, int]:
    p, c = shape.params, setup.compute_bytes
    shards = setup.gpus if setup.strategy == "fsdp" else 1
    full = setup.lora_rank is None
    out: dict[str, int] = {}
    if full:
        out["weights+grads+adam (fp32)"] = 16 * p // shards
        if setup.strategy == "ddp" and c < 4:
            out["compute-dtype weight copy"] = c * p
        if setup.strategy == "ddp" and setup.gpus > 1:
            out["ddp gradient buckets"] = 4 * p
    else:
        out["frozen base"] = c * p // shards
        out["adapter+grads+adam (fp32)"] = 16 * lora_params(shape, setup)
    needs_ref = full and (
        setup.algorithm in ("ppo", "dpo") or (setup.algorithm in ("rloo", "grpo") and setup.kl)
    )
    if needs_ref:
        out["reference"] = c * p // shards
    if setup.algorithm == "ppo":
        out["value head"] = 16 * shape.hidden
    if setup.cpu_offload and setup.strategy == "fsdp":
        # Sharded parameters, gradients and optimizer states live in CPU memory instead.
        out = {k: 0 if "fp32" in k or k in ("frozen base", "reference") else v for k, v in out.items()}
    if setup.strategy == "fsdp":
        # Two transformer blocks gathered at once (the current one and the prefetched one).
        out["gathered blocks"] = 2 * c * (p // max(1, shape.layers))
    return out


def _activations(shape: ModelShape, setup: Setup) -> dict[str, int]:
    seq = setup.prompt_length + setup.response_length
    tokens = setup.micro_batch * seq
    c = setup.compute_bytes
    per_layer = 34 * tokens * shape.hidden * c // 2
    if setup.activation_checkpointing:
        acts = shape.layers * tokens * shape.hidden * c + per_layer
    else:
        acts = shape.layers * per_layer
    response = setup.micro_batch * setup.response_length
    if setup.algorithm == "reward":
        logits = 0
    else:
        # Logits in the compute dtype and their gradient, plus 4 rows of fp32 log-softmax.
        logits = 2 * response * shape.vocab * c + 2 * 4 * setup.response_length * shape.vocab * 4
    kv = 0
    if setup.algorithm not in ("reward", "dpo"):  # dpo trains on given pairs: no generation
        kv = 2 * setup.generation_batch * seq * shape.layers * shape.kv_dim * c
    return {"activations": acts, "logits": logits, "kv cache": kv}


def estimate(shape: ModelShape, setup: Setup) -> Estimate:
    """Peak bytes allocated on one GPU (the CUDA context, ~0.5-1 GiB, is not included)."""
    return Estimate({**_weights(shape, setup), **_activations(shape, setup)})


def fits(shape: ModelShape, setup: Setup, gpu_bytes: int, headroom: float = 0.9) -> bool:
    """True when the estimate leaves 10% of the GPU for the CUDA context and fragmentation."""
    return estimate(shape, setup).total <= math.floor(gpu_bytes * headroom)


@dataclass(frozen=True)
class Instance:
    """An EC2 instance type as a Kubernetes node: GPU memory each, and what pods may request."""

    gpus: int
    gpu_gib: float
    allocatable_cpu: float
    allocatable_memory_gib: float


#: Allocatable = capacity - EKS's kube-reserved (CPU: 6% of the first core, 1% of the second, 0.5%
#: of the next two, 0.25% beyond; memory: 255 MiB + 11 MiB per max pod) - 100 MiB eviction
#: threshold - ~3% the kernel keeps; rounded down. The DaemonSets (aws-node, kube-proxy, the NVIDIA
#: device plugin) take another ~0.3 CPU and ~0.5 GiB.
INSTANCES: dict[str, Instance] = {
    "m6i.4xlarge": Instance(0, 0, 15.8, 59.0),
    "g5.2xlarge": Instance(1, 24, 7.9, 29.0),
    "g5.12xlarge": Instance(4, 24, 47.8, 180.0),
    "p4d.24xlarge": Instance(8, 40, 95.6, 1080.0),
    "p4de.24xlarge": Instance(8, 80, 95.6, 1080.0),
    "p5.48xlarge": Instance(8, 80, 191.4, 1960.0),
}
