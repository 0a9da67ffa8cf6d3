"""What the pure core reads (`Observed`) and what it decides (`Plan`, `RetentionPlan`, `Event`).

Kept apart from the pipeline so the store (which builds `Observed`) and the Kubernetes access
module (which posts `Event`s) do not depend on the state machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rlhf_operator.api.stage_io import ProgressRecord
from rlhf_operator.naming import LABEL_STAGE
from rlhf_operator.stages import StageKey

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """The children of one RLHFJob as the operator's watches see them."""

    jobs: dict[str, Manifest] = field(default_factory=dict)
    deployments: dict[str, Manifest] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    config_maps: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    network_policies: frozenset[str] = frozenset()
    disruption_budgets: frozenset[str] = frozenset()
    pods: tuple[Manifest, ...] = ()
    # None: not checked yet; the caller checks and reconciles again when the plan asks for it.
    missing: tuple[str, ...] | None = None
    #: Secrets the spec names that the operator may not hand to its pods (`secret_policy`), as sentences.
    refused: tuple[str, ...] = ()
    progress: ProgressRecord | None = None
    #: Every progress record in the log tail read, oldest first (the guardrails replay them).
    progress_history: tuple[ProgressRecord, ...] = ()
    #: What the operator found at the model sources (config.json), for the memory estimate.
    model_configs: Mapping[str, Any] = field(default_factory=dict)

    def pods_of(self, stage: StageKey) -> list[Manifest]:
        return [
            p for p in self.pods if p.get("metadata", {}).get("labels", {}).get(LABEL_STAGE) == str(stage)
        ]

    def with_model_configs(self, found: Mapping[str, Any]) -> Observed:
        return replace(self, model_configs=found)

    def with_missing(self, missing: tuple[str, ...], refused: tuple[str, ...] = ()) -> Observed:
        return replace(self, missing=missing, refused=refused)

    @property
    def blockers(self) -> tuple[str, ...]:
        """Why the next stage may not start: what is missing, then what is refused."""
        return (*(self.missing or ()), *self.refused)

    def with_progress(
        self, progress: ProgressRecord | None, history: tuple[ProgressRecord, ...] = ()
    ) -> Observed:
        return replace(
            self, progress=progress, progress_history=history or (() if progress is None else (progress,))
        )


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


class RequestRefusedError(Exception):
    """The API server refused a request for a reason that retrying will not change (a 4xx other
    than conflict, not-found and throttling): e.g. a name or a pod field it finds invalid."""

    def __init__(self, verb: str, kind: str, name: str, code: int, reason: str) -> None:
        super().__init__(f"{verb} {kind} {name}: {code} {reason}")
        self.verb, self.kind, self.name, self.code, self.reason = verb, kind, name, code, reason

    def sentence(self) -> str:
        return f"The API server refused to {self.verb} {self.kind} {self.name} ({self.code}): {self.reason}"


@dataclass
class Plan:
    create: list[Manifest] = field(default_factory=list)
    patch: list[tuple[str, str, Manifest]] = field(default_factory=list)  # (kind, name, merge patch)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    #: The new status (camelCase, as written), and whether it differs from the stored one.
    status: Manifest = field(default_factory=dict)
    status_changed: bool = False
    events: list[Event] = field(default_factory=list)
    check_dependencies: bool = False


@dataclass
class RetentionPlan:
    create: list[Manifest] = field(default_factory=list)
    finalizers: list[str] | None = None  # the RLHFJob's new finalizers, when they change
    events: list[Event] = field(default_factory=list)
