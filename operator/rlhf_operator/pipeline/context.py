"""One planning pass over one RLHFJob: what every part of the pipeline reads and adds to."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rlhf_operator.api import artifacts
from rlhf_operator.api.v1alpha1 import Artifacts, Metrics, RLHFJob, RLHFJobSpec, RLHFJobStatus, StageStatus
from rlhf_operator.children import JobIdentity, Manifest
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline.fit import FitReport, fit_report
from rlhf_operator.plan import Observed, Plan

log = logging.getLogger(__name__)
#: Makes the reward server's bearer token; injected so that planning stays a pure function.
TokenSource = Callable[[], str]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stored_status(status: Manifest) -> RLHFJobStatus:
    """The stored status as the model; the API server's schema keeps it valid, but an object
    stored by an older CRD may not be: planning then starts afresh rather than failing forever."""
    try:
        return RLHFJobStatus.model_validate(status)
    except ValidationError as err:
        log.warning("the stored status does not validate, ignoring it: %s", err)
        return RLHFJobStatus()


M = TypeVar("M", bound=BaseModel)


def updated(model: M, new: M) -> M:
    """`model` with the fields `new` sets replacing its own."""
    return type(model).model_validate(
        {**model.model_dump(exclude_none=True), **new.model_dump(exclude_none=True)}
    )


@dataclass
class PlanningPass:
    job: RLHFJob
    old: RLHFJobStatus
    observed: Observed
    config: OperatorConfig
    now: datetime
    new_token: TokenSource
    plan: Plan = field(default_factory=Plan)
    metrics: Metrics = field(default_factory=Metrics)
    artifacts: Artifacts = field(default_factory=Artifacts)

    def __post_init__(self) -> None:
        meta = self.job.metadata
        assert meta.name and meta.namespace and meta.uid, "a stored RLHFJob has a name, namespace and uid"
        self.identity = JobIdentity(meta.namespace, meta.name, meta.uid)
        self.root = artifacts.job_root(self.job.spec.storage, meta.namespace, meta.name, meta.uid)
        # Status times have second precision; so does everything the pass writes.
        self.now = self.now.replace(microsecond=0)
        # Copies: the stored status stays as it was, to tell whether the new one differs.
        self.metrics = (self.old.metrics or Metrics()).model_copy()
        self.artifacts = (self.old.artifacts or Artifacts()).model_copy()
        self.previous: dict[str, StageStatus] = {s.name.value: s for s in self.old.stages}

    @property
    def spec(self) -> RLHFJobSpec:
        return self.job.spec

    @functools.cached_property
    def fit(self) -> FitReport:
        """The training stages' memory estimate against their capacity (once per pass)."""
        return fit_report(self.spec, self.config, self.observed.model_configs)

    @property
    def generation(self) -> int | None:
        return self.job.metadata.generation


def dump(model: BaseModel) -> dict[str, Any]:
    """camelCase JSON-ready dict without unset fields: how status is written."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
