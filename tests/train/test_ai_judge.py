"""The AI judge, proven against the synthetic task's known preference: run in the ranking pod
through its chat template, and served behind a local OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.api.v1alpha1 import JudgeMode
from rlhf_operator.tiny.judge import build_judge_tokenizer, train_tiny_judge
from rlhf_operator.tiny.task import count_positive, make_prompts, sample_response
from rlhf_operator.workloads.judge_prompts import render, score_question
from tests.support.ports import free_port
from tests.train.conftest import REPO, env, stage_config

pytestmark = pytest.mark.train
TOKEN = "judge-key"
SERVED = "tiny-judge"


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_judge(tmp_path_factory.mktemp("judge") / "tiny-judge")


def _held_out_pairs(count: int) -> list[tuple[str, str, str]]:
    """(prompt, a, b) with a true preference, from a seed the judge never trained on."""
    rng = random.Random(12345)
    pairs: list[tuple[str, str, str]] = []
    while len(pairs) < count:
        prompt = make_prompts(1, rng.randrange(10**6))[0]
        a, b = sample_response(rng), sample_response(rng)
        if count_positive(a) != count_positive(b):
            pairs.append((prompt, a, b))
    return pairs


def _agreement(rank: Any, pairs: list[tuple[str, str, str]]) -> float:
    agree = 0
    for prompt, a, b in pairs:
        score_a, score_b = rank(prompt, [a, b])
        agree += (score_a > score_b) == (count_positive(a) > count_positive(b))
    return agree / len(pairs)


def test_judge_is_prompted_through_its_chat_template() -> None:
    from rlhf_operator.tiny.model import build_tiny_tokenizer

    messages = score_question("Be kind.", "w01 ", "good").messages
    templated = render(build_judge_tokenizer(), messages)
    assert templated.startswith("<|system|> Be kind. <|user|> Prompt: w01")
    assert templated.endswith("<|assistant|>")
    plain = render(build_tiny_tokenizer(), messages)  # no template: plain text
    assert "<|" not in plain and plain.endswith("Answer Yes or No.\nAnswer:")


def test_tiny_judge_agrees_with_the_true_preference(judge_dir: Path) -> None:
    from rlhf_operator.workloads.judges import LogProbJudge

    judge = LogProbJudge(str(judge_dir), "Prefer the response that is more helpful.", JudgeMode.SCORE)
    agreement = _agreement(judge.rank_group, _held_out_pairs(200))
    print(f"tiny judge agreement with the true preference: {agreement:.3f}")
    assert agreement >= 0.9


@pytest.fixture(scope="module")
def endpoint(judge_dir: Path) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests/train/openai_judge_server.py"),
            str(judge_dir),
            str(port),
            TOKEN,
            SERVED,
        ],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_listening(url + "/chat/completions", server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_listening(url: str, server: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=2)
        except urllib.error.HTTPError:
            return  # it answered (401): listening
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


def _endpoint(url: str, **extra: Any) -> Any:
    from rlhf_operator.api.v1alpha1 import JudgeEndpoint

    return JudgeEndpoint.model_validate({"url": url, "model": SERVED, **extra})


def test_endpoint_judge_ranks_like_the_local_judge(judge_dir: Path, endpoint: str) -> None:
    from rlhf_operator.workloads.endpoint_judge import EndpointJudge
    from rlhf_operator.workloads.judges import LogProbJudge, rank_group

    served = EndpointJudge(_endpoint(endpoint, maxConcurrency=4), api_key=TOKEN)
    rubric = "Prefer the response that is more helpful."

    def rank(prompt: str, responses: list[str]) -> list[float]:
        return rank_group(served.ask, rubric, "score", prompt, responses)

    pairs = _held_out_pairs(60)
    assert _agreement(rank, pairs) >= 0.9
    local = LogProbJudge(str(judge_dir), rubric, JudgeMode.SCORE)
    prompt, a, b = pairs[0]
    assert rank(prompt, [a, b]) == pytest.approx(local.rank_group(prompt, [a, b]), abs=1e-3)


def _ranking_stage(
    pipeline: dict[str, Any], root: Path, judge: dict[str, Any], extra_env: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["ranking"] = {"method": "aiJudge", "aiJudge": {"mode": "score", **judge}}
    config = root / "ranking.json"
    config.write_text(json.dumps(stage_config(str(root), spec, "ranking")))
    term = root / "term"
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_operator.workloads", "ranking", "--config", str(config)],
        env={**env(), "RLHF_TERMINATION_MESSAGE_PATH": str(term), **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, json.loads(term.read_text())


def test_ranking_stage_through_the_endpoint(
    pipeline: dict[str, Any], endpoint: str, fresh_root: Path
) -> None:
    judge = {"endpoint": {"url": endpoint, "model": SERVED, "apiKeySecret": {"name": "judge"}}}
    code, term = _ranking_stage(pipeline, fresh_root, judge, {"RLHF_JUDGE_API_KEY": TOKEN})
    assert code == 0, term
    pairs = [json.loads(line) for line in (fresh_root / "ranking" / "pairs.jsonl").read_text().splitlines()]
    # Responses with as many positive words are equal to the task, not to the judge (their neutral
    # words differ), so only pairs the task itself ranks are scored.
    ranked = [p for p in pairs if count_positive(p["chosen"]) != count_positive(p["rejected"])]
    right = sum(count_positive(p["chosen"]) > count_positive(p["rejected"]) for p in ranked)
    assert len(ranked) >= 10 and right / len(ranked) >= 0.9, (right, len(ranked), len(pairs))
    assert {p["provenance"]["method"] for p in pairs} == {"aiJudge:score"}


def test_endpoint_errors_name_the_url(pipeline: dict[str, Any], endpoint: str, fresh_root: Path) -> None:
    wrong_key = {"endpoint": {"url": endpoint, "model": SERVED, "maxRetries": 0}}
    code, term = _ranking_stage(pipeline, fresh_root, wrong_key, {"RLHF_JUDGE_API_KEY": "wrong"})
    assert code == 78 and term["reason"] == "JudgeUnauthorized" and endpoint in term["error"], term
    unknown_model = {"endpoint": {"url": endpoint, "model": "other", "maxRetries": 0}}
    code, term = _ranking_stage(pipeline, fresh_root, unknown_model, {"RLHF_JUDGE_API_KEY": TOKEN})
    assert code == 78 and term["reason"] == "JudgeNotFound" and "'other'" in term["error"], term
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    unreachable = {"endpoint": {"url": nowhere, "model": SERVED, "maxRetries": 1, "timeoutSeconds": 2}}
    code, term = _ranking_stage(pipeline, fresh_root, unreachable, {})
    assert code == 1 and nowhere in term["error"] and "did not answer after 1 retries" in term["error"], term
