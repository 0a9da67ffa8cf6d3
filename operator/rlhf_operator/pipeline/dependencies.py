"""The objects a spec names that must exist before its pods can start."""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.api.v1alpha1.secrets import secret_references
from rlhf_operator.config import OperatorConfig
from rlhf_operator.stages import STAGES, pod_settings, skipped


def dependencies(job: RLHFJob, config: OperatorConfig) -> list[tuple[str, str]]:
    """(kind, name) of the claim, the Secrets the stages that run need (`secret_references`; not
    those marked optional) and the service accounts the pods use."""
    spec = job.spec
    needed: list[tuple[str, str]] = []
    if spec.storage.volume is not None:
        needed.append(("PersistentVolumeClaim", spec.storage.volume.claim_name))
    secrets = [
        use.name
        for use in secret_references(spec)
        if not use.optional and (use.stage is None or not skipped(spec, use.stage))
    ]
    needed.extend(("Secret", name) for name in dict.fromkeys(secrets))
    accounts = {name for stage in STAGES if (name := pod_settings(spec, stage).service_account_name)}
    if config.stage_service_account:
        accounts.add(config.stage_service_account)
    needed.extend(("ServiceAccount", name) for name in sorted(accounts))
    return needed
