"""The objects a spec names that must exist before its pods can start, and the Secrets among them
that the operator may not hand to its pods."""

from __future__ import annotations

from collections.abc import Callable

from rlhf_operator.api.secret_references import SECRET_OPT_IN_LABEL, required_secret_names, secret_names
from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.config import OperatorConfig
from rlhf_operator.stages import STAGES, pod_settings

#: A Secret's labels, or None when it does not exist.
SecretLabels = Callable[[str], dict[str, str] | None]


def dependencies(job: RLHFJob, config: OperatorConfig) -> list[tuple[str, str]]:
    """(kind, name) of the claim, the Secrets the stages that run need (`api/secret_references.py`;
    not those marked optional) and the service accounts the pods use."""
    spec = job.spec
    needed: list[tuple[str, str]] = []
    if spec.storage.volume is not None:
        needed.append(("PersistentVolumeClaim", spec.storage.volume.claim_name))
    needed.extend(("Secret", name) for name in required_secret_names(spec))
    accounts = {name for stage in STAGES if (name := pod_settings(spec, stage).service_account_name)}
    if config.stage_service_account:
        accounts.add(config.stage_service_account)
    needed.extend(("ServiceAccount", name) for name in sorted(accounts))
    return needed


def refused_secrets(job: RLHFJob, config: OperatorConfig, labels_of: SecretLabels) -> tuple[str, ...]:
    """A sentence for each Secret the spec names that has not opted in to RLHFJobs (the label) and
    is not in the operator's allowed list. A Secret that does not exist is `dependencies`' concern."""
    if not config.secret_opt_in:
        return ()
    namespace = job.metadata.namespace
    refused = []
    for path, name in secret_names(job.spec):
        if name in config.allowed_secrets:
            continue
        labels = labels_of(name)
        if labels is None or labels.get(SECRET_OPT_IN_LABEL) == "true":
            continue
        refused.append(
            f"Secret {name} ({path}) is not opted in for RLHFJobs: if RLHFJobs in namespace {namespace} "
            f"may read it, label it (kubectl label secret {name} -n {namespace} {SECRET_OPT_IN_LABEL}=true) "
            "or have the operator's admin list it in jobPolicy.secrets.allowedNames"
        )
    return tuple(refused)
