"""The stage's outcome, a `StageResult` or `StageFailure`, written to the container's termination
message path (where the operator reads it) and echoed to stdout."""

from __future__ import annotations

import os
import sys
from typing import Final

from rlhf_operator.api.stage_io import RESULT_PREFIX, StageFailure, StageResult, dump
from rlhf_operator.api.v1alpha1 import Artifacts

DEFAULT_TERMINATION_PATH: Final = "/dev/termination-log"
#: Kubernetes truncates termination messages at 4096 bytes; stay below it.
MAX_MESSAGE_BYTES: Final = 4000


def termination_path() -> str:
    return os.environ.get("RLHF_TERMINATION_MESSAGE_PATH", DEFAULT_TERMINATION_PATH)


def _fit(outcome: StageResult | StageFailure) -> str:
    text = dump(outcome)
    if len(text.encode()) <= MAX_MESSAGE_BYTES:
        return text
    # Shorten the free text first: metrics and artifact URIs are what the operator needs.
    if isinstance(outcome, StageResult) and outcome.message:
        text = dump(outcome.model_copy(update={"message": outcome.message[:500] + "..."}))
    elif isinstance(outcome, StageFailure):
        text = dump(outcome.model_copy(update={"error": outcome.error[:500] + "..."}))
    return (
        text
        if len(text.encode()) <= MAX_MESSAGE_BYTES
        else text.encode()[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
    )


def write_termination_message(outcome: StageResult | StageFailure) -> str:
    """Write the outcome to the termination path and echo it to stdout; returns the text.

    Outside a pod the path may not be writable: printing is then the whole result.
    """
    text = _fit(outcome)
    try:
        with open(termination_path(), "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        pass
    sys.stdout.write(RESULT_PREFIX + text + "\n")
    sys.stdout.flush()
    return text


def failure(error: str, reason: str, artifacts: Artifacts | None = None) -> StageFailure:
    return StageFailure(error=error[:3500], reason=reason, artifacts=artifacts)
