"""The running operator refuses a job whose memory estimate cannot fit its GPUs, before any Job.

The operator's GPU table (the chart's `nodeGroups.gpuMemoryGiB`) is filled the way a user fills it:
from the instance types the node groups' nodes carry (`node.kubernetes.io/instance-type`, the label
EKS sets and the local cluster's kwok nodes carry) and those instances' GPU memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.config import OperatorConfig
from rlhf_operator.memory_estimate import INSTANCES
from rlhf_operator.pipeline.fit import fit_refusal
from tests.conftest import ROOT, Kube
from tests.integration.operator_harness import (
    apply,
    children,
    create_pvc,
    operator_of_its_own,
    rlhfjob,
    stage_record,
    status,
)

NODE_GROUP_LABEL = "eks.amazonaws.com/nodegroup"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


def gpu_memory_of_node_groups(cluster: Kube) -> dict[str, float]:
    """GPU GiB per node group, from its nodes' instance-type label."""
    table: dict[str, float] = {}
    for node in cluster.get_json("nodes", "-l", "nvidia.com/gpu.present=true")["items"]:
        labels = node["metadata"]["labels"]
        table[labels[NODE_GROUP_LABEL]] = INSTANCES[labels[INSTANCE_TYPE_LABEL]].gpu_gib
    return table


@pytest.fixture
def fit_checking_operator(crd_installed: Kube, tmp_path: Path) -> Iterator[tuple[str, dict[str, float]]]:
    """An operator of this test's own with the GPU table, on a namespace of its own."""
    table = gpu_memory_of_node_groups(crd_installed)
    log = tmp_path / "operator.log"
    with operator_of_its_own(crd_installed, "t-fit", log, gpu_memory_gib=json.dumps(table)) as (namespace, _):
        yield namespace, table


def test_an_8b_full_fine_tune_on_one_24_gib_gpu_is_refused_before_any_job(
    cluster: Kube, fit_checking_operator: tuple[str, dict[str, float]]
) -> None:
    namespace, table = fit_checking_operator
    # The local cluster's node groups are docs/eks.md's: g5.2xlarge (A10G) and p4d.24xlarge (A100 40 GB).
    assert table == {"reward-gpu": 24, "policy-gpu": 40}
    create_pvc(cluster, namespace)
    job = rlhfjob(
        "too-big",
        namespace,
        spec={
            "baseModel": {"source": "/data/models/Llama-3.1-8B", "dtype": "bfloat16"},
            "stages": {
                # The reward model fits (LoRA as in the EKS example): the refusal is the policy's.
                "rewardModel": {"lora": {"rank": 16}, "activationCheckpointing": True, "microBatchSize": 1},
                # Full fine-tuning under ddp on one g5.2xlarge GPU (24 GiB).
                "policy": {"distributed": {"strategy": "ddp"}, "pod": {"nodeGroup": "reward-gpu"}},
            },
        },
    )
    applied = time.monotonic()
    apply(cluster, job)
    final = cluster.wait_for(
        lambda: (s := status(cluster, namespace, "too-big")).get("phase") == "Failed" and s,
        timeout=60,
        what="the job to be refused",
    )
    print(f"refused {time.monotonic() - applied:.1f}s after kubectl apply")

    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "DoesNotFit" in failed["message"], failed
    for words in ("policy stage does not fit", "8B model", "reward-gpu has 24 GiB", "fsdp", "lora"):
        assert words in failed["message"], (words, failed["message"])
    assert stage_record(final, "policy")["state"] == "Failed", final["stages"]
    assert children(cluster, namespace, "jobs") == []
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=DoesNotFit", "-o", "json"
    )
    assert [e["type"] for e in json.loads(events.stdout)["items"]] == ["Warning"]


def test_the_eks_example_passes_the_fit_check_and_gets_its_first_job(
    cluster: Kube, fit_checking_operator: tuple[str, dict[str, float]]
) -> None:
    namespace, table = fit_checking_operator
    example: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "eks-remote-reward-rlhfjob.yaml").read_text()
    )
    config = OperatorConfig(gpu_memory_gib=table)
    assert fit_refusal(RLHFJob.model_validate(example).spec, config) is None
    # What the example replaced would be refused under the same table: 8B full PPO under ddp.
    replaced = json.loads(json.dumps(example))
    replaced["spec"]["stages"]["policy"]["distributed"] = {"strategy": "ddp"}
    refusal = fit_refusal(RLHFJob.model_validate(replaced).spec, config)
    assert refusal is not None and refusal.stage.value == "policy", refusal

    example["metadata"]["namespace"] = namespace
    # docs/eks.md's stage ServiceAccount (IRSA) and the reward server's certificate Secret, opted in
    # for RLHFJobs; without them the job waits before its first Job.
    cluster.kubectl("create", "serviceaccount", "rlhf-stages", "-n", namespace)
    cluster.kubectl("create", "secret", "generic", "reward-server-tls", "-n", namespace)
    cluster.kubectl(
        "label", "secret", "reward-server-tls", "-n", namespace, "rlhf-operator.dev/usable-by-rlhfjobs=true"
    )
    apply(cluster, example)
    # The fit check runs before the first Job: the precompute Job's existence is the check passed.
    try:
        jobs = cluster.wait_for(
            lambda: [j["metadata"]["name"] for j in children(cluster, namespace, "jobs")],
            timeout=60,
            what="the example's first Job",
        )
    except AssertionError as err:
        raise AssertionError(f"{err}; status: {status(cluster, namespace, 'llama-helpfulness')}") from None
    assert jobs == ["llama-helpfulness-precompute"]
    current = status(cluster, namespace, "llama-helpfulness")
    assert current.get("phase") != "Failed" and "DoesNotFit" not in json.dumps(current), current
