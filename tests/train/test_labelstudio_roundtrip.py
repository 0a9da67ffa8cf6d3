"""Humans through Label Studio: precompute writes the tasks in its import format, a labeler's
export (made here from those tasks, answering as the task's hidden rule would) trains the reward
model, and a malformed export is refused naming the task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.tiny.task import count_positive

pytestmark = pytest.mark.train
#: The program's command -> the stage's name in a StageConfig.
STAGE_NAMES = {"precompute": "precompute", "ranking": "ranking", "reward-model": "rewardModel"}


def _run(
    stage: str, spec: dict[str, Any], root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    from rlhf_operator.workloads.__main__ import main
    from tests.train.conftest import stage_config

    config = root / f"{stage}.json"
    config.write_text(json.dumps(stage_config(str(root), spec, STAGE_NAMES[stage])))
    term = root / f"{stage}.term"
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(term))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    code = main([stage, "--config", str(config)])
    return code, json.loads(term.read_text())


def _label(task: dict[str, Any]) -> dict[str, Any] | None:
    """A labeler who prefers more positive words, and skips pairs they cannot tell apart."""
    left, right = count_positive(task["data"]["left"]), count_positive(task["data"]["right"])
    if left == right:
        return None
    choice = "left" if left > right else "right"
    result = {"from_name": "preference", "to_name": "left", "type": "pairwise", "value": {"selected": choice}}
    return {**task, "annotations": [{"id": 1, "result": [result], "was_cancelled": False}]}


def test_label_studio_round_trip_trains_the_reward_model(
    pipeline: dict[str, Any], fresh_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec: dict[str, Any] = json.loads(json.dumps(pipeline["spec"]))
    export = fresh_root / "export.json"
    spec["stages"]["ranking"] = {"method": "human", "human": {"source": str(export)}}
    (fresh_root / "precompute" / "manifest.json").unlink()  # the last shard writes it again
    code, term = _run("precompute", spec, fresh_root, monkeypatch)
    assert code == 0, term
    tasks = json.loads((fresh_root / "precompute" / "labelstudio" / "tasks.json").read_text())
    assert "<Pairwise" in (fresh_root / "precompute" / "labelstudio" / "config.xml").read_text()
    assert len(tasks) > 20 and set(tasks[0]["data"]) == {"prompt", "left", "right"}
    labeled = [{"id": i, **t} for i, task in enumerate(tasks) if (t := _label(task))]
    unlabeled = [{"id": len(tasks) + 1, **tasks[0], "annotations": []}]
    export.write_text(json.dumps(labeled + unlabeled, indent=2))

    code, term = _run("ranking", spec, fresh_root, monkeypatch)
    assert code == 0, term
    pairs = [json.loads(line) for line in (fresh_root / "ranking" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(labeled)
    assert all(count_positive(p["chosen"]) > count_positive(p["rejected"]) for p in pairs)

    code, term = _run("reward-model", spec, fresh_root, monkeypatch)
    assert code == 0, term
    accuracy = term["metrics"]["rewardModelAccuracy"]
    print(f"reward model trained on a Label Studio export of {len(pairs)} pairs: accuracy {accuracy:.3f}")
    assert accuracy >= 0.7


def test_malformed_export_is_refused_naming_the_task(
    pipeline: dict[str, Any], fresh_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec: dict[str, Any] = json.loads(json.dumps(pipeline["spec"]))
    export = fresh_root / "export.json"
    export.write_text(json.dumps([{"id": 11, "data": {"prompt": "p"}, "annotations": []}]))
    spec["stages"]["ranking"] = {"method": "human", "human": {"source": str(export)}}
    code, term = _run("ranking", spec, fresh_root, monkeypatch)
    assert code == 78 and term["reason"] == "MalformedExport", term
    assert "task 1 (id 11): `data` must hold the strings" in term["error"]
