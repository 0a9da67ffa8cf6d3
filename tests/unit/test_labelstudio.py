"""Label Studio round trip: tasks in its import format, its JSON export read back as pairs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.labelstudio import import_tasks, looks_like_export, pairs_from_export


def _labeled(task: dict[str, Any], *choices: str, task_id: int = 1) -> dict[str, Any]:
    """A task as Label Studio exports it, with one annotation per choice."""
    annotations = [
        {
            "id": i,
            "result": [
                {"from_name": "preference", "to_name": "left", "type": "pairwise", "value": {"selected": c}}
            ],
        }
        for i, c in enumerate(choices)
    ]
    return {"id": task_id, **task, "annotations": annotations}


def test_one_task_per_pair_of_distinct_responses() -> None:
    tasks = import_tasks([{"prompt": "p", "responses": ["a", "b", "a", "c"]}])
    assert [(t["data"]["left"], t["data"]["right"]) for t in tasks] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert all(t["data"]["prompt"] == "p" for t in tasks)


def test_a_chat_prompt_is_shown_as_text_and_comes_back_as_its_messages() -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    (task,) = import_tasks([{"prompt": chat, "responses": ["a", "b"]}])
    assert task["data"]["prompt"] == "system: be brief\nuser: hi" and task["data"]["messages"] == chat
    (pair,) = pairs_from_export(json.dumps([_labeled(task, "left")]), "export.json")
    assert pair["prompt"] == chat and (pair["chosen"], pair["rejected"]) == ("a", "b")


def test_export_gives_pairs_and_skips_unlabeled_tasks() -> None:
    left, right, unlabeled = import_tasks([{"prompt": "p", "responses": ["a", "b", "c"]}])
    export = [_labeled(left, "left", task_id=7), _labeled(right, "right", "right", task_id=8), unlabeled]
    text = json.dumps(export, indent=2)
    assert looks_like_export(text) and not looks_like_export('{"prompt": "p"}\n')
    pairs = pairs_from_export(text, "export.json")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("c", "a")]
    assert pairs[0]["provenance"] == {"method": "human", "tool": "labelStudio", "task": 7}


def test_a_malformed_export_names_every_bad_task() -> None:
    (task,) = import_tasks([{"prompt": "p", "responses": ["a", "b"]}])
    export = [
        _labeled(task, "left"),
        "not a task",
        {"data": {"prompt": "p", "left": 3, "right": "b"}, "annotations": []},
        _labeled(task, "up", task_id=4),
        _labeled(task, "left", "right", task_id=5),
    ]
    with pytest.raises(StageConfigError) as refused:
        pairs_from_export(json.dumps(export), "export.json")
    message = refused.value.message
    assert message.startswith("Label Studio export export.json has 4 defects: task 2: must be an object")
    assert "task 3: `data` must hold the strings" in message
    assert "task 4 (id 4): the `preference` choice must be left or right" in message
    assert "task 5 (id 5): its annotations disagree" in message
    with pytest.raises(StageConfigError, match="line 1 is not valid JSON"):
        pairs_from_export("[{", "export.json")
