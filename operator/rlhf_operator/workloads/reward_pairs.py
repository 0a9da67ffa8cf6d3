"""Preference pairs fitted to `maxLength` before TRL sees them, so no pair is lost unreported.

TRL's RewardTrainer drops every pair whose chosen or rejected sequence is longer than `max_length`,
and its DPOTrainer cuts the end of the response (and drops a pair whose prompt alone fills it),
both silently. Here each pair is measured as TRL will tokenise it (plain text: the prompt, the
response and EOS appended unless the response ends with it, tokenised with the tokenizer's special
tokens) and, when too long, loses prompt tokens from the left: the response is what is judged, and
the end of the prompt is what it answers. A pair is dropped only when a response alone (with its
special tokens) does not fit. The counts go into the stage's result; more dropped than
`maxDroppedFraction` allows fails the stage, naming both settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_operator.api.optimizer_defaults import MAX_DEFAULT_PAIR_LENGTH
from rlhf_operator.model_shape import context_length
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


def with_eos(response: str, eos: str | None) -> str:
    """The response as TRL tokenises it: EOS appended unless it already ends with it."""
    return response if not eos or response.endswith(eos) else response + eos


def _lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


def _prompt_tails(tokenizer: Any, prompt: str) -> tuple[int, Any]:
    """The prompt's token count and a function giving its text from token `cut` on: a slice of the
    original text where the tokenizer maps tokens to characters (a fast tokenizer), so spacing is
    kept as written; else the decoded tokens."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return len(offsets), lambda cut: prompt[offsets[cut][0] :] if cut < len(offsets) else ""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return len(ids), lambda cut: tokenizer.decode(ids[cut:]) if cut < len(ids) else ""


def _cut_prompt(
    tokenizer: Any, prompt: str, responses: Sequence[str], max_length: int, over: int
) -> str | None:
    """The prompt without its first tokens, so that prompt + each response fits; None if none does."""
    count, tail = _prompt_tails(tokenizer, prompt)
    cut = over
    for _ in range(_CUT_ATTEMPTS):
        kept = tail(min(cut, count))
        longest = max(_lengths(tokenizer, [kept + r for r in responses]))
        if longest <= max_length:
            return str(kept)
        if cut >= count:
            return None
        cut = min(count, cut + longest - max_length)
    return None


def fit_pairs(tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int) -> PairFit:
    """`pairs` ({prompt, chosen, rejected, ...}) fitted to `max_length` tokens per sequence."""
    eos = tokenizer.eos_token
    responses = [(with_eos(p["chosen"], eos), with_eos(p["rejected"], eos)) for p in pairs]
    full = _lengths(
        tokenizer, [p["prompt"] + r for p, pair in zip(pairs, responses, strict=True) for r in pair]
    )
    rows: list[dict[str, Any]] = []
    truncated = dropped = 0
    for index, (pair, ends) in enumerate(zip(pairs, responses, strict=True)):
        longest = max(full[2 * index], full[2 * index + 1])
        if longest <= max_length:
            rows.append(dict(pair))
            continue
        alone = max(_lengths(tokenizer, ends))
        cut = (
            None
            if alone > max_length
            else _cut_prompt(tokenizer, pair["prompt"], ends, max_length, longest - max_length)
        )
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
