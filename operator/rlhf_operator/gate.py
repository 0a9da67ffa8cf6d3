"""The evaluation gate's verdict: a pure function of the gate and the evaluation metrics.

The evaluation stage decides with it whether to copy the policy under `promoted/`, and the operator
whether the job's Promoted condition is True, from the same (rounded) metrics, so both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_operator.api.v1alpha1 import EvaluationGate, Metrics

PROMOTED = "GateMet"
NOT_PROMOTED = "GateNotMet"


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    message: str

    @property
    def reason(self) -> str:
        return PROMOTED if self.promoted else NOT_PROMOTED


def verdict(gate: EvaluationGate, metrics: Metrics) -> Verdict:
    """Every bar the gate sets, with the measured value; a value not measured fails its bar."""
    checks: list[tuple[str, float | None, str, float, bool]] = []
    if gate.min_win_rate is not None:
        value = metrics.win_rate
        checks.append(
            ("win rate", value, ">=", gate.min_win_rate, value is not None and value >= gate.min_win_rate)
        )
    if gate.min_reward_gain is not None:
        value = metrics.reward_gain
        checks.append(
            ("reward gain", value, ">=", gate.min_reward_gain,
             value is not None and value >= gate.min_reward_gain)
        )  # fmt: skip
    if gate.max_kl is not None:
        value = metrics.evaluation_kl
        checks.append(("KL", value, "<=", gate.max_kl, value is not None and value <= gate.max_kl))
    parts = [
        f"{name} {'not measured' if value is None else f'{value:.4g}'} "
        f"{'meets' if ok else 'misses'} {op} {bound:.4g}"
        for name, value, op, bound, ok in checks
    ]
    promoted = all(ok for *_, ok in checks)
    head = "Promoted: " if promoted else "Not promoted: "
    return Verdict(promoted, head + "; ".join(parts) + ".")
