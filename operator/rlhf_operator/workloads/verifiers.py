"""Verifiable rewards: whether a response is right, 1.0 or 0.0 (TRL's reward functions, the way GRPO
is mostly used). Pure functions of the response and, where one is needed, the prompt's reference."""

from __future__ import annotations

import math
import re

#: A number as people write one: a sign, thousands separators, decimals, an exponent.
NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def normalized(text: str) -> str:
    """Whitespace collapsed and trimmed: "  42\n" and "42" are the same answer."""
    return " ".join(text.split())


def exact_match(completion: str, reference: str) -> float:
    return 1.0 if normalized(completion) == normalized(reference) else 0.0


def regex_match(pattern: re.Pattern[str], completion: str) -> float:
    return 1.0 if pattern.search(completion) else 0.0


def last_number(text: str) -> float | None:
    """The last number in `text` (a GSM8K answer ends "#### 1,234"; a response usually ends on its
    answer), or None when there is none."""
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_match(completion: str, reference: str) -> float:
    """1.0 when the last number of the response equals the reference's (relative tolerance 1e-6)."""
    got, want = last_number(completion), last_number(reference)
    if got is None or want is None:
        return 0.0
    return 1.0 if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) else 0.0
