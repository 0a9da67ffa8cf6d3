"""Children that are created once and never changed: added to the plan only while absent."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.children import Manifest, config_map, stage_config
from rlhf_operator.naming import config_map_name
from rlhf_operator.pipeline.context import PlanningPass


def ensure_config(ctx: PlanningPass, stage: StageName, endpoint: str | None = None) -> None:
    if config_map_name(ctx.identity.name, stage) not in ctx.observed.config_maps:
        config = stage_config(ctx.identity, ctx.spec, stage, ctx.root, endpoint)
        ctx.plan.create.append(config_map(ctx.identity, stage, config))


def ensure_service(ctx: PlanningPass, service: Manifest) -> None:
    if service["metadata"]["name"] not in ctx.observed.services:
        ctx.plan.create.append(service)
