"""The RLHFJob's spec and the rules on its changes."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rlhf_operator.api.base import IMMUTABLE_MESSAGE, ApiModel, CelRule, immutable
from rlhf_operator.api.v1alpha1.common import ShortText
from rlhf_operator.api.v1alpha1.data import BaseModelSpec, DatasetSpec
from rlhf_operator.api.v1alpha1.enums import ArtifactRetention, RankingMethod
from rlhf_operator.api.v1alpha1.hub import HubSpec
from rlhf_operator.api.v1alpha1.stages import Stages
from rlhf_operator.api.v1alpha1.storage import StorageSpec
from rlhf_operator.api.v1alpha1.tracking import TrackingSpec

#: The ranking stage does not run: the pairs are given, or nothing reads them (no reward model is
#: trained here and the policy is not dpo; `stages.py` skips it alike).
NO_RANKING = (
    "has(self.dataset.rankings) || (self.stages.policy.algorithm != 'dpo' && (has(self.stages.policy.rewardRule) "
    "|| has(self.stages.rewardModel.pretrained) || has(self.stages.rewardModel.endpoint)))"
)


def _no_ranking(s: Any) -> bool:
    untrained = (
        s.stages.policy.reward_rule is not None
        or s.stages.reward_model.pretrained is not None
        or s.stages.reward_model.endpoint is not None
    )
    return s.dataset.rankings is not None or (s.stages.policy.algorithm != "dpo" and untrained)


def _ranking_rule(method: RankingMethod, needs: str, cel_needs: str, check: Any) -> CelRule:
    # Ranking settings only matter when the ranking stage runs.
    return CelRule(
        f"{NO_RANKING} || self.stages.ranking.method != '{method}' || {cel_needs}",
        f"`stages.ranking.{needs}` must be set when `stages.ranking.method` is {method}",
        lambda s: _no_ranking(s) or s.stages.ranking.method != method or check(s.stages.ranking),
    )


_STAGE_FIELDS = ("precompute", "ranking", "rewardModel", "policy", "evaluation")


def _mounts_clear_of_storage() -> CelRule:
    # Kubernetes refuses two mounts at one path only when a stage's Job is created; say it at apply.
    clear = " && ".join(
        f"(!has(self.stages.{s}.pod.volumeMounts) || self.stages.{s}.pod.volumeMounts.all(m, "
        "m.mountPath != self.storage.volume.mountPath))"
        for s in _STAGE_FIELDS
    )
    return CelRule(
        f"!has(self.storage.volume) || ({clear})",
        "`pod.volumeMounts[].mountPath` must not be `storage.volume.mountPath`: the storage volume is mounted there",
        lambda spec: (
            spec.storage.volume is None
            or all(
                m.mount_path != spec.storage.volume.mount_path
                for stage in (getattr(spec.stages, name) for name in type(spec.stages).model_fields)
                for m in stage.pod.volume_mounts
            )
        ),
    )


#: One reward per job: a rule, a reward model served elsewhere, or one run here (pretrained or trained).
_ONE_REWARD = (
    CelRule(
        "!has(self.stages.policy.rewardRule) || (!has(self.stages.rewardModel.pretrained) && "
        "!has(self.stages.rewardModel.endpoint))",
        "`stages.policy.rewardRule` must not be used with `stages.rewardModel.pretrained` or `endpoint`: "
        "the policy optimises one reward",
        lambda s: (
            s.stages.policy.reward_rule is None
            or (s.stages.reward_model.pretrained is None and s.stages.reward_model.endpoint is None)
        ),
    ),
    CelRule(
        "!has(self.stages.rewardModel.endpoint) || self.stages.policy.rewardPlacement != 'remote'",
        "`rewardPlacement: remote` must not be used with `stages.rewardModel.endpoint`: the policy calls that "
        "endpoint itself",
        lambda s: s.stages.reward_model.endpoint is None or s.stages.policy.reward_placement != "remote",
    ),
)


class RLHFJobSpec(ApiModel):
    cel_rules = (
        _mounts_clear_of_storage(),
        *_ONE_REWARD,
        _ranking_rule(
            RankingMethod.HUMAN,
            "human.source",
            "(has(self.stages.ranking.human) && has(self.stages.ranking.human.source))",
            lambda r: r.human is not None and r.human.source is not None,
        ),
        _ranking_rule(
            RankingMethod.AI_JUDGE,
            "aiJudge",
            "has(self.stages.ranking.aiJudge)",
            lambda r: r.ai_judge is not None,
        ),
        _ranking_rule(
            RankingMethod.RULE, "rule", "has(self.stages.ranking.rule)", lambda r: r.rule is not None
        ),
    )

    suspend: bool = Field(False, description="Pause the job: running stages are stopped and resumed later.")
    seed: int = Field(
        42,
        ge=0,
        le=2_147_483_647,
        description="Random seed of every stage (splits, sampling, initialisation), for reproducible runs.",
        json_schema_extra=immutable("seed"),
    )
    queue_name: ShortText | None = Field(
        None, description="Kueue LocalQueue the stages are admitted through."
    )
    artifact_retention: ArtifactRetention = Field(
        ArtifactRetention.RETAIN,
        description="Keep (Retain) or remove (Delete) artifacts when the RLHFJob is deleted.",
    )
    base_model: BaseModelSpec = Field(
        description="The model that is fine-tuned.", json_schema_extra=immutable("baseModel")
    )
    dataset: DatasetSpec = Field(
        description="Prompts and optional ready-made data.", json_schema_extra=immutable("dataset")
    )
    storage: StorageSpec = Field(
        description="Where data and artifacts live.", json_schema_extra=immutable("storage")
    )
    stages: Stages = Field(
        default_factory=Stages,
        description="Settings of each pipeline stage.",
        json_schema_extra=immutable("stages"),
    )
    hub: HubSpec | None = Field(
        None,
        description="Where hf://org/name[@revision] sources are fetched from (once per storage, cached there).",
        json_schema_extra=immutable("hub"),
    )
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="Where the training stages' metrics go: TensorBoard event files, MLflow.",
        json_schema_extra=immutable("tracking"),
    )


# Rules on changes, checked by the API server (CEL transition rules) and by `validate_update`.
IMMUTABLE_FIELDS = ("seed", "base_model", "dataset", "storage", "stages", "hub", "tracking")
QUEUE_NAME_MESSAGE = "`queueName` must not change once set; create a new RLHFJob instead"
QUEUE_NAME_RULE = "!has(oldSelf.queueName) || (has(self.queueName) && self.queueName == oldSelf.queueName)"


def validate_update(old: RLHFJobSpec, new: RLHFJobSpec) -> None:
    """Raise ValueError when `new` changes what may not change; only `suspend` is mutable."""
    for name in IMMUTABLE_FIELDS:
        if getattr(old, name) != getattr(new, name):
            alias = RLHFJobSpec.model_fields[name].alias or name
            raise ValueError(IMMUTABLE_MESSAGE.format(field=alias))
    if old.queue_name is not None and new.queue_name != old.queue_name:
        raise ValueError(QUEUE_NAME_MESSAGE)
