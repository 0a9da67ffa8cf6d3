"""What a scoring request may hold: each request is checked alone, before it joins a batch.

The reward server merges concurrent requests into one forward pass, so a request that would make
the model fail must be refused on its own (400 with the reason) instead of failing the batch it
lands in. Checked here: UTF-8, JSON, the body's shape, that every item is a string (numbers are
not quietly made strings), that nothing is empty, and that each text fits the model's position
limit (the scorer's `measure` counts tokens; the limit comes from the model's config).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_operator.workloads.chat_format import Prompt, message_defect

#: Tokens per text, as the scorer will see them (EOS appended where it appends it).
TokenCounter = Callable[[list[str]], list[int]]
#: (prompt, completion) -> the full text the reward model reads (`LocalRewardScorer.conversation`:
#: its chat template when it has one). Without one, prompt + completion.
Render = Callable[[Prompt, str], str]


class ScoreRequestError(ValueError):
    """A request the server refuses; `status` is the HTTP status (400, or 413 for too many items)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        kind = "null" if value is None else type(value).__name__
        raise ScoreRequestError(f"`{name}` must be a list of strings, not {kind}.")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            kind = "null" if item is None else type(item).__name__
            raise ScoreRequestError(f"`{name}[{index}]` must be a string, not {kind}.")
    return value


def _prompts(value: Any) -> list[Prompt]:
    """`prompts`: each a string or a chat (a list of {role, content} messages)."""
    if not isinstance(value, list):
        return list(_strings(value, "prompts"))
    for index, item in enumerate(value):
        if isinstance(item, list):
            defect = message_defect(item, f"prompts[{index}]")
            if defect is not None:
                raise ScoreRequestError(defect)
        elif not isinstance(item, str):
            kind = "null" if item is None else type(item).__name__
            raise ScoreRequestError(f"`prompts[{index}]` must be a string or a list of messages, not {kind}.")
    return value


def _concatenated(prompt: Prompt, completion: str) -> str:
    if not isinstance(prompt, str):
        raise ScoreRequestError("this server takes chat prompts only once its model is loaded.")
    return prompt + completion


def texts_of(body: Any, render: Render | None = None) -> tuple[list[str], str]:
    """The texts to score and the field they came from (for messages), from one request body."""
    if not isinstance(body, dict):
        raise ScoreRequestError("the body must be a JSON object.")
    if "texts" in body:
        return _strings(body["texts"], "texts"), "texts"
    if "completions" in body:
        completions = _strings(body["completions"], "completions")
        prompts = body.get("prompts")
        if prompts is None:
            return completions, "completions"
        prompts = _prompts(prompts)
        if len(prompts) != len(completions):
            raise ScoreRequestError(
                f"`prompts` ({len(prompts)}) and `completions` ({len(completions)}) must have the same length."
            )
        join = render or _concatenated
        return [join(p, c) for p, c in zip(prompts, completions, strict=True)], "completions"
    if "query" in body:
        # OpenRLHF sends the full text (prompt + response) in `query`.
        return _strings(body["query"], "query"), "query"
    raise ScoreRequestError("send `texts`, `prompts` + `completions`, or `query` (a list of strings).")


def parse_score_request(
    raw: bytes,
    max_items: int,
    max_tokens: int | None = None,
    count_tokens: TokenCounter | None = None,
    render: Render | None = None,
) -> list[str]:
    """The texts of one request, or ScoreRequestError saying what is wrong with it."""
    return parse_counted(raw, max_items, max_tokens, count_tokens, render)[0]


def parse_counted(
    raw: bytes,
    max_items: int,
    max_tokens: int | None = None,
    count_tokens: TokenCounter | None = None,
    render: Render | None = None,
) -> tuple[list[str], list[int] | None]:
    """The texts of one request and their token counts (None without a counter): the server
    counts once, for the length check and for batching by tokens."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScoreRequestError(f"the body is not valid UTF-8 (byte {exc.start}).") from exc
    try:
        body = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise ScoreRequestError(f"the body is not JSON: {exc.msg} (char {exc.pos}).") from exc
    texts, field = texts_of(body, render)
    if not texts:
        raise ScoreRequestError(f"`{field}` is empty: send at least one text.")
    if len(texts) > max_items:
        raise ScoreRequestError(f"at most {max_items} items per request, not {len(texts)}.", status=413)
    empty = [i for i, text in enumerate(texts) if not text]
    if empty:
        raise ScoreRequestError(f"`{field}[{empty[0]}]` is empty: there is nothing to score.")
    counts = count_tokens(texts) if count_tokens is not None else None
    if max_tokens is not None and counts is not None:
        check_lengths(field, max_tokens, counts)
    return texts, counts


def check_lengths(field: str, max_tokens: int, counts: Sequence[int]) -> None:
    for index, count in enumerate(counts):
        if count > max_tokens:
            raise ScoreRequestError(
                f"`{field}[{index}]` is {count} tokens long; the reward model reads at most {max_tokens} "
                "(its position limit). Shorten the text."
            )
