"""`pod.affinity`: Kubernetes' node and pod (anti-)affinity, as the pod spec takes it.

The shapes and names are core/v1's own, so a stanza copied from any pod spec works here; every list
and string is bounded so the API server can cost the CRD's rules.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from rlhf_operator.api.base import ApiModel
from rlhf_operator.api.v1alpha1.common import LABEL_VALUE_PATTERN

LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=316)]


class NodeOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"
    GT = "Gt"
    LT = "Lt"


class LabelOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class NodeSelectorRequirement(ApiModel):
    key: Key = Field(description="Node label (or field) key.")
    operator: NodeOperator = Field(description="In, NotIn, Exists, DoesNotExist, Gt or Lt.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64, description="Values to match.")


class NodeSelectorTerm(ApiModel):
    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Requirements on node labels, all must hold."
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Requirements on node fields, all must hold."
    )


class NodeSelector(ApiModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=16, description="Terms of which at least one must hold."
    )


class PreferredSchedulingTerm(ApiModel):
    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1 to 100.")
    preference: NodeSelectorTerm = Field(description="The nodes preferred.")


class NodeAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        None, description="Nodes the pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=16, description="Nodes the pods prefer, by weight."
    )


class LabelSelectorRequirement(ApiModel):
    key: Key = Field(description="Label key.")
    operator: LabelOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64, description="Values to match.")


class LabelSelector(ApiModel):
    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Labels the pods must have."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=16, description="Requirements on labels, all must hold."
    )


class PodAffinityTerm(ApiModel):
    label_selector: LabelSelector | None = Field(None, description="The pods this term is about.")
    namespaces: list[Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=list, max_length=16, description="Their namespaces; empty: the job's."
    )
    topology_key: Key = Field(description="Node label whose value defines 'together', e.g. a zone.")


class WeightedPodAffinityTerm(ApiModel):
    weight: int = Field(ge=1, le=100, description="Weight of this preference, 1 to 100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The preference.")


class PodAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=16, description="Terms that must hold."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=16, description="Terms preferred, by weight."
    )


class Affinity(ApiModel):
    node_affinity: NodeAffinity | None = Field(None, description="Which nodes the pods run on.")
    pod_affinity: PodAffinity | None = Field(None, description="Which pods they run beside.")
    pod_anti_affinity: PodAffinity | None = Field(None, description="Which pods they keep away from.")
