"""End to end: examples/human-rankings-rlhfjob.yaml on the local cluster (executed mode), with the
labelers' file uploaded only after the job has said, on the RLHFJob, that it waits for it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from demo import follow, make_tiny_assets, prepare_storage, running_pipeline
from localcluster import LocalCluster, wait_established

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "human-rankings-rlhfjob.yaml"
RANKINGS = "datasets/tiny-task/human-rankings.jsonl"  # where the example's human.source points


def wait_for_condition(
    cluster: LocalCluster, namespace: str, reason: str, timeout_s: float
) -> dict[str, Any]:
    """The job's condition with `reason` once it appears; fails on a finished job or at the deadline."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = json.loads(
            cluster.kubectl("get", "rlhfjob", "human-rankings", "-n", namespace, "-o", "json").stdout
        )
        status = job.get("status", {})
        assert status.get("phase") not in ("Succeeded", "Failed"), status
        for condition in status.get("conditions", []):
            if condition.get("reason") == reason and condition.get("status") == "True":
                return dict(condition)
        time.sleep(1)
    raise AssertionError(f"no {reason} condition within {timeout_s:.0f}s: {status}")


@pytest.mark.timeout(1800)
def test_human_rankings_wait_is_visible_and_the_job_finishes_once_labels_arrive(tmp_path: Path) -> None:
    cluster = LocalCluster("e2e-human", home=tmp_path / "clusters", executed=True)
    cluster.up()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        wait_established(cluster.kubectl, "crd/rlhfjobs.rlhf-operator.dev")
        namespace, data = "rlhf-e2e-human", tmp_path / "data"
        prepare_storage(cluster, namespace, data)
        make_tiny_assets(data)
        labels = (data / RANKINGS).read_text()
        (data / RANKINGS).unlink()  # the labelers have not finished yet

        with running_pipeline(cluster, namespace, tmp_path):
            cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
            waiting = wait_for_condition(cluster, namespace, "AwaitingHumanRankings", timeout_s=900)
            assert waiting["type"] == "Waiting"
            assert "/data/" + RANKINGS in waiting["message"], waiting
            upload = data / (RANKINGS + ".part")
            upload.write_text(labels)
            upload.replace(data / RANKINGS)  # whole, as an upload to the volume would land
            final = follow(cluster, namespace, "human-rankings", timeout_s=1500)

        assert final["phase"] == "Succeeded", final.get("message")
        assert final["metrics"]["winRate"] >= 0.8, final["metrics"]
        assert not any(c.get("reason") == "AwaitingHumanRankings" and c.get("status") == "True"
                       for c in final.get("conditions", [])), final["conditions"]  # fmt: skip
    finally:
        cluster.down()
