"""Deterministic names and labels of an RLHFJob's children, so every reconcile is idempotent."""

from __future__ import annotations

import hashlib

from rlhf_operator.api.v1alpha1 import GROUP, StageName
from rlhf_operator.stages import CLEANUP, STAGES, StageKey

MANAGED_BY = "rlhf-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
# The owner is found by uid: RLHFJob names may be longer than a label value allows.
LABEL_JOB_UID = f"{GROUP}/job-uid"
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_STAGE = f"{GROUP}/stage"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Held while artifacts must be deleted before the RLHFJob goes (artifactRetention: Delete).
CLEANUP_FINALIZER = f"{GROUP}/artifact-cleanup"

# A Job's name ends up in its pods' `job-name` label (at most 63 characters) and its pods' names
# add an index and a random suffix, so children keep well below that.
MAX_CHILD_NAME = 52


def stage_slug(stage: StageKey) -> str:
    return STAGES[stage].slug


def child_name(job_name: str, stage: StageKey, suffix: str = "") -> str:
    """`<job>-<stage>[-suffix]`, shortened with a stable hash when the job's name is long."""
    return _job_child(job_name, stage_slug(stage) + (f"-{suffix}" if suffix else ""))


def network_policy_name(job_name: str) -> str:
    """The job's one NetworkPolicy (it covers the pods of every stage)."""
    return _job_child(job_name, "network")


def _job_child(job_name: str, tail: str) -> str:
    name = f"{job_name}-{tail}"
    if len(name) <= MAX_CHILD_NAME:
        return name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:8]
    keep = MAX_CHILD_NAME - len(tail) - len(digest) - 2
    return f"{job_name[:keep].rstrip('-.')}-{digest}-{tail}"


def cleanup_job_name(job_name: str) -> str:
    return child_name(job_name, CLEANUP)


def config_map_name(job_name: str, stage: StageKey) -> str:
    return child_name(job_name, stage, "config")


def token_secret_name(job_name: str) -> str:
    return child_name(job_name, StageName.REWARD_SERVER, "token")


def labels(job_name: str, job_uid: str, stage: StageKey) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: MANAGED_BY,
        LABEL_NAME: "rlhf-stage",
        LABEL_INSTANCE: child_name(job_name, stage)[:63],
        LABEL_COMPONENT: stage_slug(stage),
        LABEL_JOB_NAME: job_name[:63].rstrip("-_."),
        LABEL_JOB_UID: job_uid,
        LABEL_STAGE: str(stage),
    }
