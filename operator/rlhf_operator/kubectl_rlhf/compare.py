"""`kubectl rlhf compare JOB...`: the jobs side by side (a table of their status metrics and the
last value of each curve) and a PNG of their policy curves from the TensorBoard event files the
trainers wrote (`tensorboard/policy/`, pulled as `kubectl rlhf pull` does).

Curves are TensorBoard scalar tags; the default pair is the policy's mean reward and KL, under the
names every algorithm logs (`train/reward`, `train/kl`); `--tag` adds any other (a new progress
diagnostic a trainer logs is one `--tag` away, nothing to change here).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_operator.kubectl_rlhf.kubectl import Kubectl
from rlhf_operator.kubectl_rlhf.pull import TENSORBOARD, pull

Manifest = dict[str, Any]
DEFAULT_TAGS = ("train/reward", "train/kl")
#: Status metrics in the table, in order (absent ones show as -).
COLUMNS = ("policyStep", "meanReward", "kl", "winRate", "rewardGain", "evaluationKL")


@dataclass
class Run:
    ref: str
    status: Manifest
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files under `log_dir`, as (step, value) in step order."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer(size_guidance={"scalars": 0})
    multiplexer.AddRunsFromDirectory(str(log_dir))
    multiplexer.Reload()
    curves: dict[str, list[tuple[int, float]]] = {}
    for run, tags in multiplexer.Runs().items():
        for tag in tags.get("scalars", []):
            points = curves.setdefault(tag, [])
            points.extend((e.step, e.value) for e in multiplexer.Scalars(run, tag))
    return {tag: sorted(points) for tag, points in curves.items()}


def table(runs: list[Run], tags: list[str]) -> str:
    """One row per job: phase, status metrics, GPU-hours and the last value of each curve."""
    header = ["JOB", "PHASE", *COLUMNS, "GPU-H", *(f"last {t}" for t in tags)]
    rows = [header]
    for run in runs:
        metrics = run.status.get("metrics") or {}
        usage = run.status.get("usage") or {}
        last = [run.curves[t][-1][1] if run.curves.get(t) else None for t in tags]
        rows.append(
            [run.ref, run.status.get("phase") or "-", *(_cell(metrics.get(c)) for c in COLUMNS),
             _cell(usage.get("gpuHours")), *(_cell(v) for v in last)]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot(runs: list[Run], tags: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tags), figsize=(5.5 * len(tags), 4), squeeze=False)
    for axis, tag in zip(axes[0], tags, strict=True):
        for run in runs:
            points = run.curves.get(tag) or []
            if points:
                axis.plot([s for s, _ in points], [v for _, v in points], label=run.ref)
        axis.set_title(tag)
        axis.set_xlabel("policy step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def compare(kube: Kubectl, refs: list[str], tags: list[str], out: Path) -> str:
    runs = []
    for ref in refs:
        job = kube.rlhfjob(ref)
        with tempfile.TemporaryDirectory(prefix="kubectl-rlhf-") as scratch:
            pull(kube, job, [f"{TENSORBOARD}/policy"], Path(scratch))
            curves = read_scalars(Path(scratch) / TENSORBOARD / "policy")
        runs.append(Run(ref, job.get("status") or {}, curves))
    plot(runs, tags, out)
    missing = [f"{r.ref}: {t}" for r in runs for t in tags if not r.curves.get(t)]
    note = f"\nno points for {'; '.join(missing)}" if missing else ""
    return f"{table(runs, tags)}\n\ncurves: {out}{note}"
