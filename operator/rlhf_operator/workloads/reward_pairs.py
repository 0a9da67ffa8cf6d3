"""Preference pairs fitted to `maxLength` before TRL sees them, so no pair is lost unreported.

TRL's RewardTrainer drops every pair whose chosen or rejected sequence is longer than `max_length`,
and its DPOTrainer cuts the end of the response (and drops a pair whose prompt alone fills it),
both silently. Here each pair is measured as the models read it (`chat_format.conversation_text`:
the chat template when the tokenizer has one, else prompt + response + EOS; counted with the
tokenizer's special tokens, as DPOTrainer counts) and, when too long, loses prompt tokens from the
left (a chat its earliest messages first): the response is what is judged, and the end of the
prompt is what it answers. A pair is dropped only when no cut of the prompt makes it fit. The counts go into the stage's result; more dropped than
`maxDroppedFraction` allows fails the stage, naming both settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_operator.api.optimizer_defaults import MAX_DEFAULT_PAIR_LENGTH
from rlhf_operator.model_shape import context_length
from rlhf_operator.workloads import chat_format
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.errors import StageConfigError

#: Re-measurements of a cut prompt: decoding and re-encoding may merge a token or two differently.
_CUT_ATTEMPTS = 8


@dataclass(frozen=True)
class PairFit:
    """The pairs that fit `max_length` (prompts cut where needed) and how many were cut or dropped."""

    rows: list[dict[str, Any]]
    total: int
    truncated: int
    dropped: int
    max_length: int

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.total if self.total else 0.0

    def summary(self, field: str) -> str:
        return (
            f"{field} {self.max_length}: {self.total} pairs, {self.truncated} with the prompt cut from the "
            f"left, {self.dropped} dropped (a response alone longer)"
        )


def model_context(model_dir: str) -> int | None:
    """The context length in `model_dir`'s config.json (None when absent or unnamed)."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    return context_length(config) if isinstance(config, dict) else None


def default_max_length(context: int | None) -> int:
    """`maxLength` when unset: the model's context, at most MAX_DEFAULT_PAIR_LENGTH."""
    return min(context, MAX_DEFAULT_PAIR_LENGTH) if context else MAX_DEFAULT_PAIR_LENGTH


def _lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts with the tokenizer's special tokens: what DPOTrainer counts, and at most one
    more than the reward model's ids (fed without them), so a pair that fits here fits there."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


def _sequences(tokenizer: Any, prompt: Prompt, responses: Sequence[str]) -> list[str]:
    """Prompt + each response as the models read them (`chat_format.conversation_text`)."""
    return [chat_format.conversation_text(tokenizer, prompt, r) for r in responses]


def _text_tails(tokenizer: Any, text: str) -> tuple[int, Callable[[int], str]]:
    """The text's token count and a function giving it from token `cut` on: a slice of the
    original text where the tokenizer maps tokens to characters (a fast tokenizer), so spacing is
    kept as written; else the decoded tokens."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return len(offsets), lambda cut: text[offsets[cut][0] :] if cut < len(offsets) else ""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids), lambda cut: str(tokenizer.decode(ids[cut:])) if cut < len(ids) else ""


def _with_first_text(prompt: Prompt, text: str) -> Prompt:
    """The prompt with its (first message's) text replaced."""
    if isinstance(prompt, str):
        return text
    return [{**prompt[0], "content": text}, *prompt[1:]]


def _cut_prompt(
    tokenizer: Any, prompt: Prompt, responses: Sequence[str], max_length: int, over: int
) -> Prompt | None:
    """The prompt without its earliest tokens, so that prompt + each response fits; None if none
    does. A chat loses its earliest messages first (the last one stays), then the start of the
    earliest one left."""
    while isinstance(prompt, list) and len(prompt) > 1:
        prompt = prompt[1:]
        longest = max(_lengths(tokenizer, _sequences(tokenizer, prompt, responses)))
        if longest <= max_length:
            return prompt
        over = longest - max_length
    count, tail = _text_tails(tokenizer, prompt if isinstance(prompt, str) else prompt[0]["content"])
    cut = over
    for _ in range(_CUT_ATTEMPTS):
        kept = _with_first_text(prompt, tail(min(cut, count)))
        longest = max(_lengths(tokenizer, _sequences(tokenizer, kept, responses)))
        if longest <= max_length:
            return kept
        if cut >= count:
            return None
        cut = min(count, cut + longest - max_length)
    return None


def fit_pairs(tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int) -> PairFit:
    """`pairs` ({prompt, chosen, rejected, ...}) fitted to `max_length` tokens per sequence,
    measured as the models read them: the chat template when the tokenizer has one, else prompt +
    response + EOS (`chat_format.conversation_text`)."""
    full = _lengths(
        tokenizer,
        [t for p in pairs for t in _sequences(tokenizer, p["prompt"], (p["chosen"], p["rejected"]))],
    )
    rows: list[dict[str, Any]] = []
    truncated = dropped = 0
    for index, pair in enumerate(pairs):
        longest = max(full[2 * index], full[2 * index + 1])
        if longest <= max_length:
            rows.append(dict(pair))
            continue
        ends = (pair["chosen"], pair["rejected"])
        cut = _cut_prompt(tokenizer, pair["prompt"], ends, max_length, longest - max_length)
        if cut is None:
            dropped += 1
            continue
        truncated += 1
        rows.append({**pair, "prompt": cut})
    return PairFit(rows, len(pairs), truncated, dropped, max_length)


def check_dropped(fit: PairFit, limit: float, stage: str, context: int | None) -> None:
    """Fails the stage when more pairs were dropped than `<stage>.maxDroppedFraction` allows."""
    if fit.dropped_fraction <= limit:
        return
    known = f"the model's context is {context} tokens" if context else "the model's config names no context"
    raise StageConfigError(
        f"{fit.dropped} of {fit.total} preference pairs ({fit.dropped_fraction:.1%}) do not fit "
        f"{stage}.maxLength ({fit.max_length} tokens) even with the whole prompt cut: a response alone is "
        f"longer. That is more than {stage}.maxDroppedFraction ({limit}) allows. Raise {stage}.maxLength "
        f"({known}), shorten the responses, or raise {stage}.maxDroppedFraction to train on the rest.",
        "PairsTooLong",
    )


def fitted_pairs(
    tokenizer: Any,
    pairs: Sequence[dict[str, Any]],
    model_dir: str,
    *,
    max_length: int | None,
    limit: float,
    stage: str,
) -> PairFit:
    """The pairs fitted to `<stage>.maxLength` (or the model's context), reported and checked."""
    context = model_context(model_dir)
    length = max_length or default_max_length(context)
    fit = fit_pairs(tokenizer, pairs, length)
    if os.environ.get("RANK", "0") == "0":  # every process fits the same pairs: one says so
        if context and length > context:
            print(
                f"note: {stage}.maxLength {length} is longer than the model's context {context}", flush=True
            )
        print(f"{stage}: {fit.summary('maxLength')}", flush=True)
    check_dropped(fit, limit, stage, context)
    return fit


def length_note(fit: PairFit) -> str:
    """The counts for a stage's one-line result message."""
    return f"maxLength {fit.max_length}: {fit.truncated} pairs cut, {fit.dropped} dropped of {fit.total}"
