"""In-memory view of RLHFJobs and their children, fed by the operator's watches.

Reconciles read children from here instead of listing them from the API, so the number of API
requests per job does not grow with the number of jobs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from rlhf_operator.api.v1alpha1 import KIND
from rlhf_operator.naming import LABEL_JOB_UID
from rlhf_operator.plan import Observed

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
IGNORED_CHILDREN = Counter(
    "rlhf_operator_ignored_children_total",
    "Objects with the operator's labels that it ignored: no controller ownerReference to an RLHFJob "
    "(or, for a pod, to its Job), or in another namespace than the RLHFJob they claim.",
    ["kind", "reason"],
)


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


@dataclass(frozen=True)
class _Owner:
    kind: str
    uid: str


def controller_owner(meta: Manifest) -> _Owner | None:
    """The object's controller (the ownerReference with `controller: true`), if any."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid"):
            return _Owner(str(ref.get("kind")), str(ref["uid"]))
    return None


class Store:
    """RLHFJobs by (namespace, name), and their children by owner.

    A child belongs to an RLHFJob only through ownership, never through a label anyone can write:
    a Job, Deployment, Service, ConfigMap or Secret when its controller ownerReference is the
    RLHFJob's uid, a pod when its controller is such a Job; and always in the RLHFJob's own
    namespace (an ownerReference cannot cross namespaces, but the watch sees every namespace, so
    the store checks). Anything else is ignored and counted (`IGNORED_CHILDREN`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[Key, Manifest] = {}
        # Keyed by the controller's uid: an RLHFJob's for its direct children, a Job's for pods.
        self._children: dict[str, _Children] = {}
        self._pods: dict[str, dict[str, Manifest]] = {}
        # A child Job's uid -> the uid of the RLHFJob that controls it.
        self._job_owner: dict[str, str] = {}
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
                uid = body["metadata"].get("uid", "")
                children = self._children.pop(uid, None)
                for job in (children.by_kind.get("Job", {}) if children else {}).values():
                    job_uid = job["metadata"].get("uid")
                    self._pods.pop(job_uid, None)
                    self._job_owner.pop(job_uid, None)
                self._key_by_uid.pop(uid, None)

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
        """Records a child; returns its RLHFJob's uid when what the pipeline reads of it changed."""
        meta = body.get("metadata", {})
        owner = controller_owner(meta)
        if owner is None or owner.kind != ("Job" if kind == "Pod" else KIND):
            if not (kind == "Pod" and owner is not None and owner.kind == "ReplicaSet"):
                IGNORED_CHILDREN.labels(kind, "NoController").inc()  # reward-server pods: not read
            return None
        name = meta["name"]
        slim = slim_child(kind, body)
        with self._lock:
            uid = self._job_owner.get(owner.uid) if kind == "Pod" else owner.uid
            if self._foreign(kind, meta, uid):
                return None
            if kind == "Pod":
                objects = self._pods.setdefault(owner.uid, {})
                children = None
            else:
                children = self._children.setdefault(owner.uid, _Children())
                objects = children.by_kind.setdefault(kind, {})
                if kind == "Job" and meta.get("uid"):
                    self._job_owner[meta["uid"]] = owner.uid
            if deleted:
                objects.pop(name, None)
                if children is not None:
                    children.finished_at.pop(name, None)
                if kind == "Job":  # its pods go with it (the garbage collector deletes them)
                    self._job_owner.pop(meta.get("uid", ""), None)
                if kind == "Pod" and not objects:
                    self._pods.pop(owner.uid, None)
                return uid
            if objects.get(name) == slim:
                return None  # e.g. a pod's heartbeat-like status update: nothing to reconcile
            objects[name] = slim
            if (
                children is not None
                and kind == "Job"
                and name not in children.finished_at
                and _finished(slim)
            ):
                children.finished_at[name] = time.monotonic()
        return uid

    def _foreign(self, kind: str, meta: Manifest, owner_uid: str | None) -> bool:
        """A child in another namespace than the RLHFJob it claims (by owner or by label): counted."""
        namespace = meta.get("namespace")
        label_uid = (meta.get("labels") or {}).get(LABEL_JOB_UID)
        for claimed in (owner_uid, label_uid):
            key = self._key_by_uid.get(claimed or "")
            if key is not None and namespace is not None and key[0] != namespace:
                IGNORED_CHILDREN.labels(kind, "OtherNamespace").inc()
                return True
        return False

    def put_created(self, kind: str, manifest: Manifest) -> None:
        """Records a child the operator has just created, unless its watch event came first.

        Until the watch delivers the object, a reconcile of the same RLHFJob (e.g. on the event of
        its own status write) would otherwise plan to create it again and get a 409.
        """
        owner = controller_owner(manifest["metadata"])
        if owner is None:
            return
        with self._lock:
            objects = self._children.setdefault(owner.uid, _Children()).by_kind.setdefault(kind, {})
            objects.setdefault(manifest["metadata"]["name"], slim_child(kind, manifest))

    def finished_at(self, uid: str, job_name: str) -> float | None:
        with self._lock:
            children = self._children.get(uid)
            return children.finished_at.get(job_name) if children else None

    def observed(self, uid: str) -> Observed:
        """The children of the RLHFJob `uid` in its own namespace."""
        with self._lock:
            key = self._key_by_uid.get(uid)
            kinds = {
                kind: {n: o for n, o in objects.items() if _in_namespace(o, key)}
                for kind, objects in self._children.get(uid, _Children()).by_kind.items()
            }
            jobs = kinds.get("Job", {})
            pods = [
                pod
                for job in jobs.values()
                for pod in self._pods.get(job["metadata"].get("uid", ""), {}).values()
                if _in_namespace(pod, key)
            ]
            return Observed(
                jobs=dict(jobs),
                deployments=dict(kinds.get("Deployment", {})),
                services=frozenset(kinds.get("Service", {})),
                config_maps=frozenset(kinds.get("ConfigMap", {})),
                secrets=frozenset(kinds.get("Secret", {})),
                network_policies=frozenset(kinds.get("NetworkPolicy", {})),
                disruption_budgets=frozenset(kinds.get("PodDisruptionBudget", {})),
                pods=tuple(pods),
            )


def _in_namespace(child: Manifest, key: Key | None) -> bool:
    """In the RLHFJob's namespace; one the operator created itself (no namespace yet) counts."""
    namespace = child["metadata"].get("namespace")
    return key is not None and namespace in (None, key[0])


# What the pipeline and the handlers read of each kind of child; the rest (pod templates, managed
# fields) is dropped so memory stays small with many jobs, and updates that change none of it are
# not reconciled at all.
_SPEC_FIELDS = {"Job": ("suspend",), "Deployment": ("replicas",)}
_META_FIELDS = ("name", "namespace", "uid", "labels", "annotations", "deletionTimestamp")


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
