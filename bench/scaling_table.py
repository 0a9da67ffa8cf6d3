"""Prints docs/scaling.md's tables: per-GPU and per-pod host memory from `rlhf_operator.memory_estimate`
(PPO with a separate critic the policy's size, the reward model served apart).

python bench/scaling_table.py
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from rlhf_operator.memory_estimate import GIB, SHAPES, Setup, estimate

COLUMNS = [
    ("full, ddp, 1 GPU", Setup(strategy="ddp", gpus=1)),
    ("full, fsdp, 8 GPUs", Setup(strategy="fsdp", gpus=8, gpus_per_node=8)),
    ("full, fsdp, 16 GPUs", Setup(strategy="fsdp", gpus=16, gpus_per_node=8)),
    ("full, fsdp, 64 GPUs", Setup(strategy="fsdp", gpus=64, gpus_per_node=8)),
    ("LoRA r16, ddp, 1 GPU", Setup(strategy="ddp", gpus=1, lora_rank=16)),
    ("LoRA r16, fsdp, 8 GPUs", Setup(strategy="fsdp", gpus=8, gpus_per_node=8, lora_rank=16)),
]
COMMON = {
    "activation_checkpointing": True, "micro_batch": 4, "prompt_length": 512, "response_length": 512,
    "generation_batch": 32,
}  # fmt: skip


def table(title: str, cell: str) -> None:
    print(f"\n{title}\n")
    print("| model (params) | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for model, shape in SHAPES.items():
        cells = []
        for _, setup in COLUMNS:
            est = estimate(shape, replace(setup, **COMMON), critic=shape)  # type: ignore[arg-type]
            value = est.total if cell == "gpu" else est.host_per_node
            cells.append(f"{value / GIB:.0f}")
        print(f"| {model} ({shape.params / 1e9:.1f}B) | " + " | ".join(cells) + " |")


def main() -> None:
    table("GPU memory per process (GiB)", "gpu")
    table("Host memory per pod (GiB; one pod per node, its GPUs' processes together)", "host")


if __name__ == "__main__":
    main()
