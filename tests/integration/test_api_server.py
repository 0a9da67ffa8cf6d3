"""The generated CRD on the real API server: it refuses the same manifests as the models, fills the
same defaults, documents its fields, and shows status in `kubectl get` columns."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.v1alpha1 import RLHFJob
from tests.api_cases import ALLOWED_UPDATES, BASE, CASES, Case, Manifest
from tests.conftest import Kube
from tests.support.merge import merged

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
MANAGER = "api-test"


@pytest.fixture(scope="module")
def ns(crd_installed: Kube) -> Iterator[str]:
    # One namespace for the whole module: each test names its objects, and hundreds of namespaces
    # would only slow the shared cluster down.
    name = f"api-{uuid.uuid4().hex[:8]}"
    crd_installed.kubectl("create", "namespace", name)
    yield name
    crd_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(kube: Kube, ns: str, manifest: Manifest, name: str, check: bool = True) -> Any:
    body = merged(manifest, {"metadata": {"name": name, "namespace": ns}})
    return kube.kubectl(
        "apply", "--server-side", f"--field-manager={MANAGER}", "-f", "-", input=json.dumps(body), check=check
    )


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v not in ({}, [])}
    return value


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_refused(crd_installed: Kube, ns: str, case: Case) -> None:
    # Each case gets a name of its own, unless the name itself is what the case is about.
    own_name = case.manifest["metadata"]["name"] != BASE["metadata"]["name"]
    name = case.manifest["metadata"]["name"] if own_name else f"bad-{case.id}"[:63]
    if case.before is not None:
        _apply(crd_installed, ns, case.before, name)
    result = _apply(crd_installed, ns, case.manifest, name, check=False)
    assert result.returncode != 0, f"{case.id}: the API server accepted an invalid manifest"
    message = result.stderr.lower()
    for expected in case.expect:
        assert expected.lower() in message, f"{expected!r} not in {result.stderr!r}"


@pytest.mark.parametrize(("case_id", "before", "after"), ALLOWED_UPDATES, ids=[u[0] for u in ALLOWED_UPDATES])
def test_allowed_update(
    crd_installed: Kube, ns: str, case_id: str, before: Manifest, after: Manifest
) -> None:
    _apply(crd_installed, ns, before, f"ok-{case_id}")
    _apply(crd_installed, ns, after, f"ok-{case_id}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_with_the_models_defaults(crd_installed: Kube, ns: str, path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]
    _apply(crd_installed, ns, manifest, name)
    stored = crd_installed.get_json("rlhfjob", name, "-n", ns)
    expected = RLHFJob.model_validate(manifest).spec
    # The API server's defaults are exactly the models' defaults: nothing more, nothing less.
    assert stored["spec"] == _without_empty(
        expected.model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    assert RLHFJob.model_validate(stored).spec == expected


def test_the_staging_job_example_is_a_valid_job(crd_installed: Kube, ns: str) -> None:
    """examples/staging/: the Job that puts a model and a dataset on the volume (docs/eks.md)."""
    example = EXAMPLES[0].parent / "staging" / "stage-model-and-data-job.yaml"
    result = crd_installed.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(example), check=False)
    assert result.returncode == 0 and "job.batch/stage-llama created (server dry run)" in result.stdout, (
        result.stderr
    )


def test_empty_stages_with_ready_rankings(crd_installed: Kube, ns: str) -> None:
    manifest = merged(
        BASE, {"spec": {"stages": None, "dataset": {"rankings": {"source": "/data/pairs.jsonl"}}}}
    )
    _apply(crd_installed, ns, manifest, "ready-rankings")
    stored = crd_installed.get_json("rlhfjob", "ready-rankings", "-n", ns)
    assert stored["spec"]["stages"]["policy"]["algorithm"] == "ppo"
    assert stored["spec"]["stages"]["rewardModel"]["pod"]["resources"]["gpus"] == 1


def test_explain_shows_descriptions(crd_installed: Kube) -> None:
    def explained() -> str | None:
        result = crd_installed.kubectl("explain", "rlhfjob.spec.stages.policy", check=False)
        return result.stdout if "klCoef" in result.stdout else None

    text = crd_installed.wait_for(explained, timeout=60, what="the RLHFJob schema in kubectl explain")
    assert "Weight of the KL penalty" in text
    assert "ppo, rloo or grpo (against the reward), or dpo" in text


def _status() -> dict[str, Any]:
    return {
        "status": {
            "observedGeneration": 1,
            "phase": "Succeeded",
            "currentStage": "evaluation",
            "message": "The policy beat the base model.",
            "conditions": [
                {
                    "type": "Succeeded",
                    "status": "True",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "reason": "EvaluationDone",
                    "message": "Every stage succeeded.",
                }
            ],
            "stages": [
                {"name": "evaluation", "state": "Succeeded", "attempts": 1, "children": ["status-evaluation"]}
            ],
            "metrics": {
                "meanReward": 0.75,
                "kl": 0.02,
                "winRate": 0.9,
                "policyStep": 30,
                "rewardModelAccuracy": 0.95,
            },
        }
    }


def _table(kube: Kube, ns: str, *args: str) -> dict[str, str]:
    lines = kube.kubectl("get", "rlhfjobs", "status", "-n", ns, *args).stdout.splitlines()
    header, row = lines[0], lines[1]
    # Columns are left-aligned under their header, so header offsets slice the row.
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    bounds = [*starts[1:], len(row) + 1]
    return {name: row[start:end].strip() for name, start, end in zip(names, starts, bounds, strict=True)}


def test_status_shows_in_columns(crd_installed: Kube, ns: str) -> None:
    _apply(crd_installed, ns, BASE, "status")
    crd_installed.kubectl(
        "patch",
        "rlhfjob",
        "status",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(_status()),
    )
    normal = _table(crd_installed, ns)
    assert normal["STAGE"] == "evaluation" and normal["STATUS"] == "Succeeded"
    assert normal["REWARD"] == "0.75" and normal["KL"] == "0.02" and normal["WIN-RATE"] == "0.9"
    assert "ALGORITHM" not in normal
    wide = _table(crd_installed, ns, "-o", "wide")
    assert wide["ALGORITHM"] == "ppo" and wide["STEP"] == "30" and wide["RM-ACC"] == "0.95"
    assert wide["MESSAGE"] == "The policy beat the base model."
    crd_installed.kubectl("wait", "rlhfjob/status", "-n", ns, "--for=condition=Succeeded", "--timeout=20s")


def test_status_is_not_written_through_the_main_resource(crd_installed: Kube, ns: str) -> None:
    _apply(crd_installed, ns, BASE, "status-main")
    crd_installed.kubectl(
        "patch", "rlhfjob", "status-main", "-n", ns, "--type=merge", "-p", json.dumps(_status())
    )
    assert "status" not in crd_installed.get_json("rlhfjob", "status-main", "-n", ns)


def test_bad_status_is_refused(crd_installed: Kube, ns: str) -> None:
    _apply(crd_installed, ns, BASE, "status-bad")
    result = crd_installed.kubectl(
        "patch",
        "rlhfjob",
        "status-bad",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Done"}}),
        check=False,
    )
    assert result.returncode != 0 and "status.phase" in result.stderr
