"""Each scoring request is judged alone: what is refused and why, and batch failure isolation."""

from __future__ import annotations

import asyncio
import json

import pytest

from rlhf_operator.workloads.batcher import DynamicBatcher
from rlhf_operator.workloads.reward_requests import ScoreRequestError, parse_score_request


def _body(value: object) -> bytes:
    return json.dumps(value).encode()


def _words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_body({"texts": ["a b"]}), ["a b"]),
        (_body({"prompts": ["p "], "completions": ["c"]}), ["p c"]),
        (_body({"completions": ["only"]}), ["only"]),
        # An empty completion after a prompt is a real policy sample (EOS at once): it is scored.
        (_body({"prompts": ["p"], "completions": [""]}), ["p"]),
        (_body({"query": ["q r"]}), ["q r"]),
    ],
)
def test_valid_requests(raw: bytes, expected: list[str]) -> None:
    assert parse_score_request(raw, max_items=8, max_tokens=4, count_tokens=_words) == expected


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b'{"texts": ["\xff\xfe"]}', 400, "not valid UTF-8 (byte 12)"),
        (b"{not json", 400, "the body is not JSON"),
        (_body([1, 2]), 400, "must be a JSON object"),
        (_body({"completions": None}), 400, "`completions` must be a list of strings, not null"),
        (_body({"completions": [1, 2]}), 400, "`completions[0]` must be a string, not int"),
        (_body({"texts": ["a", None]}), 400, "`texts[1]` must be a string, not null"),
        (_body({"texts": [""]}), 400, "`texts[0]` is empty"),
        (_body({"texts": []}), 400, "`texts` is empty"),
        (_body({"prompts": ["a"], "completions": ["b", "c"]}), 400, "must have the same length"),
        (_body({"other": 1}), 400, "send `texts`"),
        (_body({"texts": ["a"] * 9}), 413, "at most 8 items"),
        (
            _body({"texts": ["a", "a b c d e"]}),
            400,
            "`texts[1]` is 5 tokens long; the reward model reads at most 4",
        ),
    ],
)
def test_refused_requests_say_why(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(ScoreRequestError) as refused:
        parse_score_request(raw, max_items=8, max_tokens=4, count_tokens=_words)
    assert refused.value.status == status
    assert message in str(refused.value)


def test_a_failing_request_fails_only_itself_in_a_merged_batch() -> None:
    calls: list[int] = []

    def score(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        if "poison" in texts:
            raise RuntimeError("index out of range in self")
        return [float(len(t)) for t in texts]

    async def main() -> list[list[float] | BaseException]:
        batcher = DynamicBatcher(score, max_batch=64, max_wait_ms=50)
        await batcher.start()
        try:
            requests = [["x" * i] for i in range(1, 5)] + [["poison"]] + [["y" * i] for i in range(1, 4)]
            return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and "index out of range" in str(failed[0])
    assert results[:4] == [[1.0], [2.0], [3.0], [4.0]] and results[5:] == [[1.0], [2.0], [3.0]]
    assert calls[0] == 8 and len(calls) == 1 + 8  # the merged batch, then each request alone
