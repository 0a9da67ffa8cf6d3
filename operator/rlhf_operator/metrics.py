"""The operator's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
