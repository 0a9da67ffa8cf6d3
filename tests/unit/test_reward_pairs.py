"""Preference pairs fitted to maxLength before TRL: the prompt is cut from the left, a pair is dropped
only when a response alone does not fit, and the counts are reported and bounded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.model_shape import context_length
from rlhf_operator.tiny.model import build_tiny_chat_tokenizer, build_tiny_tokenizer
from rlhf_operator.workloads import chat_format, reward_pairs
from rlhf_operator.workloads.errors import StageConfigError

pytestmark = pytest.mark.unit
TOKENIZER = build_tiny_tokenizer()


def _trl_length(prompt: str, response: str) -> int:
    """The length TRL's RewardTrainer and DPOTrainer measure: prompt + response + EOS, tokenised."""
    return len(TOKENIZER(prompt + response + TOKENIZER.eos_token)["input_ids"])


def test_long_prompts_lose_their_start_and_responses_are_kept() -> None:
    pairs: list[dict[str, Any]] = [
        {"prompt": "w01 w02 w03 w04 w05 w06 ", "chosen": "good nice", "rejected": "w07", "id": 3},
        {"prompt": "w01 w02 ", "chosen": "good", "rejected": "w07 w08"},
        {"prompt": "w01 ", "chosen": "good great nice happy good great", "rejected": "w07"},
    ]
    fit = reward_pairs.fit_pairs(TOKENIZER, pairs, 5)
    assert (fit.total, fit.truncated, fit.dropped) == (3, 1, 1)
    assert fit.dropped_fraction == pytest.approx(1 / 3)
    # The end of the prompt is kept as written (its trailing space too), the responses whole.
    assert fit.rows[0] == {"prompt": "w05 w06 ", "chosen": "good nice", "rejected": "w07", "id": 3}
    assert fit.rows[1] == pairs[1]
    assert all(_trl_length(r["prompt"], r[k]) <= 5 for r in fit.rows for k in ("chosen", "rejected"))


def test_nothing_changes_when_every_pair_fits() -> None:
    pairs = [{"prompt": "w01 w02 ", "chosen": "good", "rejected": "w07"}]
    fit = reward_pairs.fit_pairs(TOKENIZER, pairs, 64)
    assert fit.rows == pairs and (fit.truncated, fit.dropped) == (0, 0)


def test_too_many_dropped_fails_naming_both_settings() -> None:
    fit = reward_pairs.fit_pairs(
        TOKENIZER, [{"prompt": "w01 ", "chosen": "good great nice", "rejected": "w07"}] * 2, 3
    )
    reward_pairs.check_dropped(fit, 1.0, "stages.rewardModel", 64)
    with pytest.raises(StageConfigError) as failed:
        reward_pairs.check_dropped(fit, 0.05, "stages.rewardModel", 64)
    assert failed.value.reason == "PairsTooLong"
    message = failed.value.message
    assert "2 of 2 preference pairs (100.0%)" in message
    assert "stages.rewardModel.maxLength (3 tokens)" in message and "context is 64 tokens" in message
    assert "stages.rewardModel.maxDroppedFraction (0.05)" in message


def test_max_length_defaults_to_the_model_context_capped(tmp_path: Path) -> None:
    assert context_length({"model_type": "gpt2", "n_positions": 64}) == 64
    assert context_length({"model_type": "llama", "max_position_embeddings": 131_072}) == 131_072
    assert context_length({"text_config": {"max_position_embeddings": 8192}}) == 8192
    assert context_length({"model_type": "x"}) is None
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 131_072}))
    assert reward_pairs.model_context(str(tmp_path)) == 131_072
    assert reward_pairs.default_max_length(131_072) == 4096
    assert reward_pairs.default_max_length(64) == 64 and reward_pairs.default_max_length(None) == 4096
    assert reward_pairs.model_context(str(tmp_path / "none")) is None


def test_trl_reward_trainer_keeps_every_fitted_pair() -> None:
    """TRL's own filter (chosen and rejected ids <= max_length after EOS) finds nothing to drop."""
    pairs = [
        {"prompt": " ".join(f"w{i:02d}" for i in range(n)) + " ", "chosen": "good " * k, "rejected": "w07"}
        for n in range(1, 12)
        for k in range(1, 6)
    ]
    fit = reward_pairs.fit_pairs(TOKENIZER, pairs, 8)
    kept = [
        r
        for r in fit.rows
        if max(_trl_length(r["prompt"], r["chosen"]), _trl_length(r["prompt"], r["rejected"])) <= 8
    ]
    assert len(kept) == len(fit.rows) == fit.total - fit.dropped and fit.truncated > 0


def test_a_chat_loses_its_earliest_messages_then_the_start_of_the_first_left() -> None:
    """Measured as the reward model reads it (the template's turns); the ids the reward model is
    trained on (chat_format.scoring_ids) fit too."""
    chat = build_tiny_chat_tokenizer()
    prompt = [
        {"role": "system", "content": "w01 w02 w03"},
        {"role": "user", "content": "w04 w05 w06 w07"},
    ]
    pair = {"prompt": prompt, "chosen": "good nice", "rejected": "w08"}
    full = len(chat_format.scoring_ids(chat, prompt, "good nice"))
    fit = reward_pairs.fit_pairs(chat, [pair], full - 4)  # the system turn (5 tokens) goes
    assert fit.rows[0]["prompt"] == [prompt[1]] and fit.truncated == 1
    fit = reward_pairs.fit_pairs(chat, [pair], full - 6)  # and the user's first word
    assert fit.rows[0]["prompt"] == [{"role": "user", "content": "w05 w06 w07"}]
    assert all(
        len(chat_format.scoring_ids(chat, r["prompt"], r[k])) <= full - 6
        for r in fit.rows
        for k in ("chosen", "rejected")
    )
