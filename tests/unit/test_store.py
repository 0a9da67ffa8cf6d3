"""The store of watched objects."""

from __future__ import annotations

from datetime import UTC, datetime

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.config import OperatorConfig
from tests.support.builders import pod

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_store_keeps_slim_children_and_skips_updates_that_change_nothing() -> None:
    from rlhf_operator.store import Store

    store = Store()
    labels = {"rlhf-operator.dev/job-uid": "u-1", "rlhf-operator.dev/stage": "policy"}
    child = pod(StageName.POLICY, "Running", "")
    child["metadata"] |= {"name": "p", "labels": labels, "managedFields": [{"big": "x" * 1000}]}
    child["spec"] = {"containers": [{"name": "stage", "image": "trainer"}]}
    assert store.put_child("Pod", child) == "u-1"
    [kept] = store.observed("u-1").pods
    assert "spec" not in kept and "managedFields" not in kept["metadata"]
    child["metadata"]["resourceVersion"] = "99"  # a no-op update for the pipeline
    assert store.put_child("Pod", child) is None
    child["status"]["phase"] = "Succeeded"
    assert store.put_child("Pod", child) == "u-1"
    assert store.put_child("Pod", child, deleted=True) == "u-1"
    assert store.observed("u-1").pods == ()
