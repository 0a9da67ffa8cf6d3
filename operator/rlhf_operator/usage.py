"""GPU time and its estimated cost: pure functions of the observed pods, the spec and the prices.

GPU-seconds of a pod are its run, from the pod's start (status.startTime: its GPUs are held from
then on, image pull included) to its container's end (terminated.finishedAt), times the GPUs its
stage requests; a stage's usage sums its finished pods, retries included. Running pods count once
they end, so the status is not rewritten on every pass while they run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from rlhf_operator.api.v1alpha1 import GpuUsage, StageStatus

Manifest = dict[str, object]


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def pod_seconds(pod: Mapping[str, object]) -> float:
    """Run time of a finished pod: its start to its first terminated container's end (the
    container's own start when the pod's is unknown); 0 while it runs."""
    status = pod.get("status")
    if not isinstance(status, dict):
        return 0.0
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        start = _time(status.get("startTime")) or _time(terminated.get("startedAt"))
        end = _time(terminated.get("finishedAt"))
        if start is not None and end is not None:
            return max(0.0, (end - start).total_seconds())
    return 0.0


def gpu_usage(seconds: float, price_per_gpu_hour: float | None) -> GpuUsage:
    whole = round(seconds)
    hours = whole / 3600
    cost = round(hours * price_per_gpu_hour, 2) if price_per_gpu_hour is not None else None
    return GpuUsage(gpu_seconds=whole, gpu_hours=round(hours, 3), estimated_cost=cost)


def stage_usage(
    pods: Iterable[Mapping[str, object]], gpus: int, price: float | None, previous: GpuUsage | None
) -> GpuUsage | None:
    """A stage's usage from its pods in view, never less than what was recorded (pods deleted by
    a TTL or by hand are gone, their time is not); None for a stage without GPUs."""
    if gpus <= 0:
        return previous
    seconds = sum(pod_seconds(p) for p in pods) * gpus
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
