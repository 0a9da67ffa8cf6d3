"""The operator reports GPU time and gates promotion on the real local cluster (kwok plays the pods)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rlhf_operator.api.stage_io import dump
from rlhf_operator.api.v1alpha1 import Guardrails
from rlhf_operator.guardrails import GuardrailMonitor
from rlhf_operator.workloads.guardrail_stop import GuardrailTrippedError
from rlhf_operator.workloads.result import failure
from tests.conftest import Kube
from tests.integration import operator_harness as harness

# The simulated evaluation reports winRate 0.875 (operator_harness.STAGE_RESULTS).
GPUS = {"reward-model": 1, "policy": 4}
RECORD = {"reward-model": "rewardModel", "policy": "policy"}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _pod_seconds(pod: dict[str, Any]) -> float:
    """What the pod ran as the API server tells it: its start to its container's end."""
    [container] = pod["status"]["containerStatuses"]
    return (
        _time(container["state"]["terminated"]["finishedAt"]) - _time(pod["status"]["startTime"])
    ).total_seconds()


def test_gpu_hours_per_stage_match_the_pods_and_show_in_kubectl_get(cluster: Kube, op_namespace: str) -> None:
    harness.create_pvc(cluster, op_namespace)
    job = harness.rlhfjob("metered", op_namespace)
    job["spec"]["stages"]["policy"]["pod"]["resources"]["gpus"] = GPUS["policy"]
    for stage, duration in (("rewardModel", "2s"), ("policy", "3s")):
        harness.set_stage_annotations(job, stage, {f"{harness.SIM}/run-duration": duration})
    harness.apply(cluster, job)
    final = harness.wait_phase(cluster, op_namespace, "metered", "Succeeded", timeout=120)

    pods = harness.children(cluster, op_namespace, "pods")
    total = 0
    for component, gpus in GPUS.items():
        ran = [
            _pod_seconds(p)
            for p in pods
            if p["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        usage = harness.stage_record(final, RECORD[component])["usage"]
        assert ran and min(ran) >= 2, ran  # the simulated run time, at least
        assert abs(usage["gpuSeconds"] - sum(ran) * gpus) <= 1, (component, usage, ran)
        assert usage["gpuHours"] == round(usage["gpuSeconds"] / 3600, 3)
        total += usage["gpuSeconds"]
    for cpu_stage in ("precompute", "ranking", "evaluation"):
        assert "usage" not in harness.stage_record(final, cpu_stage)
    assert final["usage"]["gpuSeconds"] == total

    table = cluster.kubectl("get", "rlhfjobs", "-n", op_namespace).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert "GPU-HOURS" in header
    assert row[header.index("GPU-HOURS")] == f"{final['usage']['gpuHours']:g}"


def test_the_gate_sets_promoted_and_kubectl_wait_returns(cluster: Kube, op_namespace: str) -> None:
    harness.create_pvc(cluster, op_namespace)
    for name, bar in (("passes", 0.8), ("misses", 0.9)):
        job = harness.rlhfjob(name, op_namespace)
        job["spec"]["stages"]["evaluation"]["gate"] = {"minWinRate": bar}
        harness.apply(cluster, job)

    waited = cluster.kubectl(
        "wait", "--for=condition=Promoted", "rlhfjob/passes", "-n", op_namespace, "--timeout=120s"
    )
    assert "condition met" in waited.stdout
    cluster.kubectl(
        "wait", "--for=condition=Promoted=False", "rlhfjob/misses", "-n", op_namespace, "--timeout=120s"
    )
    for name, status, text in (
        ("passes", "True", "Promoted: win rate 0.875 meets >= 0.8."),
        ("misses", "False", "Not promoted: win rate 0.875 misses >= 0.9."),
    ):
        final = harness.wait_phase(cluster, op_namespace, name, "Succeeded")
        promoted = next(c for c in final["conditions"] if c["type"] == "Promoted")
        assert (promoted["status"], promoted["message"]) == (status, text)
        assert text in final["message"]


def test_a_tripped_guardrail_fails_the_job_and_keeps_the_checkpoint(cluster: Kube, op_namespace: str) -> None:
    harness.create_pvc(cluster, op_namespace)
    job = harness.rlhfjob("diverged", op_namespace)
    # What the policy stage program writes when its KL guardrail trips (tests/train/test_guardrails.py
    # trips it for real), with its exit code 78.
    tripped = GuardrailMonitor(Guardrails(max_kl=20, kl_steps=1)).observe(7, 1.0, 41.2)
    assert tripped is not None
    trip = GuardrailTrippedError(tripped, (6, "/data/x/policy/checkpoints/step-0000006"))
    message = dump(failure(trip.message, trip.reason, trip.artifacts))
    harness.set_stage_annotations(
        job,
        "policy",
        {
            f"{harness.SIM}/outcome": "fail",
            f"{harness.SIM}/exit-code": "78",
            f"{harness.SIM}/message": message,
        },
    )
    harness.apply(cluster, job)
    final = harness.wait_phase(cluster, op_namespace, "diverged", "Failed")

    assert (
        "Stage policy failed: GuardrailTripped: KL 41.2 > maxKL 20 for 1 step at step 7" in final["message"]
    )
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "GuardrailTripped")
    assert final["artifacts"]["policy"] == "/data/x/policy/checkpoints/step-0000006"
    assert harness.stage_record(final, "evaluation")["state"] == "Pending"
    assert not [
        j
        for j in harness.children(cluster, op_namespace, "jobs")
        if j["metadata"]["name"].endswith("evaluation")
    ]
