"""Every Secret an RLHFJob spec names, with its path in the spec: one list for the operator's check
that they exist before a stage starts (pipeline/dependencies.py) and for any policy on which
Secrets a job may name."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_operator.api.v1alpha1.enums import RankingMethod, StageName
from rlhf_operator.api.v1alpha1.pods import PodSettings
from rlhf_operator.api.v1alpha1.spec import RLHFJobSpec

#: The sections of `spec.stages` (wire name, Python name) and the stage whose pods each one sets.
STAGE_SECTIONS = (
    ("precompute", "precompute", StageName.PRECOMPUTE),
    ("ranking", "ranking", StageName.RANKING),
    ("rewardModel", "reward_model", StageName.REWARD_MODEL),
    ("policy", "policy", StageName.POLICY),
    ("evaluation", "evaluation", StageName.EVALUATION),
)


@dataclass(frozen=True)
class SecretUse:
    path: str  # e.g. spec.stages.policy.pod.env[2].valueFrom.secretKeyRef
    name: str
    #: The stage whose pods need it; None: every stage's.
    stage: StageName | None = None
    #: The pod starts without it (`optional: true`).
    optional: bool = False


def secret_references(spec: RLHFJobSpec) -> list[SecretUse]:
    uses: list[SecretUse] = []
    credentials = spec.storage.credentials
    if credentials is not None and credentials.secret_ref is not None:
        uses.append(SecretUse("spec.storage.credentials.secretRef", credentials.secret_ref.name))
    if spec.hub is not None and spec.hub.token_secret is not None:
        uses.append(SecretUse("spec.hub.tokenSecret", spec.hub.token_secret.name))
    judge = spec.stages.ranking.ai_judge
    if (
        spec.stages.ranking.method is RankingMethod.AI_JUDGE
        and judge
        and judge.endpoint
        and judge.endpoint.api_key_secret
    ):
        path = "spec.stages.ranking.aiJudge.endpoint.apiKeySecret"
        uses.append(SecretUse(path, judge.endpoint.api_key_secret.name, StageName.RANKING))
    endpoint = spec.stages.reward_model.endpoint
    if endpoint is not None and endpoint.token_secret is not None:
        path = "spec.stages.rewardModel.endpoint.tokenSecret"
        uses += [
            SecretUse(path, endpoint.token_secret.name, s) for s in (StageName.POLICY, StageName.EVALUATION)
        ]
    for section, attribute, stage in STAGE_SECTIONS:
        uses += _pod_secrets(getattr(spec.stages, attribute).pod, f"spec.stages.{section}.pod", stage)
    return uses


def _pod_secrets(pod: PodSettings, base: str, stage: StageName) -> list[SecretUse]:
    uses: list[SecretUse] = []
    for i, env in enumerate(pod.env):
        ref = env.value_from.secret_key_ref if env.value_from else None
        if ref is not None:
            uses.append(
                SecretUse(f"{base}.env[{i}].valueFrom.secretKeyRef", ref.name, stage, bool(ref.optional))
            )
    for i, volume in enumerate(pod.volumes):
        if volume.secret is not None:
            uses.append(
                SecretUse(
                    f"{base}.volumes[{i}].secret",
                    volume.secret.secret_name,
                    stage,
                    bool(volume.secret.optional),
                )
            )
    uses += [
        SecretUse(f"{base}.imagePullSecrets[{i}]", ref.name, stage)
        for i, ref in enumerate(pod.image_pull_secrets)
    ]
    return uses
