"""Reuse and lineage: a second job with the tiny run's precompute inputs reuses its responses."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import run_stage, stage_config

pytestmark = pytest.mark.train


def _precompute(spec: dict[str, Any], root: Path, shard: int) -> tuple[dict[str, Any], str, float]:
    """One precompute shard as the operator would run it; (its result, its stdout, seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = run_stage(
        "precompute", stage_config(str(root), spec, "precompute"), root, {"JOB_COMPLETION_INDEX": str(shard)}
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((root / "precompute.result").read_text()), proc.stdout, elapsed


def _lineage(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "precompute" / "lineage.json").read_text())
    return data


def test_identical_inputs_reuse_the_responses_and_a_new_temperature_does_not(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    first = pipeline["root"]
    # The tiny run wrote its lineage and put its result in the storage's reuse index.
    made = _lineage(first)
    assert made["stage"] == "precompute" and {"baseModel", "prompts"} <= set(made["inputs"])
    index = pipeline["workdir"] / "rlhf-jobs" / "default" / ".reuse" / "precompute" / f"{made['digest']}.json"
    assert json.loads(index.read_text())["artifactRoot"] == str(first)

    second = tmp_path / "second"
    shards = spec["stages"]["precompute"]["shards"]
    for shard in range(shards):
        result, stdout, seconds = _precompute(spec, second, shard)
        assert result["message"].startswith("Reused the responses of RLHFJob default/tiny (uid local)"), (
            result
        )
        assert "reusing" in stdout and "prompts x" not in stdout, stdout
        print(f"precompute shard {shard} by reuse: {seconds:.1f}s (the whole stage process)")
    assert "all shards are complete" in result["message"]
    assert _lineage(second)["digest"] == made["digest"]
    for name in sorted(p.name for p in (first / "precompute").glob("responses-*.jsonl")):
        assert (second / "precompute" / name).read_text() == (first / "precompute" / name).read_text()
    assert json.loads((second / "precompute" / "manifest.json").read_text())["complete"] is True

    spec["stages"]["precompute"]["temperature"] = 0.7
    third = tmp_path / "third"
    result, stdout, _ = _precompute(spec, third, 0)
    assert "Reused" not in result["message"], result
    assert "precompute shard 0:" in stdout and "prompts x" in stdout, stdout

    # reuse: Never generates although the inputs match the tiny run's.
    spec["stages"]["precompute"].update(temperature=made["spec"]["precompute"]["temperature"], reuse="Never")
    result, stdout, _ = _precompute(spec, tmp_path / "fourth", 0)
    assert "Reused" not in result["message"] and "prompts x" in stdout, result


def test_every_artifact_has_a_lineage_manifest(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    folders = {
        "precompute": "precompute",
        "ranking": "ranking",
        "rewardModel": "reward-model",
        "policy": "policy",
        "evaluation": "evaluation",
    }
    lineage = {
        stage: json.loads((root / folder / "lineage.json").read_text()) for stage, folder in folders.items()
    }
    for stage, made in lineage.items():
        assert made["stage"] == stage and made["job"]["name"] == "tiny", made
        assert len(made["digest"]) == 64
    # Each stage names the lineage of what it read: a chain back to the model files and prompts.
    chain = [
        ("ranking", "precompute"),
        ("rewardModel", "ranking"),
        ("policy", "rewardModel"),
        ("policy", "ranking"),
        ("evaluation", "policy"),
        ("evaluation", "rewardModel"),
    ]
    for stage, upstream in chain:
        assert lineage[stage]["inputs"][f"lineage:{upstream}"] == lineage[upstream]["digest"], stage
    assert lineage["policy"]["inputs"]["baseModel"] == lineage["precompute"]["inputs"]["baseModel"]
    assert lineage["policy"]["spec"]["policy"]["steps"] == 20
    assert "pod" not in lineage["policy"]["spec"]["policy"]
