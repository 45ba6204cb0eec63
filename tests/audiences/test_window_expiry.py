"""Window expiry: when realtime audiences' people are due, the tick that evaluates only them, the
hourly consistency check that counts (and alerts) whom expiry missed, and the waiter task."""

import itertools
import logging
import re
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audiences.evaluation import evaluate_all, evaluate_due, evaluate_expired, evaluate_pending
from audiences.expiry import TICK, course_of, mark_due
from audiences.ingest import person_erase, source_create
from audiences.models import Audience, Membership, Person, WindowExpiry
from audiences.services import audience_save
from audiences.tasks import EXPIRY_LEASE, EXPIRY_POLL_S, EXPIRY_STALE_S, evaluate_expiring_people
from syncs.models import Alert
from syncs.monitoring import check_alerts
from tests.audiences.test_evaluation import T0, identify, members, playbook, send

pytestmark = pytest.mark.django_db


@pytest.fixture
def source():
    return source_create(name="shop")[0]


def due(key, customer_id):
    row = WindowExpiry.objects.filter(audience__key=key, person__customer_id=customer_id).first()
    return row.due_at if row else None


def test_a_cart_leaves_when_its_window_ends_and_not_a_microsecond_before(source):
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    identify(source, "b", vip=True)  # nothing of b's moves with the clock
    evaluate_all(now=T0)
    assert members("cart_0_2h") == {"a"}
    ends = T0 + timedelta(minutes=90)
    # out of cart_0_2h when the cart is more than 2 h old; cart_2_24h, which ranks below, follows
    # cart_0_2h's course: a enters it at that same instant (and leaves when the 24 h end)
    assert course("cart_0_2h", "a") == (ends + TICK, False, [])
    assert course("cart_2_24h", "a") == (ends + TICK, True, [(T0 - timedelta(minutes=30) + timedelta(hours=24) + TICK, False)])
    assert not WindowExpiry.objects.filter(person__customer_id="b").exists()
    assert evaluate_expired(now=ends) == 0 and members("cart_0_2h") == {"a"}
    assert evaluate_expired(now=ends + TICK) == 1
    assert (members("cart_0_2h"), members("cart_2_24h")) == (set(), {"a"})
    assert due("cart_2_24h", "a") == T0 - timedelta(minutes=30) + timedelta(hours=24) + TICK
    assert due("cart_0_2h", "a") is None  # it cannot come back without a new cart


def course(key, customer_id):
    row = WindowExpiry.objects.get(audience__key=key, person__customer_id=customer_id)
    return row.due_at, row.becomes, course_of(row.later)


def test_the_tick_applies_the_change_written_without_reading_a_rule(source):
    """An evaluation writes the whole course of the answer with no new event; the tick applies
    it from the row alone (no event, aggregate or person read for a rule), then writes what is
    left of it."""
    audience_save(data={"key": "winback", "name": "Winback", "rule": {"event": "Order Completed", "last_between": ["7d", "30d"]}})
    send(source, "b", "Order Completed", T0 - timedelta(days=2))
    evaluate_all(now=T0)
    opens, closes = T0 + timedelta(days=5), T0 + timedelta(days=28) + TICK
    assert course("winback", "b") == (opens, True, [(closes, False)])
    with CaptureQueriesContext(connection) as queries:
        assert evaluate_expired(now=opens) == 1
    read = " ".join(q["sql"] for q in queries.captured_queries)
    assert "audiences_eventstat" not in read and '"audiences_event"' not in read and "audiences_event " not in read
    assert members("winback") == {"b"}
    assert course("winback", "b") == (closes, False, [])
    evaluate_expired(now=closes)
    assert members("winback") == set() and not WindowExpiry.objects.exists()


def test_a_late_tick_applies_every_change_whose_time_has_come_in_one(source):
    """The worker was down while b's window opened and closed: the tick that comes after both
    does not let b enter and leave at once (two announcements for nothing)."""
    audience_save(data={"key": "winback", "name": "Winback", "rule": {"event": "Order Completed", "last_between": ["7d", "30d"]}})
    send(source, "b", "Order Completed", T0 - timedelta(days=2))
    evaluate_all(now=T0)
    assert evaluate_expired(now=T0 + timedelta(days=29)) == 1
    assert not Membership.objects.filter(audience__key="winback").exists() and not WindowExpiry.objects.exists()


def test_a_time_at_which_the_answer_stays_is_no_row(source):
    """all of two windows that hold: the first to end ends it; the second's end changes
    nothing then, and is written nowhere."""
    rule = {"all": [{"event": "Added to Cart", "within": "2h"}, {"event": "Product Viewed", "within": "1d"}]}
    audience_save(data={"key": "both", "name": "Both", "rule": rule})
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    send(source, "a", "Product Viewed", T0 - timedelta(hours=1))
    evaluate_all(now=T0)
    assert course("both", "a") == (T0 + timedelta(minutes=90) + TICK, False, [])


def read_tables(queries) -> str:
    return " ".join(q["sql"] for q in queries.captured_queries)


def test_an_audience_that_ranks_below_follows_the_course_of_the_one_above(source):
    """cart_2_24h ranks below cart_0_2h: its course for a follows cart_0_2h's, so when a's cart
    is 2 h old the tick moves a down from both rows, with no rule read."""
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_all(now=T0)
    with CaptureQueriesContext(connection) as queries:
        assert evaluate_expired(now=T0 + timedelta(minutes=90) + TICK) == 1
    assert "audiences_eventstat" not in read_tables(queries) and '"audiences_event"' not in read_tables(queries)
    assert (members("cart_0_2h"), members("cart_2_24h")) == (set(), {"a"})


def test_an_audience_whose_rule_holds_outside_its_windows_follows_the_ones_it_leaves_out(source):
    """'Not carted in 2 h', purchasers left out: b, who bought and never carted, is held out by the
    purchase alone, and comes in when the 24 h of it end; c, who carted, when the 2 h end."""
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "24h"}}
    )
    audience_save(
        data={
            "key": "not_carting",
            "name": "Not carting",
            "rule": {"not": {"event": "Added to Cart", "within": "2h"}},
            "exclusions": ["buyers"],
        }
    )
    send(source, "b", "Order Completed", T0 - timedelta(hours=1))
    send(source, "c", "Added to Cart", T0 - timedelta(hours=1))
    evaluate_all(now=T0)
    assert members("not_carting") == set()
    assert course("not_carting", "b") == (T0 + timedelta(hours=23) + TICK, True, [])
    assert course("not_carting", "c") == (T0 + timedelta(hours=1) + TICK, True, [])
    evaluate_expired(now=T0 + timedelta(hours=1) + TICK)
    assert members("not_carting") == {"c"}
    evaluate_expired(now=T0 + timedelta(hours=23) + TICK)
    assert (members("buyers"), members("not_carting")) == (set(), {"b", "c"})


def test_a_person_evaluated_in_an_audience_left_out_is_evaluated_in_the_ones_that_follow_it(source):
    """When the tick evaluates a in cart_0_2h (a row asks for it), the course written there may
    have changed, so cart_2_24h evaluates a too: here its lost row comes back."""
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_all(now=T0)
    WindowExpiry.objects.filter(audience__key="cart_2_24h").delete()
    mark_due([Audience.objects.get(key="cart_0_2h").pk], [Person.objects.get(customer_id="a").pk], T0 + timedelta(minutes=1))
    evaluate_expired(now=T0 + timedelta(minutes=1))
    assert due("cart_2_24h", "a") == T0 + timedelta(minutes=90) + TICK
    evaluate_expired(now=T0 + timedelta(minutes=90) + TICK)
    assert (members("cart_0_2h"), members("cart_2_24h")) == (set(), {"a"})


def test_a_full_evaluation_that_changes_a_course_makes_the_followers_evaluate(source):
    """cart_0_2h keeps a for 3 h now instead of 2: a stays a member, but cart_2_24h's course,
    which followed the old one, is wrong; it is evaluated again and follows the new one."""
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_due(now=T0)
    audience_save(instance=Audience.objects.get(key="cart_0_2h"), data={"rule": {"event": "Added to Cart", "within": "3h"}})
    evaluate_due(now=T0 + timedelta(minutes=2))
    assert members("cart_0_2h") == {"a"} and due("cart_2_24h", "a") == T0 + timedelta(minutes=2)
    evaluate_expired(now=T0 + timedelta(minutes=2))
    assert due("cart_2_24h", "a") == T0 + timedelta(minutes=150) + TICK
    evaluate_expired(now=T0 + timedelta(minutes=90) + TICK)
    assert (members("cart_0_2h"), members("cart_2_24h")) == ({"a"}, set())
    evaluate_expired(now=T0 + timedelta(minutes=150) + TICK)
    assert (members("cart_0_2h"), members("cart_2_24h")) == (set(), {"a"})


def test_the_followers_of_an_audience_no_longer_realtime_evaluate_the_people_whose_rows_are_taken_away(source):
    """cart_0_2h stops following its windows (its rows are only taken away, a stays in it until
    its next evaluation): cart_2_24h must not apply the course it followed, in which a came down."""
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_all(now=T0)
    Audience.objects.filter(key="cart_0_2h").update(cadence="daily")
    evaluate_expired(now=T0 + timedelta(minutes=90) + TICK)
    assert not WindowExpiry.objects.filter(audience__key="cart_0_2h").exists()
    assert (members("cart_0_2h"), members("cart_2_24h")) == ({"a"}, set())


def test_windows_that_open_and_dates_that_age_are_due_when_they_turn(source):
    audience_save(
        data={
            "key": "lapsed",
            "name": "Lapsed",
            "rule": {
                "all": [
                    {"attribute": "last_order_date", "older_than": "60d"},
                    {"attribute": "last_order_date", "newer_than": "90d"},
                ]
            },
        }
    )
    audience_save(data={"key": "winback", "name": "Winback", "rule": {"event": "Order Completed", "last_between": ["7d", "30d"]}})
    identify(source, "a", last_order_date=int((T0 - timedelta(days=50)).timestamp()))
    identify(source, "old", last_order_date=int((T0 - timedelta(days=100)).timestamp()))
    send(source, "b", "Order Completed", T0 - timedelta(days=2))
    evaluate_all(now=T0)
    assert due("lapsed", "a") == T0 + timedelta(days=10) + TICK  # it enters when 60 days old
    assert due("lapsed", "old") is None  # already too old to enter, ever
    assert due("winback", "b") == T0 + timedelta(days=5)  # the window opens at 7 days
    evaluate_expired(now=T0 + timedelta(days=5))
    assert members("winback") == {"b"}
    assert due("winback", "b") == T0 + timedelta(days=28) + TICK
    evaluate_expired(now=T0 + timedelta(days=10, seconds=1))
    assert members("lapsed") == {"a"}
    assert due("lapsed", "a") == T0 + timedelta(days=40) + TICK


def test_a_person_held_out_by_what_does_not_move_with_the_clock_gets_no_time(source):
    audience_save(
        data={
            "key": "vip_carts",
            "name": "VIP carts",
            "rule": {"all": [{"attribute": "vip", "eq": True}, {"event": "Added to Cart", "within": "2h"}]},
        }
    )
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=5))
    evaluate_all(now=T0)
    assert members("vip_carts") == set() and due("vip_carts", "a") is None
    identify(source, "a", at=T0 + timedelta(minutes=1), vip=True)  # ingest queues a: evaluated at once
    evaluate_pending(now=T0 + timedelta(minutes=1))
    assert members("vip_carts") == {"a"} and due("vip_carts", "a") == T0 + timedelta(minutes=115) + TICK


def test_the_hourly_check_counts_logs_and_alerts_people_expiry_missed(source, caplog):
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    send(source, "b", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_pending(now=T0)
    evaluations = {e.audience_key: e for e in evaluate_due(now=T0)}
    assert evaluations["cart_0_2h"].differences is None  # a first evaluation is no check
    WindowExpiry.objects.filter(person__customer_id="a").delete()  # as if expiry had lost a's time
    evaluate_expired(now=T0 + timedelta(hours=2))  # b moves on; a stays, wrongly
    assert members("cart_0_2h") == {"a"} and members("cart_2_24h") == {"b"}
    checked_at = T0 + timedelta(hours=2, minutes=1)
    with caplog.at_level(logging.ERROR, logger="audiences.evaluation"):
        evaluations = {e.audience_key: e for e in evaluate_due(now=checked_at)}
    assert members("cart_0_2h") == set() and members("cart_2_24h") == {"a", "b"}
    # cart_0_2h corrected a; for cart_2_24h, a was due (cart_0_2h let a go), b right already
    assert {k: e.differences for k, e in evaluations.items()} == {"purchasers_24h": 0, "cart_0_2h": 1, "cart_2_24h": 0}
    assert "cart_0_2h: the consistency check" in caplog.text and "corrected 1 person window expiry had missed" in caplog.text
    audience = Audience.objects.get(key="cart_0_2h")
    assert (audience.consistency_differences, audience.consistency_checked_at) == (1, checked_at)
    check_alerts(now=checked_at + timedelta(minutes=1))
    alert = Alert.objects.get(kind=Alert.FAILING_EVALUATION, resolved_at__isnull=True)
    assert alert.audience == audience and "corrected 1 person whose membership window expiry had missed" in alert.message
    assert "bug in Downstream's evaluation, not in the rule" in alert.message
    evaluate_due(now=checked_at + timedelta(hours=1))  # the next check is clean
    check_alerts(now=checked_at + timedelta(hours=1, minutes=1))
    alert.refresh_from_db()
    assert alert.resolved_at is not None and "nothing to correct" in alert.details["resolution"]


def test_people_the_tick_has_not_reached_yet_are_no_bug(source):
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "a", "Added to Cart", T0 - timedelta(hours=1))
    evaluate_pending(now=T0)
    evaluate_all(now=T0)
    send(source, "b", "Added to Cart", T0 + timedelta(minutes=1))  # queued by ingest, not evaluated yet
    evaluation = evaluate_all(now=T0 + timedelta(hours=1, minutes=2))[0]  # a's time came a minute ago
    assert (members("carts"), evaluation.differences) == ({"b"}, 0)


def test_a_changed_definition_is_evaluated_in_full_at_the_next_tick_and_is_no_check(source):
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_due(now=T0)
    assert evaluate_due(now=T0 + timedelta(minutes=1)) == []
    audience_save(instance=Audience.objects.get(key="cart_0_2h"), data={"rule": {"event": "Added to Cart", "within": "15m"}})
    changed = evaluate_due(now=T0 + timedelta(minutes=2))
    assert [(e.audience_key, e.differences) for e in changed] == [("cart_0_2h", None)]
    assert members("cart_0_2h") == set()
    assert due("cart_2_24h", "a") == T0 + timedelta(minutes=2)  # the stage below meets a again at once
    # disabling the higher-ranked stage changes what cart_2_24h reads: evaluated in full at once
    Audience.objects.filter(key="cart_0_2h").update(enabled=False)
    assert [(e.audience_key, e.differences) for e in evaluate_due(now=T0 + timedelta(minutes=3))] == [("cart_2_24h", None)]


def test_a_full_evaluation_makes_the_people_it_changed_due_for_the_realtime_audiences_reading_it(source):
    audience_save(
        data={"key": "vips", "name": "VIPs", "purpose": "suppression", "cadence": "1h", "rule": {"attribute": "vip", "eq": True}}
    )
    audience_save(
        data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}, "exclusions": ["vips"]}
    )
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=5))
    evaluate_all(now=T0)
    assert members("carts") == {"a"}
    Person.objects.filter(customer_id="a").update(attributes={"vip": True})  # a back office, no ingest
    evaluate_all(["vips"], now=T0 + timedelta(hours=1))
    assert due("carts", "a") == T0 + timedelta(hours=1)
    evaluate_expired(now=T0 + timedelta(hours=1))
    assert members("carts") == set()


def two_carts_ending_soon(source):
    """Carts of a and b whose 2 hours end 3 and 5 s after T0, evaluated at T0."""
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "a", "Added to Cart", T0 - timedelta(hours=2) + timedelta(seconds=3))
    send(source, "b", "Added to Cart", T0 - timedelta(hours=2) + timedelta(seconds=5))
    evaluate_pending(now=T0)
    evaluate_all(now=T0)


def test_the_waiter_evaluates_each_person_when_their_time_comes_then_lets_its_worker_go(source):
    two_carts_ending_soon(source)
    slept = []
    with time_machine.travel(T0, tick=False) as traveller:

        def sleep(seconds):
            slept.append(seconds)
            traveller.shift(seconds)

        assert evaluate_expiring_people(sleep=sleep) == 2
    assert members("carts") == set()
    assert 0 < max(slept) <= EXPIRY_POLL_S and sum(slept) < 5 + EXPIRY_POLL_S
    assert cache.get(EXPIRY_LEASE) is None  # nothing due within the horizon: the lease is let go
    exits = dict(Audience.objects.get(key="carts").memberships.values_list("person__customer_id", "exited_at"))
    assert exits["a"] - (T0 + timedelta(seconds=3)) <= timedelta(seconds=EXPIRY_POLL_S)


def test_a_second_waiter_leaves_it_to_the_first(source):
    cache.set(EXPIRY_LEASE, "another", 10)
    assert evaluate_expiring_people(sleep=lambda s: pytest.fail("must not wait")) == 0


def lease_renewed(seconds_before_t0: float, token: str = "dead") -> str:
    return f"{token}:{T0.timestamp() - seconds_before_t0:.6f}"


def quarter_sleeps(slept) -> float:
    """The time a takeover watched the lease (in quarters of the poll) before the waiter ran."""
    return sum(itertools.takewhile(lambda s: s == EXPIRY_POLL_S / 4, slept))


@pytest.mark.parametrize(
    "renewed_before, watched",
    [
        (1.0, EXPIRY_STALE_S - 1.0),  # the cluster started again at once: the lease is 1 s old
        (60.0, 0.0),  # long dead: taken over at once
        (-30.0, EXPIRY_STALE_S),  # a clock ahead of this one's: watched the whole time
    ],
)
def test_a_waiter_started_by_a_new_worker_takes_over_a_lease_nobody_renews(source, renewed_before, watched):
    # the waiter died with its worker (or its cluster) a moment ago, its lease still there
    two_carts_ending_soon(source)
    cache.set(EXPIRY_LEASE, lease_renewed(renewed_before), 10)
    slept = []
    with time_machine.travel(T0, tick=False) as traveller:

        def sleep(seconds):
            slept.append(seconds)
            traveller.shift(seconds)

        assert evaluate_expiring_people(sleep=sleep) == 0  # not started by a new worker: leaves it be
        assert evaluate_expiring_people(takeover=True, sleep=sleep) == 2
    assert members("carts") == set()
    assert quarter_sleeps(slept) == pytest.approx(watched)  # watched until 2.5 s unrenewed, then taken over
    assert cache.get(EXPIRY_LEASE) is None  # and let go once nothing was due any more


def test_a_waiter_started_by_a_new_worker_leaves_a_lease_that_is_renewed_to_its_waiter(source):
    two_carts_ending_soon(source)
    cache.set(EXPIRY_LEASE, lease_renewed(2.0, "alive"), 10)
    slept = []
    with time_machine.travel(T0, tick=False) as traveller:

        def sleep(seconds):  # meanwhile the live waiter renews its lease, 2.25 s after the last time
            slept.append(seconds)
            traveller.shift(seconds)
            cache.set(EXPIRY_LEASE, lease_renewed(-len(slept), "alive"), 10)

        assert evaluate_expiring_people(takeover=True, sleep=sleep) == 0
        assert slept == [EXPIRY_POLL_S / 4] and cache.get(EXPIRY_LEASE) == lease_renewed(-1.0, "alive")
    assert members("carts") == {"a", "b"}  # left to the live waiter


def test_a_waiter_whose_lease_was_taken_over_stops(source):
    two_carts_ending_soon(source)
    with time_machine.travel(T0, tick=False) as traveller:

        def sleep(seconds):  # it was slow to renew: a new worker's waiter took over
            traveller.shift(seconds)
            cache.set(EXPIRY_LEASE, "newer:2.0", 10)

        assert evaluate_expiring_people(sleep=sleep) == 0  # nobody's time had come before it slept
        assert cache.get(EXPIRY_LEASE) == "newer:2.0"  # neither renewed nor let go: the other's
    assert members("carts") == {"a", "b"}  # left to the other


def test_the_waiter_looks_again_when_the_database_fails_instead_of_failing_its_task(source, monkeypatch, caplog):
    from django.db import OperationalError

    from audiences import tasks

    two_carts_ending_soon(source)
    failures = iter([OperationalError("server closed the connection unexpectedly")])

    def evaluate_expired_or_fail():
        for error in failures:
            raise error
        return evaluate_expired()

    monkeypatch.setattr(tasks, "evaluate_expired", evaluate_expired_or_fail)
    with time_machine.travel(T0, tick=False) as traveller:
        assert evaluate_expiring_people(sleep=traveller.shift) == 2
    assert members("carts") == set() and cache.get(EXPIRY_LEASE) is None
    assert "expiry waiter: the database failed (server closed the connection unexpectedly)" in caplog.text


def test_a_realtime_pass_the_database_fails_is_tried_again_a_second_later(source, monkeypatch, caplog):
    from django.db import OperationalError

    from audiences import tasks
    from audiences.models import PendingEvaluation

    audience_save(data={"key": "buyers", "name": "Buyers", "rule": {"event": "Order Completed", "within": "24h"}})
    send(source, "a", "Order Completed", T0)
    real = tasks.evaluate_pending
    calls = []

    def failing(times):
        def evaluate_pending():
            calls.append(1)
            if len(calls) <= times:
                raise OperationalError("terminating connection due to administrator command")
            return real()

        return evaluate_pending

    monkeypatch.setattr(tasks, "evaluate_pending", failing(tasks.PENDING_ATTEMPTS))
    slept = []
    with time_machine.travel(T0, tick=False):
        with pytest.raises(OperationalError):  # it gives up in the end, the person still queued
            tasks.evaluate_pending_people(sleep=slept.append)
        assert slept == [EXPIRY_POLL_S] * (tasks.PENDING_ATTEMPTS - 1) and PendingEvaluation.objects.count() == 1
        assert "realtime evaluation: the database failed (terminating connection" in caplog.text
        calls.clear()
        slept.clear()
        monkeypatch.setattr(tasks, "evaluate_pending", failing(2))
        assert tasks.evaluate_pending_people(sleep=slept.append) == 1
    assert slept == [EXPIRY_POLL_S] * 2 and members("buyers") == {"a"} and not PendingEvaluation.objects.exists()


def test_a_new_worker_starts_a_takeover_only_while_a_lease_is_held(monkeypatch):
    from audiences import tasks

    queued = []
    monkeypatch.setattr(tasks.Conf, "SYNC", False)
    monkeypatch.setattr(tasks, "async_task", lambda func, *args, **kwargs: queued.append((func, kwargs.get("takeover"))))
    tasks.resume_pending_evaluation()
    assert queued == [("audiences.tasks.evaluate_pending_people", None)]
    cache.set(EXPIRY_LEASE, "someone:1.0", 10)
    tasks.resume_pending_evaluation()
    assert queued[1:] == [("audiences.tasks.evaluate_pending_people", None), ("audiences.tasks.evaluate_expiring_people", True)]


def test_the_consistency_check_command_prints_what_each_check_corrected(source):
    playbook()
    audience_save(data={"key": "hourly", "name": "Hourly", "cadence": "1h", "rule": {"attribute": "vip", "eq": True}})
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_pending(now=T0)
    evaluate_all(now=T0)
    WindowExpiry.objects.filter(person__customer_id="a", audience__key="cart_0_2h").delete()
    out = StringIO()
    with time_machine.travel(T0 + timedelta(hours=3), tick=False):
        with pytest.raises(CommandError, match="corrected 1 person window expiry had missed"):
            call_command("consistency_check", stdout=out)
        assert "cart_0_2h: size 0, 1 corrected (people window expiry missed" in out.getvalue()
        assert "cart_2_24h: size 1, 0 corrected" in out.getvalue() and "hourly" not in out.getvalue()
        out = StringIO()
        call_command("consistency_check", "cart_0_2h", stdout=out)
        assert out.getvalue() == "cart_0_2h: size 0, 0 corrected\n"
    with pytest.raises(CommandError, match="hourly: not a realtime rule audience"):
        call_command("consistency_check", "hourly")
    with pytest.raises(CommandError, match="no audience with key nope"):
        call_command("consistency_check", "nope")


def test_a_tick_locks_only_the_audiences_with_rows_due_and_their_readers(source):
    """Three realtime audiences; carts read buyers (an exclusion), views reads neither: a buyer's
    window ending takes buyers and carts, never views; the row of an audience no longer realtime
    is taken away."""
    rule = {"event": "Order Completed", "within": "1d"}
    buyers = audience_save(data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": rule})
    carts = audience_save(
        data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2d"}, "exclusions": ["buyers"]}
    )
    views = audience_save(data={"key": "views", "name": "Views", "rule": {"event": "Product Viewed", "within": "7d"}})
    send(source, "a", "Added to Cart", T0 - timedelta(hours=3))
    send(source, "a", "Order Completed", T0 - timedelta(hours=2))
    send(source, "v", "Product Viewed", T0 - timedelta(hours=1))
    evaluate_all(now=T0)
    assert (members("buyers"), members("carts"), members("views")) == ({"a"}, set(), {"v"})
    weekly = audience_save(data={"key": "weekly", "name": "Weekly", "cadence": "1d", "rule": {"attribute": "vip", "eq": True}})
    WindowExpiry.objects.create(audience=weekly, person=Person.objects.get(customer_id="v"), due_at=T0)
    ends = T0 + timedelta(hours=22) + TICK
    with CaptureQueriesContext(connection) as queries:
        assert evaluate_expired(now=ends) == 2
    # the look-ups by id (on SQLite select_for_update writes no FOR UPDATE): the row locks, the
    # evaluations; none of views
    read = " ".join(q["sql"] for q in queries.captured_queries)

    def touched(audience) -> bool:
        return re.search(rf'"audiences_audience"\."id" = {audience.pk}\b', read) is not None

    assert (touched(buyers), touched(carts), touched(views)) == (True, True, False)
    # a left buyers at the end of its day and is in carts again, its cart not two days old
    assert (members("buyers"), members("carts"), members("views")) == (set(), {"a"}, {"v"})
    assert not WindowExpiry.objects.filter(audience=weekly).exists()


def test_an_erased_person_s_rows_go_with_them_and_a_row_left_behind_enters_nobody(source):
    """The rows' keys have no constraint in the database: Django deletes them with the person,
    and a row written for a person erased meanwhile is taken away by the tick, entering nobody."""
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    send(source, "b", "Added to Cart", T0 - timedelta(minutes=30))
    evaluate_all(now=T0)
    assert WindowExpiry.objects.filter(person__customer_id="a").count() == 2
    person_erase(customer_id="a")
    gone = Person.objects.get(customer_id="b")
    rows = list(WindowExpiry.objects.filter(person=gone))
    Person.objects.filter(pk=gone.pk).delete()  # Django takes its rows too: put them back, as a racing tick might
    assert not WindowExpiry.objects.exists()
    WindowExpiry.objects.bulk_create(rows)
    assert evaluate_expired(now=T0 + timedelta(minutes=90) + TICK) == 1
    assert not Membership.objects.exists()
    evaluate_expired(now=T0 + timedelta(days=1))  # the end of the course it had
    assert not WindowExpiry.objects.exists() and not Membership.objects.exists()
