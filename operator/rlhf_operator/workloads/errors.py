"""Errors that the stage programs raise on purpose."""

from __future__ import annotations


class StageConfigError(Exception):
    """Bad configuration or bad input: the stage exits with EX_CONFIG (78) and is not retried.

    The message must say what is wrong and how to fix it; `reason` is a ShortCamelCase word the
    operator copies into the RLHFJob condition.
    """

    def __init__(self, message: str, reason: str = "InvalidInput") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
