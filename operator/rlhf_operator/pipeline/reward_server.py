"""The reward server's lifecycle: it lives while the policy trains (remote reward placement),
scales to zero while the job is suspended, and goes once the policy or the job is finished."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import StageName, StageState, StageStatus
from rlhf_operator.children import JobIdentity
from rlhf_operator.naming import child_name, token_secret_name
from rlhf_operator.pipeline.context import PlanningPass
from rlhf_operator.pipeline.ensure import ensure_config, ensure_service
from rlhf_operator.plan import Observed
from rlhf_operator.reward_server_manifests import (
    reward_server_deployment,
    reward_server_disruption_budget,
    reward_server_endpoint,
    reward_server_service,
    reward_token_secret,
)

FINISHED = {StageState.SUCCEEDED, StageState.FAILED}


def reward_server_endpoint_if_ready(ctx: PlanningPass) -> str | None:
    """Plans what the reward server needs; its endpoint once its pods are ready, else None."""
    name = child_name(ctx.identity.name, StageName.REWARD_SERVER)
    replicas = ctx.spec.stages.reward_model.serving.replicas
    if token_secret_name(ctx.identity.name) not in ctx.observed.secrets:
        ctx.plan.create.append(reward_token_secret(ctx.identity, ctx.new_token()))
    ensure_config(ctx, StageName.REWARD_SERVER)
    deployment = ctx.observed.deployments.get(name)
    if deployment is None:
        ctx.plan.create.append(
            reward_server_deployment(ctx.identity, ctx.spec, ctx.config, replicas=replicas)
        )
    if name not in ctx.observed.disruption_budgets:
        ctx.plan.create.append(reward_server_disruption_budget(ctx.identity))
    ensure_service(ctx, reward_server_service(ctx.identity, ctx.spec))
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    if deployment is None or ready < replicas:
        return None
    return reward_server_endpoint(ctx.identity, ctx.spec)


def teardown(identity: JobIdentity, observed: Observed) -> list[tuple[str, str]]:
    """(kind, name) of the reward server's objects that still exist."""
    name = child_name(identity.name, StageName.REWARD_SERVER)
    gone: list[tuple[str, str]] = []
    if name in observed.deployments:
        gone.append(("Deployment", name))
    if name in observed.services:
        gone.append(("Service", name))
    if name in observed.disruption_budgets:
        gone.append(("PodDisruptionBudget", name))
    return gone


def reward_server_lifecycle(ctx: PlanningPass, records: list[StageStatus]) -> None:
    name = child_name(ctx.identity.name, StageName.REWARD_SERVER)
    deployment = ctx.observed.deployments.get(name)
    if deployment is None:
        return
    policy = next(r for r in records if r.name is StageName.POLICY)
    if policy.state in FINISHED or any(r.state is StageState.FAILED for r in records):
        ctx.plan.delete.extend(teardown(ctx.identity, ctx.observed))
        return
    replicas = 0 if ctx.spec.suspend else ctx.spec.stages.reward_model.serving.replicas
    if (deployment.get("spec") or {}).get("replicas") != replicas:
        ctx.plan.patch.append(("Deployment", name, {"spec": {"replicas": replicas}}))
