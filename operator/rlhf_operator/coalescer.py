"""One run per key at a time: a call that arrives while its key runs asks for one more pass
instead of holding a worker thread on a lock (watch events of one job come in bursts)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Coalescer(Generic[K]):
    def __init__(self, work: Callable[[K], None]) -> None:
        self._work = work
        self._guard = threading.Lock()
        self._running: set[K] = set()
        self._again: set[K] = set()

    def run(self, key: K) -> None:
        """Runs `work(key)` now, or, if it runs already, once more after the current pass."""
        with self._guard:
            if key in self._running:
                self._again.add(key)
                return
            self._running.add(key)
        while True:
            try:
                self._work(key)
            except BaseException:
                with self._guard:
                    self._running.discard(key)
                    self._again.discard(key)
                raise
            with self._guard:
                # Checked and released under one lock, so a request arriving now is not lost.
                if key not in self._again:
                    self._running.discard(key)
                    return
                self._again.discard(key)
