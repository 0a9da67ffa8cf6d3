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
from rlhf_operator.pipeline import Observed

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
        self._job_locks: dict[Key, threading.Lock] = {}

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
        return key

    def drop_job(self, key: Key) -> None:
        with self._lock:
            body = self._jobs.pop(key, None)
            if body is not None:
                self._children.pop(body["metadata"].get("uid", ""), None)

    def job(self, key: Key) -> Manifest | None:
        with self._lock:
            return self._jobs.get(key)

    def job_keys(self) -> list[Key]:
        with self._lock:
            return list(self._jobs)

    def key_of_uid(self, uid: str) -> Key | None:
        with self._lock:
            for key, body in self._jobs.items():
                if body["metadata"].get("uid") == uid:
                    return key
        return None

    def job_lock(self, key: Key) -> threading.Lock:
        with self._lock:
            return self._job_locks.setdefault(key, threading.Lock())

    # ------------------------------------------------------------------------------ children
    def put_child(self, kind: str, body: Manifest, deleted: bool = False) -> str | None:
        """Records a child; returns its owner's uid (None when it carries no owner label)."""
        meta = body.get("metadata", {})
        uid = (meta.get("labels") or {}).get(LABEL_JOB_UID)
        if not uid:
            return None
        name = meta["name"]
        with self._lock:
            children = self._children.setdefault(uid, _Children())
            objects = children.by_kind.setdefault(kind, {})
            if deleted:
                objects.pop(name, None)
                children.finished_at.pop(name, None)
            else:
                objects[name] = body
                if kind == "Job" and name not in children.finished_at and _finished(body):
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
            objects.setdefault(manifest["metadata"]["name"], manifest)

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


def _finished(job: Manifest) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )
