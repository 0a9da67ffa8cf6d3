"""The store of watched objects: slim children, and children matched to their RLHFJob by ownership
(controller ownerReference and namespace), never by a label anyone can write."""

from __future__ import annotations

from typing import Any

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.store import IGNORED_CHILDREN, Store
from tests.support.builders import finished_job, owned, pod

Manifest = dict[str, Any]
VICTIM = {"metadata": {"name": "victim", "namespace": "team-a", "uid": "uid-a"}}


def _store() -> Store:
    store = Store()
    store.put_job(VICTIM)
    return store


def _job(name: str, **meta: Any) -> Manifest:
    labels = {"rlhf-operator.dev/job-uid": "uid-a", "rlhf-operator.dev/stage": "precompute"}
    return {"metadata": {"name": name, "labels": labels, **meta}, **finished_job(succeeded=1)}


def _pod(name: str) -> Manifest:
    child = pod(
        StageName.PRECOMPUTE, "Succeeded", {"artifacts": {"responses": "s3://attacker/poisoned"}}, name=name
    )
    child["metadata"]["labels"]["rlhf-operator.dev/job-uid"] = "uid-a"
    return child


def _ignored(kind: str, reason: str) -> float:
    return float(IGNORED_CHILDREN.labels(kind, reason)._value.get())


def test_store_keeps_slim_children_and_skips_updates_that_change_nothing() -> None:
    store = _store()
    store.put_child("Job", owned(_job("victim-precompute"), "uid-a", namespace="team-a", uid="job-a"))
    child = owned(_pod("p"), "job-a", kind="Job", namespace="team-a")
    child["metadata"]["managedFields"] = [{"big": "x" * 1000}]
    child["spec"] = {"containers": [{"name": "stage", "image": "trainer"}]}
    assert store.put_child("Pod", child) == "uid-a"
    [kept] = store.observed("uid-a").pods
    assert "spec" not in kept and "managedFields" not in kept["metadata"]
    child["metadata"]["resourceVersion"] = "99"  # a no-op update for the pipeline
    assert store.put_child("Pod", child) is None
    child["status"]["phase"] = "Failed"
    assert store.put_child("Pod", child) == "uid-a"
    assert store.put_child("Pod", child, deleted=True) == "uid-a"
    assert store.observed("uid-a").pods == ()


def test_a_pod_seen_before_its_job_belongs_to_the_rlhfjob_once_the_job_is_seen() -> None:
    store = _store()
    assert store.put_child("Pod", owned(_pod("p"), "job-a", kind="Job", namespace="team-a")) is None
    assert store.observed("uid-a").pods == ()
    store.put_child("Job", owned(_job("victim-precompute"), "uid-a", namespace="team-a", uid="job-a"))
    assert [p["metadata"]["name"] for p in store.observed("uid-a").pods] == ["p"]


def test_children_in_another_namespace_are_ignored_and_counted_whatever_they_claim() -> None:
    """The review's attack: in namespace team-b, a Job (and its pod) that carry the victim's uid label,
    a forged ownerReference to the victim, and a termination message naming a poisoned artifact."""
    store = _store()
    before = _ignored("Job", "OtherNamespace"), _ignored("Pod", "OtherNamespace")
    forged = owned(_job("victim-precompute"), "uid-a", namespace="team-b", uid="job-b")
    assert store.put_child("Job", forged) is None
    assert store.put_child("Pod", owned(_pod("p"), "job-b", kind="Job", namespace="team-b")) is None
    assert store.observed("uid-a") == store.observed("nobody")
    assert (_ignored("Job", "OtherNamespace"), _ignored("Pod", "OtherNamespace")) == (
        before[0] + 1,
        before[1] + 1,
    )


def test_children_without_a_controller_reference_to_the_rlhfjob_are_ignored() -> None:
    """Labels alone make nothing a child, even in the RLHFJob's own namespace."""
    store = _store()
    before = _ignored("Job", "NoController"), _ignored("Pod", "NoController")
    unowned = _job("victim-precompute", namespace="team-a", uid="job-x")
    assert store.put_child("Job", unowned) is None
    bare_pod = _pod("p")
    bare_pod["metadata"]["namespace"] = "team-a"
    assert store.put_child("Pod", bare_pod) is None
    # A pod whose controller is a Job the RLHFJob does not own is never read either.
    assert store.put_child("Pod", owned(_pod("q"), "job-x", kind="Job", namespace="team-a")) is None
    assert store.observed("uid-a").jobs == {} and store.observed("uid-a").pods == ()
    assert (_ignored("Job", "NoController"), _ignored("Pod", "NoController")) == (
        before[0] + 1,
        before[1] + 1,
    )


def test_a_child_claiming_an_rlhfjob_the_store_has_not_seen_yet_is_filtered_by_namespace_on_read() -> None:
    store = Store()
    store.put_child("Job", owned(_job("victim-precompute"), "uid-a", namespace="team-b", uid="job-b"))
    store.put_job(VICTIM)
    assert store.observed("uid-a").jobs == {}
