"""Dynamic batching: concurrent requests are merged into one forward pass.

Each request puts (texts, their tokens, future) on a queue; one worker takes the first item, keeps
collecting until `max_tokens` tokens (or `max_batch` texts) or `max_wait_ms` have passed, runs the
model once in a thread (so the event loop keeps accepting requests) and splits the scores back to
the waiting requests. Tokens, not texts, measure a batch: 64 long texts cost many times 64 short
ones, and the scorer splits the merged batch into forwards by tokens again (`reward_scoring`). When a
merged batch fails, each of its requests is retried alone, so one request the model cannot score
fails only itself, never the requests of other clients that happened to share its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

ScoreFn = Callable[[list[str]], list[float]]


Item = tuple[list[str], int, "asyncio.Future[list[float]]"]


class DynamicBatcher:
    def __init__(
        self,
        score: ScoreFn,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        enabled: bool = True,
        max_tokens: int | None = None,
    ) -> None:
        self.score = score
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.enabled = enabled
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.batches = 0

    async def start(self) -> None:
        if self.enabled and self._worker is None:
            self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, texts: list[str], tokens: int | None = None) -> list[float]:
        """Scores `texts` (`tokens` of them in all, when the server counted them)."""
        if not self.enabled:
            # Baseline: one forward pass per request, one at a time.
            async with self._lock:
                self.batches += 1
                return await asyncio.to_thread(self.score, texts)
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, len(texts) if tokens is None else tokens, future))
        return await future

    def _full(self, texts: int, tokens: int) -> bool:
        return texts >= self.max_batch or (self.max_tokens is not None and tokens >= self.max_tokens)

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            texts, tokens = len(items[0][0]), items[0][1]
            deadline = time.monotonic() + self.max_wait_s
            while not self._full(texts, tokens):
                # Drain what is already queued without waiting; poll briefly (cheaper than a
                # wait_for task per item) until the batch is full or the deadline passes.
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, 0.0005))
                    continue
                items.append(item)
                texts, tokens = texts + len(item[0]), tokens + item[1]
            self.batches += 1
            await self._score_batch(items)

    async def _score_batch(self, items: list[Item]) -> None:
        texts = [t for chunk, _, _ in items for t in chunk]
        try:
            scores = await asyncio.to_thread(self.score, texts)
        except Exception as exc:
            if len(items) == 1:
                _, _, future = items[0]
                if not future.done():
                    future.set_exception(exc)
                return
            for item in items:  # find the request that failed it; the others still get scores
                await self._score_batch([item])
            return
        offset = 0
        for chunk, _, future in items:
            if not future.done():
                future.set_result(scores[offset : offset + len(chunk)])
            offset += len(chunk)
