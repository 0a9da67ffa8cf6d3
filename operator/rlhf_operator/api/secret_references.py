"""Every place in an RLHFJob's spec that names a Secret, in ONE list.

A Secret named in the spec ends up in a stage pod (an env var, `envFrom`, a mounted file) that the
operator creates, so naming a Secret is reading it, whatever `kubectl auth can-i get secret` says
for the author. Three checks read this list, so a new field that names a Secret joins all of them
by adding one `SecretReference` here:

- the operator waits for each Secret to exist (`pipeline/dependencies.py`);
- the operator refuses, at reconcile time, a Secret that does not opt in (the label below) unless
  its name is in the operator's allowed list (`secret_policy.py`): condition Waiting, reason
  SecretNotAllowed, one Warning event;
- the chart's ValidatingAdmissionPolicy refuses, at `kubectl apply`, a name outside the allowed
  list when `jobPolicy.secrets.onlyAllowedNames` is on (`cel`; `make crd` writes the list into the
  chart, `api/admission_fields.py`). An admission policy cannot
  read other objects, so the label is the operator's check, the list the API server's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from rlhf_operator.api.v1alpha1 import RankingMethod, RewardPlacement, RLHFJobSpec
from rlhf_operator.api.v1alpha1.enums import StageName
from rlhf_operator.api.v1alpha1.pods import PodSettings

#: The label (value "true") that lets RLHFJobs of the Secret's namespace name the Secret. Only someone
#: who may update the Secret (and so read it) can set it.
SECRET_OPT_IN_LABEL = "rlhf-operator.dev/usable-by-rlhfjobs"
#: The sections of `spec.stages` (wire name, Python name) and the stage whose pods each one sets.
STAGE_SECTIONS = (
    ("precompute", "precompute", StageName.PRECOMPUTE),
    ("ranking", "ranking", StageName.RANKING),
    ("rewardModel", "reward_model", StageName.REWARD_MODEL),
    ("policy", "policy", StageName.POLICY),
    ("evaluation", "evaluation", StageName.EVALUATION),
)


class SecretName(NamedTuple):
    name: str
    #: The pod starts without it (`optional: true`): it is not waited for, but still opted in.
    optional: bool = False


@dataclass(frozen=True)
class SecretReference:
    """One field of the spec that names a Secret of the RLHFJob's namespace."""

    #: The field as users write it, for messages and docs.
    path: str
    #: The Secrets named there that the job's pods will use (e.g. the judge's key only when an
    #: endpoint judge ranks, a pod setting's only when its stage runs): what the operator checks.
    names: Callable[[RLHFJobSpec], tuple[SecretName, ...]]
    #: Every name written there, as a CEL `list(string)` over the admitted `object`.
    cel: str


def _storage_credentials(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    credentials = spec.storage.credentials
    return (SecretName(credentials.secret_ref.name),) if credentials and credentials.secret_ref else ()


def _judge_api_key(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    ranking = spec.stages.ranking
    judge = ranking.ai_judge
    if ranking.method is not RankingMethod.AI_JUDGE or judge is None or judge.endpoint is None:
        return ()
    if spec.dataset.rankings is not None or judge.endpoint.api_key_secret is None:
        return ()  # ranking is skipped, or the endpoint is open
    return (SecretName(judge.endpoint.api_key_secret.name),)


def _reward_server_tls(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    serving = spec.stages.reward_model.serving
    remote = spec.stages.policy.reward_placement is RewardPlacement.REMOTE
    return (SecretName(serving.tls.secret_name),) if remote and serving.tls is not None else ()


def _hub_token(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    token = spec.hub.token_secret if spec.hub is not None else None
    return (SecretName(token.name),) if token is not None else ()


def _reward_endpoint_token(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    endpoint = spec.stages.reward_model.endpoint
    token = endpoint.token_secret if endpoint is not None else None
    return (SecretName(token.name),) if token is not None else ()


def _running_pods(spec: RLHFJobSpec) -> list[PodSettings]:
    """The pod settings of the stages that will run (a skipped stage's Secrets are not needed)."""
    from rlhf_operator.stages import skipped

    return [getattr(spec.stages, attr).pod for _, attr, stage in STAGE_SECTIONS if not skipped(spec, stage)]


def _env_secrets(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    return tuple(
        SecretName(env.value_from.secret_key_ref.name, bool(env.value_from.secret_key_ref.optional))
        for pod in _running_pods(spec)
        for env in pod.env
        if env.value_from is not None and env.value_from.secret_key_ref is not None
    )


def _volume_secrets(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    return tuple(
        SecretName(volume.secret.secret_name, bool(volume.secret.optional))
        for pod in _running_pods(spec)
        for volume in pod.volumes
        if volume.secret is not None
    )


def _image_pull_secrets(spec: RLHFJobSpec) -> tuple[SecretName, ...]:
    return tuple(SecretName(ref.name) for pod in _running_pods(spec) for ref in pod.image_pull_secrets)


def _per_stage(expression: str) -> str:
    """CEL joining `expression` (over `pod`, one stage's pod settings) over every stage section."""
    parts = []
    for section, _, _ in STAGE_SECTIONS:
        over_pod = expression.replace("pod.", f"object.spec.stages.{section}.pod.")
        parts.append(f"(object.spec.?stages.?{section}.?pod.hasValue() ? {over_pod} : [])")
    return " + ".join(parts)


def _optional_name(path: str) -> str:
    """CEL for a single optional name at `path` (dotted, under object.spec)."""
    chain = ".?".join(path.split("."))
    return f"[object.spec.?{chain}.orValue('')].filter(n, n != '')"


SECRET_REFERENCES: tuple[SecretReference, ...] = (
    SecretReference(
        "spec.storage.credentials.secretRef.name",
        _storage_credentials,
        _optional_name("storage.credentials.secretRef.name"),
    ),
    SecretReference(
        "spec.stages.ranking.aiJudge.endpoint.apiKeySecret.name",
        _judge_api_key,
        _optional_name("stages.ranking.aiJudge.endpoint.apiKeySecret.name"),
    ),
    SecretReference(
        "spec.stages.rewardModel.serving.tls.secretName",
        _reward_server_tls,
        _optional_name("stages.rewardModel.serving.tls.secretName"),
    ),
    SecretReference("spec.hub.tokenSecret.name", _hub_token, _optional_name("hub.tokenSecret.name")),
    SecretReference(
        "spec.stages.rewardModel.endpoint.tokenSecret.name",
        _reward_endpoint_token,
        _optional_name("stages.rewardModel.endpoint.tokenSecret.name"),
    ),
    SecretReference(
        "spec.stages.*.pod.env[].valueFrom.secretKeyRef.name",
        _env_secrets,
        _per_stage(
            "pod.?env.orValue([]).filter(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef))"
            ".map(e, e.valueFrom.secretKeyRef.name)"
        ),
    ),
    SecretReference(
        "spec.stages.*.pod.volumes[].secret.secretName",
        _volume_secrets,
        _per_stage("pod.?volumes.orValue([]).filter(v, has(v.secret)).map(v, v.secret.secretName)"),
    ),
    SecretReference(
        "spec.stages.*.pod.imagePullSecrets[].name",
        _image_pull_secrets,
        _per_stage("pod.?imagePullSecrets.orValue([]).map(r, r.name)"),
    ),
)


def secret_names(spec: RLHFJobSpec) -> list[tuple[str, str]]:
    """(path, name) of every Secret the job's pods will use, in the list's order: each must opt in."""
    return [(ref.path, found.name) for ref in SECRET_REFERENCES for found in ref.names(spec)]


def required_secret_names(spec: RLHFJobSpec) -> list[str]:
    """The Secrets the job's pods cannot start without (not `optional`), each once: waited for."""
    names = (found.name for ref in SECRET_REFERENCES for found in ref.names(spec) if not found.optional)
    return list(dict.fromkeys(names))
