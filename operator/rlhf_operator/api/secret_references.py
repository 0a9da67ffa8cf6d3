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

from rlhf_operator.api.v1alpha1 import RankingMethod, RewardPlacement, RLHFJobSpec

#: The label (value "true") that lets RLHFJobs of the Secret's namespace name the Secret. Only someone
#: who may update the Secret (and so read it) can set it.
SECRET_OPT_IN_LABEL = "rlhf-operator.dev/usable-by-rlhfjobs"


@dataclass(frozen=True)
class SecretReference:
    """One field of the spec that names a Secret of the RLHFJob's namespace."""

    #: The field as users write it, for messages and docs.
    path: str
    #: The Secrets named there that the job's pods will use (e.g. the judge's key only when an
    #: endpoint judge ranks): what the operator checks before a stage starts.
    names: Callable[[RLHFJobSpec], tuple[str, ...]]
    #: Every name written there, as a CEL `list(string)` over the admitted `object`.
    cel: str


def _storage_credentials(spec: RLHFJobSpec) -> tuple[str, ...]:
    credentials = spec.storage.credentials
    return (credentials.secret_ref.name,) if credentials and credentials.secret_ref else ()


def _judge_api_key(spec: RLHFJobSpec) -> tuple[str, ...]:
    ranking = spec.stages.ranking
    judge = ranking.ai_judge
    if ranking.method is not RankingMethod.AI_JUDGE or judge is None or judge.endpoint is None:
        return ()
    if spec.dataset.rankings is not None or judge.endpoint.api_key_secret is None:
        return ()  # ranking is skipped, or the endpoint is open
    return (judge.endpoint.api_key_secret.name,)


def _reward_server_tls(spec: RLHFJobSpec) -> tuple[str, ...]:
    serving = spec.stages.reward_model.serving
    remote = spec.stages.policy.reward_placement is RewardPlacement.REMOTE
    return (serving.tls.secret_name,) if remote and serving.tls is not None else ()


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
)


def secret_names(spec: RLHFJobSpec) -> list[tuple[str, str]]:
    """(path, name) of every Secret the job's pods will use, in the list's order."""
    return [(ref.path, name) for ref in SECRET_REFERENCES for name in ref.names(spec)]
