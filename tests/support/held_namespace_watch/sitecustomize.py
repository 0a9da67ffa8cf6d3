"""Test support, on the operator's PYTHONPATH: holds Kopf's namespace watch (after Kopf's first
listing of namespaces) until the file named by RLHF_TEST_HOLD_NAMESPACE_WATCH_UNTIL exists, so a
test creates a namespace inside the window between the two listings on purpose."""

from __future__ import annotations

import os

_RELEASE = os.environ.get("RLHF_TEST_HOLD_NAMESPACE_WATCH_UNTIL")

if _RELEASE:
    import asyncio
    import logging
    from pathlib import Path
    from typing import Any

    from kopf._core.reactor import queueing

    _kopf_watcher = queueing.watcher
    _release = Path(_RELEASE)

    async def _held_watcher(*, resource: Any, **kwargs: Any) -> None:
        if resource.plural == "namespaces":
            logging.getLogger(__name__).warning("namespace watch held until %s exists", _RELEASE)
            while not _release.exists():
                await asyncio.sleep(0.1)
        await _kopf_watcher(resource=resource, **kwargs)

    queueing.watcher = _held_watcher
