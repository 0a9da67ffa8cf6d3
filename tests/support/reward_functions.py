"""A reward function as a user's image would ship one, for the `python` rule (`entryPoint`)."""

from __future__ import annotations

from typing import Any


def shorter_is_better(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """TRL's reward-function convention: keyword arguments, one float per completion."""
    references = columns.get("reference") or [""] * len(completions)
    return [float(c == r) - len(c) / 100 for c, r in zip(completions, references, strict=True)]


def wrong_length(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    return [1.0]
