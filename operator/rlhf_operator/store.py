"""In-memory view of RLHFJobs and their children, fed by the operator's watches.

Reconciles read children from here instead of listing them from the API, so the number of API
requests per job does not grow with the number of jobs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rlhf_operator.naming import LABEL_JOB_UID
from rlhf_operator.plan import Observed

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


def _resource_version(obj: Manifest) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class _Children:
    by_kind: dict[str, dict[str, Manifest]] = field(default_factory=dict)
    # When the operator first saw each child Job finished (monotonic seconds), for latency metrics.
    finished_at: dict[str, float] = field(default_factory=dict)


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Key, Manifest] = {}
        self._children: dict[str, _Children] = {}
        self._key_by_uid: dict[str, Key] = {}

    # ------------------------------------------------------------------------------ RLHFJobs
    def put_job(self, body: Manifest) -> Key:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock:
            current = self._jobs.get(key)
            same_object = current is not None and current["metadata"].get("uid") == body["metadata"].get(
                "uid"
            )
            # A watch event may arrive after our own, newer, status write: keep the newer object.
            if not (same_object and _resource_version(current or {}) > _resource_version(body)):
                self._jobs[key] = body
                self._key_by_uid[body["metadata"].get("uid", "")] = key
        return key

    def drop_job(self, key: Key) -> None:
        with self._lock:
            body = self._jobs.pop(key, None)
            if body is not None:
                self._children.pop(body["metadata"].get("uid", ""), None)
                self._key_by_uid.pop(body["metadata"].get("uid", ""), None)

    def job(self, key: Key) -> Manifest | None:
        with self._lock:
            return self._jobs.get(key)

    def job_keys(self) -> list[Key]:
        with self._lock:
            return list(self._jobs)

    def key_of_uid(self, uid: str) -> Key | None:
        with self._lock:
            return self._key_by_uid.get(uid)

    # ------------------------------------------------------------------------------ children
    def put_child(self, kind: str, body: Manifest, deleted: bool = False) -> str | None:
        """Records a child; returns its owner's uid when what the pipeline reads of it changed."""
        meta = body.get("metadata", {})
        uid = (meta.get("labels") or {}).get(LABEL_JOB_UID)
        if not uid:
            return None
        name = meta["name"]
        slim = slim_child(kind, body)
        with self._lock:
            children = self._children.setdefault(uid, _Children())
            objects = children.by_kind.setdefault(kind, {})
            if deleted:
                objects.pop(name, None)
                children.finished_at.pop(name, None)
                return uid  # type: ignore[no-any-return]
            if objects.get(name) == slim:
                return None  # e.g. a pod's heartbeat-like status update: nothing to reconcile
            objects[name] = slim
            if kind == "Job" and name not in children.finished_at and _finished(slim):
                children.finished_at[name] = time.monotonic()
        return uid  # type: ignore[no-any-return]

    def put_created(self, kind: str, manifest: Manifest) -> None:
        """Records a child the operator has just created, unless its watch event came first.

        Until the watch delivers the object, a reconcile of the same RLHFJob (e.g. on the event of
        its own status write) would otherwise plan to create it again and get a 409.
        """
        uid = (manifest["metadata"].get("labels") or {}).get(LABEL_JOB_UID)
        if not uid:
            return
        with self._lock:
            objects = self._children.setdefault(uid, _Children()).by_kind.setdefault(kind, {})
            objects.setdefault(manifest["metadata"]["name"], slim_child(kind, manifest))

    def finished_at(self, uid: str, job_name: str) -> float | None:
        with self._lock:
            children = self._children.get(uid)
            return children.finished_at.get(job_name) if children else None

    def observed(self, uid: str) -> Observed:
        with self._lock:
            kinds = self._children.get(uid, _Children()).by_kind
            return Observed(
                jobs=dict(kinds.get("Job", {})),
                deployments=dict(kinds.get("Deployment", {})),
                services=frozenset(kinds.get("Service", {})),
                config_maps=frozenset(kinds.get("ConfigMap", {})),
                secrets=frozenset(kinds.get("Secret", {})),
                pods=tuple(kinds.get("Pod", {}).values()),
            )


# What the pipeline and the handlers read of each kind of child; the rest (pod templates, managed
# fields) is dropped so memory stays small with many jobs, and updates that change none of it are
# not reconciled at all.
_SPEC_FIELDS = {"Job": ("suspend",), "Deployment": ("replicas",)}
_META_FIELDS = ("name", "uid", "labels", "annotations", "deletionTimestamp")


def slim_child(kind: str, body: Manifest) -> Manifest:
    meta = body.get("metadata") or {}
    slim: Manifest = {"metadata": {k: meta[k] for k in _META_FIELDS if meta.get(k) is not None}}
    if kind in _SPEC_FIELDS:
        spec = body.get("spec") or {}
        slim["spec"] = {k: spec[k] for k in _SPEC_FIELDS[kind] if k in spec}
    if kind in ("Job", "Deployment", "Pod") and body.get("status"):
        slim["status"] = _slim_status(kind, body["status"])
    return slim


def _slim_status(kind: str, status: Manifest) -> Manifest:
    if kind == "Pod":
        return {
            "phase": status.get("phase"),
            "startTime": status.get("startTime"),  # GPU time is counted from here
            "reason": status.get("reason"),
            "message": status.get("message"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message") if c.get(k) is not None}
                for c in status.get("conditions") or []
                # Disruptions (not the stage's fault) and the scheduler's verdict (why it waits).
                if c.get("type") == "DisruptionTarget"
                or (c.get("type") == "PodScheduled" and c.get("status") == "False")
            ],
            "containerStatuses": [
                {"state": {"terminated": (c.get("state") or {}).get("terminated")}}
                for c in status.get("containerStatuses") or []
                if (c.get("state") or {}).get("terminated")
            ],
        }
    if kind == "Job":
        keep = ("active", "succeeded", "failed", "startTime", "completionTime")
        out = {k: status[k] for k in keep if status.get(k) is not None}
        out["conditions"] = [
            {k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
            for c in status.get("conditions") or []
        ]
        return out
    return {"readyReplicas": status.get("readyReplicas")}


def _finished(job: Manifest) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )
