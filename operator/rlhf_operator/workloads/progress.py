"""Progress lines that the policy stage prints and the operator reads from the pod log tail.

Pods carry no API credentials, so the log is the channel: one `ProgressRecord` as single-line
JSON per logging step after a fixed prefix.
"""

from __future__ import annotations

import sys
from typing import Final, TextIO

from pydantic import ValidationError

from rlhf_operator.api.stage_io import ProgressRecord, dump

PROGRESS_PREFIX: Final = "RLHF_PROGRESS "


def format_progress(step: int, total_steps: int, mean_reward: float, kl: float, **extra: float) -> str:
    """One progress line (without newline); `extra` are more ProgressRecord fields (camelCase)."""
    record = ProgressRecord.model_validate(
        {"step": step, "totalSteps": total_steps, "meanReward": mean_reward, "kl": kl, **extra}
    )
    return PROGRESS_PREFIX + dump(record)


def emit_progress(
    step: int, total_steps: int, mean_reward: float, kl: float, stream: TextIO | None = None, **extra: float
) -> None:
    out = stream or sys.stdout
    out.write(format_progress(step, total_steps, mean_reward, kl, **extra) + "\n")
    out.flush()


def parse_progress(line: str) -> ProgressRecord | None:
    """The progress record in a log line, or None when the line is not a (valid) progress line.

    Tolerates a timestamp or other text before the prefix (kubectl logs --timestamps).
    """
    index = line.find(PROGRESS_PREFIX)
    if index < 0:
        return None
    try:
        return ProgressRecord.model_validate_json(line[index + len(PROGRESS_PREFIX) :].strip())
    except ValidationError:
        return None


def progress_records(log_tail: str) -> tuple[ProgressRecord, ...]:
    """Every progress record in a chunk of log text, oldest first."""
    return tuple(r for r in map(parse_progress, log_tail.splitlines()) if r is not None)


def last_progress(log_tail: str) -> ProgressRecord | None:
    """The newest progress record in a chunk of log text."""
    for line in reversed(log_tail.splitlines()):
        record = parse_progress(line)
        if record is not None:
            return record
    return None
