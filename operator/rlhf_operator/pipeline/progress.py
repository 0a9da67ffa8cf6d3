"""Which pod's log holds a running policy's progress (the pure half of reading it)."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import RLHFJobStatus, StageName, StageState
from rlhf_operator.plan import Observed

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def progress_pod(status: RLHFJobStatus, observed: Observed) -> str | None:
    """The running rank-0 policy pod, while the policy stage runs; None otherwise."""
    policy = next((s for s in status.stages if s.name is StageName.POLICY), None)
    if policy is None or policy.state is not StageState.RUNNING:
        return None
    for pod in observed.pods_of(StageName.POLICY):
        annotations = pod["metadata"].get("annotations") or {}
        if (pod.get("status") or {}).get("phase") == "Running" and annotations.get(
            COMPLETION_INDEX, "0"
        ) == "0":
            return str(pod["metadata"]["name"])
    return None
