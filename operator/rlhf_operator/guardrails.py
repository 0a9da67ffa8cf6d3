"""Guardrails of a running policy: the pure decision, shared by the trainers and the operator.

The trainers feed each step to a `GuardrailMonitor` and stop at the step it trips (within one step);
the operator replays the progress records it reads from the policy's log through the same monitor,
so a trainer that does not check (an older image, a hang between steps) is stopped too.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from rlhf_operator.api.stage_io import ProgressRecord
from rlhf_operator.api.v1alpha1 import Guardrails

#: The condition reason of a stage stopped by a guardrail, and the prefix of its message.
GUARDRAIL_TRIPPED = "GuardrailTripped"


@dataclass(frozen=True)
class Trip:
    """A guardrail that tripped: which one (its spec field), at which step, and the sentence."""

    guardrail: str
    step: int
    message: str

    def status_message(self) -> str:
        return f"{GUARDRAIL_TRIPPED}: {self.message}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class GuardrailMonitor:
    """Watches the steps of one run in order; `observe` returns the trip at the step it happens.

    The reward check tells a stall from a plateau: after `rewardPatienceSteps` steps without a new
    best mean reward it compares the mean of the last that-many steps with the mean of the first
    that-many it saw. No higher is a stall (trip); higher is a run that learned and levelled off,
    which goes on. `judge_stalls=False` leaves that check out, for a replay that did not see the
    run's first steps (its "first" steps would be a plateau's).
    """

    def __init__(self, spec: Guardrails, judge_stalls: bool = True) -> None:
        self.spec = spec
        self.judge_stalls = judge_stalls
        self.kl_run = 0  # consecutive steps over maxKL, ending at the last step seen
        self.best_reward = -math.inf
        self.best_step: int | None = None
        self.last_step: int | None = None
        self.tripped: Trip | None = None
        patience = spec.reward_patience_steps
        self.opening: list[float] = []  # the first `patience` mean rewards seen
        self.recent: deque[float] = deque(maxlen=max(1, patience))

    def observe(
        self,
        step: int,
        mean_reward: float | None,
        kl: float | None,
        loss: float | None = None,
        non_finite: Iterable[str] = (),
    ) -> Trip | None:
        """Feeds one step (a value of None is not reported); a step seen before is ignored."""
        if self.tripped is not None or not self.spec.enabled:
            return self.tripped
        if self.last_step is not None and step <= self.last_step:
            return None
        self.last_step = step
        values = {"loss": loss, "meanReward": mean_reward, "kl": kl}
        bad = sorted({*non_finite, *(k for k, v in values.items() if v is not None and not math.isfinite(v))})
        self.tripped = (
            self._non_finite(step, bad) or self._kl(step, kl) or self._stalled(step, mean_reward, bad)
        )
        return self.tripped

    def _non_finite(self, step: int, bad: list[str]) -> Trip | None:
        if not bad or not self.spec.stop_on_non_finite:
            return None
        return Trip("stopOnNonFinite", step, f"{' and '.join(bad)} not finite (NaN or inf) at step {step}")

    def _kl(self, step: int, kl: float | None) -> Trip | None:
        bound = self.spec.max_kl
        if bound is None or kl is None or not math.isfinite(kl):
            return None
        self.kl_run = self.kl_run + 1 if kl > bound else 0
        if self.kl_run < self.spec.kl_steps:
            return None
        steps = self.spec.kl_steps
        return Trip(
            "maxKL",
            step,
            f"KL {_fmt(kl)} > maxKL {_fmt(bound)} for {steps} step{'s' if steps > 1 else ''} at step {step}",
        )

    def _stalled(self, step: int, reward: float | None, bad: list[str]) -> Trip | None:
        patience = self.spec.reward_patience_steps
        if reward is None or "meanReward" in bad:
            return None
        if len(self.opening) < patience:
            self.opening.append(reward)
        self.recent.append(reward)
        if reward > self.best_reward:
            self.best_reward, self.best_step = reward, step
            return None
        if (
            not self.judge_stalls
            or patience == 0
            or self.best_step is None
            or step - self.best_step < patience
        ):
            return None
        first, last = statistics.fmean(self.opening), statistics.fmean(self.recent)
        if last > first:
            return None  # a plateau above where the run started: it learned and levelled off
        return Trip(
            "rewardPatienceSteps",
            step,
            f"mean reward stalled: {_fmt(last)} over the last {patience} steps is no higher than "
            f"{_fmt(first)} over the first {len(self.opening)}, and its best {_fmt(self.best_reward)} "
            f"(step {self.best_step}) stood for {step - self.best_step} steps "
            f"(rewardPatienceSteps {patience}) at step {step}",
        )


def check_progress(spec: Guardrails, records: Iterable[ProgressRecord]) -> Trip | None:
    """The first trip in a run's progress records (oldest first), as the trainer would have found it.

    The operator sees only the log's tail: a window shorter than `klSteps` or the reward patience
    cannot trip those guardrails here, and the trainer remains their first line.
    """
    seen = list(records)
    # A tail that starts after step 1 cannot say where the run started: no stall verdict from it.
    monitor = GuardrailMonitor(spec, judge_stalls=bool(seen) and seen[0].step <= 1)
    for record in seen:
        trip = monitor.observe(
            record.step, record.mean_reward, record.kl, record.loss, record.non_finite or ()
        )
        if trip is not None:
            return trip
    return None
