"""GPU time and its estimated cost: pure functions of the observed pods, the spec and the prices.

GPU-seconds of a pod are its run, from the pod's start (status.startTime: its GPUs are held from
then on, image pull included) to its container's end (terminated.finishedAt), times the GPUs its
stage requests; a stage's usage sums its pods, retries included. A pod still running counts up to
`now` in whole minutes (RUNNING_STEP_SECONDS), so a 48-hour policy's GPU-hours grow while it runs
while its status is rewritten for that at most once a minute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from rlhf_operator.api.v1alpha1 import GpuUsage, StageStatus

#: A running pod's time is counted in steps of this many seconds (rounded down).
RUNNING_STEP_SECONDS = 60

Manifest = dict[str, object]


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pod_seconds(pod: Mapping[str, object], now: datetime | None = None) -> float:
    """Run time of a pod: its start to its first terminated container's end (the container's own
    start when the pod's is unknown). A pod that runs counts to `now`, in whole RUNNING_STEP_SECONDS
    (0 without `now`); one that never started counts nothing."""
    status = pod.get("status")
    if not isinstance(status, dict):
        return 0.0
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        start = _time(status.get("startTime")) or _time(terminated.get("startedAt"))
        end = _time(terminated.get("finishedAt"))
        if start is not None and end is not None:
            return max(0.0, (end - start).total_seconds())
    start = _time(status.get("startTime"))
    if now is None or start is None or status.get("phase") != "Running":
        return 0.0
    ran = max(0.0, (now - start).total_seconds())
    return ran - ran % RUNNING_STEP_SECONDS


def gpu_usage(seconds: float, price_per_gpu_hour: float | None) -> GpuUsage:
    whole = round(seconds)
    hours = whole / 3600
    cost = round(hours * price_per_gpu_hour, 2) if price_per_gpu_hour is not None else None
    return GpuUsage(gpu_seconds=whole, gpu_hours=round(hours, 3), estimated_cost=cost)


def stage_usage(
    pods: Iterable[Mapping[str, object]],
    gpus: int,
    price: float | None,
    previous: GpuUsage | None,
    now: datetime | None = None,
) -> GpuUsage | None:
    """A stage's usage from its pods in view (running ones up to `now`), never less than what was
    recorded (pods deleted by a TTL or by hand are gone, their time is not); None for a stage
    without GPUs."""
    if gpus <= 0:
        return previous
    seconds = sum(pod_seconds(p, now) for p in pods) * gpus
    if previous is not None:
        seconds = max(seconds, previous.gpu_seconds)
    return gpu_usage(seconds, price)


def total_usage(records: Iterable[StageStatus]) -> GpuUsage | None:
    """The job's usage: the sum over its stages; None when no stage used a GPU."""
    used = [r.usage for r in records if r.usage is not None]
    if not used:
        return None
    seconds = sum(u.gpu_seconds for u in used)
    costs = [u.estimated_cost for u in used if u.estimated_cost is not None]
    usage = gpu_usage(seconds, None)
    if costs:
        usage = usage.model_copy(update={"estimated_cost": round(sum(costs), 2)})
    return usage
