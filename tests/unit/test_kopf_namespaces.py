"""The namespace watch's listing counts (rlhf_operator.kopf_namespaces), on Kopf's own insights."""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.structs import bodies, references

from rlhf_operator import kopf_namespaces

PATTERNS = ["team-*"]


def listed(name: str) -> bodies.RawEvent:
    return bodies.RawEvent(type=None, object={"metadata": {"name": name}})


def process(processor: Any, event: bodies.RawEvent, insights: references.Insights) -> None:
    asyncio.run(processor(raw_event=event, namespaces=PATTERNS, insights=insights))


def test_a_listed_namespace_that_matches_is_watched_and_one_that_does_not_is_not() -> None:
    insights = references.Insights()
    process(kopf_namespaces.process_namespace_event, listed("team-a"), insights)
    process(kopf_namespaces.process_namespace_event, listed("other"), insights)
    assert insights.namespaces == {"team-a"}


def test_kopf_alone_still_ignores_the_listing() -> None:
    """Why the module exists: when a Kopf upgrade makes this fail, kopf_namespaces can go."""
    insights = references.Insights()
    process(kopf_namespaces._kopf_process, listed("team-a"), insights)
    assert insights.namespaces == set()


def test_deleted_and_added_events_go_to_kopf_unchanged() -> None:
    insights = references.Insights()
    process(
        kopf_namespaces.process_namespace_event,
        bodies.RawEvent(type="ADDED", object={"metadata": {"name": "team-b"}}),
        insights,
    )
    process(
        kopf_namespaces.process_namespace_event,
        bodies.RawEvent(type="DELETED", object={"metadata": {"name": "team-b"}}),
        insights,
    )
    assert insights.namespaces == set()
