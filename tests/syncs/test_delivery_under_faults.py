"""Delivery when things go wrong: a hung activation batch, a dead worker's lease, a restarted
cluster, a Retry-After on another sync, attempts of a batch with skipped rows, an erasure
while an entry waits for its retry.

Each test is one of the causes found when suppression lag was measured under faults
(30 % of requests failing, the worker SIGKILLed): see the README's "Delivery under faults".
"""

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import person_erase
from audiences.services import audience_save, identifier_policy_save
from syncs import tasks
from syncs.delivery import (
    LEASE_SECONDS,
    acquire_lease,
    deliver_destination,
    lease_token,
)
from syncs.models import Delivery, DeliveryBatch
from syncs.services import destination_save, sync_save
from tests.contract_servers.common import FaultPlan
from tests.contract_servers.livelike import LiveLikeServer
from tests.processes import running_stack, wait_until

from .test_delivery import FailFirst, flag, identify, people, set_destination, states

pytestmark = pytest.mark.django_db


class HangFor(LiveLikeServer):
    """LiveLike where every request about the audiences or users in `slow` answers only after
    `seconds` (its rows applied on arrival, as a server that is slow to answer)."""

    def __init__(self, *, slow: set[str], seconds: float, **kwargs):
        self.slow, self.seconds = slow, seconds
        super().__init__(token="producer-token", client_id="client-1", **kwargs)

    def handle(self, req):
        response = super().handle(req)
        try:
            named = {row.get(key) for row in json.loads(req.body) for key in ("audience_id", "user_id")}
        except (ValueError, AttributeError, TypeError):
            named = set()
        if named & self.slow:
            time.sleep(self.seconds)
        return response


def livelike_at(server, monkeypatch, **fields):
    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", "producer-token")
    return destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": server.api_url, "client_id": "client-1"},
            "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
            "timeout_s": 5.0,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.5,
            "rate_limit_per_s": 200,
            **fields,
        }
    )


def flagged(key, *, purpose="activation", attribute="flag"):
    audience_save(data={"key": key, "name": key, "purpose": purpose, "rule": {"attribute": attribute, "eq": True}})


def first_ack(server, audience_id) -> float:
    return min(r["acked_at"] for r in server.rows() if r["audience_id"] == audience_id)


# --- 1. head-of-line blocking -----------------------------------------------------------------


def test_a_hung_activation_batch_never_delays_a_suppression(source, monkeypatch):
    with HangFor(slow={"a_carts"}, seconds=2.0) as server:
        destination = livelike_at(server, monkeypatch)
        flagged("a_carts", attribute="cart")
        flagged("buyers", purpose="suppression", attribute="bought")
        # the activation sync sorts first: a sender that takes syncs in order starts with it
        sync_save(data={"key": "a-carts-livelike", "audience": "a_carts", "destination": "livelike"})
        sync_save(data={"key": "buyers-livelike", "audience": "buyers", "destination": "livelike"})
        for customer_id in people("p", 3):
            identify(source, customer_id, cart=True, bought=True)
        evaluate_all()
        started = time.time()
        deliver_destination(destination.pk)

        assert server.members("a_carts") == server.members("buyers") == set(people("p", 3))
        assert first_ack(server, "a_carts") - started >= 2.0  # the activation batch did hang
        assert first_ack(server, "buyers") - started < 0.5


def test_other_requests_go_past_a_hung_one(source, monkeypatch):
    with HangFor(slow={"p0"}, seconds=2.0) as server:
        destination = livelike_at(server, monkeypatch, batch_size=1)  # one person a request
        flagged("flagged")
        sync_save(data={"key": "flagged-livelike", "audience": "flagged", "destination": "livelike"})
        for customer_id in people("p", 3):
            identify(source, customer_id, flag=True)
        evaluate_all()
        started = time.time()
        deliver_destination(destination.pk)

        slow_answered = max(r["answered_at"] for r in server.request_log())
        assert slow_answered - started >= 2.0
        acks = {r["user_id"]: r["acked_at"] for r in server.rows()}
        assert acks["p1"] - started < 0.5 and acks["p2"] - started < 0.5  # while p0's request was still out
        assert server.members("flagged") == {"p0", "p1", "p2"}


def test_one_request_carries_the_changes_of_several_syncs(source, livelike, livelike_destination):
    flagged("one")
    flagged("two")
    flagged("buyers", purpose="suppression", attribute="bought")
    for key in ("one", "two", "buyers"):
        sync_save(data={"key": f"{key}-livelike", "audience": key, "destination": "livelike"})
    identify(source, "p0", flag=True, bought=True)
    evaluate_all()
    deliver_destination(livelike_destination.pk)

    log = livelike.request_log()
    assert len(log) == 2  # the suppression alone, first; both activation syncs' additions together
    assert [r["rows"] for r in log] == [1, 2]
    assert livelike.members("one") == livelike.members("two") == livelike.members("buyers") == {"p0"}
    batches = DeliveryBatch.objects.order_by("id")
    assert len({b.batch_id for b in batches}) == 2 and batches.count() == 3  # one record per sync


def test_an_urgent_request_that_does_not_answer_is_hedged_and_the_first_answer_wins(source, monkeypatch):
    # the first request answers only after 3 s
    with LiveLikeServer(token="producer-token", client_id="client-1", faults=FailFirst("timeout", slow_seconds=3.0)) as server:
        destination = livelike_at(server, monkeypatch)
        flagged("buyers", purpose="suppression", attribute="bought")
        sync = sync_save(data={"key": "buyers-livelike", "audience": "buyers", "destination": "livelike"})
        identify(source, "p0", bought=True)
        evaluate_all()
        started = time.time()
        summary = deliver_destination(destination.pk)

        assert summary.hedged == 1
        assert states(sync) == [("enter", Delivery.SENT)]
        first, second = server.request_log()[:2]
        assert second["received_at"] - first["received_at"] < 1.0  # sent again long before the 3 s
        delivered = Delivery.objects.get(sync=sync).acknowledged_at.timestamp()
        assert delivered - started < 1.5


# --- 2. a dead worker's lease ---------------------------------------------------------------


def test_a_lease_whose_process_is_gone_is_taken_over_at_once(livelike_destination):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}:deadbeef"
    set_destination(livelike_destination, lease_owner=owner, lease_until=timezone.now() + timedelta(seconds=LEASE_SECONDS))
    assert acquire_lease(livelike_destination.pk, lease_token())


def test_a_lease_whose_process_is_a_zombie_is_taken_over_at_once(livelike_destination):
    # killed but not yet reaped (init reaps a SIGKILLed cluster's workers when it gets to it)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{zombie.pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    try:
        owner = f"{socket.gethostname()}:{zombie.pid}:deadbeef"
        set_destination(livelike_destination, lease_owner=owner, lease_until=timezone.now() + timedelta(seconds=LEASE_SECONDS))
        assert acquire_lease(livelike_destination.pk, lease_token())
    finally:
        zombie.wait()


def test_a_lease_held_by_a_live_process_is_not_taken(livelike_destination):
    owner = f"{socket.gethostname()}:{os.getppid()}:cafe"  # a live process: the one that started pytest
    set_destination(livelike_destination, lease_owner=owner, lease_until=timezone.now() + timedelta(seconds=LEASE_SECONDS))
    assert not acquire_lease(livelike_destination.pk, lease_token())


def test_a_wake_up_waits_out_a_lease_nobody_renews_and_sends(source, livelike, livelike_destination):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    sync = sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": "livelike"})
    flag(source, ["p0"], True)
    evaluate_all()
    # another machine's worker died 3.5 s into its lease: nobody renews it
    set_destination(
        livelike_destination, lease_owner="elsewhere:1:dead", lease_until=timezone.now() + timedelta(seconds=LEASE_SECONDS - 3.5)
    )
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        time.sleep(seconds)

    result = tasks.deliver(livelike_destination.pk, sleep=sleep)
    assert result["leased"] and result["sent"] == 1
    assert 1.0 <= sum(slept) <= 2.5
    assert states(sync) == [("enter", Delivery.SENT)]


def test_a_wake_up_leaves_a_live_sender_alone(source, livelike, livelike_destination):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": "livelike"})
    flag(source, ["p0"], True)
    evaluate_all()
    acquire_lease(livelike_destination.pk, "elsewhere:1:alive")  # just renewed

    result = tasks.deliver(livelike_destination.pk, sleep=lambda s: pytest.fail("waited for a live sender"))
    assert not result["leased"] and result["sent"] == 0


# --- 3. a restarted cluster -----------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_started_worker_resumes_pending_deliveries_without_waiting_for_the_scheduler(monkeypatch):
    with LiveLikeServer(token="producer-token", client_id="client-1") as server:
        livelike_at(server, monkeypatch)
        flagged("flagged")
        sync = sync_save(data={"key": "flagged-livelike", "audience": "flagged", "destination": "livelike"})
        from audiences.ingest import source_create

        source = source_create(name="web")[0]
        flag(source, people("p", 5), True)
        evaluate_all()
        # as a cluster that died leaves them: pending, with no task in any queue to send them
        Delivery.objects.filter(sync=sync).update(state=Delivery.PENDING, attempts=0, batch_id=None, acknowledged_at=None)
        server.reset_state()
        started = time.monotonic()
        # no schedules at all: only the worker's own start can send these
        with running_stack(web=False, workers=1, schedules=False):

            def delivered():
                close_old_connections()
                return Delivery.objects.filter(sync=sync, state=Delivery.SENT).count() == 5

            wait_until(delivered, timeout=20, interval=0.1)
            elapsed = time.monotonic() - started  # before the cluster is stopped
        print(f"\npending deliveries sent {elapsed:.1f} s after the worker was started")
        assert elapsed < 8.0  # the cluster's own start-up (~2 s here) plus a few polls
        assert server.members("flagged") == set(people("p", 5))


# --- 4. Retry-After holds every sync ----------------------------------------------------------


def test_a_retry_after_on_one_sync_holds_every_sync_of_the_destination(source, livelike, livelike_destination):
    livelike.faults = FailFirst("429", retry_after=1)
    flagged("one")
    flagged("two")
    # membership rows and events never share a request: two syncs, two requests
    sync_save(data={"key": "one-livelike", "audience": "one", "destination": "livelike"})
    sync_save(data={"key": "two-livelike", "audience": "two", "destination": "livelike", "mode": "events"})
    flag(source, ["p0"], True)
    evaluate_all()
    deliver_destination(livelike_destination.pk)

    log = livelike.request_log()
    assert log[0]["status"] == 429 and len(log) == 3
    assert {r["path"].split("/")[-2] for r in log} == {"segment-audience-sync", "segment-events"}
    assert all(r["received_at"] - log[0]["answered_at"] >= 1.0 - 0.05 for r in log[1:])
    assert livelike.retry_after_violations == []
    assert livelike.members("one") == {"p0"} and len(livelike.events()) == 1


# --- 5. attempts count per row ----------------------------------------------------------------


def test_attempts_count_up_for_a_batch_whose_rows_were_partly_skipped(source, livelike, livelike_destination):
    livelike.faults = FaultPlan(rate=1.0, kinds=("500",))
    set_destination(livelike_destination, max_attempts=4, retry_base_s=0.02, retry_cap_s=0.1)
    identifier_policy_save(
        data={"key": "profile", "name": "LiveLike profile", "field": "attribute", "attribute": "livelike_profile_id"}
    )
    flagged("flagged")
    sync = sync_save(
        data={"key": "flagged-sync", "audience": "flagged", "destination": "livelike", "identifier_policy": "profile"}
    )
    identify(source, "p0", flag=True, livelike_profile_id="lp-p0")
    identify(source, "p1", flag=True)  # no profile id: skipped on the first attempt, stays in the batch
    evaluate_all()
    deliver_destination(livelike_destination.pk)

    assert [b.attempt for b in DeliveryBatch.objects.filter(sync=sync).order_by("id")] == [1, 2, 3, 4]
    assert sorted(states(sync)) == [("enter", Delivery.DEAD), ("enter", Delivery.SKIPPED)]
    assert Delivery.objects.get(sync=sync, state=Delivery.DEAD).attempts == 4


def test_backoff_grows_with_the_attempt(livelike_destination):
    from syncs.delivery import backoff_seconds

    set_destination(livelike_destination, retry_base_s=2.0, retry_cap_s=300.0)
    waits = [backoff_seconds(livelike_destination, attempt) for attempt in (1, 2, 3, 4, 5)]
    assert [1.0 <= w <= 2.0 for w in waits[:1]] == [True]
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))  # each at least the last ceiling
    assert 16.0 <= waits[4] <= 32.0
    urgent = backoff_seconds(livelike_destination, 1, urgent=True)
    assert urgent <= 0.2  # a suppression's first retry comes fast


# --- 6. no exit for an entry that never reached the destination --------------------------------


def _entry_waiting_for_retry(source, livelike, livelike_destination, fault: str):
    livelike.faults = FailFirst(fault, slow_seconds=1.0)
    set_destination(livelike_destination, timeout_s=0.3, retry_base_s=5.0, retry_cap_s=5.0)
    flagged("flagged")
    sync = sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": "livelike"})
    flag(source, ["p0"], True)
    evaluate_all()
    deliver_destination(livelike_destination.pk, max_seconds=0.2)  # one attempt; the retry waits 5 s
    assert states(sync) == [("enter", Delivery.PENDING)]
    assert Delivery.objects.get(sync=sync).attempts == 1
    person_erase(customer_id="p0")
    assert states(sync) == [("enter", Delivery.PENDING), ("exit", Delivery.PENDING)]
    deliver_destination(livelike_destination.pk)  # the exit brings the entry's retry forward
    return sync


def test_an_erased_person_whose_entry_never_arrived_gets_no_exit(source, livelike, livelike_destination):
    sync = _entry_waiting_for_retry(source, livelike, livelike_destination, "500")
    # the entry was answered with a 500: LiveLike never had it, and the pair cancels out
    assert states(sync) == [("enter", Delivery.CANCELLED), ("exit", Delivery.CANCELLED)]
    assert livelike.rows() == [] and len(livelike.request_log()) == 1
    assert livelike.exits_before_entry() == []


def test_no_exit_follows_an_entry_the_destination_rejected(source, livelike, livelike_destination):
    livelike.reject_user_ids = {"p0"}
    flagged("flagged")
    sync = sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": "livelike"})
    flag(source, ["p0", "p1"], True)
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    flag(source, ["p0", "p1"], False)
    evaluate_all()
    deliver_destination(livelike_destination.pk)

    assert states(sync, "p0") == [("enter", Delivery.REJECTED), ("exit", Delivery.SKIPPED)]
    assert Delivery.objects.get(sync=sync, customer_id="p0", action=Delivery.EXIT).last_error == (
        "the destination never had this person: their entry was rejected by the destination"
    )
    assert states(sync, "p1") == [("enter", Delivery.SENT), ("exit", Delivery.SENT)]
    assert livelike.rows_for("p0") == []  # the add was refused, and no remove followed it
    assert livelike.exits_before_entry() == []


def test_an_erased_person_whose_entry_may_have_arrived_is_removed(source, livelike, livelike_destination):
    sync = _entry_waiting_for_retry(source, livelike, livelike_destination, "timeout")
    assert states(sync) == [("enter", Delivery.SKIPPED), ("exit", Delivery.SENT)]
    assert livelike.members("flagged") == set()  # the add that did arrive is taken back
