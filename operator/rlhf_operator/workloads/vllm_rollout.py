"""PPO's rollouts on the vllm engine (`stages.policy.generation.engine: vllm`).

The trainer hands its prompts here instead of to `generate()`: vLLM samples `numGenerations`
completions per prompt (each prompt seeded by (seed, step, its global index), so a completion does
not depend on how prompts are split over processes) and stops at every stop id of the generation
config; the result is laid out as the hf engine's (left-padded prompts, responses padded with EOS
to `responseLength`), so the log-prob, value and reward code after it is the same. After each
optimizer step `sync` pushes the trainer's weights into vLLM (a collective under fsdp). With
`generation.tensorParallelSize` N, each N consecutive processes share one engine: they pool their
prompts, generate them together and each keeps its own rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlhf_operator.workloads import chat_format
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.vllm_engine import ColocatedVllm, VllmSettings, policy_weights

_M32 = 0xFFFFFFFF


def prompt_seed(seed: int, step: int, index: int) -> int:
    """A 31-bit seed per (seed, step, global prompt index)."""
    x = (seed * 1_000_003 + step) * 2_654_435_761 + index * 40_503
    return (x ^ (x >> 16)) & 0x7FFFFFFF


def architectures(model_dir: str) -> list[str]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return [str(a) for a in config.get("architectures") or []]


def tensor_parallel_group(size: int) -> Any:
    """The process group of this process's tensor parallel engine (None for size 1): each `size`
    consecutive ranks, which torchrun places in one pod. Every process must call this."""
    if size == 1:
        return None
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % size:
        raise StageConfigError(
            f"generation.tensorParallelSize {size} must divide the policy's processes ({world}); set "
            "it to a divisor of stages.policy.pod.resources.gpus.",
            "RolloutEngineUnsupported",
        )
    group, _ = dist.new_subgroups_by_enumeration(
        [list(range(first, first + size)) for first in range(0, world, size)]
    )
    return group


class VllmRollout:
    def __init__(
        self,
        engine: ColocatedVllm,
        tokenizer: PreTrainedTokenizerBase,
        stop_ids: list[int],
        tp_group: Any = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.tp_group = tp_group
        self.pushes = 0
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0])

    def _sample(self, step: int, indexed: list[tuple[int, list[int]]], settings: Any) -> list[list[int]]:
        """This process's completions, prompt-major. A tensor parallel group generates every member's
        prompts at once (each rank of the engine must see the same batch) and each keeps its own."""
        everyone = [indexed]
        if self.tp_group is not None:
            everyone = [[] for _ in range(dist.get_world_size(self.tp_group))]
            dist.all_gather_object(everyone, indexed, group=self.tp_group)
        batch = [item for part in everyone for item in part]
        completions = self.engine.generate(
            [prompt for _, prompt in batch],
            n=settings.num_generations,
            max_tokens=settings.response_length,
            temperature=settings.temperature,
            stop_ids=self.stop_ids,
            seeds=[prompt_seed(settings.seed, step, i) for i, _ in batch],
        )
        me = dist.get_rank(self.tp_group) if self.tp_group is not None else 0
        first = sum(len(part) for part in everyone[:me]) * settings.num_generations
        return completions[first : first + len(indexed) * settings.num_generations]

    def generate(
        self, step: int, indexed: list[tuple[int, Prompt]], settings: Any, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(prompt + response ids, the prompts' attention mask, prompt width), as the hf engine's."""
        texts = chat_format.prompt_texts(self.tokenizer, [p for _, p in indexed])
        prompts: list[list[int]] = chat_format.encode(self.tokenizer, texts)["input_ids"]
        completions = self._sample(
            step, [(i, ids) for (i, _), ids in zip(indexed, prompts, strict=True)], settings
        )
        width = max(len(p) for p in prompts)
        rows, masks = [], []
        for index, prompt in enumerate(prompts):
            for completion in completions[
                index * settings.num_generations : (index + 1) * settings.num_generations
            ]:
                pad = width - len(prompt)
                tail = settings.response_length - len(completion)
                rows.append([self.pad] * pad + prompt + completion + [self.stop_ids[0]] * tail)
                masks.append([0] * pad + [1] * len(prompt))
        return torch.tensor(rows, device=device), torch.tensor(masks, device=device), width

    def after_rollout(self) -> None:
        """vLLM releases its memory while the trainer trains (CUDA sleep mode)."""
        self.engine.sleep()

    def close(self) -> None:
        """`distributed.shutdown`'s `before_destroy`: vLLM's teardown destroys the process groups
        it joined (as an external launcher) itself."""
        self.engine.close()

    def sync(self, lm: nn.Module, dtype: torch.dtype | None = None) -> int:
        """The trainer's current weights into vLLM; every process calls it (fsdp gathers)."""
        pushed = self.engine.push_weights(policy_weights(lm, dtype))
        self.pushes += 1
        if self.pushes == 1 and (not dist.is_initialized() or dist.get_rank() == 0):
            print(f"rollout engine vllm: {pushed} weights pushed into vLLM after the step", flush=True)
        return pushed


def start(
    model_dir: str, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int], settings: VllmSettings
) -> VllmRollout:
    """The engine on the policy's starting weights; StageConfigError (exit 78) when it cannot start."""
    tp_group = tensor_parallel_group(settings.tensor_parallel_size)
    engine = ColocatedVllm(settings, architectures(model_dir))  # checks the engine can start first
    return VllmRollout(engine, tokenizer, stop_ids, tp_group)
