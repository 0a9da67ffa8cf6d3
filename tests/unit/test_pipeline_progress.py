"""Which pod's log holds a running policy's progress."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf_operator.api.v1alpha1 import RLHFJobStatus
from rlhf_operator.pipeline import progress_pod
from rlhf_operator.plan import Observed
from tests.support.builders import pod


@pytest.mark.parametrize(
    ("state", "pods", "chosen"),
    [
        ("Running", [pod("policy", "Running", name="p-0")], "p-0"),
        (
            "Running",
            [pod("policy", "Running", name="p-1", index=1), pod("policy", "Running", name="p-0")],
            "p-0",
        ),
        ("Running", [pod("policy", "Pending", name="p-0")], None),
        ("Running", [pod("evaluation", "Running", name="e-0")], None),
        ("Succeeded", [pod("policy", "Running", name="p-0")], None),
    ],
)
def test_progress_comes_from_the_running_rank_zero_policy_pod(
    state: str, pods: list[dict[str, Any]], chosen: str | None
) -> None:
    status = RLHFJobStatus.model_validate({"stages": [{"name": "policy", "state": state}]})
    assert progress_pod(status, Observed(pods=tuple(pods))) == chosen
