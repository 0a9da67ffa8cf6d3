"""Carries out plans through a small protocol over the Kubernetes API (`kube.Kube` in the
operator, an in-memory fake in the unit tests) and keeps the store up to date with what it wrote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from rlhf_operator.plan import Event, Manifest, Plan, RetentionPlan
from rlhf_operator.store import Key, Store


class KubeApi(Protocol):
    def create(self, manifest: Manifest) -> bool:
        """Creates the object; False when it exists already."""

    def patch(self, kind: str, namespace: str, name: str, body: Manifest) -> None: ...

    def delete(self, kind: str, namespace: str, name: str) -> None: ...

    def patch_status(self, namespace: str, name: str, status: Manifest) -> Manifest:
        """Writes the RLHFJob's status; returns the updated object."""

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str]) -> Manifest | None:
        """Sets the RLHFJob's finalizers; returns the updated object, None when it is gone."""

    def post_event(self, namespace: str, name: str, uid: str, event: Event) -> None: ...

    def missing(self, namespace: str, needed: list[tuple[str, str]]) -> tuple[str, ...]:
        """A sentence for each (kind, name) that does not exist."""

    def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's labels; None when it does not exist."""

    def log_tail(self, namespace: str, pod: str, lines: int = 50) -> str | None: ...


class PlanExecutor:
    def __init__(self, kube: KubeApi, store: Store, on_job_created: Callable[[Manifest], None]) -> None:
        self.kube = kube
        self.store = store
        self._on_job_created = on_job_created

    def _create(self, manifest: Manifest) -> None:
        created = self.kube.create(manifest)
        if created:
            self.store.put_created(manifest["kind"], manifest)
            if manifest["kind"] == "Job":
                self._on_job_created(manifest)
        if manifest["kind"] == "Secret":
            # Secrets are not watched (that would need list on every Secret): remember it exists.
            self.store.put_child("Secret", {"metadata": manifest["metadata"]})

    def _events(self, key: Key, uid: str, events: list[Event]) -> None:
        for event in events:
            self.kube.post_event(key[0], key[1], uid, event)

    def execute(self, key: Key, uid: str, plan: Plan) -> Manifest | None:
        """Creates, patches and deletes children, writes the status when it changed and posts
        the events; returns the updated RLHFJob when its status was written."""
        namespace, name = key
        for manifest in plan.create:
            self._create(manifest)
        for kind, child, patch in plan.patch:
            self.kube.patch(kind, namespace, child, patch)
        for kind, child in plan.delete:
            self.kube.delete(kind, namespace, child)
        updated = None
        if plan.status_changed:
            updated = self.kube.patch_status(namespace, name, plan.status)
            self.store.put_job(updated)
        self._events(key, uid, plan.events)
        return updated

    def execute_retention(self, key: Key, uid: str, plan: RetentionPlan) -> None:
        for manifest in plan.create:
            if self.kube.create(manifest):
                self.store.put_created(manifest["kind"], manifest)
        if plan.finalizers is not None:
            updated = self.kube.set_finalizers(*key, plan.finalizers)
            if updated is not None:
                self.store.put_job(updated)
        self._events(key, uid, plan.events)
