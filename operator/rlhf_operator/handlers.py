"""Kopf wiring: watches feed the store, and every event of an RLHFJob or of one of its children
runs the same level-based reconcile of that RLHFJob. A periodic sweep catches what events miss
and reads the progress of running policies."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from rlhf_operator import metrics
from rlhf_operator.api.v1alpha1 import (
    GROUP,
    PIPELINE_STAGES,
    PLURAL,
    VERSION,
    Phase,
    RLHFJob,
    StageName,
    StageState,
)
from rlhf_operator.children import Manifest
from rlhf_operator.config import OperatorConfig
from rlhf_operator.kube import Kube
from rlhf_operator.naming import CLEANUP_FINALIZER, LABEL_MANAGED_BY, MANAGED_BY, child_name
from rlhf_operator.pipeline import Observed, dependencies, reconcile, retention
from rlhf_operator.store import Key, Store
from rlhf_operator.workloads.progress import last_progress

log = logging.getLogger(__name__)
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
FINISHED_PHASES = {Phase.SUCCEEDED.value, Phase.FAILED.value}


class Controller:
    """Everything the handlers share; one per operator process."""

    def __init__(self, config: OperatorConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.store = Store()
        self._last_progress_read: dict[Key, float] = {}
        self._stop = threading.Event()
        # Coalescing: one reconcile per RLHFJob at a time; events arriving meanwhile ask for one more
        # pass instead of holding a worker thread on a lock.
        self._guard = threading.Lock()
        self._running: set[Key] = set()
        self._again: set[Key] = set()

    # ------------------------------------------------------------------------------ reconcile
    def reconcile(self, key: Key) -> None:
        with self._guard:
            if key in self._running:
                self._again.add(key)
                return
            self._running.add(key)
        while True:
            self._reconcile_once(key)
            with self._guard:
                if key not in self._again:
                    self._running.discard(key)
                    return
                self._again.discard(key)

    def _reconcile_once(self, key: Key) -> None:
        body = self.store.job(key)
        if body is None:
            return
        try:
            if body["metadata"].get("deletionTimestamp"):
                self._finalize(key, body)
            else:
                self._reconcile(key, body)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            log.exception("reconcile of %s/%s failed; it is retried on the next event or sweep", *key)

    def _reconcile(self, key: Key, body: Manifest) -> None:
        namespace, name = key
        status: Manifest = body.get("status") or {}
        try:
            job = RLHFJob.model_validate(
                {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": body["metadata"],
                 "spec": body.get("spec") or {}}
            )  # fmt: skip
        except ValidationError as err:
            self._write_invalid(key, body, err)
            return
        if status.get("phase") in FINISHED_PHASES and status.get("observedGeneration") == body[
            "metadata"
        ].get("generation"):
            self._cleanup_finished(job, status)
            return
        uid = body["metadata"]["uid"]
        observed = self.store.observed(uid)
        self._apply_retention(key, body, job, observed, deleting=False)
        observed = self._with_progress(key, status, observed)
        now = datetime.now(UTC)
        plan = reconcile(job, status, observed, self.config, now)
        if plan.check_dependencies:
            missing = self.kube.missing(namespace, dependencies(job, self.config))
            observed = Observed(**{**observed.__dict__, "missing": missing})
            plan = reconcile(job, status, observed, self.config, now)
        for manifest in plan.create:
            created = self.kube.create(manifest)
            if created:
                self.store.put_created(manifest["kind"], manifest)
            if created and manifest["kind"] == "Job":
                self._observe_transition(uid, manifest)
            if manifest["kind"] == "Secret":
                # Secrets are not watched (that would need list on every Secret): remember it exists.
                self.store.put_child("Secret", {"metadata": manifest["metadata"]})
        for kind, child, patch in plan.patch:
            self.kube.patch(kind, namespace, child, patch)
        for kind, child in plan.delete:
            self.kube.delete(kind, namespace, child)
        if plan.status != status:
            updated = self.kube.patch_status(namespace, name, plan.status)
            self.store.put_job(updated)
            self._observe_stage_durations(status, plan.status)
        for event in plan.events:
            self.kube.post_event(namespace, name, uid, event)

    def _finalize(self, key: Key, body: Manifest) -> None:
        """A deleted RLHFJob: delete its artifacts first if its retention says so."""
        if not body["metadata"].get("finalizers"):
            return
        try:
            job = RLHFJob.model_validate({"metadata": body["metadata"], "spec": body.get("spec") or {}})
        except ValidationError:
            job = None
        if job is None:  # nothing sensible to clean up with: let it go
            self.kube.set_finalizers(
                *key, [f for f in body["metadata"]["finalizers"] if f != CLEANUP_FINALIZER]
            )
            return
        self._apply_retention(key, body, job, self.store.observed(body["metadata"]["uid"]), deleting=True)

    def _apply_retention(
        self, key: Key, body: Manifest, job: RLHFJob, observed: Observed, deleting: bool
    ) -> None:
        plan = retention(job, list(body["metadata"].get("finalizers") or []), deleting, observed, self.config)
        for manifest in plan.create:
            if self.kube.create(manifest):
                self.store.put_created(manifest["kind"], manifest)
        if plan.finalizers is not None:
            updated = self.kube.set_finalizers(*key, plan.finalizers)
            if updated is not None:
                self.store.put_job(updated)
        for event in plan.events:
            self.kube.post_event(key[0], key[1], body["metadata"]["uid"], event)

    def _write_invalid(self, key: Key, body: Manifest, err: ValidationError) -> None:
        """An object the API server let through but the models refuse (e.g. stored by an older CRD)."""
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        message = f"The spec is invalid: {problems}. Fix the spec; nothing was started."
        status = dict(body.get("status") or {})
        if status.get("message") == message:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status.update(
            observedGeneration=body["metadata"].get("generation"),
            phase=Phase.FAILED.value,
            message=message,
            conditions=[{"type": "Failed", "status": "True", "reason": "InvalidSpec", "message": message,
                         "lastTransitionTime": now, "observedGeneration": body["metadata"].get("generation")}],
        )  # fmt: skip
        self.store.put_job(self.kube.patch_status(*key, status))

    def _cleanup_finished(self, job: RLHFJob, status: Manifest) -> None:
        """A finished job keeps no reward server running (e.g. after an operator restart)."""
        assert job.metadata.name and job.metadata.namespace and job.metadata.uid
        server = child_name(job.metadata.name, StageName.REWARD_SERVER)
        observed = self.store.observed(job.metadata.uid)
        if server in observed.deployments:
            self.kube.delete("Deployment", job.metadata.namespace, server)
        if server in observed.services:
            self.kube.delete("Service", job.metadata.namespace, server)

    # ------------------------------------------------------------------------------ progress
    def _with_progress(self, key: Key, status: Manifest, observed: Observed) -> Observed:
        """Reads the running policy's latest progress line, at most once per interval."""
        policy = next((s for s in status.get("stages", []) if s.get("name") == StageName.POLICY.value), None)
        if not policy or policy.get("state") != StageState.RUNNING.value:
            return observed
        now = time.monotonic()
        if now - self._last_progress_read.get(key, 0.0) < self.config.progress_interval_seconds:
            return observed
        pods = [
            p for p in observed.pods_of(StageName.POLICY)
            if (p.get("status") or {}).get("phase") == "Running"
            and (p["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "0") == "0"
        ]  # fmt: skip
        if not pods:
            return observed
        self._last_progress_read[key] = now
        tail = self.kube.log_tail(key[0], pods[0]["metadata"]["name"])
        progress = last_progress(tail) if tail else None
        return Observed(**{**observed.__dict__, "progress": progress}) if progress else observed

    # ------------------------------------------------------------------------------ metrics
    def _observe_transition(self, uid: str, manifest: Manifest) -> None:
        stage = StageName(manifest["metadata"]["labels"]["rlhf-operator.dev/stage"])
        index = PIPELINE_STAGES.index(stage)
        job_name = manifest["metadata"]["labels"]["rlhf-operator.dev/job-name"]
        for earlier in reversed(PIPELINE_STAGES[:index]):
            finished = self.store.finished_at(uid, child_name(job_name, earlier))
            if finished is not None:
                metrics.TRANSITION_LATENCY.observe(time.monotonic() - finished)
                return

    def _observe_stage_durations(self, old: Manifest, new: Manifest) -> None:
        before = {s["name"]: s.get("state") for s in old.get("stages", [])}
        for record in new.get("stages", []):
            if (
                record.get("state") in ("Succeeded", "Failed")
                and before.get(record["name"]) != record["state"]
            ):
                start, end = record.get("startTime"), record.get("completionTime")
                if start and end:
                    seconds = (_parse_time(end) - _parse_time(start)).total_seconds()
                    metrics.STAGE_DURATION.labels(record["name"], record["state"]).observe(max(seconds, 0.0))

    # ------------------------------------------------------------------------------ sweep
    def sweep_forever(self) -> None:
        while not self._stop.wait(self.config.progress_interval_seconds):
            phases: dict[str, int] = {}
            for key in self.store.job_keys():
                body = self.store.job(key) or {}
                phase = (body.get("status") or {}).get("phase") or Phase.PENDING.value
                phases[phase] = phases.get(phase, 0) + 1
                if phase not in FINISHED_PHASES:
                    self.reconcile(key)
            metrics.set_jobs_by_phase(phases)

    def stop(self) -> None:
        self._stop.set()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


CONTROLLER: Controller | None = None


def controller() -> Controller:
    assert CONTROLLER is not None, "the operator's startup handler sets the controller"
    return CONTROLLER


# ---------------------------------------------------------------------------------- kopf handlers


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def on_rlhfjob(event: dict[str, Any], **_: Any) -> None:
    body = event["object"]
    store = controller().store
    if event["type"] == "DELETED":
        store.drop_job((body["metadata"]["namespace"], body["metadata"]["name"]))
        return
    controller().reconcile(store.put_job(body))


def _on_child(kind: str, event: dict[str, Any]) -> None:
    store = controller().store
    uid = store.put_child(kind, event["object"], deleted=event["type"] == "DELETED")
    key = store.key_of_uid(uid) if uid else None
    if key is not None:
        controller().reconcile(key)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)  # type: ignore[arg-type]
def on_job(event: dict[str, Any], **_: Any) -> None:
    _on_child("Job", event)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)  # type: ignore[arg-type]
def on_deployment(event: dict[str, Any], **_: Any) -> None:
    _on_child("Deployment", event)


@kopf.on.event("v1", "pods", labels=MANAGED)  # type: ignore[arg-type]
def on_pod(event: dict[str, Any], **_: Any) -> None:
    _on_child("Pod", event)


@kopf.on.event("v1", "services", labels=MANAGED)  # type: ignore[arg-type]
def on_service(event: dict[str, Any], **_: Any) -> None:
    _on_child("Service", event)


@kopf.on.event("v1", "configmaps", labels=MANAGED)  # type: ignore[arg-type]
def on_config_map(event: dict[str, Any], **_: Any) -> None:
    _on_child("ConfigMap", event)
