"""The stage result: a small JSON written to the container's termination message path."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Final

DEFAULT_TERMINATION_PATH: Final = "/dev/termination-log"
#: Kubernetes truncates termination messages at 4096 bytes; stay below it.
MAX_MESSAGE_BYTES: Final = 4000


def termination_path() -> str:
    return os.environ.get("RLHF_TERMINATION_MESSAGE_PATH", DEFAULT_TERMINATION_PATH)


def _fit(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, separators=(",", ":"), default=str)
    if len(text.encode()) <= MAX_MESSAGE_BYTES:
        return text
    # Shorten the free text first: metrics and artifact URIs are what the operator needs.
    for key in ("message", "error"):
        if key in payload and isinstance(payload[key], str):
            payload = {**payload, key: payload[key][:500] + "..."}
    text = json.dumps(payload, separators=(",", ":"), default=str)
    return (
        text
        if len(text.encode()) <= MAX_MESSAGE_BYTES
        else text.encode()[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
    )


def write_termination_message(payload: dict[str, Any]) -> str:
    """Write the payload to the termination path and echo it to stdout; returns the text.

    Outside a pod the path may not be writable: printing is then the whole result.
    """
    text = _fit(payload)
    path = termination_path()
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        pass
    sys.stdout.write("RLHF_RESULT " + text + "\n")
    sys.stdout.flush()
    return text


def success(metrics: dict[str, float | int], artifacts: dict[str, str], message: str) -> dict[str, Any]:
    return {"metrics": metrics, "artifacts": artifacts, "message": message}


def failure(error: str, reason: str) -> dict[str, Any]:
    return {"error": error, "reason": reason}
