"""What an AI judge is asked, as chat messages, and how a local judge's tokenizer renders them.

One wording for every judge: a local model gets the messages through its chat template when its
tokenizer has one (instruction-tuned judges answer well only in their own format), else as plain
text; a served judge gets the same messages over the OpenAI chat API. The judge answers with one
token: Yes/No for a single response (`score`), A/B for a pair (`compare`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Message = dict[str, str]

SCORE_QUESTION = "Is the response good? Answer Yes or No."
COMPARE_QUESTION = "Which response is better? Answer A or B."


@dataclass(frozen=True)
class Question:
    """One question to the judge and its two answers; the score is log P(yes) - log P(no)."""

    messages: list[Message]
    yes: str
    no: str


def score_question(rubric: str, prompt: str, response: str) -> Question:
    user = f"Prompt: {prompt}\nResponse: {response}\n{SCORE_QUESTION}"
    return Question(_messages(rubric, user), "Yes", "No")


def compare_question(rubric: str, prompt: str, first: str, second: str) -> Question:
    user = f"Prompt: {prompt}\nResponse A: {first}\nResponse B: {second}\n{COMPARE_QUESTION}"
    return Question(_messages(rubric, user), "A", "B")


def _messages(rubric: str, user: str) -> list[Message]:
    return [{"role": "system", "content": rubric}, {"role": "user", "content": user}]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, messages: list[Message]) -> str:
    """The judge's input text: its chat template with the assistant turn opened, else plain text."""
    if has_chat_template(tokenizer):
        text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text
    return "\n".join(m["content"] for m in messages) + "\nAnswer:"


def answer_text(tokenizer: Any, answer: str) -> str:
    """The answer as it follows the rendered input: right after a chat template's assistant header,
    after a space in plain text (where " Yes" is one token for byte-level BPE tokenizers)."""
    return answer if has_chat_template(tokenizer) else f" {answer}"


def pairwise_wins(count: int, preference: dict[tuple[int, int], float]) -> list[float]:
    """Wins per response from log-odds asked in both orders, which cancels the judge's position
    bias; a pair whose two orders cancel exactly is a tie and gives no win to either."""
    wins = [0.0] * count
    for i in range(count):
        for j in range(i + 1, count):
            margin = preference[(i, j)] - preference[(j, i)]
            if margin > 0:
                wins[i] += 1
            elif margin < 0:
                wins[j] += 1
    return wins


def ordered_pairs(count: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(count) for j in range(count) if i != j]


def left_padded_positions(attention_mask: Any) -> Any:
    """Position ids that start at 0 on each row's first real token: with left padding, a model
    that counts positions from the first pad would read a row differently alone and in a batch."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)
