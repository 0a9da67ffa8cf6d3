"""The controller: for one RLHFJob, read the store, plan with the pure pipeline, carry the plan out.

Every event of an RLHFJob or of one of its children runs the same level-based reconcile of that
RLHFJob (coalesced per job); a periodic resync catches what events miss and reads the progress of
running policies.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from rlhf_operator import metrics
from rlhf_operator.api.stage_io import progress_records
from rlhf_operator.api.v1alpha1 import Phase, RLHFJob, RLHFJobStatus
from rlhf_operator.coalescer import Coalescer
from rlhf_operator.config import OperatorConfig
from rlhf_operator.executor import KubeApi, PlanExecutor
from rlhf_operator.model_sources import LookupCache
from rlhf_operator.naming import CLEANUP_FINALIZER
from rlhf_operator.pipeline import (
    dependencies,
    finished_plan,
    progress_pod,
    reconcile,
    refused_secrets,
    retention,
    stored_status,
)
from rlhf_operator.plan import Event, Manifest, Observed, RequestRefusedError
from rlhf_operator.store import Key, Store

log = logging.getLogger(__name__)
FINISHED_PHASES = {Phase.SUCCEEDED.value, Phase.FAILED.value}


def new_token() -> str:
    return secrets.token_urlsafe(32)


class Controller:
    """What the handlers share; one per operator process, kept in Kopf's memo."""

    def __init__(
        self,
        config: OperatorConfig,
        kube: KubeApi,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_source: Callable[[], str] = new_token,
    ) -> None:
        self.config = config
        self.kube = kube
        self.store = Store()
        self.executor = PlanExecutor(kube, self.store, self._job_created)
        self._clock = clock
        self._new_token = token_source
        self._coalescer = Coalescer(self._reconcile_once)
        self._last_progress_read: dict[Key, float] = {}
        self._stop = threading.Event()
        self._sweep_failed: set[Key] = set()
        self._sweep_ticked: float | None = None
        #: Whether this replica may act (leader election, `leader.py`); a standby only keeps its store.
        self.is_leader: Callable[[], bool] = lambda: True
        self._model_configs = LookupCache()

    def reconcile(self, key: Key) -> None:
        self._coalescer.run(key)

    def _reconcile_once(self, key: Key) -> None:
        body = self.store.job(key)
        if body is None or not self.is_leader():  # asked right before acting: a lost lease stops here
            return
        try:
            if body["metadata"].get("deletionTimestamp"):
                self._finalize(key, body)
            else:
                self._reconcile(key, body)
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            log.exception("reconcile of %s/%s failed; it is retried on the next event or resync", *key)

    def _reconcile(self, key: Key, body: Manifest) -> None:
        status = _status_of(body)
        try:
            job = RLHFJob.model_validate(
                {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": body["metadata"],
                 "spec": body.get("spec") or {}}
            )  # fmt: skip
        except ValidationError as err:
            self._write_invalid(key, body, err)
            return
        uid = body["metadata"]["uid"]
        observed = self.store.observed(uid)
        old = stored_status(status)  # parsed once for every step below
        done = finished_plan(job, old, observed)
        if done is not None:
            self.executor.execute(key, uid, done)
            return
        finalizers = list(body["metadata"].get("finalizers") or [])
        self.executor.execute_retention(key, uid, retention(job, finalizers, False, observed, self.config))
        observed = self._with_progress(key, old, observed)
        observed = observed.with_model_configs(self._model_configs.lookups(job.spec))
        now = self._clock()
        plan = reconcile(job, old, observed, self.config, now, new_token=self._new_token)
        if plan.check_dependencies:
            missing = self.kube.missing(key[0], dependencies(job, self.config))
            refused = refused_secrets(job, self.config, lambda name: self.kube.secret_labels(key[0], name))
            observed = observed.with_missing(missing, refused)
            plan = reconcile(job, old, observed, self.config, now, new_token=self._new_token)
        try:
            updated = self.executor.execute(key, uid, plan)
        except RequestRefusedError as refusal:
            self._write_refused(key, body, plan.status, refusal)
            return
        if updated is not None:
            metrics.observe_stage_durations(status, plan.status)

    def _finalize(self, key: Key, body: Manifest) -> None:
        """A deleted RLHFJob: delete its artifacts first if its retention says so."""
        finalizers = list(body["metadata"].get("finalizers") or [])
        if not finalizers:
            return
        try:
            job = RLHFJob.model_validate({"metadata": body["metadata"], "spec": body.get("spec") or {}})
        except ValidationError:  # nothing sensible to clean up with: let it go
            self.kube.set_finalizers(*key, [f for f in finalizers if f != CLEANUP_FINALIZER])
            return
        observed = self.store.observed(body["metadata"]["uid"])
        plan = retention(job, finalizers, True, observed, self.config)
        self.executor.execute_retention(key, body["metadata"]["uid"], plan)

    def _write_invalid(self, key: Key, body: Manifest, err: ValidationError) -> None:
        """An object the API server let through but the models refuse (e.g. stored by an older CRD)."""
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:5])
        message = f"The spec is invalid: {problems}. Fix the spec; nothing was started."
        # A fresh status: the stored one may be as malformed as the spec, and writing it back would be
        # refused too, leaving the job silent.
        self._write_failed(key, body, {}, "InvalidSpec", message)

    def _write_refused(
        self, key: Key, body: Manifest, status: Manifest, refusal: RequestRefusedError
    ) -> None:
        """A child the API server refuses (4xx): retrying cannot help, so the job fails once, saying
        what was refused and why, instead of asking again on every event."""
        message = f"{refusal.sentence()}. Fix the spec (its pod settings or names); nothing more is started."
        log.warning("%s/%s: %s", *key, refusal.sentence())
        if self._write_failed(key, body, status, "RequestRefused", message):
            self.kube.post_event(
                key[0], key[1], body["metadata"]["uid"], Event("Warning", "RequestRefused", message)
            )

    def _write_failed(self, key: Key, body: Manifest, status: Manifest, reason: str, message: str) -> bool:
        """Fails the job with `reason`; False when its status says so already."""
        if _status_of(body).get("message") == message:
            return False
        now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        generation = body["metadata"].get("generation")
        changed = [
            {"type": kind, "status": value, "reason": reason, "message": message,
             "lastTransitionTime": now, "observedGeneration": generation}
            for kind, value in (("Running", "False"), ("Failed", "True"))
        ]  # fmt: skip
        kept = [c for c in status.get("conditions") or [] if c.get("type") not in {"Running", "Failed"}]
        status = {**status, "observedGeneration": generation, "phase": Phase.FAILED.value, "message": message,
                  "conditions": [*kept, *changed]}  # fmt: skip
        self.store.put_job(self.kube.patch_status(*key, status))
        return True

    def _with_progress(self, key: Key, status: RLHFJobStatus, observed: Observed) -> Observed:
        """Reads the running policy's latest progress line, at most once per progress interval."""
        pod = progress_pod(status, observed)
        now = time.monotonic()
        if (
            pod is None
            or now - self._last_progress_read.get(key, float("-inf")) < self.config.progress_interval_seconds
        ):
            return observed
        self._last_progress_read[key] = now
        records = progress_records(self.kube.log_tail(key[0], pod) or "")
        return observed.with_progress(records[-1], records) if records else observed

    def _job_created(self, manifest: Manifest) -> None:
        uid = manifest["metadata"]["labels"]["rlhf-operator.dev/job-uid"]
        metrics.observe_transition(manifest, lambda name: self.store.finished_at(uid, name))

    def resync(self, *, everything: bool = True) -> None:
        """Reconciles every unfinished job, or with `everything` False only those whose policy
        runs (their progress is due); counts the jobs by phase for the metrics. One job's bad
        object never stops the others: its error is logged once, with its name, and the sweep goes on."""
        if not self.is_leader():
            return
        phases: dict[str, int] = {}
        for key in self.store.job_keys():
            try:
                status = _status_of(self.store.job(key))
                phase = str(status.get("phase") or Phase.PENDING.value)
                phases[phase] = phases.get(phase, 0) + 1
                if phase not in FINISHED_PHASES and (everything or _policy_running(status)):
                    self.reconcile(key)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                if key not in self._sweep_failed:
                    log.exception("the sweep could not handle %s/%s; it goes on with the others", *key)
                self._sweep_failed.add(key)
        metrics.set_jobs_by_phase(phases)

    def reconcile_all(self) -> None:
        """Every RLHFJob in the store once, finished ones included: what a new leader does first,
        as a restarted operator does on its watches' first events (a standby ignored those)."""
        for key in self.store.job_keys():
            self.reconcile(key)

    def resync_forever(self) -> None:
        """Ticks at the progress interval; every job is reconciled at the resync interval. Any
        error of a tick is logged and the loop goes on; `alive` tells the liveness probe."""
        tick = min(self.config.progress_interval_seconds, self.config.resync_interval_seconds)
        last_full = time.monotonic()
        self._sweep_ticked = time.monotonic()
        while not self._stop.wait(tick):
            everything = time.monotonic() - last_full >= self.config.resync_interval_seconds - tick / 2
            if everything:
                last_full = time.monotonic()
            try:
                self.resync(everything=everything)
            except Exception:
                log.exception("a sweep failed; the next one runs in %.0fs", tick)
            self._sweep_ticked = time.monotonic()

    def alive(self) -> bool:
        """False when the sweep loop has not ticked for three resync intervals (it died or hangs)."""
        if self._sweep_ticked is None:
            return True
        limit = 3 * max(self.config.resync_interval_seconds, self.config.progress_interval_seconds)
        return time.monotonic() - self._sweep_ticked < limit

    def stop(self) -> None:
        self._stop.set()


def _status_of(body: Manifest | None) -> Manifest:
    """The stored status as a dict, or {} when it is missing or not an object (a bad write)."""
    status = (body or {}).get("status")
    return status if isinstance(status, dict) else {}


def _policy_running(status: Manifest) -> bool:
    stages = status.get("stages")
    return isinstance(stages, list) and any(
        isinstance(s, dict) and s.get("name") == "policy" and s.get("state") == "Running" for s in stages
    )
