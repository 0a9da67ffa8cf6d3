"""What to change so a training stage fits: the settings tried in order, each kept, until it fits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rlhf_operator.memory_estimate import GIB, Setup
from rlhf_operator.pipeline.fit import StageFit, refit

MAX_NODES = 64


def _steps(fit: StageFit) -> list[tuple[Callable[[Setup], Setup | None], Callable[[Setup], str]]]:
    """(change, how the spec says it); a change that does not apply returns None."""
    at = f"stages.{fit.section}"
    return [
        (lambda s: None if s.activation_checkpointing else replace(s, activation_checkpointing=True),
         lambda s: f"{at}.activationCheckpointing: true"),
        (lambda s: replace(s, micro_batch=max(1, s.micro_batch // 4)) if s.micro_batch > 1 else None,
         lambda s: f"{at}.microBatchSize: {s.micro_batch}"),
        (lambda s: replace(s, strategy="fsdp") if s.strategy == "ddp" else None,
         lambda s: f"{at}.distributed.strategy: fsdp"),
        (lambda s: replace(s, lora_rank=16) if s.lora_rank is None else None,
         lambda s: f"{at}.lora: {{rank: 16}}"),
    ]  # fmt: skip


def _more_nodes(fit: StageFit) -> tuple[StageFit, int] | None:
    """The fewest nodes (same GPUs per node, fsdp) that fit, if any."""
    setup = fit.setup
    if setup.strategy != "fsdp":
        return None
    nodes = setup.gpus // setup.gpus_per_node
    for more in range(nodes + 1, MAX_NODES + 1):
        candidate = refit(fit, replace(setup, gpus=more * setup.gpus_per_node))
        if candidate.gpu_fits:
            return candidate, more
    return None


def suggested_fix(fit: StageFit) -> str:
    """A sentence: the changes that make the stage fit, and the estimate then (or that none does)."""
    sentences = []
    if fit.gpu_fits is False:
        current, changes = fit, []
        for change, said in _steps(fit):
            changed = change(current.setup)
            if changed is None:
                continue
            current = refit(current, changed)
            changes.append(said(changed))
            found = current.gpu_fits or _more_nodes(current)
            if found:
                break
        more = None if current.gpu_fits else _more_nodes(current)
        if more is not None:
            current = more[0]
            changes.append(f"stages.{fit.section}.nodes: {more[1]}")
        if current.gpu_fits:
            sentences.append(
                f"It fits with {', '.join(changes)} (about {current.estimate.gib:.0f} GiB per GPU)."
            )
        else:
            sentences.append(
                f"Even with {', '.join(changes) or 'the settings it has'} and {MAX_NODES} nodes it needs "
                f"{current.estimate.gib:.0f} GiB per GPU: use larger GPUs."
            )
    if fit.host_fits is False:
        need = -(-fit.estimate.host_per_node // GIB)
        sentences.append(
            f"Give its pods at least {need}Gi of memory (stages.{fit.section}.pod.resources.memory) on nodes "
            "that have it, or fewer GPUs per pod."
        )
    return " ".join(sentences)
