"""The operator's Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES, StageName
from rlhf_operator.naming import LABEL_JOB_NAME, LABEL_STAGE, child_name

Manifest = dict[str, Any]

JOBS_BY_PHASE = Gauge("rlhf_operator_jobs", "RLHFJobs the operator knows, by phase.", ["phase"])
STAGE_DURATION = Histogram(
    "rlhf_operator_stage_duration_seconds",
    "Wall time of finished stages.",
    ["stage", "state"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600),
)
RECONCILE_ERRORS = Counter("rlhf_operator_reconcile_errors_total", "Reconciles that raised an error.")
TRANSITION_LATENCY = Histogram(
    "rlhf_operator_stage_transition_seconds",
    "From seeing a stage's Job finish to creating the next stage's Job.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


def set_jobs_by_phase(counts: dict[str, int]) -> None:
    for phase in _PHASES:
        JOBS_BY_PHASE.labels(phase).set(counts.get(phase, 0))


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def observe_stage_durations(old: Manifest, new: Manifest) -> None:
    """The wall time of each stage that reached Succeeded or Failed between two statuses."""
    before = {s["name"]: s.get("state") for s in old.get("stages", [])}
    for record in new.get("stages", []):
        state = record.get("state")
        if state in ("Succeeded", "Failed") and before.get(record["name"]) != state:
            start, end = record.get("startTime"), record.get("completionTime")
            if start and end:
                seconds = (_parse_time(end) - _parse_time(start)).total_seconds()
                STAGE_DURATION.labels(record["name"], state).observe(max(seconds, 0.0))


def observe_transition(created_job: Manifest, finished_at: Callable[[str], float | None]) -> None:
    """From the previous stage's Job finishing (as first seen, monotonic seconds) to `created_job`."""
    labels = created_job["metadata"]["labels"]
    stage = StageName(labels[LABEL_STAGE])
    if stage not in PIPELINE_STAGES:
        return
    index = PIPELINE_STAGES.index(stage)
    for earlier in reversed(PIPELINE_STAGES[:index]):
        finished = finished_at(child_name(labels[LABEL_JOB_NAME], earlier))
        if finished is not None:
            TRANSITION_LATENCY.observe(time.monotonic() - finished)
            return
