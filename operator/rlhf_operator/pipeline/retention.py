"""Artifact retention: with `Delete`, a finalizer holds the RLHFJob until a Job removed its artifacts."""

from __future__ import annotations

from rlhf_operator.api import artifacts
from rlhf_operator.api.v1alpha1 import ArtifactRetention, RLHFJob
from rlhf_operator.children import JobIdentity, cleanup_job
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import CLEANUP_FINALIZER, cleanup_job_name
from rlhf_operator.pipeline.progression import job_finished
from rlhf_operator.plan import Event, Observed, RetentionPlan
from rlhf_operator.results import failure_message
from rlhf_operator.stages import CLEANUP


def retention(
    job: RLHFJob, finalizers: list[str], deleting: bool, observed: Observed, config: OperatorConfig
) -> RetentionPlan:
    meta = job.metadata
    assert meta.name and meta.namespace and meta.uid
    plan = RetentionPlan()
    wants_cleanup = job.spec.artifact_retention == ArtifactRetention.DELETE
    held = CLEANUP_FINALIZER in finalizers
    if not deleting:
        if wants_cleanup and not held:
            plan.finalizers = [*finalizers, CLEANUP_FINALIZER]
        return plan
    if not held:
        return plan
    release = [f for f in finalizers if f != CLEANUP_FINALIZER]
    if not wants_cleanup:
        plan.finalizers = release
        return plan
    root = artifacts.job_root(job.spec.storage, meta.namespace, meta.name, meta.uid)
    cleanup = observed.jobs.get(cleanup_job_name(meta.name))
    if cleanup is None:
        plan.create.append(
            cleanup_job(JobIdentity(meta.namespace, meta.name, meta.uid), job.spec, config, root)
        )
        return plan
    finished = job_finished(cleanup)
    if finished is None:
        return plan
    plan.finalizers = release
    if finished[0] == "Complete":
        plan.events.append(Event("Normal", "ArtifactsDeleted", f"Deleted the artifacts under {root}."))
    else:
        detail = failure_message(observed.pods_of(CLEANUP)) or finished[1].get("message", "")
        plan.events.append(
            Event(
                "Warning", "ArtifactCleanupFailed", f"Could not delete the artifacts under {root}: {detail}"
            )
        )
    return plan
