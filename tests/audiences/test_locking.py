"""Erasure and the realtime pass lock audience rows; on PostgreSQL two transactions that take
the same locks in different orders deadlock, and the loser answers 500 (erasure) or drops its
pass. They take them in one order, and erasure retries a transaction that deadlocked anyway."""

import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DatabaseError, OperationalError, connection
from django.test.utils import CaptureQueriesContext

from audiences.evaluation import evaluate_all, evaluate_pending, evaluate_people, queue_people
from audiences.ingest import ingest_messages, person_erase, source_create
from audiences.messages import Message
from audiences.models import Audience, Membership, PendingEvaluation, Person
from audiences.services import audience_save
from audiences.signals import membership_changed
from audiences.transactions import atomic_retrying_deadlocks, is_deadlock

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="row locks and deadlocks are PostgreSQL's")
LOCK = re.compile(
    r'^SELECT .* FROM "audiences_audience" WHERE "audiences_audience"\."id" = (\d+) LIMIT \d+(?P<lock> FOR UPDATE)?$'
)


def locked_audiences(queries) -> list[int]:
    """Audience rows in the order they were locked (SELECT ... FOR UPDATE; SQLite has no row
    locks and drops the clause, so there every select of one audience by id counts)."""
    locked = []
    for query in queries:
        match = LOCK.match(query["sql"])
        if match and (match["lock"] or connection.vendor != "postgresql"):
            locked.append(int(match[1]))
    return locked


def identify(source, customer_id, **traits):
    ingest_messages(
        source=source, messages=[Message("identify", customer_id, f"i-{customer_id}-{traits}", T0, traits=traits)], received_at=T0
    )


def vip(extra=None):
    rule = {"attribute": "vip", "eq": True}
    return {"all": [rule, extra]} if extra else rule


def dependencies_against_primary_keys():
    """`carts` is saved first (lower id) but reads `buyers`, so evaluation goes buyers → carts."""
    audience_save(data={"key": "carts", "name": "Carts", "rule": vip()})
    audience_save(data={"key": "buyers", "name": "Buyers", "rule": vip()})
    audience_save(instance=Audience.objects.get(key="carts"), data={"rule": vip({"in_audience": "buyers"})})


def a_dependency_outside_the_realtime_set():
    """b and z are realtime; b reads a (hourly, not in the realtime pass), which reads z. The
    realtime pass ordering its own audiences would find nothing between b and z and go b, z by
    key; erasure, seeing a too, z before a before b."""
    audience_save(data={"key": "z_vips", "name": "Z vips", "rule": vip()})
    audience_save(data={"key": "a_vips", "name": "A vips", "cadence": "1h", "rule": vip({"in_audience": "z_vips"})})
    audience_save(data={"key": "b_vips", "name": "B vips", "rule": vip({"in_audience": "a_vips"})})


@pytest.mark.django_db
@pytest.mark.parametrize("setup", [dependencies_against_primary_keys, a_dependency_outside_the_realtime_set])
def test_erasure_locks_audiences_in_the_order_the_realtime_pass_does(setup):
    source = source_create(name="shop")[0]
    setup()
    identify(source, "x", vip=True)
    evaluate_all(now=T0)
    person = Person.objects.get(customer_id="x")
    assert Membership.objects.filter(person=person, exited_at__isnull=True).count() == Audience.objects.count()
    with CaptureQueriesContext(connection) as realtime:
        evaluate_people([person.pk], now=T0)
    with CaptureQueriesContext(connection) as erasure:
        assert person_erase(customer_id="x", source=source)
    by_realtime, by_erasure = locked_audiences(realtime.captured_queries), locked_audiences(erasure.captured_queries)
    assert len(by_realtime) == Audience.objects.filter(cadence="realtime").count()
    assert len(by_erasure) == Audience.objects.count()
    both = set(by_realtime) & set(by_erasure)
    assert [pk for pk in by_erasure if pk in both] == [pk for pk in by_realtime if pk in both]


def deadlock_error() -> OperationalError:
    """What Django raises when PostgreSQL picks this transaction as a deadlock's victim."""
    import psycopg.errors

    error = OperationalError("deadlock detected")
    error.__cause__ = psycopg.errors.DeadlockDetected("deadlock detected")
    return error


@pytest.mark.django_db
def test_the_retry_wrapper_runs_a_deadlocked_transaction_again_and_nothing_else():
    attempts = []

    def deadlocks_once():
        attempts.append(1)
        Audience.objects.create(key=f"a{len(attempts)}", name=f"A{len(attempts)}")
        if len(attempts) == 1:
            raise deadlock_error()
        return len(attempts)

    assert atomic_retrying_deadlocks(deadlocks_once, pause_s=0) == 2
    # the first attempt was rolled back, the second committed
    assert list(Audience.objects.values_list("key", flat=True)) == ["a2"]

    assert is_deadlock(deadlock_error())
    assert not is_deadlock(OperationalError("database is locked"))
    other = []

    def fails():
        other.append(1)
        raise DatabaseError("no such table")

    with pytest.raises(DatabaseError):
        atomic_retrying_deadlocks(fails, pause_s=0)
    assert other == [1]
    forever = []

    def always_deadlocks():
        forever.append(1)
        raise deadlock_error()

    with pytest.raises(OperationalError):
        atomic_retrying_deadlocks(always_deadlocks, attempts=3, pause_s=0)
    assert len(forever) == 3


def run_in_thread(target, errors, results, name):
    def run():
        try:
            results[name] = target()
        except Exception as exc:  # the test reports what each side raised
            errors[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_real_deadlock_is_retried_and_both_transactions_commit():
    first, second = Audience.objects.create(key="one", name="One"), Audience.objects.create(key="two", name="Two")
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts = {"forward": 0, "backward": 0}

    def lock_both(name, order):
        def work():
            attempts[name] += 1
            Audience.objects.select_for_update().get(pk=order[0].pk)
            if attempts[name] == 1:
                both_hold_one.wait()  # each holds one row and now asks for the other's
            Audience.objects.select_for_update().get(pk=order[1].pk)
            Audience.objects.filter(pk=order[1].pk).update(description=f"{order[1].description} {name}")
            return attempts[name]

        return lambda: atomic_retrying_deadlocks(work, pause_s=0.01)

    errors, results = {}, {}
    threads = [
        run_in_thread(lock_both("forward", (first, second)), errors, results, "forward"),
        run_in_thread(lock_both("backward", (second, first)), errors, results, "backward"),
    ]
    for thread in threads:
        thread.join(30)
    assert errors == {}
    assert sorted(results.values()) == [1, 2]  # PostgreSQL chose one victim, which went again
    assert dict(Audience.objects.values_list("key", "description")) == {"one": " backward", "two": " forward"}


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_erasure_during_a_realtime_pass_does_not_deadlock():
    """The realtime pass holds `buyers` (it is announcing a change there) when the person is
    erased; erasure must queue behind it, not take `carts` first and wait for `buyers`."""
    source = source_create(name="shop")[0]
    dependencies_against_primary_keys()
    identify(source, "x", vip=True)
    identify(source, "y", vip=False)
    evaluate_all(now=T0)
    PendingEvaluation.objects.all().delete()
    # y becomes a vip and is queued, as ingest does, but without waking the (in-process) worker:
    # the pass below, in its own thread, is to take y into buyers, then carts
    y = Person.objects.get(customer_id="y")
    Person.objects.filter(pk=y.pk).update(attributes={"vip": True})
    queue_people([y.pk], at=T0)
    pass_holds_buyers = threading.Event()

    def hold_buyers(sender, evaluation, **kwargs):
        if evaluation.audience_key == "buyers" and not evaluation.erasure and threading.current_thread().name == "realtime":
            pass_holds_buyers.set()
            time.sleep(1.5)  # long enough for erasure to take what it takes and for PostgreSQL to look

    membership_changed.connect(hold_buyers)
    try:
        errors, results = {}, {}
        realtime = run_in_thread(lambda: evaluate_pending(now=T0 + timedelta(seconds=1)), errors, results, "realtime")
        assert pass_holds_buyers.wait(10)
        erasure = run_in_thread(lambda: person_erase(customer_id="x", source=source), errors, results, "erasure")
        realtime.join(30)
        erasure.join(30)
    finally:
        membership_changed.disconnect(hold_buyers)
    assert errors == {}
    assert results == {"realtime": 1, "erasure": True}
    assert not Person.objects.filter(customer_id="x").exists()
    assert set(Membership.objects.filter(exited_at__isnull=True).values_list("audience__key", "person__customer_id")) == {
        ("buyers", "y"),
        ("carts", "y"),
    }
