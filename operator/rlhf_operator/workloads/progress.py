"""Progress lines that the policy stage prints and the operator reads from the pod log tail.

Pods carry no API credentials, so the log is the channel: one `ProgressRecord` as single-line
JSON per logging step after a fixed prefix. The line's format is the API's (`api.stage_io`).
"""

from __future__ import annotations

import sys
from typing import TextIO

from rlhf_operator.api.stage_io import format_progress


def emit_progress(
    step: int, total_steps: int, mean_reward: float, kl: float, stream: TextIO | None = None, **extra: float
) -> None:
    out = stream or sys.stdout
    out.write(format_progress(step, total_steps, mean_reward, kl, **extra) + "\n")
    out.flush()
