"""The served reward model's children (remote reward placement): a Deployment of the reward server on
the small-GPU node group, its Service, a PodDisruptionBudget, and the bearer token the policy and the
server share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_operator.api.v1alpha1 import (
    RLHFJobSpec,
    StageName,
)
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import (
    KUEUE_QUEUE_LABEL,
    LABEL_INSTANCE,
    LABEL_JOB_UID,
    child_name,
    token_secret_name,
)
from rlhf_operator.pod_template import TOKEN_KEY, Manifest, pod_labels, pod_spec
from rlhf_operator.stages import STAGES, pod_settings

if TYPE_CHECKING:
    from rlhf_operator.children import JobIdentity


def reward_token_secret(job: JobIdentity, token: str) -> Manifest:
    """The bearer token shared by the reward server and the policy pods of one job."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": job.metadata(token_secret_name(job.name), StageName.REWARD_SERVER),
        "type": "Opaque",
        "immutable": True,
        "stringData": {TOKEN_KEY: token},
    }


def reward_server_endpoint(job: JobIdentity, spec: RLHFJobSpec) -> str:
    name = child_name(job.name, StageName.REWARD_SERVER)
    scheme = "https" if spec.stages.reward_model.serving.tls is not None else "http"
    return f"{scheme}://{name}.{job.namespace}.svc:{spec.stages.reward_model.serving.port}"


def reward_server_deployment(
    job: JobIdentity, spec: RLHFJobSpec, config: OperatorConfig, *, replicas: int
) -> Manifest:
    stage = StageName.REWARD_SERVER
    name = child_name(job.name, stage)
    port = spec.stages.reward_model.serving.port
    scheme = "HTTPS" if spec.stages.reward_model.serving.tls is not None else "HTTP"
    pod = pod_spec(
        job,
        spec,
        stage,
        config,
        command=STAGES[stage].workload_command("--port", str(port)),
        restart_policy="Always",
        ports=[{"name": "http", "containerPort": port}],
        readiness_probe={
            "httpGet": {"path": "/readyz", "port": "http", "scheme": scheme},
            "periodSeconds": 5,
        },
    )
    metadata = job.metadata(name, stage)
    template_labels = dict(metadata["labels"])
    if spec.queue_name:
        # On the pods too: Kueue admits each reward-server pod through the queue (its pod/Deployment
        # integration), so their GPUs count against its quota.
        metadata["labels"][KUEUE_QUEUE_LABEL] = template_labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    settings = pod_settings(spec, stage)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": metadata["labels"]["app.kubernetes.io/instance"],
                    "rlhf-operator.dev/job-uid": job.uid,
                }
            },
            "template": {
                "metadata": {
                    "labels": pod_labels(settings, template_labels),
                    "annotations": dict(settings.annotations),
                },
                "spec": pod,
            },
        },
    }


def reward_server_disruption_budget(job: JobIdentity) -> Manifest:
    """Keeps a drain or a consolidation from evicting the last reward server while the policy calls it."""
    stage = StageName.REWARD_SERVER
    metadata = job.metadata(child_name(job.name, stage), stage)
    selector = {LABEL_INSTANCE: metadata["labels"][LABEL_INSTANCE], LABEL_JOB_UID: job.uid}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
    }


def reward_server_service(job: JobIdentity, spec: RLHFJobSpec) -> Manifest:
    stage = StageName.REWARD_SERVER
    name = child_name(job.name, stage)
    metadata = job.metadata(name, stage)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": {
                "app.kubernetes.io/instance": metadata["labels"]["app.kubernetes.io/instance"],
                "rlhf-operator.dev/job-uid": job.uid,
            },
            "ports": [{"name": "http", "port": spec.stages.reward_model.serving.port, "targetPort": "http"}],
        },
    }
