"""`kubectl rlhf status`: the RLHFJob's stages with progress bars, metrics, conditions and GPU-hours,
rendered from the resource alone (a pure function of it and the time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES
from rlhf_operator.stages import STAGES

Manifest = dict[str, Any]
BAR = 20


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def bar(fraction: float | None) -> str:
    """`[#####-----] 50%`; None (a running stage without steps) shows as running."""
    if fraction is None:
        return f"[{'running':^{BAR}}]     "
    fraction = max(0.0, min(1.0, fraction))
    filled = round(fraction * BAR)
    return f"[{'#' * filled}{'-' * (BAR - filled)}] {fraction:4.0%}"


def stage_fraction(record: Manifest, metrics: Manifest) -> float | None:
    state = record.get("state")
    if state in ("Succeeded", "Skipped"):
        return 1.0
    if state != "Running":
        return 0.0
    if record.get("name") == "policy" and metrics.get("policyTotalSteps"):
        return float(metrics.get("policyStep") or 0) / float(metrics["policyTotalSteps"])
    return None


def _stage_rows(status: Manifest, now: datetime) -> list[str]:
    metrics = status.get("metrics") or {}
    records = {r.get("name"): r for r in status.get("stages") or []}
    rows = [f"{'STAGE':<13}{'STATE':<11}{'PROGRESS':<32}{'TIME':<9}{'GPU-H':<8}MESSAGE"]
    for stage in PIPELINE_STAGES:
        record = records.get(stage.value, {"name": stage.value})
        start, end = _time(record.get("startTime")), _time(record.get("completionTime"))
        took = duration(((end or now) - start).total_seconds()) if start else "-"
        usage = record.get("usage") or {}
        hours = f"{usage['gpuHours']:.3f}" if "gpuHours" in usage else "-"
        message = (record.get("message") or "").replace("\n", " ")
        rows.append(
            f"{STAGES[stage].slug:<13}{record.get('state') or 'Pending':<11}"
            f"{bar(stage_fraction(record, metrics)):<32}{took:<9}{hours:<8}{message}"
        )
    return rows


def render_status(job: Manifest, now: datetime) -> str:
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    start = _time(status.get("startTime"))
    end = _time(status.get("completionTime"))
    age = f", {duration(((end or now) - start).total_seconds())}" if start else ""
    lines = [
        f"RLHFJob {meta.get('namespace')}/{meta.get('name')}: {status.get('phase') or 'Pending'}"
        f" (stage {status.get('currentStage') or '-'}{age})",
        f"  {status.get('message') or 'No status yet: is the operator running?'}",
        "",
        *_stage_rows(status, now),
    ]
    metrics = status.get("metrics") or {}
    if metrics:
        width = max(22, *(len(k) + 2 for k in metrics))  # the longest name still gets a gap
        lines += ["", "Metrics:", *(f"  {k:<{width}}{_number(v)}" for k, v in metrics.items())]
    usage = status.get("usage")
    if usage:
        cost = (
            f", estimated cost {usage['estimatedCost']:.2f}" if usage.get("estimatedCost") is not None else ""
        )
        lines += ["", f"GPU-hours: {usage.get('gpuHours', 0):.3f}{cost} (running pods count to the minute)"]
    conditions = status.get("conditions") or []
    if conditions:
        lines += ["", "Conditions:"]
        for c in conditions:
            text = f" {c['message']}" if c.get("message") and c.get("status") == "True" else ""
            lines.append(f"  {c.get('type', ''):<10}{c.get('status', ''):<7}{c.get('reason', '')}{text}")
    return "\n".join(lines)


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
