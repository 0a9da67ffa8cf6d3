"""Per-job Prometheus series: what a scrape shows for the RLHFJobs in view, and nothing for the others."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rlhf_operator.job_metrics import JobSeriesCollector


def body(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": name}, "status": status}


RUNNING = body(
    "tiny",
    phase="Running",
    stages=[
        {"name": "rewardModel", "state": "Succeeded", "usage": {"gpuSeconds": 120, "gpuHours": 0.033}},
        {"name": "policy", "state": "Running", "usage": {"gpuSeconds": 480, "gpuHours": 0.133}},
    ],
    metrics={"policyStep": 12, "policyTotalSteps": 30, "meanReward": 0.5, "kl": 0.02},
    usage={"gpuSeconds": 600, "gpuHours": 0.167, "estimatedCost": 1.25},
    conditions=[{"type": "Waiting", "status": "False", "reason": "DependenciesPresent"}],
)
TRIPPED = body(
    "blown",
    phase="Failed",
    stages=[{"name": "policy", "state": "Failed", "message": "GuardrailTripped: KL 9.1 exceeds maxKl 5."}],
    conditions=[{"type": "Waiting", "status": "True", "reason": "QueuedByKueue"}],
)


def scrape(jobs: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(JobSeriesCollector(lambda: jobs))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return series[(name, tuple(sorted({"namespace": "team-a", **labels}.items())))]


def test_a_running_job_shows_its_stages_progress_and_gpu_seconds() -> None:
    series = scrape([RUNNING])
    assert value(series, "rlhf_job_phase", rlhfjob="tiny", phase="Running") == 1
    assert value(series, "rlhf_job_phase", rlhfjob="tiny", phase="Failed") == 0
    assert value(series, "rlhf_job_stage_state", rlhfjob="tiny", stage="policy", state="Running") == 1
    assert value(series, "rlhf_job_stage_state", rlhfjob="tiny", stage="policy", state="Pending") == 0
    assert value(series, "rlhf_job_policy_step", rlhfjob="tiny") == 12
    assert value(series, "rlhf_job_mean_reward", rlhfjob="tiny") == 0.5
    assert value(series, "rlhf_job_kl", rlhfjob="tiny") == 0.02
    assert value(series, "rlhf_job_gpu_seconds_total", rlhfjob="tiny", stage="policy") == 480
    assert value(series, "rlhf_job_estimated_cost", rlhfjob="tiny") == 1.25
    assert value(series, "rlhf_job_waiting", rlhfjob="tiny", reason="") == 0
    assert value(series, "rlhf_job_guardrail_trips_total", rlhfjob="tiny") == 0
    # A metric the job has not reported yet has no series (not a misleading 0).
    assert not any(name == "rlhf_job_win_rate" for name, _ in series)


def test_a_trip_and_a_wait_show_and_a_deleted_job_leaves_no_series() -> None:
    series = scrape([RUNNING, TRIPPED])
    assert value(series, "rlhf_job_guardrail_trips_total", rlhfjob="blown") == 1
    assert value(series, "rlhf_job_waiting", rlhfjob="blown", reason="QueuedByKueue") == 1
    assert value(series, "rlhf_job_phase", rlhfjob="blown", phase="Failed") == 1
    after = scrape([RUNNING])  # `blown` was deleted
    assert not any(("rlhfjob", "blown") in labels for _, labels in after)
    assert scrape([]) == {}


def test_series_per_job_are_bounded() -> None:
    """5 phases + 5 states per stage + waiting + trips + usage + cost + the Metrics fields, whatever the job."""
    per_job = len(scrape([RUNNING]))
    assert per_job <= 5 + 5 * 5 + 1 + 1 + 5 + 1 + 12
    assert (
        len(scrape([RUNNING, {**RUNNING, "metadata": {"namespace": "team-a", "name": "t2"}}])) == 2 * per_job
    )
