"""Reading a served judge's answer: log-odds from its top log-probs, else from its text."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf_operator.workloads.endpoint_judge import UNLISTED_LOGPROB, answer_log_odds
from rlhf_operator.workloads.judge_prompts import compare_question, pairwise_wins, score_question

SCORE = score_question("Be kind.", "p", "r")
COMPARE = compare_question("Be kind.", "p", "a", "b")


def _reply(content: str, top: list[tuple[str, float]] | None) -> dict[str, Any]:
    logprobs = None
    if top is not None:
        entries = [{"token": t, "logprob": v} for t, v in top]
        logprobs = {"content": [{**entries[0], "top_logprobs": entries}]}
    return {"choices": [{"message": {"role": "assistant", "content": content}, "logprobs": logprobs}]}


@pytest.mark.parametrize(
    ("reply", "question", "expected"),
    [
        (_reply("Yes", [("Yes", -0.1), ("No", -2.4)]), SCORE, 2.3),
        (_reply("No", [("No", -0.5), (" Yes", -1.0)]), SCORE, -0.5),  # tokens compared stripped
        (_reply("Yes", [("Yes", -0.2), ("Maybe", -3.0)]), SCORE, -0.2 - UNLISTED_LOGPROB),
        (_reply("B", [("B", -0.3), ("A", -1.3)]), COMPARE, -1.0),
        (_reply("Yes, it is", None), SCORE, 1.0),  # no log-probs: the answer text decides
        (_reply("No.", None), SCORE, -1.0),
        (_reply("I cannot tell", None), SCORE, 0.0),  # neither answer: a tie
        (_reply("Sure", [("Sure", -0.1)]), SCORE, 0.0),
    ],
)
def test_answer_log_odds(reply: dict[str, Any], question: Any, expected: float) -> None:
    assert answer_log_odds(reply, question) == pytest.approx(expected)


def test_pairwise_wins_cancel_position_bias_and_keep_ties() -> None:
    # A judge that always prefers the first position by 1.0, and truly prefers response 0 over 1 by 0.5;
    # 1 and 2 are equal to it, so their two orders cancel exactly: a tie, no win.
    preference = {(0, 1): 1.5, (1, 0): 0.5, (0, 2): 1.5, (2, 0): 0.5, (1, 2): 1.0, (2, 1): 1.0}
    assert pairwise_wins(3, preference) == [2.0, 0.0, 0.0]
