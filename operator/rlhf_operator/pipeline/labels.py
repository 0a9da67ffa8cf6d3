"""Human labels the ranking stage waits for: what file, and until when, said on the RLHFJob.

The ranking pod polls for the rankings file (`stages.ranking.human.waitTimeoutSeconds`); without
this a user would find the wait only in the pod's log. The operator knows the file and the timeout
from the spec and the stage's start from its Job, so the wait is stated without asking the pod.
"""

from __future__ import annotations

from datetime import timedelta

from rlhf_operator.api.v1alpha1 import RankingMethod, RLHFJobSpec, StageStatus


def awaited_labels(spec: RLHFJobSpec, record: StageStatus) -> str | None:
    """ "Waits until T for the human rankings at F" while a human-ranked stage may still wait."""
    ranking = spec.stages.ranking
    human = ranking.human
    if ranking.method is not RankingMethod.HUMAN or human is None or not human.source:
        return None
    if not human.wait_timeout_seconds or record.start_time is None:
        return None
    deadline = record.start_time + timedelta(seconds=human.wait_timeout_seconds)
    return (
        f"Waits until {deadline:%Y-%m-%dT%H:%M:%SZ} for the human rankings at {human.source} "
        "(Label Studio's JSON export or JSONL), then reads them."
    )
