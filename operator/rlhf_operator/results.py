"""What the operator reads from finished pods: the stage programs' termination messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rlhf_operator.api.stage_io import StageFailure, StageResult, merge_results, parse_json

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


def _result(message: str) -> StageResult:
    data = parse_json(message)
    if data is None:
        return StageResult()
    try:
        return StageResult.model_validate(data)
    except ValidationError as err:
        # The pod and the operator disagree on the contract (e.g. different versions): say so
        # rather than dropping the fields silently.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])
        return StageResult(message=f"Succeeded, but its result was not understood: {problems}"[:2048])


def stage_result(pods: list[Manifest]) -> StageResult:
    """Metrics and artifacts of the succeeded pods of a stage, in completion-index order."""
    outcomes = sorted(
        (o for o in map(pod_outcome, pods) if o and o.phase == "Succeeded"), key=lambda o: o.index
    )
    results = [_result(o.message) for o in outcomes]
    result = merge_results(results)
    if sum(1 for r in results if r.message) > 1:
        # Each shard speaks for itself only; the stage's message speaks for all of them. (The pods
        # of one torchrun training run have one result, global rank 0's: its message stands.)
        result = result.model_copy(update={"message": f"All {len(outcomes)} shards succeeded."})
    return result


def _failure(message: str) -> StageFailure | None:
    data = parse_json(message)
    try:
        return StageFailure.model_validate(data) if data is not None else None
    except ValidationError:
        return None


def _latest_failed(pods: list[Manifest]) -> PodOutcome | None:
    """The latest counted failure (a disruption only when nothing else failed)."""
    failed = [o for o in map(pod_outcome, pods) if o and o.phase == "Failed" and not o.disrupted]
    if not failed:
        failed = [o for o in map(pod_outcome, pods) if o and o.phase == "Failed"]
    return max(failed, key=lambda o: o.finished_at) if failed else None


def stage_failure(pods: list[Manifest]) -> StageFailure | None:
    """The program's own report of the latest counted failure, when it wrote one."""
    latest = _latest_failed(pods)
    return _failure(latest.message) if latest else None


def failure_message(pods: list[Manifest]) -> str | None:
    """What the latest counted failure said: the program's error, else the container's reason."""
    latest = _latest_failed(pods)
    if latest is None:
        return None
    failure = _failure(latest.message)
    text = failure.error if failure else latest.message.strip()
    exit_part = f"exit code {latest.exit_code}" if latest.exit_code is not None else "no exit code"
    reason = (failure.reason if failure else None) or latest.reason or "Error"
    detail = f": {text}" if text else ""
    return f"{reason} ({exit_part}){detail}"[:2048]


def outcomes_readable(kind: str, job_status: Manifest, pods: list[Manifest]) -> bool:
    """Whether the pods whose outcome a finished Job counted are in view: as many succeeded pods
    as it counts for "Complete", at least one failed pod for "Failed" (when it counted any)."""
    phase = "Succeeded" if kind == "Complete" else "Failed"
    seen = sum(1 for o in map(pod_outcome, pods) if o and o.phase == phase)
    counted = int(job_status.get("succeeded" if kind == "Complete" else "failed") or 0)
    return seen >= (counted if kind == "Complete" else min(counted, 1))
