"""Multi-node stages restart as a group: one pod's failure replaces every pod of the stage.

A plain Indexed Job recreates only the failed index, and the surviving ranks wait in a collective
for a peer that is not coming back until their process-group timeout, then burn the retries too.
The pods of a multi-node stage are therefore one group (JobShape.restart_as_group): its Job never
retries a pod (backoffLimit 0) and fails at the first failure, which makes the Job controller stop
the others; the operator then deletes the failed Job (foreground: it goes once its pods have) and
creates it anew under the same name once it is gone. The new pods resume from the newest complete
checkpoint. Restarts count against the stage's own `pod.backoffLimit`; a disruption (a drained node,
a reclaimed spot instance) restarts the group without counting; bad configuration (exit 78, a
tripped guardrail) fails the stage at once. Why: JobSet does this (Kubeflow Trainer builds on it),
but it is one more controller and CRD for every cluster to install and is not in the local cluster;
replacing one Job is a delete and a create the operator already knows how to do.
"""

from __future__ import annotations

from rlhf_operator.api.stage_io import EX_CONFIG
from rlhf_operator.api.v1alpha1 import StageName, StageState, StageStatus
from rlhf_operator.children import Manifest
from rlhf_operator.naming import child_name
from rlhf_operator.pipeline.context import PlanningPass
from rlhf_operator.plan import Event
from rlhf_operator.results import PodOutcome, failure_message, pod_outcome
from rlhf_operator.stages import STAGES, pod_settings

GROUP_RESTART = "GroupRestart"


def restarting(ctx: PlanningPass, stage: StageName, record: StageStatus, child: Manifest) -> bool:
    """The stage's Job is being deleted (a group restart): wait for it to go. True when so."""
    if not (child.get("metadata") or {}).get("deletionTimestamp"):
        return False
    record.state = StageState.RUNNING
    if record.restarted_job_uid and record.restarted_job_uid == child["metadata"].get("uid"):
        record.message = record.message or "Restarting: waiting for the failed group's pods to stop."
    else:
        record.message = "Waiting for its Job, being deleted, to go."
    return True


def group_restart(
    ctx: PlanningPass, stage: StageName, record: StageStatus, child: Manifest, pods: list[Manifest]
) -> bool:
    """For a failed group Job whose failure a restart can cure, within the stage's budget: plan its
    deletion, count the restart and say why (True); False leaves the stage to fail."""
    name = child_name(ctx.identity.name, stage)
    if not STAGES[stage].job_shape(name, ctx.identity.namespace, ctx.spec).restart_as_group:
        return False
    cause = first_failure(pods)
    if cause is None or cause[1].exit_code == EX_CONFIG:
        return False
    failed, latest = cause
    uid = (child.get("metadata") or {}).get("uid")
    if uid is not None and uid == record.restarted_job_uid:  # counted already; its deletion is under way
        ctx.plan.delete.append(("Job", name))
        record.state = StageState.RUNNING
        return True
    budget = pod_settings(ctx.spec, stage).backoff_limit
    used = record.restarts or 0
    if not latest.disrupted and used >= budget:
        return False
    record.restarts = used + (0 if latest.disrupted else 1)
    record.restarted_job_uid = uid
    training = ctx.spec.stages.policy if stage is StageName.POLICY else ctx.spec.stages.reward_model
    counted = "a disruption, not counted" if latest.disrupted else f"restart {record.restarts} of {budget}"
    record.state = StageState.RUNNING
    record.message = (
        f"Restarting all {training.nodes} pods from the newest checkpoint ({counted}): pod {latest.index} failed: "
        f"{failure_message([failed])}"
    )
    ctx.plan.delete.append(("Job", name))
    ctx.plan.events.append(Event("Warning", GROUP_RESTART, record.message))
    return True


def first_failure(pods: list[Manifest]) -> tuple[Manifest, PodOutcome] | None:
    """The pod whose failure failed the group: the first to fail (the Job controller stops the
    others after it, with SIGTERM: exit 143), with its outcome."""
    failed = [(p, o) for p in pods if (o := pod_outcome(p)) is not None and o.phase == "Failed"]
    if not failed:
        return None
    return min(
        failed, key=lambda po: (po[1].finished_at or "~", po[1].exit_code == 143 and not po[1].disrupted)
    )
