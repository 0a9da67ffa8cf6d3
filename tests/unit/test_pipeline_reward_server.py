"""The reward server: ready before the policy starts, scaled with suspension, gone after."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Observed
from tests.support.builders import TOKEN, rlhfjob

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig()


def test_remote_policy_waits_for_a_ready_reward_server() -> None:
    job = rlhfjob(stages={"policy": {"rewardPlacement": "remote"}})
    done = {"stages": [{"name": s, "state": "Succeeded"} for s in ("precompute", "ranking", "rewardModel")]}
    plan = reconcile(job, done, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    kinds = sorted(m["kind"] for m in plan.create)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service"]
    deployment = {"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    observed = Observed(deployments={"tiny-reward-server": deployment}, services=frozenset({"tiny-reward-server"}),
                        config_maps=frozenset({"tiny-reward-server-config"}),
                        secrets=frozenset({"tiny-reward-server-token"}), missing=(),
                        disruption_budgets=frozenset({"tiny-reward-server"}),
                        network_policies=frozenset({"tiny-network"}))  # fmt: skip
    plan = reconcile(job, done, observed, CONFIG, NOW, new_token=TOKEN)
    assert [m["kind"] for m in plan.create] == ["ConfigMap", "Job"]


DONE = ("precompute", "ranking", "rewardModel")


@pytest.mark.parametrize(
    ("policy", "suspend", "replicas", "patch", "delete"),
    [
        ("Running", False, 1, [], []),
        ("Running", True, 1, [("Deployment", "tiny-reward-server", {"spec": {"replicas": 0}})], []),
        ("Running", False, 0, [("Deployment", "tiny-reward-server", {"spec": {"replicas": 1}})], []),
        (
            "Succeeded",
            False,
            1,
            [],
            [("Deployment", "tiny-reward-server"), ("Service", "tiny-reward-server")],
        ),
        ("Failed", False, 1, [], [("Deployment", "tiny-reward-server"), ("Service", "tiny-reward-server")]),
    ],
)
def test_reward_server_lives_while_the_policy_trains(
    policy: str, suspend: bool, replicas: int, patch: list[object], delete: list[object]
) -> None:
    job = rlhfjob(suspend=suspend, stages={"policy": {"rewardPlacement": "remote"}})
    status = {
        "stages": [*({"name": s, "state": "Succeeded"} for s in DONE), {"name": "policy", "state": policy}]
    }
    policy_job = {"spec": {"suspend": suspend}, "status": {"active": 1}}
    observed = Observed(
        jobs={"tiny-policy": policy_job},
        deployments={
            "tiny-reward-server": {"spec": {"replicas": replicas}, "status": {"readyReplicas": replicas}}
        },
        services=frozenset({"tiny-reward-server"}),
        missing=(),
    )
    plan = reconcile(job, status, observed, CONFIG, NOW, new_token=TOKEN)
    assert [p for p in plan.patch if p[0] == "Deployment"] == patch
    assert plan.delete == delete


def test_the_token_comes_from_the_injected_source() -> None:
    job = rlhfjob(stages={"policy": {"rewardPlacement": "remote"}})
    done = {"stages": [{"name": s, "state": "Succeeded"} for s in DONE]}
    plan = reconcile(job, done, Observed(missing=()), CONFIG, NOW, new_token=lambda: "fixed")
    [secret] = [m for m in plan.create if m["kind"] == "Secret"]
    assert secret["stringData"] == {"token": "fixed"}
