"""Progress lines that the policy stage prints and the operator reads from the pod log tail.

Pods carry no API credentials, so the log is the channel: one single-line JSON object per
logging step after a fixed prefix.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Final, TextIO

PROGRESS_PREFIX: Final = "RLHF_PROGRESS "


def format_progress(step: int, total_steps: int, mean_reward: float, kl: float, **extra: float) -> str:
    """One progress line (without newline); non-finite numbers become null to keep it valid JSON."""
    record: dict[str, Any] = {"step": step, "totalSteps": total_steps, "meanReward": mean_reward, "kl": kl}
    record.update(extra)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return PROGRESS_PREFIX + json.dumps(clean, separators=(",", ":"))


def emit_progress(
    step: int, total_steps: int, mean_reward: float, kl: float, stream: TextIO | None = None, **extra: float
) -> None:
    out = stream or sys.stdout
    out.write(format_progress(step, total_steps, mean_reward, kl, **extra) + "\n")
    out.flush()


def parse_progress(line: str) -> dict[str, Any] | None:
    """The progress record in a log line, or None when the line is not a (valid) progress line.

    Tolerates a timestamp or other text before the prefix (kubectl logs --timestamps).
    """
    index = line.find(PROGRESS_PREFIX)
    if index < 0:
        return None
    try:
        record = json.loads(line[index + len(PROGRESS_PREFIX) :].strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return record


def last_progress(log_tail: str) -> dict[str, Any] | None:
    """The newest progress record in a chunk of log text."""
    for line in reversed(log_tail.splitlines()):
        record = parse_progress(line)
        if record is not None:
            return record
    return None
