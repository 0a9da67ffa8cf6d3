"""Per-RLHFJob Prometheus series, computed at each scrape from the RLHFJobs the operator holds.

Nothing is kept between scrapes: a job's series exist while the RLHFJob does and vanish with it,
so cardinality is bounded by the jobs in view times fixed label sets (phases, stage states, the
status `Metrics` fields). Every numeric field of `status.metrics` becomes `rlhf_job_<field>` (a new
field in the API, e.g. a new progress diagnostic, is a new series with no change here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from rlhf_operator.api.v1alpha1 import Metrics, Phase, StageState
from rlhf_operator.guardrails import GUARDRAIL_TRIPPED

Manifest = dict[str, Any]
JOB_LABELS = ["namespace", "rlhfjob"]


def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "phase": GaugeMetricFamily(
            "rlhf_job_phase", "1 for the RLHFJob's phase, 0 for the others.", labels=[*JOB_LABELS, "phase"]
        ),
        "stage": GaugeMetricFamily(
            "rlhf_job_stage_state",
            "1 for each stage's state, 0 for the others.",
            labels=[*JOB_LABELS, "stage", "state"],
        ),
        "waiting": GaugeMetricFamily(
            "rlhf_job_waiting",
            "1 while the Waiting condition is True (reason: DependencyMissing, Unschedulable, "
            "QueuedByKueue, AwaitingHumanRankings), else 0.",
            labels=[*JOB_LABELS, "reason"],
        ),
        "gpu": CounterMetricFamily(
            "rlhf_job_gpu_seconds",
            "GPU-seconds of each GPU stage's pods, running pods included (whole minutes).",
            labels=[*JOB_LABELS, "stage"],
        ),
        "cost": GaugeMetricFamily(
            "rlhf_job_estimated_cost", "Estimated GPU cost of the job so far.", labels=JOB_LABELS
        ),
        "trips": CounterMetricFamily(
            "rlhf_job_guardrail_trips",
            "Guardrail trips that stopped the job's policy (0 or 1).",
            labels=JOB_LABELS,
        ),
    }
    for name, field in Metrics.model_fields.items():
        families[name] = GaugeMetricFamily(f"rlhf_job_{name}", field.description or name, labels=JOB_LABELS)
    return families


def job_series(jobs: Iterable[Manifest]) -> list[Metric]:
    """The per-job metric families for these RLHFJob bodies (a pure function)."""
    families = _families()
    for body in jobs:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        job = [meta.get("namespace", ""), meta.get("name", "")]
        _add_states(families, job, status)
        _add_usage(families, job, status)
        try:
            metrics = Metrics.model_validate(status.get("metrics") or {})
        except ValidationError:
            metrics = Metrics()
        for name in Metrics.model_fields:
            value = getattr(metrics, name)
            if isinstance(value, int | float):
                families[name].add_metric(job, float(value))
    return [family for family in families.values() if family.samples]


def _add_states(families: dict[str, Any], job: list[str], status: Manifest) -> None:
    phase = status.get("phase")
    for candidate in Phase:
        families["phase"].add_metric([*job, candidate.value], 1.0 if phase == candidate.value else 0.0)
    for record in status.get("stages") or []:
        for state in StageState:
            current = record.get("state") == state.value
            families["stage"].add_metric(
                [*job, str(record.get("name")), state.value], 1.0 if current else 0.0
            )
    waiting = next((c for c in status.get("conditions") or [] if c.get("type") == "Waiting"), None)
    true = waiting is not None and waiting.get("status") == "True"
    families["waiting"].add_metric(
        [*job, str(waiting.get("reason", "")) if true and waiting else ""], float(true)
    )
    tripped = any(
        (r.get("message") or "").startswith(f"{GUARDRAIL_TRIPPED}:") for r in status.get("stages") or []
    )
    families["trips"].add_metric(job, float(tripped))


def _add_usage(families: dict[str, Any], job: list[str], status: Manifest) -> None:
    for record in status.get("stages") or []:
        usage = record.get("usage")
        if usage:
            families["gpu"].add_metric([*job, str(record.get("name"))], float(usage.get("gpuSeconds") or 0))
    cost = (status.get("usage") or {}).get("estimatedCost")
    if cost is not None:
        families["cost"].add_metric(job, float(cost))


class JobSeriesCollector(Collector):
    """Registered once with prometheus_client's REGISTRY; `jobs` lists the RLHFJob bodies now."""

    def __init__(self, jobs: Callable[[], Iterable[Manifest]]) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        yield from job_series(self._jobs())
