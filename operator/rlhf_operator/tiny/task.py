"""The synthetic task: prompts of neutral words; the hidden "human" rule counts positive words.

A random-init model emits positive words rarely (4 of 66 tokens), so an RLHF pipeline that works
visibly raises their count within seconds on a CPU.
"""

from __future__ import annotations

import random
from typing import Final

NEUTRAL_WORDS: Final = tuple(f"w{i:02d}" for i in range(60))
POSITIVE_WORDS: Final = ("good", "great", "nice", "happy")
UNK: Final = "<unk>"
EOS: Final = "<eos>"


def make_prompts(count: int, seed: int = 0) -> list[str]:
    """Prompts of 4-8 neutral words with a trailing space.

    The space matters: TRL joins prompt + completion with no separator (trl-facts gotcha 6), and
    the word-level tokenizer would merge the last prompt word with the first completion word.
    """
    rng = random.Random(seed)
    return [" ".join(rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(4, 8))) + " " for _ in range(count)]


def count_positive(text: str, keywords: tuple[str, ...] | list[str] = POSITIVE_WORDS) -> int:
    wanted = set(keywords)
    return sum(1 for word in text.split() if word in wanted)


def sample_response(rng: random.Random) -> str:
    """3-10 words; each is positive with a chance that varies by response, so counts spread 0..10."""
    density = rng.random() * 0.5
    words = [
        rng.choice(POSITIVE_WORDS) if rng.random() < density else rng.choice(NEUTRAL_WORDS)
        for _ in range(rng.randint(3, 10))
    ]
    return " ".join(words)


def labeled_rankings(
    prompts: list[str], responses_per_prompt: int = 4, seed: int = 0
) -> list[dict[str, object]]:
    """What labelers following the hidden rule would hand back: per prompt, responses with distinct
    positive-word counts and their ranking (1 = best), in the human rankings file's format."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for prompt in prompts:
        by_count: dict[int, str] = {}
        while len(by_count) < responses_per_prompt:  # distinct counts: labelers never tie
            response = sample_response(rng)
            by_count.setdefault(count_positive(response), response)
        responses = list(by_count.values())
        rng.shuffle(responses)
        order = sorted(responses, key=count_positive, reverse=True)
        rows.append(
            {"prompt": prompt, "responses": responses, "ranking": [order.index(r) + 1 for r in responses]}
        )
    return rows
