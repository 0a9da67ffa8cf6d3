"""GPU and host memory of one training process, from the model's shape and the job's settings.

Pure arithmetic (no torch), shared by the operator's fit check (`pipeline/fit.py`), `rlhf-operator
estimate`, docs/scaling.md and the benchmarks, which compare it with measured peaks. The terms follow
how the stage programs train (P parameters, c bytes of the compute dtype, S processes a model is
sharded over: every GPU under fsdp, a node's GPUs under hybridShard, 1 under ddp):

- held all along: a trained model's fp32 master weights, gradients and AdamW moments (16P/S; ddp
  adds autocast's weight copy cP and, with several processes, its gradient buckets 4P); under LoRA
  its frozen base (cP/S) and 16 bytes per adapter parameter; the frozen reference (cP/S) for ppo,
  dpo and KL-regularised rloo/grpo without LoRA; PPO's critic, a trained model the size of its
  source (the reward model's) trained like the policy; a colocated reward model, whole in every
  process (cPr); under fsdp the root unit gathered (embeddings, an untied output layer) and two
  transformer blocks gathered (the current one and the prefetched one);
- then the largest of three phases: generation (the KV cache), PPO's scoring of the whole rollout
  batch (its response logits, cB(R+1)V, and a few fp32 rows of log-softmax), and training (one
  micro-batch's activations, ~34 x tokens x hidden x c/2 per layer (Korthikanti et al. 2022, fused
  attention), or with activation checkpointing one block input per layer + one block's working set;
  its logits and their gradient; under fsdp the root unit's unsharded fp32 gradients).

Host memory per process: the process itself (Python, torch, CUDA's host side; `HOST_BASELINE`, an
assumption), what cpuOffload keeps there, and the largest transient: the background checkpoint's
staged copy of the trained shards (fp32 weights + AdamW, 12 bytes per trained parameter / S), the
published model's file being written (rank 0), and for the TRL trainers the whole model that
(local) rank 0 loads before sharding. Under a node's memory all its processes add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhf_operator.model_shape import SHAPES, ModelShape

__all__ = ["GIB", "INSTANCES", "SHAPES", "Estimate", "Instance", "ModelShape", "Setup", "estimate", "fits"]

GIB = 1024**3
#: Host memory of one GPU training process before it holds any model (Python, torch, transformers,
#: CUDA's libraries and context on the host side). An assumption, not measured on a GPU here; a CPU
#: process measures ~0.7 GiB (docs/benchmarks.md).
HOST_BASELINE = 3 * GIB
#: The largest safetensors file the published model is written in (rank 0 holds one at a time).
PUBLISH_FILE_BYTES = 4 * GIB
#: How much of a GPU the estimate may fill: the rest is the CUDA context and fragmentation.
HEADROOM = 0.9
#: Tokens (rows x sequence width) per forward over a rollout (the policy's log-probs, the reference's,
#: the critic's values): PPO scores a rollout in chunks of this many tokens, so one chunk's logits are
#: what the scoring phase holds, not the whole batch's. The workloads' rollout engine uses this value.
ROLLOUT_TOKEN_BUDGET = 16_384


@dataclass(frozen=True)
class Setup:
    algorithm: str = "ppo"  # ppo | rloo | grpo | dpo | reward
    strategy: str = "ddp"  # ddp | fsdp
    gpus: int = 1  # processes training together (nodes x GPUs per node)
    gpus_per_node: int = 1  # processes of one pod: their host memory adds up
    hybrid_shard: bool = False  # fsdp within a node, replicated across nodes
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
    reward_colocated: bool = False  # a frozen reward model in every policy process
    checkpoints: bool = True  # checkpointInterval > 0: the background checkpoint's staged copy
    trl: bool = False  # loaded by transformers/accelerate: (local) rank 0 reads the whole model

    @property
    def shards(self) -> int:
        if self.strategy != "fsdp":
            return 1
        return max(1, self.gpus_per_node if self.hybrid_shard else self.gpus)


@dataclass(frozen=True)
class Estimate:
    #: GPU bytes per process at the peak: what is held all along, plus the largest phase's terms.
    parts: dict[str, int] = field(default_factory=dict)
    #: Each phase's own terms; the peak is the largest.
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    peak_phase: str = ""
    #: Host bytes of the process that needs the most (global rank 0), and of one node's pod.
    host: dict[str, int] = field(default_factory=dict)
    host_per_node: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def gib(self) -> float:
        return self.total / GIB

    @property
    def host_total(self) -> int:
        return sum(self.host.values())

    def describe(self) -> str:
        return (
            ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items() if v)
            + f" (GiB; total {self.gib:.1f}, peak in {self.peak_phase})"
        )


def lora_params(shape: ModelShape, setup: Setup) -> int:
    rank = setup.lora_rank or 0
    return shape.layers * setup.lora_targets_per_layer * rank * (shape.hidden + shape.hidden)


def _trained(name: str, shape: ModelShape, setup: Setup) -> dict[str, int]:
    """A model that is trained: full (16 B/p sharded, ddp's extras) or LoRA (frozen base + adapter)."""
    p, c, s = shape.params, setup.compute_bytes, setup.shards
    if setup.lora_rank is not None:
        return {
            f"{name} frozen base": c * p // s,
            f"{name} adapter+grads+adam (fp32)": 16 * lora_params(shape, setup),
        }
    out = {f"{name} weights+grads+adam (fp32)": 16 * p // s}
    if setup.strategy == "ddp" and c < 4:
        out[f"{name} compute-dtype weight copy"] = c * p
    if setup.strategy == "ddp" and setup.gpus > 1:
        out[f"{name} ddp gradient buckets"] = 4 * p
    return out


def _held(
    shape: ModelShape, setup: Setup, reward: ModelShape | None, critic: ModelShape | None
) -> dict[str, int]:
    c, s = setup.compute_bytes, setup.shards
    held = _trained("policy" if setup.algorithm != "reward" else "reward model", shape, setup)
    full = setup.lora_rank is None
    if full and (setup.algorithm in ("ppo", "dpo") or (setup.algorithm in ("rloo", "grpo") and setup.kl)):
        held["reference"] = c * shape.params // s
    if setup.algorithm == "ppo":
        if critic is not None:
            held.update(_trained("critic", critic, setup))
        else:
            held["value head"] = 16 * shape.hidden
    if setup.reward_colocated and reward is not None and setup.algorithm in ("ppo", "rloo", "grpo"):
        held["reward model (colocated, whole)"] = c * reward.params
    if setup.cpu_offload and setup.strategy == "fsdp":
        # Sharded parameters, gradients and optimizer states live in host memory instead.
        held = {k: v for k, v in held.items() if not _offloaded(k)}
    if setup.strategy == "fsdp":
        held["root unit (gathered)"] = c * shape.outside_blocks
        held["gathered blocks"] = 2 * c * shape.per_block
    return held


def _offloaded(term: str) -> bool:
    return "(fp32)" in term or term.endswith("frozen base") or term == "reference"


def _activations(shape: ModelShape, setup: Setup, micro: int) -> int:
    tokens = micro * (setup.prompt_length + setup.response_length)
    c = setup.compute_bytes
    per_layer = 34 * tokens * shape.hidden * c // 2
    if setup.activation_checkpointing:
        return shape.layers * tokens * shape.hidden * c + per_layer
    return shape.layers * per_layer


def _phases(shape: ModelShape, setup: Setup, critic: ModelShape | None) -> dict[str, dict[str, int]]:
    c, v, r = setup.compute_bytes, shape.vocab, setup.response_length
    seq = setup.prompt_length + r
    training = {"activations": _activations(shape, setup, setup.micro_batch)}
    if setup.algorithm != "reward":
        # Logits in the compute dtype and their gradient, plus 4 rows of fp32 log-softmax.
        training["logits"] = 2 * setup.micro_batch * r * v * c + 2 * 4 * r * v * 4
    if setup.algorithm == "ppo" and critic is not None:
        training["critic activations"] = _activations(critic, setup, setup.micro_batch)
    if setup.strategy == "fsdp" and setup.lora_rank is None:
        training["root unit gradients (fp32, unsharded)"] = 4 * shape.outside_blocks
    phases = {"training": training}
    if setup.algorithm not in ("reward", "dpo"):  # dpo trains on given pairs: no generation
        phases["generation"] = {
            "kv cache": 2 * setup.generation_batch * seq * shape.layers * shape.kv_dim * c
        }
    if setup.algorithm == "ppo":
        rows = max(1, min(setup.generation_batch, ROLLOUT_TOKEN_BUDGET // seq))
        phases["rollout scoring"] = {
            f"rollout logits ({rows} rows per chunk)": rows * (r + 1) * v * c + 4 * (r + 1) * v * 4
        }
    return phases


def _host(shape: ModelShape, setup: Setup, critic: ModelShape | None) -> tuple[dict[str, int], int]:
    """(host terms of global rank 0, host bytes of one node's pod)."""
    s, c = setup.shards, setup.compute_bytes
    trained = [shape] + ([critic] if setup.algorithm == "ppo" and critic is not None else [])
    per_param = sum(lora_params(m, setup) if setup.lora_rank else m.params // s for m in trained)
    held: dict[str, int] = {"process (python, torch, CUDA)": HOST_BASELINE}
    if setup.cpu_offload and setup.strategy == "fsdp":
        held["offloaded shards"] = 16 * per_param + (c * shape.params // s if setup.lora_rank else 0)
    transient: dict[str, int] = {}
    if setup.checkpoints and setup.algorithm == "ppo":
        transient["checkpoint staging (fp32 weights + AdamW)"] = 12 * per_param
    rank0: dict[str, int] = {
        "publishing (one file + one whole tensor)": PUBLISH_FILE_BYTES + 4 * shape.vocab * shape.hidden
    }
    if setup.trl:  # from_pretrained in the load dtype: fp32 master weights unless LoRA
        whole = (c if setup.lora_rank else 4) * shape.params
        if setup.strategy == "fsdp":  # accelerate's cpu_ram_efficient_loading: local rank 0 only
            rank0["loading (the whole model, local rank 0)"] = whole
        else:
            transient["loading (the whole model, every process)"] = whole
    others = sum(held.values()) + max(transient.values(), default=0)
    largest = max({**transient, **rank0}.items(), key=lambda kv: kv[1])
    per_node = others * (setup.gpus_per_node - 1) + sum(held.values()) + largest[1]
    return {**held, largest[0]: largest[1]}, per_node


def estimate(
    shape: ModelShape, setup: Setup, *, reward: ModelShape | None = None, critic: ModelShape | None = None
) -> Estimate:
    """Peak bytes per process on its GPU (the CUDA context, ~0.5-1 GiB, is not included) and host.

    `reward`: the colocated reward model's shape; `critic`: PPO's critic's (None: a value head on the
    policy, as before issue 20)."""
    held = _held(shape, setup, reward, critic)
    phases = _phases(shape, setup, critic)
    peak = max(phases, key=lambda name: sum(phases[name].values()))
    host, per_node = _host(shape, setup, critic)
    return Estimate({**held, **phases[peak]}, phases, peak, host, per_node)


def fits(
    shape: ModelShape, setup: Setup, gpu_bytes: int, headroom: float = HEADROOM, **models: ModelShape
) -> bool:
    """True when the estimate leaves 10% of the GPU for the CUDA context and fragmentation."""
    return estimate(shape, setup, **models).total <= math.floor(gpu_bytes * headroom)


def whole_model_fits_beside_training(
    shape: ModelShape, setup: Setup, gpu_bytes: int, headroom: float = HEADROOM, **models: ModelShape
) -> bool:
    """Whether the whole policy, gathered in the compute dtype (a generation engine's copy, or FSDP's
    summon_full_params), fits beside what training holds and the generation's KV cache."""
    est = estimate(shape, setup, **models)
    held = sum(v for k, v in est.parts.items() if k not in est.phases.get(est.peak_phase, {}))
    kv = sum(est.phases.get("generation", {}).values())
    return held + setup.compute_bytes * shape.params + kv <= math.floor(gpu_bytes * headroom)


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
