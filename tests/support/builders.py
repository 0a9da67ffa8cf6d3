"""Builders of the objects the operator's pure core reads: RLHFJobs, child Jobs and Pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.naming import LABEL_STAGE
from tests.support.merge import example_merged

Manifest = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]


def TOKEN() -> str:  # noqa: N802 - a constant token source for the planner
    return "test-token"


def rlhfjob(name: str = "tiny", namespace: str = "ml", uid: str = "u-1", **spec: Any) -> RLHFJob:
    """The tiny example RLHFJob with `spec` merged in, as the API server stores it."""
    manifest = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace, "uid": uid, "generation": 1}
    manifest["spec"] = example_merged(manifest["spec"], spec)
    return RLHFJob.model_validate(manifest)


def finished_job(kind: str = "Complete", **status: Any) -> Manifest:
    """A child batch/v1 Job with a Complete or Failed condition."""
    condition = {
        "type": kind,
        "status": "True",
        "reason": "Done",
        "lastTransitionTime": "2026-11-24T11:00:00Z",
    }
    return {"spec": {}, "status": {"conditions": [condition], **status}}


def running_job(suspend: bool = False, active: int = 1) -> Manifest:
    return {"spec": {"suspend": suspend}, "status": {"active": active}}


def pod(
    stage: str,
    phase: str,
    message: str | Manifest = "",
    exit_code: int = 0,
    *,
    name: str = "p",
    index: int = 0,
    at: str = "",
    conditions: list[Manifest] | None = None,
) -> Manifest:
    """A stage pod; a finished one carries `message` (JSON when a dict) as its termination message."""
    text = json.dumps(message) if isinstance(message, dict) else message
    terminated = {"exitCode": exit_code, "message": text, "reason": "Completed", "finishedAt": at}
    state = {"terminated": terminated} if phase in ("Succeeded", "Failed") else {"running": {}}
    return {
        "metadata": {
            "name": name,
            "labels": {LABEL_STAGE: str(stage)},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase, "containerStatuses": [{"state": state}], "conditions": conditions or []},
    }


def owned(
    child: Manifest, owner_uid: str, *, kind: str = "RLHFJob", namespace: str = "ml", uid: str = ""
) -> Manifest:
    """`child` as the API server stores it: in `namespace`, controlled by `owner_uid` (an RLHFJob, or
    a Job for a pod), with its own `uid` when given."""
    meta = child.setdefault("metadata", {})
    meta["namespace"] = namespace
    meta["ownerReferences"] = [{"kind": kind, "uid": owner_uid, "controller": True, "name": "owner"}]
    if uid:
        meta["uid"] = uid
    return child
