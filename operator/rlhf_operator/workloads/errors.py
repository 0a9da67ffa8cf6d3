"""Errors that the stage programs raise on purpose."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf_operator.api.v1alpha1 import Artifacts


class StageConfigError(Exception):
    """Bad configuration or bad input: the stage exits with EX_CONFIG (78) and is not retried.

    The message must say what is wrong and how to fix it; `reason` is a ShortCamelCase word the
    operator copies into the RLHFJob condition.
    """

    def __init__(
        self, message: str, reason: str = "InvalidInput", artifacts: Artifacts | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        #: What the stage leaves usable despite failing (a guardrail's pre-trip checkpoint).
        self.artifacts = artifacts


class Where(str):
    """Where a row is ("line 7", "part-2.jsonl row 3"), and its place in the whole source for
    sorting defects: (file index, line or row). A str, so callers print and compare it as before."""

    order: tuple[int, int]

    def __new__(cls, text: str, order: tuple[int, int]) -> Where:
        where = super().__new__(cls, text)
        where.order = order
        return where


class Defects:
    """Collects the defects of one input file, so a user fixes them all in one round.

    `add` records what is wrong where ("line 4"); `raise_if_any` raises one StageConfigError that
    lists them (at most `cap`, then how many more) with the first defect's reason.
    """

    def __init__(self, what: str, cap: int = 20) -> None:
        self.what = what
        self.cap = cap
        self.found: list[tuple[str, str, str]] = []

    def add(self, where: str, message: str, reason: str) -> None:
        self.found.append((where, message, reason))

    def add_error(self, where: str, error: StageConfigError) -> None:
        self.add(where, error.message, error.reason)

    def raise_if_any(self) -> None:
        if not self.found:
            return
        # In file order: a row's JSON error is found while reading, its content errors later.
        self.found.sort(key=lambda defect: _order(defect[0]))
        listed = [f"{where}: {message}" for where, message, _ in self.found[: self.cap]]
        if len(self.found) > self.cap:
            listed.append(f"... and {len(self.found) - self.cap} more")
        count = len(self.found)
        header = f"{self.what} has {count} defect{'s' if count > 1 else ''}"
        raise StageConfigError(f"{header}: " + " | ".join(listed), self.found[0][2])


def _order(where: str) -> tuple[int, int]:
    return where.order if isinstance(where, Where) else (0, _position(where))


def _position(where: str) -> int:
    """The line, row or task number in "line 7", "task 3 (id 12)"; 0 for none."""
    found = re.search(r"\d+", where)
    return int(found.group()) if found else 0
