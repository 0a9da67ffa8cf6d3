"""The controller against an in-memory API (tests.support.fake_kube): what it asks of Kubernetes
for a new job, an invalid spec, a running policy's progress and a finished job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rlhf_operator.api.stage_io import format_progress
from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from tests.support.builders import TOKEN, finished_job, owned, pod, rlhfjob
from tests.support.fake_kube import FakeKube

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
KEY = ("ml", "tiny")
Manifest = dict[str, Any]


def body(status: Manifest | None = None, **spec: Any) -> Manifest:
    job = rlhfjob(**spec).model_dump(mode="json", by_alias=True, exclude_none=True)
    job["metadata"]["resourceVersion"] = "1"
    if status is not None:
        job["status"] = status
    return job


def controller(kube: FakeKube, **settings: Any) -> Controller:
    return Controller(OperatorConfig(**settings), kube, clock=lambda: NOW, token_source=TOKEN)


def start(kube: FakeKube, job: Manifest, **settings: Any) -> Controller:
    ctl = controller(kube, **settings)
    kube.add_rlhfjob(job)
    ctl.store.put_job(job)
    ctl.reconcile(KEY)
    return ctl


def test_a_new_job_checks_dependencies_once_creates_its_first_stage_and_writes_status_once() -> None:
    kube = FakeKube()
    ctl = start(kube, body())
    assert kube.requests == [
        ("get", "dependencies", "ml"),
        ("create", "NetworkPolicy", "tiny-network"),  # before any pod can exist
        ("create", "ConfigMap", "tiny-precompute-config"),
        ("create", "Job", "tiny-precompute"),
        ("patch_status", "RLHFJob", "tiny"),
    ]
    assert [e.reason for e in kube.events] == ["StageStarted"]
    kube.requests.clear()
    ctl.reconcile(KEY)  # e.g. the watch event of its own status write
    assert kube.requests == []


def test_a_missing_dependency_is_written_to_status_and_nothing_is_created() -> None:
    kube = FakeKube(absent=("PersistentVolumeClaim rlhf-data does not exist",))
    ctl = start(kube, body())
    assert kube.count("create") == 0
    job = ctl.store.job(KEY)
    assert job is not None and job["status"]["phase"] == "Pending"


def test_an_invalid_spec_fails_the_job_once_with_what_is_wrong() -> None:
    kube = FakeKube()
    invalid = body()
    invalid["spec"]["stages"]["policy"]["klCoef"] = -1
    ctl = start(kube, invalid)
    assert kube.requests == [("patch_status", "RLHFJob", "tiny")]
    status = (ctl.store.job(KEY) or {})["status"]
    assert status["phase"] == "Failed" and "klCoef" in status["message"]
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    ctl.reconcile(KEY)
    assert kube.count("patch_status") == 1


def _running_policy() -> Manifest:
    done = [{"name": s, "state": "Succeeded"} for s in ("precompute", "ranking", "rewardModel")]
    return {
        "phase": "Running",
        "observedGeneration": 1,
        "stages": [*done, {"name": "policy", "state": "Running"}],
    }


def _observe_running_policy(ctl: Controller) -> None:
    """The policy's Job and its running pod `tiny-policy-0`, as the watches would have stored them."""
    labels = {"rlhf-operator.dev/job-uid": "u-1", "rlhf-operator.dev/stage": "policy"}
    job = {"metadata": {"name": "tiny-policy", "labels": labels}, "spec": {}, "status": {"active": 1}}
    ctl.store.put_child("Job", owned(job, "u-1", uid="job-1"))
    running = pod("policy", "Running", name="tiny-policy-0")
    running["metadata"]["labels"] = labels
    ctl.store.put_child("Pod", owned(running, "job-1", kind="Job"))


@pytest.mark.parametrize(("interval", "reads"), [(300.0, 1), (1e-6, 2)])
def test_progress_is_read_at_most_once_per_interval(interval: float, reads: int) -> None:
    kube = FakeKube(logs={"tiny-policy-0": format_progress(7, 30, 1.5, 0.25) + "\n"})
    ctl = controller(kube, progress_interval_seconds=interval)
    job = body(_running_policy())
    kube.add_rlhfjob(job)
    ctl.store.put_job(job)
    _observe_running_policy(ctl)
    ctl.reconcile(KEY)
    ctl.reconcile(KEY)
    assert kube.count("log") == reads
    metrics = (ctl.store.job(KEY) or {})["status"]["metrics"]
    assert metrics == {"policyStep": 7, "policyTotalSteps": 30, "meanReward": 1.5, "kl": 0.25}


def test_a_policy_whose_logged_kl_trips_its_guardrail_is_stopped_by_the_operator() -> None:
    lines = [format_progress(step, 30, 1.0, kl) for step, kl in ((1, 2.0), (2, 25.0), (3, 26.0), (4, 27.0))]
    kube = FakeKube(logs={"tiny-policy-0": "checkpoint step 2 -> x\n" + "\n".join(lines) + "\n"})
    ctl = controller(kube)
    job = body(_running_policy(), stages={"policy": {"guardrails": {"maxKL": 20, "klSteps": 3}}})
    kube.add_rlhfjob(job)
    ctl.store.put_job(job)
    _observe_running_policy(ctl)
    ctl.reconcile(KEY)
    assert ("delete", "Job", "tiny-policy") in kube.requests
    status = (ctl.store.job(KEY) or {})["status"]
    assert status["phase"] == "Failed"
    assert "GuardrailTripped: KL 27 > maxKL 20 for 3 steps at step 4" in status["message"]


def test_a_finished_job_only_removes_a_reward_server_left_behind() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    status = {"phase": "Succeeded", "observedGeneration": 1, "stages": []}
    job = body(status, stages={"policy": {"rewardPlacement": "remote"}})
    kube.add_rlhfjob(job)
    ctl.store.put_job(job)
    labels = {"rlhf-operator.dev/job-uid": "u-1", "rlhf-operator.dev/stage": "rewardServer"}
    for kind in ("Deployment", "Service"):
        ctl.store.put_child(
            kind, owned({"metadata": {"name": "tiny-reward-server", "labels": labels}, "spec": {}}, "u-1")
        )
    evaluation = {"metadata": {"name": "tiny-evaluation", "labels": labels}, **finished_job()}
    ctl.store.put_child("Job", owned(evaluation, "u-1"))
    ctl.reconcile(KEY)
    assert kube.requests == [
        ("delete", "Deployment", "tiny-reward-server"),
        ("delete", "Service", "tiny-reward-server"),
    ]


def test_artifact_retention_delete_adds_the_finalizer_before_anything_starts() -> None:
    kube = FakeKube()
    start(kube, body(artifactRetention="Delete"))
    assert kube.requests[0] == ("set_finalizers", "RLHFJob", "tiny")
    assert kube.objects[("RLHFJob", "ml", "tiny")]["metadata"]["finalizers"] == [
        "rlhf-operator.dev/artifact-cleanup"
    ]


def test_a_refused_child_fails_the_job_once_with_the_servers_reason_and_one_warning() -> None:
    reason = 'Job.batch "tiny-precompute" is invalid: metadata.annotations: Invalid value: "a b"'
    kube = FakeKube(refuse={"Job": (422, reason)})
    ctl = start(kube, body())
    status = (ctl.store.job(KEY) or {})["status"]
    assert status["phase"] == "Failed"
    assert status["message"].startswith(
        "The API server refused to create Job tiny-precompute (422): Job.batch"
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RequestRefused")
    assert [(e.type, e.reason) for e in kube.events] == [("Warning", "RequestRefused")]
    creates = kube.count("create")
    for _ in range(3):  # the watch event of its own status write, resyncs: no retry loop
        ctl.reconcile(KEY)
    ctl.resync()
    assert kube.count("create") == creates and kube.count("patch_status") == 1 and len(kube.events) == 1


@pytest.mark.parametrize("garbage", ["garbage", {"phase": 5}, {"stages": "x", "startTime": "yesterday"}])
def test_one_jobs_garbage_status_is_repaired_and_stops_no_other(garbage: Any) -> None:
    kube = FakeKube()
    ctl = controller(kube)
    bad = body(garbage)
    good = body()
    good["metadata"] = {**good["metadata"], "name": "other", "uid": "u-2"}
    for job in (bad, good):
        kube.add_rlhfjob(job)
        ctl.store.put_job(job)
    ctl.resync()
    for name in ("tiny", "other"):
        status = (ctl.store.job(("ml", name)) or {})["status"]
        assert isinstance(status, dict) and status["phase"] == "Running", name  # recomputed from the children
    assert kube.count("create", "Job") == 2


def test_liveness_fails_when_the_sweep_stops_ticking(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as clock

    ctl = controller(FakeKube(), resync_interval_seconds=30)
    assert ctl.alive()  # not started yet: nothing to judge
    ctl._sweep_ticked = clock.monotonic()
    assert ctl.alive()
    ctl._sweep_ticked = clock.monotonic() - 3 * 30 - 1
    assert not ctl.alive()


def test_an_invalid_spec_with_a_garbage_status_gets_a_fresh_failed_status() -> None:
    kube = FakeKube()
    invalid = body({"startTime": "yesterday", "stages": "x"})
    invalid["spec"]["stages"]["policy"]["klCoef"] = -1
    ctl = start(kube, invalid)
    status = (ctl.store.job(KEY) or {})["status"]
    assert status["phase"] == "Failed" and "klCoef" in status["message"]
    assert "startTime" not in status and "stages" not in status  # nothing the API server would refuse
