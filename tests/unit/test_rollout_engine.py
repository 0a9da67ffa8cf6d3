"""Pure parts of the rollout engines: the gather decision, token-budget chunks, stop ids, and the
vllm engine's refusal to start where vLLM is missing (this environment has none)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from rlhf_operator.workloads import rollout_engine as re
from rlhf_operator.workloads.errors import StageConfigError

pytestmark = pytest.mark.unit
GIB = 1024**3


def test_gathers_when_weights_and_kv_cache_fit_and_says_why() -> None:
    fits = re.decide(True, re.GatherBudget(full_model_bytes=2 * GIB, kv_cache_bytes=GIB, free_bytes=10 * GIB))
    assert fits.mode == "gathered"
    assert "3.00 GiB" in fits.reason and "9.00 GiB free" in fits.reason
    tight = re.decide(
        True, re.GatherBudget(full_model_bytes=9 * GIB, kv_cache_bytes=GIB, free_bytes=10 * GIB)
    )
    assert tight.mode == "per-block" and "does not fit" in tight.reason
    assert re.decide(False, None).mode == "whole"
    assert re.decide(True, None).mode == "per-block"


def test_kv_cache_bytes_follow_the_config_gqa_included() -> None:
    gpt2 = GPT2Config(n_embd=256, n_layer=4, n_head=4)
    assert re.kv_cache_bytes(gpt2, rows=8, sequence=32, dtype_bytes=4) == 2 * 8 * 32 * 4 * 256 * 4
    llama = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
    # 8 kv heads of 64: a quarter of the hidden width per layer.
    assert re.kv_cache_bytes(llama, rows=1, sequence=1, dtype_bytes=2) == 2 * 16 * 8 * 64 * 2


def test_full_model_bytes_count_the_compute_dtype() -> None:
    model = torch.nn.Linear(10, 10)  # 110 parameters
    assert re.full_model_bytes(model, torch.bfloat16) == 220
    assert re.full_model_bytes(model, torch.float32) == 440


def test_chunks_keep_each_forward_within_the_token_budget() -> None:
    assert re.chunk_count(rows=512, width=512, token_budget=16_384) == 16  # 32 rows of 512 each
    assert re.chunk_count(rows=128, width=28, token_budget=16_384) == 1  # the tiny rollout: one pass
    assert re.chunk_count(rows=3, width=100_000, token_budget=10) == 3  # at least one row per chunk
    slices = re.row_slices(10, 4)
    assert [s.stop - s.start for s in slices] == [2, 3, 2, 3]
    assert slices[0].start == 0 and slices[-1].stop == 10
    # More chunks than rows (another rank needs more): empty slices, so every rank runs as many.
    assert [s.stop - s.start for s in re.row_slices(2, 4)] == [0, 1, 0, 1]


def test_chunked_concatenates_each_output_by_row() -> None:
    x = torch.arange(12.0).reshape(6, 2)
    seen: list[int] = []

    def forward(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(rows.stop - rows.start)
        return x[rows] * 2, x[rows].sum(-1)

    doubled, sums = re.chunked(forward, re.row_slices(6, 3))
    assert seen == [2, 2, 2]
    assert torch.equal(doubled, x * 2) and torch.equal(sums, x.sum(-1))


def test_fast_decoding_only_on_cuda_and_never_per_block() -> None:
    assert re.fast_decoding(torch.device("cpu"), "gathered") == {}
    assert re.fast_decoding(torch.device("cuda", 0), "per-block") == {}
    assert re.fast_decoding(torch.device("cuda", 0), "whole") == {"cache_implementation": "static"}


def test_vllm_engine_without_vllm_fails_with_exit_78_naming_the_engine_and_the_fix() -> None:
    from rlhf_operator.workloads.vllm_engine import check_engine

    with pytest.raises(StageConfigError) as caught:
        check_engine(["GPT2LMHeadModel"])
    message = str(caught.value)
    assert "generation.engine vllm cannot start" in message
    assert "trainer-vllm image" in message and "generation.engine: hf" in message
    assert caught.value.reason == "RolloutEngineUnavailable"  # StageConfigError: the stage exits 78


def test_lora_weights_are_refused_by_the_vllm_push() -> None:
    from rlhf_operator.workloads.vllm_engine import policy_weights

    model = torch.nn.Module()
    model.lora_A = torch.nn.Linear(2, 2)
    with pytest.raises(StageConfigError, match="LoRA"):
        list(policy_weights(model))
