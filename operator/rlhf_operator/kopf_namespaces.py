"""Namespaces that match the operator's patterns are watched even when they appear while Kopf lists.

Kopf 1.45 lists the namespaces once at startup, then starts a namespace watch whose own listing
(events of type None) it ignores, expecting only ADDED events after it. A namespace created between
the two listings, or while the watch lists again (after a lost connection or a 410 Gone), shows up
in an ignored listing only: Kopf never watches it, and its RLHFJobs never get a status until the
namespace object changes. A job applied in a fresh namespace just after the operator started hit
this in CI. `install` makes the watch's listing count, as the first listing does.
"""

from __future__ import annotations

from typing import Any

from kopf._cogs.structs import bodies
from kopf._core.reactor import observation

_kopf_process = observation.process_discovered_namespace_event


async def process_namespace_event(*, raw_event: bodies.RawEvent, **kwargs: Any) -> None:
    """Kopf's processing, with a listed namespace taken as added (a known one costs nothing)."""
    if raw_event["type"] is None:
        name = raw_event["object"]["metadata"]["name"]
        if name in kwargs["insights"].namespaces:
            return
        raw_event = bodies.RawEvent(type="ADDED", object=raw_event["object"])
    await _kopf_process(raw_event=raw_event, **kwargs)


def install() -> None:
    """Before `kopf.run`: Kopf's namespace observer looks the processor up when it starts."""
    observation.process_discovered_namespace_event = process_namespace_event
