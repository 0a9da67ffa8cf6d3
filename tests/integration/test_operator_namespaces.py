"""A namespace that matches the operator's pattern is watched even when it appears while Kopf lists
namespaces (rlhf_operator.kopf_namespaces); the real operator on the real local control plane."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.conftest import Kube
from tests.integration import operator_harness as harness

HELD_WATCH = Path(__file__).parents[1] / "support" / "held_namespace_watch"


def test_a_namespace_created_between_kopfs_two_listings_is_watched(
    crd_installed: Kube, tmp_path: Path
) -> None:
    cluster = crd_installed
    prefix = f"t-late-{uuid.uuid4().hex[:6]}"
    release = tmp_path / "release"
    process = harness.operator_process(cluster.kubeconfig, f"{prefix}-*", tmp_path / "operator.log")
    # Kopf's namespace watch waits for `release` after Kopf's first listing: the window a loaded
    # machine opens for milliseconds (CI saw it) stays open until the namespace below exists.
    process.env.update(RLHF_TEST_HOLD_NAMESPACE_WATCH_UNTIL=str(release), PYTHONPATH=str(HELD_WATCH))
    namespace = f"{prefix}-a"
    process.start()
    try:
        process.wait_ready()
        cluster.wait_for(
            lambda: "namespace watch held" in process.log_tail(), what="the held namespace watch"
        )
        cluster.kubectl("create", "namespace", namespace)
        harness.apply(cluster, harness.rlhfjob("late", namespace))
        release.touch()
        # No claim exists: the operator says so, which it can only do once it watches the namespace.
        pending = cluster.wait_for(
            lambda: harness.status(cluster, namespace, "late").get("message"), timeout=60,
            what="the operator to report on the job in the namespace created while it listed",
        )  # fmt: skip
        assert "rlhf-data" in pending, pending
    finally:
        process.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
