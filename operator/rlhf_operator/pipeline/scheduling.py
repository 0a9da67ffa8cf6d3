"""Pods the scheduler cannot place: the running stage then waits, and the RLHFJob says why.

The scheduler's reason lives on the Pod (PodScheduled=False, reason Unschedulable, a message naming
the nodes and the resource or selector that failed); a user reading `kubectl get rlhfjobs` should
see it there instead of "running" for as long as nothing fits. It clears when the pod schedules.
"""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.plan import Manifest, Observed


def _unscheduled(pod: Manifest) -> Manifest | None:
    condition: Manifest
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return condition
    return None


def unschedulable(observed: Observed, stage: StageName) -> str | None:
    """The scheduler's message for the stage's first pod it cannot place, or None."""
    for pod in observed.pods_of(stage):
        condition = _unscheduled(pod)
        if condition is not None:
            name = (pod.get("metadata") or {}).get("name", "?")
            return f"pod {name} cannot be scheduled: {condition.get('message') or 'no node fits it'}"
    return None
