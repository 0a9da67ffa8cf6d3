"""`logFormat: json` (RLHF_OPERATOR_LOG_FORMAT=json): the operator still runs a job, and every line it
logs is one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Kube
from tests.integration import operator_harness as harness


def test_the_operator_logs_one_json_object_a_line(crd_installed: Kube, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    with harness.operator_of_its_own(crd_installed, "t-json", log, log_format="json", log_level="DEBUG") as (
        namespace,
        _,
    ):
        harness.create_pvc(crd_installed, namespace)
        harness.apply(crd_installed, harness.rlhfjob("logged", namespace))
        harness.wait_phase(crd_installed, namespace, "logged", "Succeeded", timeout=120)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(lines) > 10, lines
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(r, dict) and r.get("message") for r in records), records[:3]
    assert any("logged" in json.dumps(r) for r in records)  # records about the job name it
