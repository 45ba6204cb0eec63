"""The write path keeps the ingest API's promises however requests meet: a request is whole,
a message id is written once even when requests race, aggregates equal a recount from the
events, and everyone written to is queued (and woken) for the realtime pass. On PostgreSQL,
concurrent requests of a process commit together (group commit); a group is whole too, and a
request that fails does not take the others of its group down with it."""

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Max, Min

from audiences.evaluation import evaluate_pending, queue_people
from audiences.ingest import WakeUps, ingest_messages, source_create
from audiences.messages import Message
from audiences.models import Event, EventStat, Membership, PendingEvaluation, Person, Source
from audiences.services import audience_save
from audiences.signals import people_changed
from audiences.tasks import enqueue_pending_evaluation

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="concurrent writers are PostgreSQL's")


def event(customer_id, name, message_id, at=T0, **properties):
    return Message("event", customer_id, message_id, at, name=name, properties=properties)


def identify(customer_id, message_id, **traits):
    return Message("identify", customer_id, message_id, T0, traits=traits)


def recount() -> dict:
    return {
        (row["person_id"], row["name"]): (row["n"], row["first"], row["last"])
        for row in Event.objects.values("person_id", "name").annotate(
            n=Count("id"), first=Min("occurred_at"), last=Max("occurred_at")
        )
    }


def aggregates() -> dict:
    return {(s.person_id, s.name): (s.count, s.first_at, s.last_at) for s in EventStat.objects.all()}


def run_in_thread(target, results, name):
    def run():
        try:
            results[name] = target()
        except Exception as exc:  # the test reports what each side raised
            results[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def wait_for(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_request_with_one_bad_message_among_good_ones_writes_nothing(ingest, nothing_written):
    batch = [{"type": "track", "userId": f"u{n}", "event": "Added to Cart", "messageId": f"m{n}"} for n in range(99)]
    batch.insert(57, {"type": "track", "userId": "u57", "event": "Added to Cart", "messageId": "bad", "timestamp": "soon"})
    with nothing_written():
        response = ingest.batch(batch)
    assert response.status_code == 400
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(57, "timestamp")]
    assert not PendingEvaluation.objects.exists()


@pytest.mark.django_db
def test_aggregates_equal_a_recount_from_the_events_after_repeats_and_out_of_order_batches():
    rng = random.Random(7)
    web, app = source_create(name="web")[0], source_create(name="app")[0]
    for batch in range(30):
        messages = [
            event(
                f"u{rng.randint(1, 12)}",
                rng.choice(["Added to Cart", "Order Completed"]),
                f"m{rng.randint(1, 400)}",
                T0 - timedelta(minutes=rng.randint(0, 5000)),
            )
            for _ in range(rng.randint(1, 40))
        ]
        ingest_messages(source=rng.choice([web, app]), messages=messages, received_at=T0 + timedelta(seconds=batch))
    assert EventStat.objects.exists()
    assert aggregates() == recount()


@pytest.mark.django_db
def test_everyone_written_to_is_queued_for_the_realtime_pass_identify_or_event():
    source = source_create(name="web")[0]
    ingest_messages(source=source, messages=[event("a", "Added to Cart", "1"), identify("b", "2", tier="gold")], received_at=T0)
    queued = dict(PendingEvaluation.objects.values_list("person__customer_id", "queued_at"))
    assert queued == {"a": T0, "b": T0}
    ingest_messages(source=source, messages=[event("a", "Added to Cart", "3")], received_at=T0 + timedelta(minutes=1))
    assert PendingEvaluation.objects.get(person__customer_id="a").queued_at == T0  # the lag counts from the first


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_message_id_is_written_once_when_two_transactions_race_for_it():
    source = source_create(name="web")[0]
    batch = [event(f"u{n % 7}", "Order Completed", f"m{n}", T0 + timedelta(seconds=n)) for n in range(60)]
    both_ready = threading.Barrier(2, timeout=10)

    def one_request():
        with transaction.atomic():  # its own transaction, as in another process
            both_ready.wait()
            return ingest_messages(
                source=source, messages=list(reversed(batch)) if threading.current_thread().name == "b" else batch, received_at=T0
            )

    results = {}
    threads = [run_in_thread(one_request, results, name) for name in ("a", "b")]
    for thread in threads:
        thread.join(30)
    assert not [r for r in results.values() if isinstance(r, Exception)], results
    assert sorted((r.accepted, r.duplicates) for r in results.values()) == [(0, 60), (60, 0)]
    assert Event.objects.count() == 60
    assert sum(EventStat.objects.values_list("count", flat=True)) == 60
    assert aggregates() == recount()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_requests_that_wait_for_a_commit_are_written_together_and_each_answered_as_if_alone():
    source = source_create(name="web")[0]
    person = Person.objects.create(customer_id="blocker")
    holds, release = threading.Event(), threading.Event()

    def hold_a_message_id():
        with transaction.atomic():
            Event.objects.create(person=person, source=source, name="Seen", occurred_at=T0, message_id="held")
            EventStat.objects.create(person=person, name="Seen", first_at=T0, last_at=T0, count=1)
            holds.set()
            release.wait(20)

    results = {}
    holder = run_in_thread(hold_a_message_id, results, "holder")
    assert holds.wait(10)
    # the first request waits for the uncommitted "held": its group is under way
    first = run_in_thread(
        lambda: ingest_messages(source=source, messages=[event("x", "Seen", "held"), event("x", "Seen", "a1")], received_at=T0),
        results,
        "first",
    )
    wait_for(lambda: waiting_on_a_lock() >= 1)
    second = run_in_thread(
        lambda: ingest_messages(
            source=source,
            messages=[event("y", "Added to Cart", "b1"), event("y", "Added to Cart", "b1"), identify("z", "b2", tier="gold")],
            received_at=T0 + timedelta(seconds=1),
        ),
        results,
        "second",
    )
    time.sleep(0.3)
    third = run_in_thread(
        lambda: ingest_messages(
            source=source,
            messages=[event("y", "Added to Cart", "b1"), event("z", "Order Completed", "c1"), identify("z", "c2", tier="silver")],
            received_at=T0 + timedelta(seconds=2),
        ),
        results,
        "third",
    )
    time.sleep(0.3)
    release.set()
    for thread in (holder, first, second, third):
        thread.join(30)
    outcomes = {name: (r.accepted, r.duplicates) for name, r in results.items() if name != "holder"}
    assert outcomes == {"first": (1, 1), "second": (2, 1), "third": (2, 1)}, results
    # second and third were one transaction
    with connection.cursor() as cursor:
        cursor.execute("SELECT message_id, xmin::text FROM audiences_event WHERE message_id IN ('a1', 'b1', 'c1')")
        xmin = dict(cursor.fetchall())
    assert xmin["b1"] == xmin["c1"] != xmin["a1"]
    assert Person.objects.get(customer_id="z").attributes == {"tier": "silver"}  # merged in order of arrival
    assert Event.objects.get(message_id="b1").received_at == T0 + timedelta(seconds=1)
    assert aggregates() == recount()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_request_that_fails_in_the_database_fails_alone_and_the_rest_of_its_group_is_written():
    source = source_create(name="web")[0]
    gone = Source(id=source.id + 1000, name="gone")  # authenticated, then deleted: its events break a foreign key
    person = Person.objects.create(customer_id="blocker")
    holds, release = threading.Event(), threading.Event()

    def hold_a_message_id():
        with transaction.atomic():
            Event.objects.create(person=person, source=source, name="Seen", occurred_at=T0, message_id="held")
            EventStat.objects.create(person=person, name="Seen", first_at=T0, last_at=T0, count=1)
            holds.set()
            release.wait(20)

    results = {}
    holder = run_in_thread(hold_a_message_id, results, "holder")
    assert holds.wait(10)
    first = run_in_thread(
        lambda: ingest_messages(source=source, messages=[event("x", "Seen", "held")], received_at=T0), results, "first"
    )
    wait_for(lambda: waiting_on_a_lock() >= 1)
    good = run_in_thread(
        lambda: ingest_messages(source=source, messages=[event("y", "Seen", "g1")], received_at=T0), results, "good"
    )
    bad = run_in_thread(lambda: ingest_messages(source=gone, messages=[event("y", "Seen", "x1")], received_at=T0), results, "bad")
    time.sleep(0.5)
    release.set()
    for thread in (holder, first, good, bad):
        thread.join(30)
    assert isinstance(results["bad"], IntegrityError)
    assert (results["good"].accepted, results["first"].duplicates) == (1, 1)
    assert set(Event.objects.values_list("message_id", flat=True)) == {"held", "g1"}
    assert aggregates() == recount()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_realtime_pass_cannot_take_a_queued_person_from_under_an_uncommitted_request():
    """The person is queued already (an earlier request); a second request's events are not yet
    committed when a pass runs. The pass must leave the person queued, not evaluate them without
    those events and drop the entry."""
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    source = source_create(name="web")[0]
    queue_people([Person.objects.create(customer_id="p").pk], at=T0)  # queued, and the wake-up not yet run
    written, release = threading.Event(), threading.Event()

    def purchase():
        with transaction.atomic():
            ingest_messages(source=source, messages=[event("p", "Order Completed", "o1")], received_at=T0)
            written.set()
            release.wait(20)

    results = {}
    # the wake-up would run the pass in-process at the clock's time; the test runs it at its own
    people_changed.disconnect(dispatch_uid="downstream-realtime-evaluation")
    try:
        buyer = run_in_thread(purchase, results, "purchase")
        assert written.wait(10)
        results["pass while uncommitted"] = evaluate_pending(now=T0 + timedelta(minutes=1))
        release.set()
        buyer.join(30)
    finally:
        people_changed.connect(enqueue_pending_evaluation, dispatch_uid="downstream-realtime-evaluation")
    results["pass after commit"] = evaluate_pending(now=T0 + timedelta(minutes=1))
    assert (results["pass while uncommitted"], results["pass after commit"]) == (0, 1)
    assert set(
        Membership.objects.filter(audience__key="buyers", exited_at__isnull=True).values_list("person__customer_id", flat=True)
    ) == {"p"}


def test_wake_ups_from_a_burst_are_announced_together():
    sent, arrived = [], threading.Event()

    def send(person_ids):
        sent.append(set(person_ids))
        if set().union(*sent) == {1, 2, 3, 4}:
            arrived.set()

    wake_ups = WakeUps(gap_s=1.0, send=send, inline=False)
    for people in ([1], [2], [3, 4]):
        wake_ups.announce(people)
    assert arrived.wait(10)
    assert len(sent) <= 2  # the first at once, the rest together after the gap
    assert set().union(*sent) == {1, 2, 3, 4}
    inline = []
    WakeUps(send=inline.append, inline=True).announce((5,))
    assert inline == [(5,)]  # in the caller's thread, as tasks run in-process
