"""Leader election's rules (leader.py) on an in-memory Lease with a hand-driven clock; the real
Lease on the API server and a SIGKILLed leader are in tests/integration/test_leader_election.py."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.leader import LeaderElector, LeaseConflictError, LeaseRecord
from tests.support.builders import TOKEN, rlhfjob
from tests.support.fake_kube import FakeKube


class MemoryLease:
    """One Lease with optimistic concurrency, as the API server keeps it."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.fail = False

    def get(self) -> LeaseRecord | None:
        if self.fail:
            raise ConnectionError("the API server is away")
        return self.record

    def create(self, record: LeaseRecord) -> LeaseRecord:
        if self.record is not None:
            raise LeaseConflictError("exists")
        return self._store(record)

    def replace(self, record: LeaseRecord) -> LeaseRecord:
        if self.fail:
            raise ConnectionError("the API server is away")
        if self.record is None or record.resource_version != self.record.resource_version:
            raise LeaseConflictError("changed")
        return self._store(record)

    def _store(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        return self.record


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.t)


def _pair(lease: MemoryLease, clock: Clock) -> tuple[LeaderElector, LeaderElector]:
    return tuple(  # type: ignore[return-value]
        LeaderElector(lease, name, lease_seconds=8, renew_deadline_seconds=6, clock=clock, now=clock.wall)
        for name in ("a", "b")
    )


def test_one_replica_leads_and_the_other_waits_while_it_renews() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = _pair(lease, clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    for _ in range(20):  # a renews every second; b never gets it
        clock.t += 1
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
        assert a.leading() and not b.leading()
    assert lease.record is not None and (lease.record.holder, lease.record.transitions) == ("a", 0)


def test_a_dead_leaders_lease_is_taken_after_it_expires_by_the_standbys_own_clock() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = _pair(lease, clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()  # b observes a's record now
    clock.t += 6  # a is killed: no more renewals
    assert not a.leading(), "the old leader stops acting before anyone may take over"
    clock.t += 1.5
    assert not b.try_acquire_or_renew(), "not yet expired: 8 s after b saw the record change"
    clock.t += 0.5
    assert b.try_acquire_or_renew() and b.leading()
    assert lease.record is not None and (lease.record.holder, lease.record.transitions) == ("b", 1)


def test_a_released_lease_is_taken_at_once() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = _pair(lease, clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    a.release()
    assert not a.leading() and lease.record is not None and lease.record.holder == ""
    clock.t += 1
    assert b.try_acquire_or_renew()


def test_two_candidates_racing_for_a_released_lease_get_one_winner() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = _pair(lease, clock)
    a.try_acquire_or_renew()
    a.release()
    read = lease.get

    def a_writes_between_bs_read_and_write() -> LeaseRecord | None:
        seen = read()
        lease.get = read  # type: ignore[method-assign]
        assert a.try_acquire_or_renew()
        return seen

    lease.get = a_writes_between_bs_read_and_write  # type: ignore[method-assign]
    assert not b.try_acquire_or_renew() and not b.leading()
    assert lease.record is not None and lease.record.holder == "a"


def test_run_reports_a_lost_lease_when_renewals_fail_past_the_deadline() -> None:
    lease = MemoryLease()
    elector = LeaderElector(lease, "a", lease_seconds=2, renew_deadline_seconds=0.2, retry_seconds=0.05)
    started, lost, stop = threading.Event(), threading.Event(), threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop, started.set, lost.set), daemon=True)
    thread.start()
    assert started.wait(5)
    lease.fail = True  # the API server goes away
    assert lost.wait(5)
    thread.join(5)
    assert not thread.is_alive() and not elector.leading()


def test_a_standby_acts_on_nothing_and_a_new_leader_reconciles_every_job() -> None:
    kube, leading = FakeKube(), threading.Event()
    controller = Controller(OperatorConfig(), kube, token_source=TOKEN)
    controller.is_leader = leading.is_set
    body = rlhfjob().model_dump(mode="json", by_alias=True, exclude_none=True)
    kube.add_rlhfjob(body)
    controller.store.put_job(body)
    controller.reconcile(("ml", "tiny"))
    controller.resync()
    assert kube.requests == [], "a standby keeps its store and sends nothing"
    leading.set()
    controller.reconcile_all()
    assert ("create", "Job", "tiny-precompute") in kube.requests
