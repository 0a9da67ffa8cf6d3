"""The operator's only door to the Kubernetes API: create, patch and delete children, write status,
post events, check dependencies and read the tail of a pod's log."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from rlhf_operator.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, VERSION
from rlhf_operator.pipeline import Event

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
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
}


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.events = client.EventsV1Api(self.api)

    # ------------------------------------------------------------------------------ children
    def create(self, manifest: Manifest) -> bool:
        """Creates the object; False when it exists already (names are deterministic, so that is fine)."""
        namespace = manifest["metadata"]["namespace"]
        creators = {
            "Job": self.batch.create_namespaced_job,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Secret": self.core.create_namespaced_secret,
            "Deployment": self.apps.create_namespaced_deployment,
        }
        API_REQUESTS.labels("create", RESOURCES[manifest["kind"]]).inc()
        try:
            creators[manifest["kind"]](namespace, manifest)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def patch(self, kind: str, namespace: str, name: str, body: Manifest) -> None:
        patchers = {
            "Job": self.batch.patch_namespaced_job,
            "Deployment": self.apps.patch_namespaced_deployment,
        }
        API_REQUESTS.labels("patch", RESOURCES[kind]).inc()
        try:
            patchers[kind](name, namespace, body)
        except ApiException as err:
            if err.status != 404:
                raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        deleters = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "Job": self.batch.delete_namespaced_job,
        }
        API_REQUESTS.labels("delete", RESOURCES[kind]).inc()
        try:
            deleters[kind](name, namespace, propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                raise

    # ------------------------------------------------------------------------------ the RLHFJob
    def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        """Merge-patches the status subresource; returns the updated object."""
        API_REQUESTS.labels("patch", f"{PLURAL}/status").inc()
        updated: Manifest = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )
        return updated

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str]) -> Manifest | None:
        """Replaces the RLHFJob's finalizers; None when it is already gone."""
        API_REQUESTS.labels("patch", PLURAL).inc()
        try:
            updated: Manifest = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": finalizers}}
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return updated

    def post_event(self, namespace: str, name: str, uid: str, event: Event) -> None:
        now = datetime.now(UTC)
        body = client.EventsV1Event(
            metadata=client.V1ObjectMeta(name=f"{name[:200]}.{uuid.uuid4().hex[:16]}", namespace=namespace),
            event_time=now,
            reporting_controller="rlhf-operator.dev/operator",
            reporting_instance="rlhf-operator",
            action=event.reason,
            reason=event.reason,
            note=event.message[:1024],
            type=event.type,
            regarding=client.V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=name, namespace=namespace, uid=uid
            ),
        )
        API_REQUESTS.labels("create", "events").inc()
        try:
            self.events.create_namespaced_event(namespace, body)
        except ApiException as err:  # events are best effort: never fail a reconcile for one
            log.warning("could not post event %s for %s/%s: %s", event.reason, namespace, name, err.reason)

    # ------------------------------------------------------------------------------ dependencies
    def missing(self, namespace: str, needed: list[tuple[str, str]]) -> tuple[str, ...]:
        """Sentences naming each object the spec refers to that does not exist."""
        readers = {
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "Secret": self.core.read_namespaced_secret,
            "ServiceAccount": self.core.read_namespaced_service_account,
        }
        absent = []
        for kind, name in needed:
            API_REQUESTS.labels("get", RESOURCES[kind]).inc()
            try:
                readers[kind](name, namespace)
            except ApiException as err:
                if err.status != 404:
                    raise
                absent.append(
                    f"{kind} {name} does not exist in namespace {namespace}; create it or fix the spec"
                )
        return tuple(absent)

    def log_tail(self, namespace: str, pod: str, lines: int = 20) -> str | None:
        API_REQUESTS.labels("get", "pods/log").inc()
        try:
            # Unparsed: the client otherwise hands back the repr of the bytes, not the text.
            response = self.core.read_namespaced_pod_log(
                pod, namespace, tail_lines=lines, _preload_content=False
            )
        except ApiException as err:
            log.debug("no log for %s/%s: %s", namespace, pod, err.reason)
            return None
        return bytes(response.data).decode(errors="replace")
