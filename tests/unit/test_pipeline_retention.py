"""Artifact retention: the finalizer and the cleanup Job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import retention
from rlhf_operator.plan import Observed
from tests.support.builders import finished_job, rlhfjob

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_retention_delete_holds_a_finalizer_until_the_cleanup_job_succeeds() -> None:

    job = rlhfjob(artifactRetention="Delete")
    assert retention(job, [], False, Observed(), CONFIG).finalizers == ["rlhf-operator.dev/artifact-cleanup"]
    held = ["other", "rlhf-operator.dev/artifact-cleanup"]
    plan = retention(job, held, True, Observed(), CONFIG)
    assert plan.finalizers is None
    [cleanup] = plan.create
    assert cleanup["metadata"]["name"] == "tiny-cleanup"
    assert (
        cleanup["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "/data/rlhf-jobs/ml/tiny/u-1"
    )
    done = retention(job, held, True, Observed(jobs={"tiny-cleanup": finished_job()}), CONFIG)
    assert done.finalizers == ["other"] and done.events[0].reason == "ArtifactsDeleted"
    assert retention(rlhfjob(), held, True, Observed(), CONFIG).finalizers == ["other"]


@pytest.mark.parametrize(
    ("retention_policy", "finalizers", "deleting", "expected"),
    [
        ("Retain", [], False, None),
        ("Delete", [], False, ["rlhf-operator.dev/artifact-cleanup"]),
        ("Delete", ["rlhf-operator.dev/artifact-cleanup"], False, None),
        ("Retain", ["rlhf-operator.dev/artifact-cleanup"], True, []),  # retention changed: let it go
        ("Retain", ["x"], True, None),
    ],
)
def test_finalizer_table(
    retention_policy: str, finalizers: list[str], deleting: bool, expected: list[str] | None
) -> None:
    job = rlhfjob(artifactRetention=retention_policy)
    assert retention(job, finalizers, deleting, Observed(), CONFIG).finalizers == expected
