"""The operator's only door to the Kubernetes API: create, patch and delete children, write status,
post events, check dependencies and read the tail of a pod's log.

lightkube rather than the official client: the official client's ~1,000 generated models cost the
operator 30-55 MiB of resident memory (docs/benchmarks.md), and Kopf loads them whenever that
client is installed, so the operator image leaves it out.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from lightkube import ApiError, Client, codecs
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import (
    ConfigMap,
    PersistentVolumeClaim,
    PodLog,
    Secret,
    Service,
    ServiceAccount,
)
from lightkube.resources.events_v1 import Event as EventResource
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import CascadeType, PatchType
from prometheus_client import Counter

from rlhf_operator.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION
from rlhf_operator.leader import LeaseConflictError, LeaseRecord
from rlhf_operator.plan import Event, RequestRefusedError

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
FIELD_MANAGER = "rlhf-operator"
# Every request this class sends (kopf's own list and watch requests are not counted here).
API_REQUESTS = Counter(
    "rlhf_operator_api_requests_total",
    "Kubernetes API requests the operator sent (excluding kopf's watches), by verb and resource.",
    ["verb", "resource"],
)
RESOURCES = {
    "Job": "jobs",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Secret": "secrets",
    "Deployment": "deployments",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "ServiceAccount": "serviceaccounts",
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
}
KINDS: dict[str, type[NamespacedResource]] = {
    "Job": Job,
    "Service": Service,
    "Deployment": Deployment,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "Secret": Secret,
    "ServiceAccount": ServiceAccount,
    "NetworkPolicy": NetworkPolicy,
    "PodDisruptionBudget": PodDisruptionBudget,
}
RLHFJobResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
#: The most of a pod's log one progress read fetches (the API server's limitBytes).
LOG_LIMIT_BYTES = 64 * 1024
# The objects a spec names (the claim, secrets) are shared by many RLHFJobs and rarely go away: one
# seen to exist is not looked up again for this long. Absence is never remembered.
EXISTS_TTL_SECONDS = 10.0


def build_type_info() -> None:
    """Makes msgspec build the decoding info of every type the operator sends or reads, now.

    msgspec builds it on a type's first use, and the operator's handler threads doing that at once
    crash the process (a segfault in msgspec 0.22: sixteen threads converting their first Job
    reproduce it every time). Called once, before any handler thread exists.
    """
    body = {"metadata": {"name": "type-info"}}
    for cls in (*KINDS.values(), ConfigMap, EventResource, Status, Lease):
        # The info is built before the value is checked, so a refused value is fine.
        with contextlib.suppress(msgspec.ValidationError):
            msgspec.convert(body, cls)
        with contextlib.suppress(msgspec.ValidationError):
            msgspec.json.decode(msgspec.json.encode(body), type=cls)


def _is(err: ApiError, code: int) -> bool:
    return err.status.code == code


#: 4xx answers that may clear by themselves (a conflict, throttling, a timeout): retried, not reported.
TRANSIENT = {404, 408, 409, 429}


def _refusal(err: ApiError, verb: str, kind: str, name: str) -> ApiError | RequestRefusedError:
    """A refusal that retrying cannot fix becomes RequestRefusedError (reported on the RLHFJob once)."""
    code = int(err.status.code or 0)
    if 400 <= code < 500 and code not in TRANSIENT:
        return RequestRefusedError(verb, kind, name, code, str(err.status.message or err))
    return err


def _manifest(resource: Any) -> Manifest:
    data: Manifest = resource.to_dict()
    return data


class Kube:
    def __init__(self, client: Client | None = None) -> None:
        build_type_info()
        # In the cluster: the pod's service account; elsewhere: $KUBECONFIG or ~/.kube/config.
        self.client = client or Client(KubeConfig.from_env(), field_manager=FIELD_MANAGER)
        self._seen_at: dict[tuple[str, str, str], float] = {}

    # ------------------------------------------------------------------------------ children
    def create(self, manifest: Manifest) -> bool:
        """Creates the object; False when it exists already (names are deterministic, so that is fine)."""
        API_REQUESTS.labels("create", RESOURCES[manifest["kind"]]).inc()
        try:
            self.client.create(codecs.from_dict(manifest))
        except ApiError as err:
            if _is(err, 409):
                return False
            raise _refusal(err, "create", manifest["kind"], manifest["metadata"]["name"]) from err
        return True

    def patch(self, kind: str, namespace: str, name: str, body: Manifest) -> None:
        API_REQUESTS.labels("patch", RESOURCES[kind]).inc()
        try:
            self.client.patch(KINDS[kind], name, body, namespace=namespace, patch_type=PatchType.MERGE)
        except ApiError as err:
            if not _is(err, 404):
                raise _refusal(err, "patch", kind, name) from err

    def delete(self, kind: str, namespace: str, name: str) -> None:
        API_REQUESTS.labels("delete", RESOURCES[kind]).inc()
        try:
            # A Job goes once its pods have: its replacement (same name) never meets them.
            cascade = CascadeType.FOREGROUND if kind == "Job" else CascadeType.BACKGROUND
            self.client.delete(KINDS[kind], name, namespace=namespace, cascade=cascade)
        except ApiError as err:
            if not _is(err, 404):
                raise

    # ------------------------------------------------------------------------------ the RLHFJob
    def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        """Merge-patches the status subresource; returns the updated object."""
        API_REQUESTS.labels("patch", f"{PLURAL}/status").inc()
        updated = self.client.patch(
            RLHFJobResource.Status, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE
        )
        return _manifest(updated)

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str]) -> Manifest | None:
        """Replaces the RLHFJob's finalizers; None when it is already gone."""
        API_REQUESTS.labels("patch", PLURAL).inc()
        try:
            updated = self.client.patch(
                RLHFJobResource, name, {"metadata": {"finalizers": finalizers}},
                namespace=namespace, patch_type=PatchType.MERGE,
            )  # fmt: skip
        except ApiError as err:
            if _is(err, 404):
                return None
            raise
        return _manifest(updated)

    def post_event(self, namespace: str, name: str, uid: str, event: Event) -> None:
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": f"{name[:200]}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": "rlhf-operator.dev/operator",
            "reportingInstance": "rlhf-operator",
            "action": event.reason,
            "reason": event.reason,
            "note": event.message[:1024],
            "type": event.type,
            "regarding": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
        }
        API_REQUESTS.labels("create", "events").inc()
        try:
            self.client.create(codecs.from_dict(body))
        except ApiError as err:  # events are best effort: never fail a reconcile for one
            log.warning("could not post event %s for %s/%s: %s", event.reason, namespace, name, err)

    # ------------------------------------------------------------------------------ dependencies
    def missing(self, namespace: str, needed: list[tuple[str, str]]) -> tuple[str, ...]:
        """Sentences naming each object the spec refers to that does not exist."""
        absent = []
        for kind, name in needed:
            key = (namespace, kind, name)
            if time.monotonic() - self._seen_at.get(key, float("-inf")) < EXISTS_TTL_SECONDS:
                continue
            API_REQUESTS.labels("get", RESOURCES[kind]).inc()
            try:
                self.client.get(KINDS[kind], name, namespace=namespace)
            except ApiError as err:
                if not _is(err, 404):
                    raise
                self._seen_at.pop(key, None)
                absent.append(
                    f"{kind} {name} does not exist in namespace {namespace}; create it or fix the spec"
                )
            else:
                self._seen_at[key] = time.monotonic()
        return tuple(absent)

    def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """The labels of a Secret the spec names (its opt-in for RLHFJobs); None when it is absent.
        Read fresh every time: removing the label must take effect at the next stage."""
        API_REQUESTS.labels("get", "secrets").inc()
        try:
            secret = self.client.get(Secret, name, namespace=namespace)
        except ApiError as err:
            if _is(err, 404):
                return None
            raise
        return dict(secret.metadata.labels or {}) if secret.metadata else {}

    def log_tail(self, namespace: str, pod: str, lines: int = 50) -> str | None:
        """The last `lines` of the pod's log, at most LOG_LIMIT_BYTES of them: a stage pod printing
        huge lines cannot make the operator read (and hold) more."""
        API_REQUESTS.labels("get", "pods/log").inc()
        # lightkube's `log()` has no limitBytes: the same request with it added.
        params = {"tailLines": lines, "limitBytes": LOG_LIMIT_BYTES}
        api = self.client._client  # lightkube's own request builder and error handling
        try:
            request = api.prepare_request("get", PodLog, name=pod, namespace=namespace, params=params)
            response = api.send(api.build_adapter_request(request))
            api.raise_for_status(response)  # type: ignore[no-untyped-call]
            return str(response.text)
        except ApiError as err:
            log.debug("no log for %s/%s: %s", namespace, pod, err)
            return None


class KubeLeaseStore:
    """The leader-election Lease (`leader.LeaseStore`) through lightkube."""

    def __init__(self, client: Client, namespace: str, name: str) -> None:
        self.client, self.namespace, self.name = client, namespace, name

    def get(self) -> LeaseRecord | None:
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as err:
            if _is(err, 404):
                return None
            raise
        spec = lease.spec or LeaseSpec()
        return LeaseRecord(
            holder=spec.holderIdentity or "",
            lease_seconds=spec.leaseDurationSeconds or 0,
            acquire_time=spec.acquireTime,
            renew_time=spec.renewTime,
            transitions=spec.leaseTransitions or 0,
            resource_version=lease.metadata.resourceVersion if lease.metadata else None,
        )

    def _lease(self, record: LeaseRecord) -> Lease:
        return Lease(
            metadata=ObjectMeta(
                name=self.name, namespace=self.namespace, resourceVersion=record.resource_version
            ),
            spec=LeaseSpec(
                holderIdentity=record.holder or None,
                leaseDurationSeconds=record.lease_seconds,
                acquireTime=record.acquire_time,
                renewTime=record.renew_time,
                leaseTransitions=record.transitions,
            ),
        )

    def create(self, record: LeaseRecord) -> LeaseRecord:
        return self._write(self.client.create, record)

    def replace(self, record: LeaseRecord) -> LeaseRecord:
        return self._write(self.client.replace, record)

    def _write(self, send: Any, record: LeaseRecord) -> LeaseRecord:
        try:
            written = send(self._lease(record))
        except ApiError as err:
            if _is(err, 409):
                raise LeaseConflictError(str(err)) from err
            raise
        return LeaseRecord(**{**record.__dict__, "resource_version": written.metadata.resourceVersion})
