"""The objects a spec names that must exist before its pods can start."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.children import judge_api_key_secret
from rlhf_operator.config import OperatorConfig
from rlhf_operator.stages import STAGES, pod_settings


def dependencies(job: RLHFJob, config: OperatorConfig) -> list[tuple[str, str]]:
    """(kind, name) of the claim, the credentials Secret and the service accounts the pods use."""
    spec = job.spec
    needed: list[tuple[str, str]] = []
    if spec.storage.volume is not None:
        needed.append(("PersistentVolumeClaim", spec.storage.volume.claim_name))
    if spec.storage.credentials is not None and spec.storage.credentials.secret_ref is not None:
        needed.append(("Secret", spec.storage.credentials.secret_ref.name))
    judge_key = judge_api_key_secret(spec)
    if judge_key is not None and spec.dataset.rankings is None:
        needed.append(("Secret", judge_key.name))
    accounts = {name for stage in STAGES if (name := pod_settings(spec, stage).service_account_name)}
    if config.stage_service_account:
        accounts.add(config.stage_service_account)
    needed.extend(("ServiceAccount", name) for name in sorted(accounts))
    return needed
