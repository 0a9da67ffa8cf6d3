"""`kubectl rlhf logs JOB --stage S [--rank N | --all]`: a stage's pod logs by rank (the Indexed
Job's completion index: rank 0 is the node that reports progress), the newest attempt of each."""

from __future__ import annotations

import sys
from typing import Any

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.kubectl_rlhf.kubectl import Kubectl, PluginError
from rlhf_operator.naming import LABEL_JOB_UID, LABEL_STAGE
from rlhf_operator.stages import STAGES

Manifest = dict[str, Any]
INDEX = "batch.kubernetes.io/job-completion-index"


def stage_named(text: str) -> StageName:
    """A stage by its slug (`reward-model`) or its API name (`rewardModel`)."""
    for stage, definition in STAGES.items():
        if isinstance(stage, StageName) and text in (definition.slug, stage.value):
            return stage
    names = ", ".join(d.slug for s, d in STAGES.items() if isinstance(s, StageName))
    raise PluginError(f"unknown stage {text!r}: use one of {names}")


def rank_of(pod: Manifest, position: int) -> int:
    """The completion index of a Job's pod; a Deployment's pods (the reward server) count in name order."""
    index = ((pod.get("metadata") or {}).get("annotations") or {}).get(INDEX)
    return int(index) if index is not None else position


def newest_per_rank(pods: list[Manifest]) -> dict[int, Manifest]:
    """The newest pod of each rank (a retried rank has several)."""
    ordered = sorted(pods, key=lambda p: p["metadata"]["name"])
    by_rank: dict[int, Manifest] = {}
    for position, pod in enumerate(ordered):
        rank = rank_of(pod, position)
        kept = by_rank.get(rank)
        if kept is None or pod["metadata"].get("creationTimestamp", "") >= kept["metadata"].get(
            "creationTimestamp", ""
        ):
            by_rank[rank] = pod
    return dict(sorted(by_rank.items()))


def choose(pods: list[Manifest], stage: str, rank: int | None, every: bool) -> list[tuple[int, Manifest]]:
    by_rank = newest_per_rank(pods)
    if not by_rank:
        raise PluginError(f"stage {stage} has no pods (not started yet, or its Job was deleted)")
    if every:
        return list(by_rank.items())
    wanted = 0 if rank is None else rank
    if wanted not in by_rank:
        raise PluginError(f"stage {stage} has no pod of rank {wanted}; ranks: {sorted(by_rank)}")
    return [(wanted, by_rank[wanted])]


def show_logs(
    kube: Kubectl, ref: str, stage_text: str, *, rank: int | None, every: bool, tail: int | None
) -> None:
    job = kube.rlhfjob(ref)
    stage = stage_named(stage_text)
    namespace, uid = job["metadata"]["namespace"], job["metadata"]["uid"]
    pods = kube.items("pods", "-l", f"{LABEL_JOB_UID}={uid},{LABEL_STAGE}={stage.value}", namespace=namespace)
    chosen = choose(pods, stage_text, rank, every)
    for rank_number, pod in chosen:
        args = ["logs", pod["metadata"]["name"]] + ([f"--tail={tail}"] if tail is not None else [])
        text = kube.run(*args, namespace=namespace)
        if len(chosen) > 1:
            prefix = f"[rank {rank_number}] "
            # A rank that printed nothing still says so: every rank asked for shows.
            text = "".join(prefix + line for line in text.splitlines(keepends=True)) or (
                f"{prefix}(no output from pod {pod['metadata']['name']})\n"
            )
        sys.stdout.write(text)
