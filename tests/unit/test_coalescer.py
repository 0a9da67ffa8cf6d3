"""Coalescing: one pass per key at a time; requests during a pass ask for exactly one more."""

from __future__ import annotations

import threading

import pytest

from rlhf_operator.coalescer import Coalescer


def test_requests_during_a_pass_coalesce_into_one_more_pass() -> None:
    started, release = threading.Event(), threading.Event()
    passes: list[str] = []

    def work(key: str) -> None:
        passes.append(key)
        if len(passes) == 1:
            started.set()
            assert release.wait(10)

    coalescer = Coalescer(work)
    runner = threading.Thread(target=coalescer.run, args=("a",))
    runner.start()
    assert started.wait(10)
    for _ in range(3):  # return at once: the running pass will go again
        coalescer.run("a")
    coalescer.run("b")  # another key is not held up
    assert passes == ["a", "b"]
    release.set()
    runner.join(10)
    assert passes == ["a", "b", "a"]
    coalescer.run("a")  # idle again: runs at once
    assert passes == ["a", "b", "a", "a"]


def test_a_failing_pass_releases_its_key() -> None:
    calls: list[int] = []

    def work(key: int) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("boom")

    coalescer = Coalescer(work)
    with pytest.raises(RuntimeError):
        coalescer.run(1)
    coalescer.run(1)
    assert calls == [1, 1]
