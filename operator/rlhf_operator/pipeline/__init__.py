"""The pipeline state machine: a pure function from (RLHFJob, observed children, config, now) to a plan.

Level-based: nothing here remembers what happened before except what the RLHFJob's status says,
so create, resume, update, a child's event and the periodic resync all run the same `reconcile`.
One concern per module: stage progression, the reward server's lifecycle, status and conditions,
events, artifact retention, dependencies and which pod holds the progress.
"""

from __future__ import annotations

from datetime import datetime

from rlhf_operator.api.v1alpha1 import Phase, RLHFJob, RLHFJobStatus
from rlhf_operator.children import JobIdentity, Manifest
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline.context import PlanningPass, TokenSource, dump, stored_status
from rlhf_operator.pipeline.dependencies import dependencies, refused_secrets
from rlhf_operator.pipeline.events import memory_fit_events, phase_events, stage_events, waiting_events
from rlhf_operator.pipeline.network import ensure_network_policy
from rlhf_operator.pipeline.progress import progress_pod
from rlhf_operator.pipeline.progression import stage_records
from rlhf_operator.pipeline.retention import retention
from rlhf_operator.pipeline.reward_server import reward_server_lifecycle, teardown
from rlhf_operator.pipeline.status import build_status
from rlhf_operator.plan import Observed, Plan

FINISHED_PHASES = (Phase.SUCCEEDED, Phase.FAILED)

__all__ = [
    "dependencies",
    "finished_plan",
    "progress_pod",
    "reconcile",
    "refused_secrets",
    "retention",
    "stored_status",
]


def reconcile(
    job: RLHFJob,
    status: RLHFJobStatus | Manifest,
    observed: Observed,
    config: OperatorConfig,
    now: datetime,
    *,
    new_token: TokenSource,
) -> Plan:
    """What should exist for `job` (its spec) given its stored `status` and `observed` children."""
    old = status if isinstance(status, RLHFJobStatus) else stored_status(status)
    ctx = PlanningPass(job, old, observed, config, now, new_token)
    records = stage_records(ctx)
    reward_server_lifecycle(ctx, records)
    ensure_network_policy(ctx)
    new = build_status(ctx, records)
    ctx.plan.status = dump(new)
    ctx.plan.status_changed = ctx.plan.status != dump(ctx.old)
    ctx.plan.events.extend(stage_events(ctx.previous, records))
    ctx.plan.events.extend(waiting_events(ctx.old, new))
    ctx.plan.events.extend(phase_events(ctx.old, new))
    ctx.plan.events.extend(memory_fit_events(ctx.old, new))
    return ctx.plan


def finished_plan(job: RLHFJob, old: RLHFJobStatus, observed: Observed) -> Plan | None:
    """For a job that finished at its current generation: only what must go (a reward server
    left behind, e.g. by an operator restart); None while the job still has work."""
    if old.phase not in FINISHED_PHASES or old.observed_generation != job.metadata.generation:
        return None
    meta = job.metadata
    assert meta.name and meta.namespace and meta.uid
    return Plan(delete=teardown(JobIdentity(meta.namespace, meta.name, meta.uid), observed))
