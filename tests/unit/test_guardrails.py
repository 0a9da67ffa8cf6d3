"""Guardrails, the evaluation gate and GPU usage: the pure decisions, case by case."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from rlhf_operator.api.stage_io import ProgressRecord, dump
from rlhf_operator.api.v1alpha1 import EvaluationGate, Guardrails, Metrics, StageName, StageStatus
from rlhf_operator.gate import verdict
from rlhf_operator.guardrails import GuardrailMonitor, check_progress
from rlhf_operator.usage import gpu_usage, pod_seconds, stage_usage, total_usage
from rlhf_operator.workloads.guardrail_stop import GuardrailTrippedError, newest_before

pytestmark = pytest.mark.unit
NAN = float("nan")


def run(spec: Guardrails, steps: list[tuple[float | None, float | None]]) -> tuple[int, str] | None:
    """(step, sentence) of the first trip over (mean reward, KL) per step, numbered from 1."""
    monitor = GuardrailMonitor(spec)
    for step, (reward, kl) in enumerate(steps, start=1):
        trip = monitor.observe(step, reward, kl)
        if trip is not None:
            return trip.step, trip.message
    return None


def test_kl_trips_after_the_consecutive_steps_and_a_dip_restarts_the_count() -> None:
    spec = Guardrails(max_kl=10, kl_steps=3, reward_patience_steps=0)
    assert run(spec, [(1, 11), (1, 12), (1, 9), (1, 11), (1, 12)]) is None
    trip = run(spec, [(1, 11), (1, 12), (1, 9), (1, 11), (1, 12), (1, 41.2)])
    assert trip == (6, "KL 41.2 > maxKL 10 for 3 steps at step 6")


def test_non_finite_reward_kl_or_loss_trips_at_once() -> None:
    spec = Guardrails()
    assert run(spec, [(1.0, 0.5), (NAN, 0.5)]) == (2, "meanReward not finite (NaN or inf) at step 2")
    assert run(spec, [(1.0, math.inf)]) == (1, "kl not finite (NaN or inf) at step 1")
    monitor = GuardrailMonitor(spec)
    trip = monitor.observe(1, 1.0, 0.1, loss=NAN)
    assert trip is not None and trip.guardrail == "stopOnNonFinite" and "loss" in trip.message
    assert run(Guardrails(stop_on_non_finite=False), [(NAN, 0.5)]) is None


def test_reward_patience_trips_a_stall_and_lets_a_plateau_go_on() -> None:
    spec = Guardrails(reward_patience_steps=3)
    # Noise around where it started: no best for 3 steps and the last 3 no higher than the first 3.
    trip = run(spec, [(1, 0), (2, 0), (1, 0), (1.5, 0), (1, 0), (1.2, 0)])
    assert trip is not None and trip[0] == 5, trip
    assert "stalled: 1.167 over the last 3 steps is no higher than 1.333 over the first 3" in trip[1]
    assert "best 2 (step 2) stood for 3 steps (rewardPatienceSteps 3) at step 5" in trip[1]
    # A run that learned and levelled off at a good reward: a plateau, however long, goes on.
    converged: list[tuple[float | None, float | None]] = [(min(step, 10) / 10, 0.0) for step in range(1, 500)]
    assert run(Guardrails(reward_patience_steps=20), converged) is None
    # ... but falling back to where it started is a stall again.
    collapsed = converged[:60] + [(0.1, 0.0)] * 40
    trip = run(Guardrails(reward_patience_steps=20), collapsed)
    assert trip is not None and 60 < trip[0] <= 100, trip
    assert run(Guardrails(reward_patience_steps=0), [(1, 0)] * 500) is None


def test_a_replay_that_missed_the_first_steps_gives_no_stall_verdict() -> None:
    """The operator's log tail of a run that plateaued would look like a stall from its own start."""
    spec = Guardrails(reward_patience_steps=3)
    plateau = [(9, 1.0), (9, 1.0), (8.9, 1.0), (9, 1.0), (8.9, 1.0)]
    tail = [
        ProgressRecord(step=s, total_steps=99, mean_reward=r, kl=kl) for s, (r, kl) in enumerate(plateau, 50)
    ]
    assert check_progress(spec, tail) is None
    whole = [
        ProgressRecord(step=s, total_steps=99, mean_reward=r, kl=kl) for s, (r, kl) in enumerate(plateau, 1)
    ]
    assert check_progress(spec, whole) is not None  # from step 1 the same numbers are a stall


def test_disabled_guardrails_never_trip_and_a_repeated_step_is_ignored() -> None:
    assert run(Guardrails(enabled=False), [(NAN, 1e9)] * 10) is None
    monitor = GuardrailMonitor(Guardrails(max_kl=1, kl_steps=2))
    assert monitor.observe(1, 0, 5) is None
    assert monitor.observe(1, 0, 5) is None  # the same log line read twice is one step
    assert monitor.observe(2, 0, 5) is not None


def test_the_operator_replays_progress_lines_as_the_trainer_saw_them() -> None:
    lines = [
        dump(ProgressRecord.model_validate({"step": s, "totalSteps": 9, "meanReward": 1.0, "kl": kl}))
        for s, kl in [(1, 1.0), (2, 30.0), (3, 31.0)]
    ]
    records = [ProgressRecord.model_validate_json(line) for line in lines]
    assert check_progress(Guardrails(max_kl=20, kl_steps=3), records) is None
    trip = check_progress(Guardrails(max_kl=20, kl_steps=2), records)
    assert (
        trip is not None
        and trip.status_message() == "GuardrailTripped: KL 31 > maxKL 20 for 2 steps at step 3"
    )
    # NaN is written as null; the record names it, so "not finite" is told from "not reported".
    nan_line = dump(ProgressRecord.model_validate({"step": 4, "totalSteps": 9, "meanReward": NAN, "kl": 1.0}))
    assert '"meanReward"' not in nan_line.split("nonFinite")[0]
    trip = check_progress(Guardrails(), [*records, ProgressRecord.model_validate_json(nan_line)])
    assert trip is not None and trip.step == 4 and "meanReward not finite" in trip.message
    assert check_progress(Guardrails(), [ProgressRecord(step=1, total_steps=2, kl=1.0)]) is None


def test_a_trip_keeps_the_newest_checkpoint_before_its_step() -> None:
    assert newest_before([10, 20, 30], 30) == 20
    assert newest_before([10, 20], 25) == 20
    assert newest_before([10], 10) is None
    trip = GuardrailMonitor(Guardrails(max_kl=1, kl_steps=1)).observe(7, 0, 2)
    assert trip is not None
    err = GuardrailTrippedError(trip, (5, "/data/x/policy/checkpoints/step-0000005"))
    assert err.reason == "GuardrailTripped" and err.artifacts is not None
    assert err.artifacts.policy == "/data/x/policy/checkpoints/step-0000005"
    assert "KL 2 > maxKL 1 for 1 step at step 7" in err.message and "step 5" in err.message
    assert GuardrailTrippedError(trip, None).artifacts is None


@pytest.mark.parametrize(
    ("gate", "metrics", "promoted", "text"),
    [
        ({"minWinRate": 0.9}, {"winRate": 0.95}, True, "win rate 0.95 meets >= 0.9"),
        ({"minWinRate": 0.9}, {"winRate": 0.85}, False, "win rate 0.85 misses >= 0.9"),
        ({"minRewardGain": 1, "maxKL": 5}, {"rewardGain": 2, "evaluationKL": 6}, False, "KL 6 misses <= 5"),
        ({"minRewardGain": 1, "maxKL": 5}, {"rewardGain": 2, "evaluationKL": 4}, True, "reward gain 2 meets"),
        ({"minWinRate": 0.5}, {}, False, "win rate not measured misses >= 0.5"),
    ],
)
def test_gate_verdict(gate: dict[str, float], metrics: dict[str, float], promoted: bool, text: str) -> None:
    result = verdict(EvaluationGate.model_validate(gate), Metrics.model_validate(metrics))
    assert result.promoted is promoted and text in result.message
    assert result.reason == ("GateMet" if promoted else "GateNotMet")


def test_a_gate_must_set_a_bar() -> None:
    with pytest.raises(ValueError, match="at least one of"):
        EvaluationGate()


def _pod(start: str | None, end: str | None, pod_start: str | None = None) -> dict[str, object]:
    terminated = {k: v for k, v in (("startedAt", start), ("finishedAt", end)) if v}
    state = {"terminated": terminated} if end else {"running": {}}
    return {"status": {"startTime": pod_start, "containerStatuses": [{"state": state}]}}


def test_gpu_seconds_are_container_run_time_times_gpus_and_never_shrink() -> None:
    finished = _pod("2026-11-24T11:00:00Z", "2026-11-24T11:30:00Z")
    retried = _pod("2026-11-24T10:00:00Z", "2026-11-24T10:00:45Z")
    assert pod_seconds(finished) == 1800 and pod_seconds(_pod("2026-11-24T11:00:00Z", None)) == 0
    # From the pod's start when known: its GPUs are held from then on (the image pull included).
    assert pod_seconds(_pod("2026-11-24T11:00:00Z", "2026-11-24T11:30:00Z", "2026-11-24T10:59:00Z")) == 1860
    usage = stage_usage([finished, retried, _pod(None, None)], 8, 4.0, None)
    assert usage is not None and usage.gpu_seconds == 8 * 1845 and usage.gpu_hours == 4.1
    assert usage.estimated_cost == 16.4
    # The pods went (deleted with their Job): the recorded time stays.
    assert stage_usage([], 8, 4.0, usage) == usage
    assert stage_usage([finished], 0, None, None) is None  # a CPU stage uses no GPU time


def test_a_running_pod_counts_up_to_now_in_whole_minutes() -> None:
    running = {"status": {"phase": "Running", "startTime": "2026-11-24T11:00:00Z"}}
    now = datetime(2026, 11, 24, 11, 30, 59, tzinfo=UTC)
    assert pod_seconds(running) == 0  # no clock, no guess
    assert pod_seconds(running, now) == 1800  # 30 min 59 s counts as 30 minutes
    pending = {"status": {"phase": "Pending", "startTime": "2026-11-24T11:00:00Z"}}
    assert pod_seconds(pending, now) == 0
    usage = stage_usage([running], 8, None, None, now)
    assert usage is not None and usage.gpu_seconds == 8 * 1800 and usage.gpu_hours == 4.0
    # A minute later the figure has grown; a finished pod counts to the second.
    later = stage_usage([running], 8, None, usage, datetime(2026, 11, 24, 11, 31, 0, tzinfo=UTC))
    assert later is not None and later.gpu_seconds == 8 * 1860


def test_total_usage_sums_the_stages() -> None:
    records = [
        StageStatus(name=StageName.REWARD_MODEL, usage=gpu_usage(3600, 1.0)),
        StageStatus(name=StageName.POLICY, usage=gpu_usage(7200, None)),
        StageStatus(name=StageName.EVALUATION),
    ]
    total = total_usage(records)
    assert total is not None and (total.gpu_seconds, total.gpu_hours, total.estimated_cost) == (
        10800,
        3.0,
        1.0,
    )
    assert total_usage([StageStatus(name=StageName.RANKING)]) is None
