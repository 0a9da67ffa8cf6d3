"""Bad configuration or input: a clear error, exit 78, and no output that looks complete."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.train


def _run(
    stage: str, spec: dict[str, Any], root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    from rlhf_operator.workloads.__main__ import main
    from tests.train.conftest import stage_config

    config = tmp_path / f"{stage}.json"
    config.write_text(json.dumps(stage_config(str(root), spec, "precompute")))
    term = tmp_path / "termination"
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(term))
    code = main([stage, "--config", str(config)])
    return code, json.loads(term.read_text())


def _spec(pipeline: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["precompute"]["shards"] = 1
    return spec


def test_missing_prompts_file(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(pipeline)
    spec["dataset"]["prompts"]["source"] = str(tmp_path / "nope.jsonl")
    code, term = _run("precompute", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "DatasetNotFound" and "nope.jsonl" in term["error"]
    assert not (tmp_path / "root" / "precompute" / "manifest.json").exists()


def test_malformed_prompt_row(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "w01 "}\n{"prompt": "w02 "}\n{"prompt": \n')
    spec = _spec(pipeline)
    spec["dataset"]["prompts"]["source"] = str(prompts)
    code, term = _run("precompute", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "MalformedRow" and "line 3" in term["error"]
    prompts.write_text('{"prompt": "w01 "}\n{"text": "w02 "}\n')
    code, term = _run("precompute", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and "line 2" in term["error"]


def test_malformed_chat_prompt_rows(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "chat-prompts.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "w01 "}]},
        {"messages": "w02 "},  # line 2: not a list
        {"messages": [{"role": "user"}]},  # line 3: no content
        {"messages": [{"role": "robot", "content": "w03 "}]},  # line 4: unknown role
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = _spec(pipeline)
    spec["dataset"]["prompts"]["source"] = str(prompts)
    code, term = _run("precompute", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "MalformedRow", term
    error = term["error"]
    assert str(prompts) in error and "3 defects" in error
    assert "line 2: `messages` must be a non-empty list" in error
    assert "line 3: `messages[0]` must have a string `role` and a string `content`" in error
    assert "line 4: `messages[0]` has role 'robot'" in error
    assert not (tmp_path / "root" / "precompute" / "manifest.json").exists()
    # Well-formed chats on a tokenizer without a chat template (the tiny one) cannot be rendered.
    prompts.write_text("\n".join(json.dumps(r) for r in rows[:1] * 4) + "\n")
    code, term = _run("precompute", spec, tmp_path / "root2", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "NoChatTemplate" and "baseModel.tokenizer" in term["error"]


def test_wrong_model_path(pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(pipeline)
    spec["baseModel"]["source"] = str(tmp_path / "no-model")
    code, term = _run("precompute", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "ModelNotFound"
    assert not list((tmp_path / "root" / "precompute").glob("responses-*"))


def test_tokenizer_model_mismatch(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pipeline["spec"]["baseModel"]["source"])
    tokenizer.add_tokens([f"extra{i}" for i in range(10)])
    tokenizer.save_pretrained(tmp_path / "big-tokenizer")
    spec = _spec(pipeline)
    spec["baseModel"]["tokenizer"] = str(tmp_path / "big-tokenizer")
    code, term = _run("precompute", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "TokenizerModelMismatch"


@pytest.mark.parametrize(
    ("row", "reason", "fragment"),
    [
        ({"prompt": "UNKNOWN ", "chosen": "a", "rejected": "b"}, "UnknownPrompt", "line 2"),
        ({"prompt": "KNOWN", "chosen": "same", "rejected": "same"}, "TiedRanking", "line 2"),
        ({"prompt": "KNOWN", "responses": ["only one"], "ranking": [1]}, "TooFewResponses", "line 2"),
        ({"prompt": "KNOWN", "responses": ["a", "b"], "ranking": [1, 1]}, "TiedRanking", "line 2"),
        ({"prompt": "KNOWN", "chosen": 3}, "MalformedRow", "line 2"),
    ],
)
def test_bad_human_rankings(  # noqa: PLR0917 - pytest parameters
    pipeline: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    row: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    spec = _spec(pipeline)
    known = json.loads(Path(spec["dataset"]["prompts"]["source"]).read_text().splitlines()[0])["prompt"]
    good = {"prompt": known, "chosen": "good great", "rejected": "w01"}
    row = {k: (known if v == "KNOWN" else v) for k, v in row.items()}
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    spec["stages"]["ranking"] = {"method": "human", "human": {"source": str(rankings)}}
    code, term = _run("ranking", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == reason and fragment in term["error"], term
    assert not (tmp_path / "root" / "ranking" / "pairs.jsonl").exists()


def test_every_defect_of_a_rankings_file_is_reported_with_its_line(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(pipeline)
    known = json.loads(Path(spec["dataset"]["prompts"]["source"]).read_text().splitlines()[0])["prompt"]
    lines = [
        json.dumps({"prompt": known, "chosen": "good great", "rejected": "w01"}),
        "",
        "",
        json.dumps({"prompt": known, "chosen": "same", "rejected": "same"}),  # line 4: a tie
        json.dumps({"prompt": "UNKNOWN ", "chosen": "a", "rejected": "b"}),  # line 5
        '{"prompt": ',  # line 6: not JSON
        "",
        json.dumps({"prompt": known, "responses": ["only one"], "ranking": [1]}),  # line 8
    ]
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text("\n".join(lines) + "\n")
    spec["stages"]["ranking"] = {"method": "human", "human": {"source": str(rankings)}}
    code, term = _run("ranking", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and "has 4 defects" in term["error"], term
    reported = re.findall(r"line (\d+): ([^|]*)", term["error"])
    assert [int(number) for number, _ in reported] == [4, 5, 6, 8]
    assert "same text (a tie)" in reported[0][1] and "not in the prompts dataset" in reported[1][1]
    assert "not valid JSON" in reported[2][1] and "fewer than 2 responses" in reported[3][1]
    assert term["reason"] == "TiedRanking"  # the first defect's


def test_human_rankings_wait_times_out(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(pipeline)
    spec["stages"]["ranking"] = {
        "method": "human",
        "human": {"source": str(tmp_path / "later.jsonl"), "waitTimeoutSeconds": 1},
    }
    code, term = _run("ranking", spec, tmp_path / "root", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "RankingsNotFound"


def test_stage_before_its_input(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, term = _run("reward-model", _spec(pipeline), tmp_path / "empty", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "RankingsNotFound"
    code, term = _run("evaluation", _spec(pipeline), tmp_path / "empty", tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "PolicyNotFound"


def test_invalid_stage_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlhf_operator.workloads.__main__ import main

    config = tmp_path / "bad.json"
    config.write_text('{"job": {}, "spec": {}}')
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(tmp_path / "t"))
    assert main(["policy", "--config", str(config)]) == 78
    assert main(["policy", "--config", str(tmp_path / "missing.json")]) == 78


def test_pairs_too_long_for_the_reward_model(
    pipeline: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair that does not fit loses prompt tokens from the left; one whose response alone is too long
    is dropped, counted, and more of them than maxDroppedFraction fails the stage naming both fields."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(pipeline["root"] / "ranking", root / "ranking")
    spec = _spec(pipeline)
    # The tiny policy's responses mostly run to maxNewTokens (16) without EOS: 17 tokens with it.
    spec["stages"]["rewardModel"].update(maxLength=16, maxDroppedFraction=0.5, epochs=1)
    code, term = _run("reward-model", spec, root, tmp_path, monkeypatch)
    assert code == 78 and term["reason"] == "PairsTooLong", term
    assert "stages.rewardModel.maxLength (16 tokens)" in term["error"]
    assert "stages.rewardModel.maxDroppedFraction (0.5)" in term["error"]
    assert not (root / "reward-model").exists()
    # Allowed to drop nearly all: it trains on the rest and says how many were cut and dropped.
    spec["stages"]["rewardModel"]["maxDroppedFraction"] = 0.99
    code, term = _run("reward-model", spec, root, tmp_path, monkeypatch)
    metrics = term["metrics"]
    assert code == 0 and metrics["rewardModelTruncatedPairs"] > 0 and metrics["rewardModelDroppedPairs"] > 0
    assert "maxLength 16:" in term["message"], term
