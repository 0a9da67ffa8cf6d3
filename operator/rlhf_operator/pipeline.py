"""The pipeline state machine: a pure function from (RLHFJob, observed children, config, now) to a plan.

Level-based: nothing here remembers what happened before except what the RLHFJob's status says,
so create, resume, update, a child's event and the periodic check all run the same `reconcile`.
A stage's terminal state (Succeeded, Failed, Skipped) is kept in status once reached: a finished
child that is later deleted does not run again, while a running stage whose child disappears gets
it recreated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rlhf_operator.api import artifacts
from rlhf_operator.api.v1alpha1 import (
    PIPELINE_STAGES,
    ArtifactRetention,
    ConditionType,
    Phase,
    RLHFJob,
    StageName,
    StageState,
)
from rlhf_operator.children import (
    JobIdentity,
    Manifest,
    cleanup_job,
    config_map,
    needs_rendezvous,
    policy_headless_service,
    reward_server_deployment,
    reward_server_endpoint,
    reward_server_service,
    reward_token_secret,
    stage_config,
    stage_job,
)
from rlhf_operator.config import OperatorConfig
from rlhf_operator.fit_check import fit_problem
from rlhf_operator.naming import (
    CLEANUP_FINALIZER,
    LABEL_STAGE,
    child_name,
    cleanup_job_name,
    config_map_name,
    token_secret_name,
)
from rlhf_operator.results import failure_message, stage_result

TERMINAL = {StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED}
DONE = {StageState.SUCCEEDED, StageState.SKIPPED}
# Which status metric or artifact each stage's result fills, so an old value is not kept by mistake.
RESULT_ARTIFACT = {
    StageName.PRECOMPUTE: "responses",
    StageName.RANKING: "rankings",
    StageName.REWARD_MODEL: "rewardModel",
    StageName.POLICY: "policy",
}


@dataclass(frozen=True)
class Observed:
    """The children of one RLHFJob as the operator's watches see them."""

    jobs: dict[str, Manifest] = field(default_factory=dict)
    deployments: dict[str, Manifest] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    config_maps: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    pods: tuple[Manifest, ...] = ()
    # None: not checked yet; the caller checks and reconciles again when the plan asks for it.
    missing: tuple[str, ...] | None = None
    progress: dict[str, Any] | None = None

    def pods_of(self, stage: StageName) -> list[Manifest]:
        return [
            p for p in self.pods if p.get("metadata", {}).get("labels", {}).get(LABEL_STAGE) == stage.value
        ]


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    create: list[Manifest] = field(default_factory=list)
    patch: list[tuple[str, str, Manifest]] = field(default_factory=list)  # (kind, name, merge patch)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: Manifest = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    check_dependencies: bool = False


def skipped(job: RLHFJob, stage: StageName) -> bool:
    dataset = job.spec.dataset
    if stage is StageName.PRECOMPUTE:
        return dataset.responses is not None or dataset.rankings is not None
    if stage is StageName.RANKING:
        return dataset.rankings is not None
    return False


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_finished(child: Manifest) -> tuple[str, Manifest] | None:
    for condition in (child.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition
    return None


def _attempts(child: Manifest) -> int:
    status = child.get("status") or {}
    return int(status.get("failed") or 0) + int(status.get("succeeded") or 0) + int(status.get("active") or 0)


def dependencies(job: RLHFJob, config: OperatorConfig) -> list[tuple[str, str]]:
    """(kind, name) of the objects the spec names that must exist before pods can start."""
    spec = job.spec
    needed: list[tuple[str, str]] = []
    if spec.storage.volume is not None:
        needed.append(("PersistentVolumeClaim", spec.storage.volume.claim_name))
    if spec.storage.credentials is not None and spec.storage.credentials.secret_ref is not None:
        needed.append(("Secret", spec.storage.credentials.secret_ref.name))
    accounts = {
        s.pod.service_account_name
        for s in (spec.stages.precompute, spec.stages.ranking, spec.stages.reward_model, spec.stages.policy,
                  spec.stages.evaluation)
        if s.pod.service_account_name
    }  # fmt: skip
    if config.stage_service_account:
        accounts.add(config.stage_service_account)
    needed.extend(("ServiceAccount", name) for name in sorted(accounts))
    return needed


class _Reconciler:
    def __init__(
        self, job: RLHFJob, status: Manifest, observed: Observed, config: OperatorConfig, now: datetime
    ) -> None:
        meta = job.metadata
        assert meta.name and meta.namespace and meta.uid, "a stored RLHFJob has a name, namespace and uid"
        self.job = job
        self.spec = job.spec
        self.observed = observed
        self.config = config
        self.now = _iso(now)
        self.identity = JobIdentity(meta.namespace, meta.name, meta.uid)
        self.root = artifacts.job_root(job.spec.storage, meta.namespace, meta.name, meta.uid)
        self.old = status
        self.previous = {s["name"]: s for s in self.old.get("stages", [])}
        self.plan = Plan()
        self.metrics: dict[str, Any] = dict(self.old.get("metrics", {}))
        self.artifacts: dict[str, str] = dict(self.old.get("artifacts", {}))
        self.wants_create = False

    # ------------------------------------------------------------------------------ stages
    def run(self) -> Plan:
        records = []
        blocked = False  # an earlier stage is not done
        failed: tuple[str, str] | None = None
        for stage in PIPELINE_STAGES:
            record = dict(self.previous.get(stage.value, {"name": stage.value}))
            record.setdefault("children", [])
            if skipped(self.job, stage):
                record.update(state=StageState.SKIPPED.value, message="Its output is given in spec.dataset.")
            elif record.get("state") in (StageState.SUCCEEDED.value, StageState.FAILED.value):
                pass
            elif blocked:
                record.update(state=StageState.PENDING.value)
            else:
                self._advance(stage, record)
            state = StageState(record["state"])
            if state is StageState.FAILED and failed is None:
                failed = (stage.value, record.get("message", ""))
            if state not in DONE:
                blocked = True
            records.append(record)
        self._reward_server_lifecycle(records)
        self._status(records, failed)
        self._events(records)
        return self.plan

    def _advance(self, stage: StageName, record: Manifest) -> None:
        name = child_name(self.identity.name, stage)
        child = self.observed.jobs.get(name)
        record["children"] = self._children_of(stage)
        if child is None:
            self._start(stage, record)
            return
        record.setdefault("startTime", (child.get("status") or {}).get("startTime") or self.now)
        record["attempts"] = max(_attempts(child), record.get("attempts", 0))
        finished = _job_finished(child)
        pods = self.observed.pods_of(stage)
        if finished is None:
            self._keep_suspension(child, name)
            suspended = bool((child.get("spec") or {}).get("suspend"))
            record.update(state=StageState.RUNNING.value, message="Suspended." if suspended else "Running.")
            if stage is StageName.POLICY and self.observed.progress:
                self._take_progress(self.observed.progress)
            return
        kind, condition = finished
        record["completionTime"] = (child.get("status") or {}).get("completionTime") or condition.get(
            "lastTransitionTime", self.now
        )
        if kind == "Complete":
            result = stage_result(pods)
            self.metrics.update(result.metrics)
            self.artifacts.update(result.artifacts)
            if stage in RESULT_ARTIFACT and RESULT_ARTIFACT[stage] not in self.artifacts:
                self.artifacts[RESULT_ARTIFACT[stage]] = self._default_artifact(stage)
            record.update(state=StageState.SUCCEEDED.value, message=result.message or "Succeeded.")
        else:
            detail = failure_message(pods)
            reason = condition.get("reason") or "Failed"
            text = condition.get("message") or "the stage's Job failed"
            record.update(
                state=StageState.FAILED.value,
                message=f"{reason}: {text.rstrip('.')}." + (f" Last pod: {detail}" if detail else ""),
            )

    def _start(self, stage: StageName, record: Manifest) -> None:
        record.update(state=StageState.RUNNING.value)
        if self.spec.suspend:
            record["message"] = "Suspended before it started."
            return
        if self.observed.missing is None:
            self.plan.check_dependencies = True
            record["message"] = "Starting."
            return
        if self.observed.missing:
            record.update(
                state=StageState.PENDING.value, message="Waiting for " + "; ".join(self.observed.missing)
            )
            return
        problem = fit_problem(self.spec, self.config)
        if problem:  # before any Job of the job starts: nothing runs that the policy cannot finish
            record.update(state=StageState.FAILED.value, message=f"DoesNotFit: {problem}")
            return
        endpoint = None
        if stage is StageName.POLICY and self.spec.stages.policy.reward_placement == "remote":
            endpoint = reward_server_endpoint(self.identity, self.spec)
            if not self._reward_server_ready():
                record["message"] = "Waiting for the reward server to be ready."
                return
        self._ensure_config(stage, endpoint)
        if needs_rendezvous(self.spec, stage):
            self._ensure_service(policy_headless_service(self.identity, stage))
        self.plan.create.append(
            stage_job(self.identity, self.spec, stage, self.config, suspend=bool(self.spec.queue_name))
        )
        record.setdefault("startTime", self.now)
        record["children"] = self._children_of(stage)
        # What the record will say once the new Job is seen, so seeing it costs no status write.
        record.update(message="Running.", attempts=record.get("attempts", 0))

    def _children_of(self, stage: StageName) -> list[str]:
        names = [child_name(self.identity.name, stage)]
        if stage is StageName.POLICY and self.spec.stages.policy.reward_placement == "remote":
            names.append(child_name(self.identity.name, StageName.REWARD_SERVER))
        return names

    def _default_artifact(self, stage: StageName) -> str:
        return {
            StageName.PRECOMPUTE: artifacts.precompute_manifest(self.root),
            StageName.RANKING: artifacts.ranking_pairs(self.root),
            StageName.REWARD_MODEL: artifacts.reward_model_dir(self.root),
            StageName.POLICY: artifacts.policy_model_dir(self.root),
        }[stage]

    def _ensure_config(self, stage: StageName, endpoint: str | None = None) -> None:
        if config_map_name(self.identity.name, stage) not in self.observed.config_maps:
            config = stage_config(self.identity, self.spec, stage, self.root, endpoint)
            self.plan.create.append(config_map(self.identity, stage, config))

    def _ensure_service(self, service: Manifest) -> None:
        if service["metadata"]["name"] not in self.observed.services:
            self.plan.create.append(service)

    def _keep_suspension(self, child: Manifest, name: str) -> None:
        current = bool((child.get("spec") or {}).get("suspend"))
        if self.spec.suspend and not current:
            self.plan.patch.append(("Job", name, {"spec": {"suspend": True}}))
        elif not self.spec.suspend and current and not self.spec.queue_name:
            # With a queue, Kueue decides when a suspended Job runs.
            self.plan.patch.append(("Job", name, {"spec": {"suspend": False}}))

    def _take_progress(self, progress: Manifest) -> None:
        mapping = {
            "step": "policyStep",
            "totalSteps": "policyTotalSteps",
            "meanReward": "meanReward",
            "kl": "kl",
        }
        for key, metric in mapping.items():
            value = progress.get(key)
            if isinstance(value, int | float):
                self.metrics[metric] = value

    # ------------------------------------------------------------------------------ reward server
    def _reward_server_ready(self) -> bool:
        """Creates what the reward server needs and says whether its pods are ready."""
        name = child_name(self.identity.name, StageName.REWARD_SERVER)
        replicas = self.spec.stages.reward_model.serving.replicas
        if token_secret_name(self.identity.name) not in self.observed.secrets:
            self.plan.create.append(reward_token_secret(self.identity, _fresh_token()))
        self._ensure_config(StageName.REWARD_SERVER)
        deployment = self.observed.deployments.get(name)
        if deployment is None:
            self.plan.create.append(
                reward_server_deployment(self.identity, self.spec, self.config, replicas=replicas)
            )
        self._ensure_service(reward_server_service(self.identity, self.spec))
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        return deployment is not None and ready >= replicas

    def _reward_server_lifecycle(self, records: list[Manifest]) -> None:
        """The server lives while the policy trains: suspended with the job, removed after the policy."""
        name = child_name(self.identity.name, StageName.REWARD_SERVER)
        deployment = self.observed.deployments.get(name)
        if deployment is None:
            return
        policy = next(r for r in records if r["name"] == StageName.POLICY.value)
        if policy["state"] in (StageState.SUCCEEDED.value, StageState.FAILED.value) or any(
            r["state"] == StageState.FAILED.value for r in records
        ):
            self.plan.delete.append(("Deployment", name))
            if name in self.observed.services:
                self.plan.delete.append(("Service", name))
            return
        replicas = 0 if self.spec.suspend else self.spec.stages.reward_model.serving.replicas
        if (deployment.get("spec") or {}).get("replicas") != replicas:
            self.plan.patch.append(("Deployment", name, {"spec": {"replicas": replicas}}))

    # ------------------------------------------------------------------------------ status
    def _status(self, records: list[Manifest], failed: tuple[str, str] | None) -> None:
        states = [StageState(r["state"]) for r in records]
        current = next(
            (r["name"] for r in records if StageState(r["state"]) not in DONE), records[-1]["name"]
        )
        waiting = bool(self.observed.missing)
        if failed is not None:
            phase, message = Phase.FAILED, f"Stage {failed[0]} failed: {failed[1]}"
        elif all(s in DONE for s in states):
            phase, message = Phase.SUCCEEDED, self._success_message()
        elif self.spec.suspend:
            phase, message = (
                Phase.SUSPENDED,
                f"Suspended during stage {current}; set spec.suspend to false to resume.",
            )
        elif waiting:
            phase, message = (
                Phase.PENDING,
                f"Waiting before stage {current}: {'; '.join(self.observed.missing or ())}.",
            )
        else:
            phase = Phase.RUNNING
            message = f"Stage {current} is running." if self._started(records) else "Starting."
        status: Manifest = {
            "observedGeneration": self.job.metadata.generation,
            "phase": phase.value,
            "currentStage": current,
            "message": message,
            "stages": records,
        }
        starts = [r["startTime"] for r in records if r.get("startTime")]
        if starts:
            status["startTime"] = self.old.get("startTime") or min(starts)
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            status["completionTime"] = self.old.get("completionTime") or self.now
        if self.metrics:
            status["metrics"] = self.metrics
        if self.artifacts:
            status["artifacts"] = self.artifacts
        status["conditions"] = self._conditions(phase, message, failed, waiting)
        self.plan.status = status

    def _started(self, records: list[Manifest]) -> bool:
        return any(r.get("startTime") for r in records)

    def _success_message(self) -> str:
        win_rate = self.metrics.get("winRate")
        if isinstance(win_rate, int | float):
            return f"Every stage succeeded; the policy wins {win_rate:.0%} of evaluation prompts over the base model."
        return "Every stage succeeded."

    def _conditions(
        self, phase: Phase, message: str, failed: tuple[str, str] | None, waiting: bool
    ) -> list[Manifest]:
        old = {c["type"]: c for c in self.old.get("conditions", [])}
        wanted: list[tuple[ConditionType, bool, str, str]] = [
            (ConditionType.RUNNING, phase is Phase.RUNNING,
             "StageRunning" if phase is Phase.RUNNING else phase.value, message),
            (ConditionType.SUSPENDED, phase is Phase.SUSPENDED,
             "SuspendedBySpec" if phase is Phase.SUSPENDED else "NotSuspended", message),
            (ConditionType.SUCCEEDED, phase is Phase.SUCCEEDED,
             "AllStagesSucceeded" if phase is Phase.SUCCEEDED else "NotFinished", message),
            (ConditionType.FAILED, phase is Phase.FAILED, "StageFailed" if failed else "NoStageFailed", message),
            (ConditionType.WAITING, waiting, "DependencyMissing" if waiting else "DependenciesPresent", message),
        ]  # fmt: skip
        conditions = []
        for kind, true, reason, text in wanted:
            status = "True" if true else "False"
            previous = old.get(kind.value)
            changed = previous is None or previous.get("status") != status
            conditions.append(
                {
                    "type": kind.value,
                    "status": status,
                    "observedGeneration": self.job.metadata.generation,
                    "lastTransitionTime": self.now if changed else previous["lastTransitionTime"],  # type: ignore[index]
                    "reason": reason,
                    "message": text if true else "",
                }
            )
        return conditions

    def _events(self, records: list[Manifest]) -> None:
        for record in records:
            before = self.previous.get(record["name"], {}).get("state")
            after = record["state"]
            if before == after:
                continue
            if after == StageState.RUNNING.value and record.get("startTime"):
                self.plan.events.append(Event("Normal", "StageStarted", f"Stage {record['name']} started."))
            elif after == StageState.SUCCEEDED.value:
                self.plan.events.append(
                    Event("Normal", "StageSucceeded", f"Stage {record['name']} succeeded.")
                )
            elif after == StageState.FAILED.value:
                self.plan.events.append(
                    Event(
                        "Warning",
                        "StageFailed",
                        f"Stage {record['name']} failed: {record.get('message', '')}",
                    )
                )
        before_phase, after_phase = self.old.get("phase"), self.plan.status["phase"]
        if before_phase != after_phase and after_phase in (Phase.SUCCEEDED.value, Phase.FAILED.value):
            kind = "Normal" if after_phase == Phase.SUCCEEDED.value else "Warning"
            self.plan.events.append(Event(kind, f"Job{after_phase}", self.plan.status["message"]))
        if before_phase != after_phase and Phase.SUSPENDED.value in (before_phase, after_phase):
            reason = "Suspended" if after_phase == Phase.SUSPENDED.value else "Resumed"
            self.plan.events.append(Event("Normal", reason, self.plan.status["message"]))


def _fresh_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def reconcile(
    job: RLHFJob, status: Manifest, observed: Observed, config: OperatorConfig, now: datetime
) -> Plan:
    """What should exist for `job` (its spec) given its stored `status` and `observed` children."""
    return _Reconciler(job, status, observed, config, now).run()


def status_changed(old: Manifest | None, new: Manifest) -> bool:
    return (old or {}) != new


@dataclass
class RetentionPlan:
    create: list[Manifest] = field(default_factory=list)
    finalizers: list[str] | None = None  # the RLHFJob's new finalizers, when they change
    events: list[Event] = field(default_factory=list)


def retention(
    job: RLHFJob, finalizers: list[str], deleting: bool, observed: Observed, config: OperatorConfig
) -> RetentionPlan:
    """Artifact retention: with `Delete`, a finalizer holds the RLHFJob until a Job removed its artifacts."""
    meta = job.metadata
    assert meta.name and meta.namespace and meta.uid
    plan = RetentionPlan()
    wants_cleanup = job.spec.artifact_retention == ArtifactRetention.DELETE
    held = CLEANUP_FINALIZER in finalizers
    if not deleting:
        if wants_cleanup and not held:
            plan.finalizers = [*finalizers, CLEANUP_FINALIZER]
        return plan
    if not held:
        return plan
    release = [f for f in finalizers if f != CLEANUP_FINALIZER]
    if not wants_cleanup:
        plan.finalizers = release
        return plan
    root = artifacts.job_root(job.spec.storage, meta.namespace, meta.name, meta.uid)
    cleanup = observed.jobs.get(cleanup_job_name(meta.name))
    if cleanup is None:
        plan.create.append(
            cleanup_job(JobIdentity(meta.namespace, meta.name, meta.uid), job.spec, config, root)
        )
        return plan
    finished = _job_finished(cleanup)
    if finished is None:
        return plan
    plan.finalizers = release
    if finished[0] == "Complete":
        plan.events.append(Event("Normal", "ArtifactsDeleted", f"Deleted the artifacts under {root}."))
    else:
        detail = failure_message(observed.pods_of(StageName.EVALUATION)) or finished[1].get("message", "")
        plan.events.append(
            Event(
                "Warning", "ArtifactCleanupFailed", f"Could not delete the artifacts under {root}: {detail}"
            )
        )
    return plan
