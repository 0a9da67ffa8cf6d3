"""Reward scoring keeps up: batching by tokens, length-sorted forwards, and a client that overlaps
its micro-batches and never re-sends what the server may still be computing (the real server app
on 127.0.0.1, with a scoring function the test controls)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from rlhf_operator.workloads.batcher import DynamicBatcher
from rlhf_operator.workloads.reward_client import RemoteRewardClient, RewardTimeoutError
from rlhf_operator.workloads.reward_scoring import length_batches
from tests.support.ports import free_port

pytestmark = pytest.mark.unit


def test_length_batches_sort_longest_first_and_keep_padded_tokens_in_budget() -> None:
    lengths = [3, 40, 5, 38, 4, 6, 90]
    batches = length_batches(lengths, token_budget=80, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= 80
    # 90 tokens is over the budget: alone; the two long ones together, never padding short ones;
    # the short ones max_rows at a time.
    assert batches == [[6], [1, 3], [5, 2, 4], [0]]
    assert length_batches([], 10, 10) == []


def test_batcher_closes_a_batch_at_its_token_budget() -> None:
    calls: list[int] = []

    def score(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        return [1.0] * len(texts)

    async def main() -> None:
        batcher = DynamicBatcher(score, max_batch=1000, max_wait_ms=200, max_tokens=10)
        await batcher.start()
        try:
            # 8 requests of 1 text of 4 tokens: 3 make 12 >= 10 tokens, so 3 + 3 + 2.
            await asyncio.gather(*(batcher.submit([f"t{i}"], tokens=4) for i in range(8)))
        finally:
            await batcher.stop()

    asyncio.run(main())
    assert calls == [3, 3, 2]


@contextmanager
def reward_server(
    score: Callable[[list[str]], list[float]], ready: dict[str, bool] | None = None
) -> Iterator[str]:
    """The reward server's own app (make_app) on a free loopback port, in a thread; `ready` gets
    the app's readiness flag."""
    from aiohttp import web

    from rlhf_operator.workloads.serve_reward import READY, make_app

    port = free_port()
    loop = asyncio.new_event_loop()
    app = make_app(score, "tok", max_wait_ms=50)
    if ready is not None:
        app[READY] = ready
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_client_keeps_two_micro_batches_in_flight_and_keeps_their_order() -> None:
    calls: list[list[str]] = []

    def slow_score(texts: list[str]) -> list[float]:
        calls.append(texts)
        time.sleep(0.3)
        return [float(t) for t in texts]

    texts = [str(i) for i in range(12)]
    with reward_server(slow_score) as url:
        overlapped = RemoteRewardClient(url, "tok", batch_size=4, in_flight=2).score_texts(texts)
        first_overlapped = len(calls[0])
        calls.clear()
        sequential = RemoteRewardClient(url, "tok", batch_size=4, in_flight=1).score_texts(texts)
    assert overlapped == sequential == [float(t) for t in texts]
    # Two micro-batches reached the server together (its batcher merged them); one at a time, never.
    assert first_overlapped == 8
    assert [len(c) for c in calls] == [4, 4, 4]


def test_client_does_not_resend_a_request_the_server_is_still_computing() -> None:
    calls: list[int] = []

    def stuck_score(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        time.sleep(2.0)
        return [0.0] * len(texts)

    with reward_server(stuck_score) as url:
        client = RemoteRewardClient(url, "tok", timeout_s=0.5, retries=3, backoff_s=0.05)
        with pytest.raises(RewardTimeoutError, match="not re-sent"):
            client.score_texts(["a", "b"])
        time.sleep(2.5)  # long enough for any re-sent copy to have reached the scorer
    assert calls == [2]


def test_client_resends_what_the_server_refused() -> None:
    calls: list[int] = []

    def score(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        return [1.0] * len(texts)

    ready = {"ready": False}  # a loading server answers 503: refused, so re-sent until ready
    with reward_server(score, ready) as url:
        client = RemoteRewardClient(url, "tok", retries=5, backoff_s=0.2)
        timer = threading.Timer(0.5, lambda: ready.update(ready=True))
        timer.start()
        assert client.score_texts(["a"]) == [1.0]
        timer.join()
    assert calls == [1]
