"""Prints docs/scaling.md's table: per-GPU memory from `rlhf_operator.memory_estimate` (PPO).

python bench/scaling_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from rlhf_operator.memory_estimate import GIB, SHAPES, Setup, estimate

COLUMNS = [
    ("full, ddp, 1 GPU", Setup(strategy="ddp", gpus=1)),
    ("full, fsdp, 8 GPUs", Setup(strategy="fsdp", gpus=8)),
    ("full, fsdp, 16 GPUs", Setup(strategy="fsdp", gpus=16)),
    ("full, fsdp, 64 GPUs", Setup(strategy="fsdp", gpus=64)),
    ("LoRA r16, ddp, 1 GPU", Setup(strategy="ddp", gpus=1, lora_rank=16)),
    ("LoRA r16, fsdp, 8 GPUs", Setup(strategy="fsdp", gpus=8, lora_rank=16)),
]
COMMON = {"activation_checkpointing": True, "micro_batch": 4, "prompt_length": 512, "response_length": 512}


def main() -> None:
    print("| model (params) | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for model, shape in SHAPES.items():
        cells = []
        for _, setup in COLUMNS:
            est = estimate(shape, Setup(**{**setup.__dict__, **COMMON}))
            cells.append(f"{est.total / GIB:.0f}")
        print(f"| {model} ({shape.params / 1e9:.1f}B) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
