"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Two or more operator replicas run; all of them watch (so a new leader's store is warm), only the
Lease's holder reconciles. Kopf's peering is no leader election: peers of equal priority all pause
(docs.kopf.dev, "Peering"), and it needs a CRD of its own. The rules, client-go's:

- a candidate takes the Lease when it does not exist, is released (no holder), or its record has
  not changed for `lease_seconds` by the candidate's own clock (no trust in other clocks);
- the holder renews every `retry_seconds`; when it has not renewed for `renew_deadline_seconds`
  (< `lease_seconds`) it stops acting at once and the process exits, so two leaders never act
  together: the old one has stopped before anyone may take the Lease;
- on a graceful stop the holder releases the Lease, and a standby takes over within one retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import Gauge

log = logging.getLogger(__name__)
LEADER = Gauge("rlhf_operator_leader", "1 while this replica holds the leader-election Lease, else 0.")
#: With these, a standby leads at most ~lease + 2 retries after the leader died (~10 s).
LEASE_SECONDS = 8
RENEW_DEADLINE_SECONDS = 6.0
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    lease_seconds: int
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    resource_version: str | None = None

    def same_as(self, other: LeaseRecord | None) -> bool:
        """Whether nothing a holder changes has changed (its resourceVersion may have)."""
        return other is not None and (self.holder, self.renew_time, self.transitions) == (
            other.holder,
            other.renew_time,
            other.transitions,
        )


class LeaseConflictError(Exception):
    """Someone else created or updated the Lease first."""


class LeaseStore(Protocol):
    def get(self) -> LeaseRecord | None: ...

    def create(self, record: LeaseRecord) -> LeaseRecord: ...

    def replace(self, record: LeaseRecord) -> LeaseRecord:
        """Writes `record` if the Lease still has its resource_version; LeaseConflictError if not."""


class LeaderElector:
    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        *,
        lease_seconds: int = LEASE_SECONDS,
        renew_deadline_seconds: float = RENEW_DEADLINE_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert renew_deadline_seconds < lease_seconds, "the holder must give up before others may take over"
        self.store = store
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._now = now
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    def leading(self) -> bool:
        """True while this replica renewed the Lease within the renew deadline."""
        return self._renewed_at is not None and self._clock() - self._renewed_at < self.renew_deadline_seconds

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        record = self.store.get()
        now = self._now()
        if record is None:
            return self._took(self.store.create(LeaseRecord(self.identity, self.lease_seconds, now, now)))
        if not record.same_as(self._observed):
            self._observed, self._observed_at = record, self._clock()
        mine = record.holder == self.identity
        if not mine and record.holder and self._clock() - self._observed_at < record.lease_seconds:
            self._renewed_at = None  # someone else holds it, and is alive
            return False
        new = replace(
            record,
            holder=self.identity,
            lease_seconds=self.lease_seconds,
            renew_time=now,
            acquire_time=record.acquire_time if mine else now,
            transitions=record.transitions if mine else record.transitions + 1,
        )
        try:
            return self._took(self.store.replace(new))
        except LeaseConflictError:
            return False

    def _took(self, record: LeaseRecord) -> bool:
        self._observed, self._observed_at = record, self._clock()
        self._renewed_at = self._clock()
        return True

    def release(self) -> None:
        """Gives the Lease up (a graceful stop), so a standby need not wait for it to expire."""
        if not self.leading() or self._observed is None:
            return
        self._renewed_at = None
        LEADER.set(0)
        try:
            self.store.replace(replace(self._observed, holder="", lease_seconds=1, renew_time=self._now()))
        except Exception:  # the Lease then expires by itself
            log.warning("could not release the leader-election Lease; it expires in %ss", self.lease_seconds)

    def run(self, stop: threading.Event, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Campaigns, then renews, until `stop`; `on_lost` when leadership ends without a stop."""
        led = False
        while not stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as err:  # the API server may be away for a moment: retried
                log.warning("leader election: %s", err)
            if self.leading() and not led:
                led = True
                LEADER.set(1)
                log.info("leading as %s", self.identity)
                on_started()
            elif led and not self.leading() and not stop.is_set():
                LEADER.set(0)
                on_lost()
                return
            stop.wait(self.retry_seconds)
