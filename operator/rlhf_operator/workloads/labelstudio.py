"""Human labels through Label Studio: the pairs to label in its import format, its export read back.

After precompute, when the ranking method is `human`, the precompute stage writes next to its
responses `labelstudio/tasks.json` (one task per pair of responses to the same prompt, in Label
Studio's import JSON) and `labelstudio/config.xml` (the labeling interface: Label Studio's
`Pairwise` control). Labelers import both into a project, choose the better response of each pair,
and export the project as JSON to the rankings file the ranking stage waits for. The ranking stage
reads such an export (a JSON array) as well as the plain JSONL rankings.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

from rlhf_operator.api.artifacts import join
from rlhf_operator.workloads.chat_format import Prompt, readable
from rlhf_operator.workloads.errors import Defects, StageConfigError

#: The labeling interface: the prompt, two responses, one choice between them.
LABEL_CONFIG = """<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="left" value="$left"/>
  <Text name="right" value="$right"/>
  <Pairwise name="preference" toName="left,right"/>
</View>
"""
CHOICE_NAME = "preference"


def tasks_dir(precompute_dir: str) -> str:
    return join(precompute_dir, "labelstudio")


def import_tasks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One Label Studio task per unordered pair of distinct responses to a prompt."""
    tasks: list[dict[str, Any]] = []
    for row in rows:
        responses = list(dict.fromkeys(row["responses"]))  # a pair of equal texts holds no preference
        for left, right in combinations(responses, 2):
            tasks.append({"data": {**_prompt_data(row["prompt"]), "left": left, "right": right}})
    return tasks


def _prompt_data(prompt: Prompt) -> dict[str, Any]:
    """A task's prompt: the text labelers read, and a chat's messages kept beside it so the export
    names the dataset's prompt again."""
    if isinstance(prompt, str):
        return {"prompt": prompt}
    return {"prompt": readable(prompt), "messages": prompt}


def looks_like_export(text: str) -> bool:
    """A Label Studio JSON export is one JSON array; plain rankings are JSON lines of objects."""
    return text.lstrip().startswith("[")


def pairs_from_export(text: str, source: str) -> list[dict[str, Any]]:
    """Preference pairs from a Label Studio JSON export; every defect named by its task."""
    what = f"Label Studio export {source}"
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StageConfigError(
            f"{what} line {exc.lineno} is not valid JSON: {exc.msg}.", "MalformedExport"
        ) from exc
    if not isinstance(tasks, list):
        raise StageConfigError(
            f"{what} must be a JSON array of tasks (Label Studio's JSON export).", "MalformedExport"
        )
    defects = Defects(what)
    pairs: list[dict[str, Any]] = []
    for number, task in enumerate(tasks, start=1):
        where = f"task {number}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        try:
            pair = _pair_of(task)
        except ValueError as exc:
            defects.add(where, str(exc), "MalformedExport")
            continue
        if pair is not None:
            pairs.append(pair)
    defects.raise_if_any()
    return pairs


def _pair_of(task: Any) -> dict[str, Any] | None:
    """The pair a labeled task gives; None for a task nobody labeled (or whose labels were skipped)."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("must be an object with `data` (a task as Label Studio exports it).")
    data = task["data"]
    if not all(isinstance(data.get(k), str) for k in ("prompt", "left", "right")):
        raise ValueError("`data` must hold the strings `prompt`, `left` and `right` of the imported task.")
    choices = [
        result.get("value", {}).get("selected")
        for annotation in task.get("annotations") or []
        if isinstance(annotation, dict) and not annotation.get("was_cancelled")
        for result in annotation.get("result") or []
        if isinstance(result, dict) and result.get("from_name") == CHOICE_NAME
    ]
    if not choices:
        return None
    if any(choice not in {"left", "right"} for choice in choices):
        raise ValueError(f"the `{CHOICE_NAME}` choice must be left or right, not {choices}.")
    if len(set(choices)) > 1:
        raise ValueError(
            f"its annotations disagree ({choices}); resolve them in Label Studio and export again."
        )
    chosen, rejected = (
        (data["left"], data["right"]) if choices[0] == "left" else (data["right"], data["left"])
    )
    return {
        "prompt": data.get("messages") or data["prompt"],
        "chosen": chosen,
        "rejected": rejected,
        "provenance": {"method": "human", "tool": "labelStudio", "task": task.get("id")},
    }
