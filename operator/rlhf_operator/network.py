"""The NetworkPolicy of one RLHFJob: its pods talk to each other and to nothing else of the cluster.

Every stage pod carries its RLHFJob's uid label, so one policy selects them all. Ingress: only from
the same job's pods (torchrun's rendezvous, NCCL, the reward server), so no other job, in this or
another namespace, can reach them. Egress: the same job's pods, DNS, and the operator's
`network_egress` rules (the chart's `networkPolicy.egress`, HTTPS anywhere by default: S3, a judge
endpoint). Storage volumes (FSx, EFS) are mounted by the node, outside the pod's network. A pod of
the same namespace that copies the uid label is the same tenant, which the policy does not guard
against. Kubernetes needs a policy engine (a CNI that enforces NetworkPolicy) for any of this.
"""

from __future__ import annotations

from rlhf_operator.children import JobIdentity, Manifest
from rlhf_operator.config import OperatorConfig
from rlhf_operator.naming import (
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    MANAGED_BY,
    network_policy_name,
)

DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def network_policy(job: JobIdentity, config: OperatorConfig) -> Manifest:
    own_pods = {"podSelector": {"matchLabels": {LABEL_JOB_UID: job.uid}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(job.name),
            "namespace": job.namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: MANAGED_BY, LABEL_JOB_UID: job.uid},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": {
            "podSelector": own_pods["podSelector"],
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [own_pods]}],
            "egress": [{"to": [own_pods]}, {"ports": DNS_PORTS}, *config.network_egress],
        },
    }
