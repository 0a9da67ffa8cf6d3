"""The job's NetworkPolicy (`rlhf_operator.network`): in place before its first pod."""

from __future__ import annotations

from rlhf_operator.naming import network_policy_name
from rlhf_operator.network import network_policy
from rlhf_operator.pipeline.context import PlanningPass
from rlhf_operator.pipeline.progression import job_finished


def ensure_network_policy(ctx: PlanningPass) -> None:
    """Created first in a plan that makes pods, and again if someone deletes it while pods may run."""
    if (
        not ctx.config.network_policy
        or network_policy_name(ctx.identity.name) in ctx.observed.network_policies
    ):
        return
    makes_pods = any(m["kind"] in ("Job", "Deployment") for m in ctx.plan.create)
    running = any(job_finished(j) is None for j in ctx.observed.jobs.values())
    if makes_pods or running or ctx.observed.deployments:
        ctx.plan.create.insert(0, network_policy(ctx.identity, ctx.config))
