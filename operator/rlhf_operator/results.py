"""What the operator reads from finished pods: the stage programs' termination messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True)
class PodOutcome:
    phase: str
    exit_code: int | None
    reason: str | None
    message: str
    finished_at: str
    disrupted: bool
    index: int = 0


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    message: str | None = None


def pod_outcome(pod: Manifest) -> PodOutcome | None:
    """The terminated state of a finished pod's first container, or None while it runs."""
    status = pod.get("status") or {}
    phase = status.get("phase", "")
    if phase not in ("Succeeded", "Failed"):
        return None
    terminated: Manifest = {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            break
    disrupted = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    index = int(annotations.get("batch.kubernetes.io/job-completion-index", 0) or 0)
    return PodOutcome(
        phase=phase,
        exit_code=terminated.get("exitCode"),
        reason=terminated.get("reason") or status.get("reason"),
        message=terminated.get("message") or status.get("message") or "",
        finished_at=terminated.get("finishedAt") or "",
        disrupted=disrupted,
        index=index,
    )


def parse_message(message: str) -> Manifest:
    """The JSON a stage program wrote, or {} when the message is plain text (e.g. a log tail)."""
    try:
        data = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_result(pods: list[Manifest]) -> StageResult:
    """Metrics and artifacts of the succeeded pods of a stage, in completion-index order."""
    result = StageResult()
    outcomes = sorted(
        (o for o in map(pod_outcome, pods) if o and o.phase == "Succeeded"), key=lambda o: o.index
    )
    for outcome in outcomes:
        data = parse_message(outcome.message)
        metrics = data.get("metrics")
        if isinstance(metrics, dict):
            result.metrics.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        artifacts = data.get("artifacts")
        if isinstance(artifacts, dict):
            result.artifacts.update({k: v for k, v in artifacts.items() if isinstance(v, str)})
        if isinstance(data.get("message"), str):
            result.message = data["message"]
    if len(outcomes) > 1:
        # Each shard speaks for itself only; the stage's message speaks for all of them.
        result.message = f"All {len(outcomes)} shards succeeded."
    return result


def failure_message(pods: list[Manifest]) -> str | None:
    """What the latest counted failure said: the program's error, else the container's reason."""
    failed = [o for o in map(pod_outcome, pods) if o and o.phase == "Failed" and not o.disrupted]
    if not failed:
        failed = [o for o in map(pod_outcome, pods) if o and o.phase == "Failed"]
    if not failed:
        return None
    latest = max(failed, key=lambda o: o.finished_at)
    data = parse_message(latest.message)
    text = data.get("error") if isinstance(data.get("error"), str) else latest.message.strip()
    exit_part = f"exit code {latest.exit_code}" if latest.exit_code is not None else "no exit code"
    reason = data.get("reason") or latest.reason or "Error"
    detail = f": {text}" if text else ""
    return f"{reason} ({exit_part}){detail}"[:2048]
