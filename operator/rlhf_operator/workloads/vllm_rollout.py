"""PPO's rollouts on the vllm engine (`stages.policy.generation.engine: vllm`).

The trainer hands its prompts here instead of to `generate()`: vLLM samples `numGenerations`
completions per prompt (each prompt seeded by (seed, step, its global index), so a completion does
not depend on how prompts are split over processes) and stops at every stop id of the generation
config; the result is laid out as the hf engine's (left-padded prompts, responses padded with EOS
to `responseLength`), so the log-prob, value and reward code after it is the same. After each
optimizer step `sync` pushes the trainer's weights into vLLM (a collective under fsdp).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlhf_operator.workloads import chat_format
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.vllm_engine import ColocatedVllm, VllmSettings, check_engine, policy_weights

_M32 = 0xFFFFFFFF


def prompt_seed(seed: int, step: int, index: int) -> int:
    """A 31-bit seed per (seed, step, global prompt index)."""
    x = (seed * 1_000_003 + step) * 2_654_435_761 + index * 40_503
    return (x ^ (x >> 16)) & 0x7FFFFFFF


def architectures(model_dir: str) -> list[str]:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return [str(a) for a in config.get("architectures") or []]


class VllmRollout:
    def __init__(
        self, engine: ColocatedVllm, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int]
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0])

    def generate(
        self, step: int, indexed: list[tuple[int, Prompt]], settings: Any, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(prompt + response ids, the prompts' attention mask, prompt width), as the hf engine's."""
        texts = chat_format.prompt_texts(self.tokenizer, [p for _, p in indexed])
        prompts: list[list[int]] = chat_format.encode(self.tokenizer, texts)["input_ids"]
        completions = self.engine.generate(
            prompts,
            n=settings.num_generations,
            max_tokens=settings.response_length,
            temperature=settings.temperature,
            stop_ids=self.stop_ids,
            seeds=[prompt_seed(settings.seed, step, i) for i, _ in indexed],
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

    def sync(self, lm: nn.Module, dtype: torch.dtype | None = None) -> int:
        """The trainer's current weights into vLLM; every process calls it (fsdp gathers)."""
        return self.engine.push_weights(policy_weights(lm, dtype))


def start(
    model_dir: str, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int], settings: VllmSettings
) -> VllmRollout:
    """The engine on the policy's starting weights; StageConfigError (exit 78) when it cannot start."""
    check_engine(architectures(model_dir))
    return VllmRollout(ColocatedVllm(settings, architectures(model_dir)), tokenizer, stop_ids)
