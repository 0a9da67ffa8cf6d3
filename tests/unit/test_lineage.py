"""The lineage digest: what decides a stage's output changes it, scheduling settings do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_operator.api.lineage import Lineage
from rlhf_operator.api.stage_config import JobRef
from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.workloads.lineage import spec_section, tree_digest
from tests.support.builders import rlhfjob

pytestmark = pytest.mark.unit


def _digest(job_name: str = "tiny", **precompute: object) -> str:
    spec = rlhfjob(name=job_name, stages={"precompute": precompute}).spec
    return Lineage(
        stage=StageName.PRECOMPUTE,
        job=JobRef(namespace="ml", name=job_name, uid="u"),
        artifact="/data/x/precompute",
        inputs={"baseModel": "m", "prompts": "p"},
        spec=spec_section(spec, StageName.PRECOMPUTE),
    ).digest


def test_generation_settings_change_the_digest_and_scheduling_does_not() -> None:
    same = _digest()
    assert _digest(job_name="other") == same  # which job made it does not matter
    assert _digest(reuse="Never", parallelism=1, pod={"backoffLimit": 7}) == same
    assert _digest(temperature=0.7) != same
    assert _digest(topP=0.9) != same
    assert _digest(responsesPerPrompt=3) != same


def test_tree_digest_follows_the_content(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    before = tree_digest(str(model))
    tree_digest.cache_clear()
    (model / "_SUCCESS").write_text("{}")  # completion markers are not content
    assert tree_digest(str(model)) == before
    tree_digest.cache_clear()
    (model / "model.safetensors").write_bytes(b"weightz")
    assert tree_digest(str(model)) != before
