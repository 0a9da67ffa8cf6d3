"""The tiny task at real length: 48-token responses (the tiny GPT-2's context is 64 positions) where
what is rewarded, positive words, counts only in the first `EARLY_WORDS` words of the response.

The score lands on the last token, up to 40 positions after the tokens that earned it: PPO must
carry it back that far (`lam`, the critic), as it must on a real model's 500-token answers. The
random-init model samples EOS once in 66 tokens: its responses are ~34 tokens long on average and
half of them reach the 48-token limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from rlhf_operator.tiny.task import POSITIVE_WORDS, make_prompts

RESPONSE_TOKENS: Final = 48
EARLY_WORDS: Final = 8

__all__ = ["EARLY_WORDS", "RESPONSE_TOKENS", "early_positive", "long_prompts"]


def early_positive(prompts: Sequence[Any], completions: list[str]) -> list[float]:
    """The long task's reward (a `judges.Scorer`): positive words among the first EARLY_WORDS."""
    wanted = set(POSITIVE_WORDS)
    return [float(sum(1 for w in c.split()[:EARLY_WORDS] if w in wanted)) for c in completions]


def long_prompts(count: int, seed: int = 0) -> list[str]:
    """The tiny task's prompts (4-8 words): with 48 response tokens they fill at most 56 positions."""
    return make_prompts(count, seed)
