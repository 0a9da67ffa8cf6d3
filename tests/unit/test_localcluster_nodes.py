"""The simulated nodes carry the labels, taints and capacity of real EKS node groups."""

from __future__ import annotations

from localcluster import ClusterShape, NodeGroup, load_shape, node_manifests


def test_default_shape_has_the_three_node_groups() -> None:
    shape = load_shape()
    assert {(g.name, g.count, g.gpus) for g in shape.node_groups} == {
        ("cpu", 4, 0),
        ("reward-gpu", 2, 1),
        ("policy-gpu", 2, 8),
    }


def test_gpu_nodes_are_tainted_labelled_and_have_gpu_capacity() -> None:
    shape = ClusterShape(
        region="us-east-1",
        zones=["us-east-1a"],
        node_groups=[NodeGroup("big", 1, "p4d.24xlarge", "96", "1152Gi", gpus=8, gpu_product="A100")],
    )
    [node] = node_manifests(shape)
    labels = node["metadata"]["labels"]
    assert labels["eks.amazonaws.com/nodegroup"] == "big"
    assert labels["node.kubernetes.io/instance-type"] == "p4d.24xlarge"
    assert labels["nvidia.com/gpu.product"] == "A100"
    assert labels["topology.kubernetes.io/zone"] == "us-east-1a"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"


def test_cpu_nodes_have_no_gpu_and_no_taint() -> None:
    shape = ClusterShape("us-east-1", ["a", "b"], [NodeGroup("cpu", 2, "m6i.4xlarge", "16", "64Gi")])
    nodes = node_manifests(shape)
    assert [n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes] == ["a", "b"]
    assert all(n["spec"]["taints"] == [] and "nvidia.com/gpu" not in n["status"]["capacity"] for n in nodes)
    assert len({n["spec"]["providerID"] for n in nodes}) == 2
