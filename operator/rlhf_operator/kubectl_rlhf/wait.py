"""`kubectl rlhf wait JOB --for CONDITION`: until the condition is True; fails at once, saying why,
when the job ends without it (Failed, or Succeeded without being Promoted)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rlhf_operator.kubectl_rlhf.kubectl import PluginError

Manifest = dict[str, Any]


def verdict(job: Manifest, condition: str) -> bool | str:
    """True when met; a sentence when it can no longer be met; False while it may still be."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    found = conditions.get(condition)
    if found is not None and found.get("status") == "True":
        return True
    phase = status.get("phase")
    name = (job.get("metadata") or {}).get("name")
    if phase == "Failed" and condition != "Failed":
        return f"{name} failed: {status.get('message') or ''}".strip()
    if phase == "Succeeded" and condition not in ("Succeeded",):
        why = (found or {}).get("message") or status.get("message") or ""
        return f"{name} finished without {condition}: {why}".strip()
    return False


def wait_for(read: Callable[[], Manifest], condition: str, timeout_s: float, interval_s: float = 2.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        job = read()
        outcome = verdict(job, condition)
        if outcome is True:
            return f"rlhfjob/{job['metadata']['name']} condition met: {condition}"
        if isinstance(outcome, str):
            raise PluginError(outcome)
        if time.monotonic() >= deadline:
            phase = (job.get("status") or {}).get("phase")
            raise PluginError(f"timed out after {timeout_s:.0f}s waiting for {condition} (phase {phase})")
        time.sleep(interval_s)
