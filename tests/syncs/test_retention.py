"""Retention: what each rule needs decides how long events stay; pruning events leaves every
audience's members and the per-person aggregates as they were; settled deliveries, batches and
runs go after their days, counted into daily rollups that the weekly review and the run
history read, so both show the same figures before and after; open deliveries and each
person's last change stay; task results are capped; the storage page shows the store's size.
Every pass takes its `now`: nothing here depends on the date the suite runs on."""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.utils import timezone

from audiences.compiler import members_queryset
from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Audience, Event, EventStat, Person
from audiences.services import audience_save
from syncs import retention
from syncs.delivery import deliver_destination
from syncs.models import Delivery, DeliveryBatch, RetentionRun, Sync, SyncDay, SyncRun
from syncs.retention import (
    KEEP_LAST_RUNS,
    apply_retention,
    event_horizon,
    event_windows,
    lag_key,
    merged_lag_figures,
    run_days,
    store_size,
)
from syncs.review import weekly_review
from syncs.selectors import lag_figures
from syncs.services import sync_save
from tests.syncs.conftest import buyers_and_carts

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def no_pause(settings):
    settings.RETENTION_PAUSE_S = 0


def event(customer_id, name, at, n, **properties) -> Message:
    return Message("event", customer_id, f"{customer_id}-{name}-{n}", at, name=name, properties=properties)


# --- what the rules need --------------------------------------------------------------------


def test_windows_are_read_from_every_condition_of_a_stored_rule():
    rule = {
        "all": [
            {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"},
            {
                "any": [
                    {"event": "Order Completed", "last_between": ["60d", "13w"]},
                    {"not": {"event": "Viewed", "where": {"a": 1}}},
                ]
            },
            {"event": "Signed Up"},  # ever, no property filter: the aggregates answer it
            {"event": "Order Completed", "min_count": 3},  # a lifetime count: the aggregates too
            {"attribute": "last_order_date", "older_than": "400d"},  # an attribute, not an event
            {"event": "Bad", "within": "2x"},  # refused by evaluation: no window
        ]
    }
    assert sorted(event_windows(rule), key=str) == sorted(
        [
            ("Added to Cart", timedelta(hours=2)),
            ("Order Completed", timedelta(weeks=13)),
            ("Viewed", None),
        ],
        key=str,
    )


def test_a_rule_stored_before_the_bounds_is_still_read_whatever_its_depth():
    deep = {"event": "Order Completed", "within": "45d"}
    for _ in range(5000):  # far past both the bounds and Python's recursion limit
        deep = {"not": deep}
    rule = {"all": [deep, {"attribute": "tier", "in": list(range(5000))}]}
    assert list(event_windows(rule)) == [("Order Completed", timedelta(days=45))]


def test_the_horizon_is_the_longest_window_plus_the_margin_never_under_the_floor(settings):
    settings.RETENTION_EVENT_FLOOR_DAYS, settings.RETENTION_EVENT_MARGIN_DAYS = 30, 7
    assert (event_horizon().days, event_horizon().longest) == (30, None)
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    assert event_horizon().days == 30  # 2 hours + 7 days is under the floor
    audience_save(
        data={
            "key": "lapsed",
            "name": "Lapsed",
            "enabled": False,
            "rule": {"event": "Order Completed", "last_between": ["60d", "90d"]},
        }
    )
    horizon = event_horizon()
    assert (horizon.days, horizon.longest, horizon.longest_in) == (97, timedelta(days=90), "Lapsed")  # disabled counts
    audience_save(data={"key": "odd", "name": "Odd", "rule": {"event": "Order Completed", "within": "2161h"}})
    assert event_horizon().days == 91 + 7  # 90 days and an hour: a whole day more


def test_an_event_read_with_no_window_is_kept_whole():
    audience_save(
        data={"key": "serum", "name": "Serum ever", "rule": {"event": "Product Viewed", "where": {"category": "serum"}}}
    )
    assert event_horizon().kept_in_full == {"Product Viewed": ("Serum ever",)}


# --- events ---------------------------------------------------------------------------------

RULES = {
    "serum_7d": {"event": "Product Viewed", "within": "7d", "where": {"category": "serum"}},
    "two_orders_30d": {"event": "Order Completed", "within": "30d", "min_count": 2},
    "coupon_120d": {"event": "Order Completed", "within": "120d", "where": {"coupon": "WELCOME"}},
    "lapsed_60_90d": {"event": "Order Completed", "last_between": ["60d", "90d"]},
    "coupon_lapsed": {"event": "Order Completed", "last_between": ["100d", "125d"], "where": {"coupon": "WELCOME"}},
    "signed_up_ever": {"event": "Signed Up"},
    "loyal": {"event": "Order Completed", "min_count": 6},
    "never_opened_promo": {"not": {"event": "Newsletter Opened", "where": {"campaign": "promo"}}},
    "cart_no_purchase": {"event": "Added to Cart", "within": "3d", "not_followed_by": "Order Completed"},
}


@pytest.fixture
def a_year_of_events(source):
    """40 people, 400 days of events of five kinds, through the ingest path (aggregates included)."""
    for key, rule in RULES.items():
        audience_save(data={"key": key, "name": key.replace("_", " ").title(), "rule": rule})
    rng = random.Random(7)
    ago = lambda days: T0 - timedelta(days=days)  # noqa: E731
    messages = [  # one member at least in each audience, whatever the noise below
        event("s1", "Product Viewed", ago(2), 1, category="serum"),
        event("o1", "Order Completed", ago(5), 2),
        event("o1", "Order Completed", ago(10), 3),
        *(event("o1", "Order Completed", ago(days), days) for days in (200, 250, 300, 350)),  # loyal, mostly pruned
        event("w1", "Order Completed", ago(110), 4, coupon="WELCOME"),
        event("w2", "Order Completed", ago(130), 5, coupon="WELCOME"),  # outside both windows, inside the horizon
        event("l1", "Order Completed", ago(75), 6),
        event("a1", "Added to Cart", ago(1), 7),
        event("n1", "Newsletter Opened", ago(300), 8, campaign="promo"),  # keeps n1 out of never_opened_promo
    ]
    n = 1000
    for p in range(40):
        customer_id = f"c{p:02d}"
        messages.append(event(customer_id, "Signed Up", T0 - timedelta(days=rng.randint(0, 400)), n))
        for _ in range(rng.randint(5, 40)):
            n += 1
            name = rng.choice(["Product Viewed", "Order Completed", "Added to Cart", "Newsletter Opened"])
            props = {
                "Product Viewed": {"category": rng.choice(["serum", "toner"])},
                "Order Completed": {"coupon": rng.choice(["WELCOME", ""])},
                "Newsletter Opened": {"campaign": rng.choice(["promo", "news"])},
            }.get(name, {})
            at = T0 - timedelta(days=rng.uniform(0, 400))
            messages.append(event(customer_id, name, at, n, **props))
    for start in range(0, len(messages), 200):
        ingest_messages(source=source, messages=messages[start : start + 200], received_at=T0)
    return messages


def members_now() -> dict[str, set[str]]:
    return {a.key: set(members_queryset(a, T0).values_list("customer_id", flat=True)) for a in Audience.objects.all()}


def aggregates():
    return sorted(EventStat.objects.values_list("person__customer_id", "name", "first_at", "last_at", "count"))


def test_pruning_events_keeps_every_audience_s_members_and_the_aggregates(a_year_of_events):
    horizon = event_horizon()
    assert horizon.days == 125 + 7 and horizon.kept_in_full == {"Newsletter Opened": ("Never Opened Promo",)}
    before, stats, people = members_now(), aggregates(), sorted(Person.objects.values_list("customer_id", "created_at"))
    assert all(before.values()), "every audience has members, so the comparison means something"
    evaluate_all(now=T0)
    total = Event.objects.count()

    run = apply_retention(now=T0)

    cutoff = T0 - timedelta(days=132)
    old = Event.objects.filter(occurred_at__lt=cutoff)
    assert not old.exclude(name="Newsletter Opened").exists()
    assert old.filter(name="Newsletter Opened").exists()  # read with no window: kept whole
    assert run.deleted["events"] == total - Event.objects.count() > 100
    assert run.complete and run.event_days == 132
    assert members_now() == before
    assert aggregates() == stats  # first seen, last seen and lifetime counts did not move
    assert sorted(Person.objects.values_list("customer_id", "created_at")) == people
    assert all(not e.entries and not e.exits for e in evaluate_all(now=T0))


def test_events_go_in_chunks_with_a_pause_after_each(a_year_of_events, settings):
    settings.RETENTION_CHUNK_ROWS, settings.RETENTION_PAUSE_S = 25, 0.5
    due = Event.objects.filter(occurred_at__lt=T0 - timedelta(days=132)).exclude(name="Newsletter Opened").count()
    pauses = []
    run = apply_retention(now=T0, sleep=pauses.append)
    assert run.deleted["events"] == due
    # at least one chunk per event name with old events, and never more rows than a chunk
    assert len(pauses) >= -(-due // 25) and set(pauses) == {0.5}


def test_a_pass_stops_at_its_budget_and_the_next_goes_on(a_year_of_events):
    cut = apply_retention(now=T0, max_seconds=0)
    assert (cut.complete, sum(cut.deleted.values())) == (False, 0)
    rest = apply_retention(now=T0 + timedelta(hours=1))
    assert rest.complete and rest.deleted["events"] > 0
    assert list(RetentionRun.objects.values_list("complete", flat=True)) == [True, False]  # newest first


# --- deliveries -----------------------------------------------------------------------------


@pytest.fixture
def two_syncs(livelike_destination):
    buyers_and_carts()
    return (
        sync_save(data={"key": "buyers-ll", "audience": "buyers", "destination": "livelike"}),
        sync_save(data={"key": "carts-ll", "audience": "carts", "destination": "livelike"}),
    )


def delivery(sync, customer_id, action, state, at, *, lag=None, initial=False, **extra) -> Delivery:
    acked = at + lag if lag is not None else None
    return Delivery.objects.create(
        sync=sync,
        customer_id=customer_id,
        action=action,
        state=state,
        triggered_at=at,
        changed_at=at,
        created_at=at,
        acknowledged_at=acked,
        initial=initial,
        **extra,
    )


def test_open_deliveries_and_each_person_s_last_change_are_never_pruned(two_syncs):
    buyers, carts = two_syncs
    old = T0 - timedelta(days=400)
    gone = [
        delivery(buyers, "s", Delivery.ENTER, Delivery.SENT, old - DAY, lag=DAY),  # a later change settled
        delivery(carts, "t", Delivery.ENTER, Delivery.CANCELLED, old),  # cancelled: never read again
        delivery(carts, "t", Delivery.EXIT, Delivery.CANCELLED, old),
    ]
    kept = [
        delivery(buyers, "p", Delivery.ENTER, Delivery.PENDING, old),
        delivery(buyers, "q", Delivery.EXIT, Delivery.HELD, old),
        delivery(buyers, "r", Delivery.ENTER, Delivery.SENDING, old),
        delivery(carts, "s", Delivery.ENTER, Delivery.SENT, old, lag=DAY),  # s's last change in carts
        delivery(buyers, "s", Delivery.EXIT, Delivery.SENT, old + DAY, lag=DAY),  # and in buyers
    ]
    recent = delivery(buyers, "u", Delivery.ENTER, Delivery.SENT, T0 - timedelta(days=2), lag=DAY)
    run = apply_retention(now=T0)
    remaining = set(Delivery.objects.values_list("pk", flat=True))
    assert remaining == {d.pk for d in kept} | {recent.pk}
    assert run.deleted["deliveries"] == len(gone)


def test_an_exit_long_after_the_entry_still_reaches_the_destination(source, livelike, livelike_destination):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    sync = sync_save(data={"key": "flagged-ll", "audience": "flagged", "destination": "livelike"})
    flags = iter(range(100))

    def flag(customer_id, value):
        ingest_messages(
            source=source, messages=[Message("identify", customer_id, f"i{next(flags)}", timezone.now(), traits={"flag": value})]
        )
        evaluate_all()
        deliver_destination(livelike_destination.pk)

    flag("ann", True)
    flag("bob", True)
    flag("ann", False)
    flag("ann", True)
    assert livelike.members("flagged") == {"ann", "bob"}
    # forty days on, everything the pass may take has gone: ann's first entry and exit
    run = apply_retention(now=timezone.now() + timedelta(days=40))
    assert run.deleted["deliveries"] == 2
    assert sorted(Delivery.objects.values_list("customer_id", "action")) == [("ann", "enter"), ("bob", "enter")]

    flag("ann", False)
    flag("bob", False)
    exits = Delivery.objects.filter(sync=sync, action=Delivery.EXIT)
    assert sorted(exits.values_list("customer_id", "state")) == [("ann", "sent"), ("bob", "sent")]
    assert livelike.members("flagged") == set()


def test_rollups_count_exactly_the_deliveries_pruned(two_syncs):
    rng = random.Random(3)
    states = [Delivery.SENT] * 6 + [Delivery.REJECTED, Delivery.DEAD, Delivery.CANCELLED, Delivery.SKIPPED, Delivery.DRY_RUN]
    for _ in range(600):
        at = T0 - timedelta(days=rng.uniform(20, 45))
        state = rng.choice(states)
        lag = timedelta(microseconds=rng.randint(0, 90_000_000)) if state in (Delivery.SENT, Delivery.REJECTED) else None
        delivery(
            rng.choice(two_syncs),
            f"p{rng.randint(0, 40)}",
            rng.choice(["enter", "exit"]),
            state,
            at,
            lag=lag,
            initial=rng.random() < 0.1,
        )
    before = {d.pk: d for d in Delivery.objects.all()}
    apply_retention(now=T0)
    gone = [before[pk] for pk in before.keys() - set(Delivery.objects.values_list("pk", flat=True))]
    assert 200 < len(gone) < 600

    counts, lags = Counter(), Counter()
    for d in gone:
        counts[(d.sync_id, timezone.localdate(d.created_at), d.state)] += 1
        if d.state == Delivery.SENT and not d.initial:
            lags[(d.sync_id, timezone.localdate(d.acknowledged_at), d.action, lag_key(d.acknowledged_at - d.triggered_at))] += 1
    rolled, rolled_lags = Counter(), Counter()
    for day in SyncDay.objects.all():
        for state in ("sent", "rejected", "dead", "cancelled", "skipped", "dry_run"):
            if getattr(day, state):
                rolled[(day.sync_id, day.day, state)] = getattr(day, state)
        for action, column in (("enter", day.lag_enter), ("exit", day.lag_exit)):
            for key, n in column.items():
                rolled_lags[(day.sync_id, day.day, action, int(key))] = n
    assert rolled == counts
    assert rolled_lags == lags


@pytest.mark.parametrize(
    ("lag", "key"),
    [
        (timedelta(0), 0),
        (timedelta(microseconds=400), 1),
        (timedelta(milliseconds=100), 100),
        (timedelta(microseconds=999_001), 1000),
        (timedelta(seconds=1.234), 1240),
        (timedelta(seconds=12.345), 12400),
        (timedelta(seconds=19), 19000),
        (timedelta(hours=2, microseconds=1), 7_210_000),
        (timedelta(seconds=-3), 0),
    ],
)
def test_a_lag_is_kept_rounded_up_to_the_millisecond_and_three_significant_digits(lag, key):
    assert lag_key(lag) == key


def test_lag_figures_with_pruned_days_are_within_one_percent_and_never_lower():
    rng = random.Random(11)
    values = [rng.lognormvariate(-1, 1.5) for _ in range(3000)]
    exact = lag_figures(values)
    kept, pruned = values[:1000], Counter(lag_key(timedelta(seconds=v)) for v in values[1000:])
    merged = merged_lag_figures(kept, pruned)
    assert merged.count == exact.count
    for got, want in ((merged.p50, exact.p50), (merged.p95, exact.p95), (merged.max, exact.max)):
        assert want - 1e-6 <= got <= want * 1.01 + 0.001


@pytest.fixture
def weeks_of_running(two_syncs, settings):
    """Deliveries and runs over 70 days, midnight neighbours included, in a zone off UTC."""
    settings.TIME_ZONE, settings.RETENTION_RUN_DAYS = "America/New_York", 30
    rng = random.Random(5)
    midnight = timezone.make_aware(datetime(2026, 10, 1))
    for n in range(900):
        at = midnight + timedelta(days=rng.randint(0, 70), seconds=rng.choice([1, 30, 3600 * 12, 86399]))
        sync = rng.choice(two_syncs)
        state = rng.choice([Delivery.SENT] * 5 + [Delivery.REJECTED, Delivery.DEAD, Delivery.CANCELLED])
        lag = timedelta(seconds=rng.randint(1, 40)) if state in (Delivery.SENT, Delivery.REJECTED) else None
        delivery(sync, f"p{n % 50}", rng.choice(["enter", "exit"]), state, at, lag=lag)
    for _ in range(300):
        started = midnight + timedelta(days=rng.randint(0, 70), seconds=rng.choice([2, 7200, 86398]))
        SyncRun.objects.create(
            sync=rng.choice(two_syncs),
            started_at=started,
            finished_at=started + timedelta(seconds=3),
            status=rng.choice([SyncRun.SUCCEEDED] * 3 + [SyncRun.PARTIAL, SyncRun.FAILED]),
            planned=rng.randint(0, 500),
            sent=rng.randint(0, 500),
            rejected=rng.randint(0, 5),
            skipped=rng.randint(0, 5),
            retried=rng.randint(0, 5),
            requests=rng.randint(1, 3),
        )
    for n in range(200):
        DeliveryBatch.objects.create(
            batch_id=f"00000000-0000-0000-0000-{n:012d}",
            sync=rng.choice(two_syncs),
            sent_at=midnight + timedelta(days=rng.randint(0, 70)),
            status=rng.choice([200, 500, None]),
        )
    return midnight + timedelta(days=72), two_syncs


def review_figures(week_ending):
    return [
        (row.audience.key, row.lag.count, row.lag.p50, row.lag.p95, row.lag.max, row.rejected, row.dead)
        for row in weekly_review(week_ending=week_ending).rows
    ]


def test_the_weekly_review_and_run_history_read_the_same_before_and_after_pruning(weeks_of_running):
    now, syncs = weeks_of_running
    weeks = [timezone.localdate(now) - timedelta(days=7 * k + 1) for k in range(11)]
    before = {week: review_figures(week) for week in weeks}
    history = {
        s.pk: [
            (d.day, d.runs, d.succeeded, d.partial, d.failed, d.planned, d.sent, d.rejected, d.skipped, d.retried, d.requests)
            for d in run_days(s, now=now)
        ]
        for s in syncs
    }
    assert any(row[1] for figures in before.values() for row in figures)

    run = apply_retention(now=now)
    assert run.deleted["deliveries"] > 300 and run.deleted["runs"] > 100 and run.deleted["batches"] > 50

    assert {week: review_figures(week) for week in weeks} == before
    for sync in syncs:
        days = run_days(sync, now=now)
        assert [
            (d.day, d.runs, d.succeeded, d.partial, d.failed, d.planned, d.sent, d.rejected, d.skipped, d.retried, d.requests)
            for d in days
        ] == history[sync.pk]
        assert any(d.pruned for d in days) and any(not d.pruned for d in days)
    batches = SyncDay.objects.values_list("batches", flat=True)
    assert sum(batches) == run.deleted["batches"]


def test_the_run_history_page_shows_the_pruned_days(weeks_of_running, viewer_client):
    now, (buyers, _) = weeks_of_running

    def day_rows():
        html = viewer_client.get(f"/dashboard/syncs/{buyers.key}/runs/").content.decode()
        table = html.split('class="ds-table run-days"')[1]
        return [re.sub(r"<[^>]+>|counted", " ", row).split() for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]

    with time_machine.travel(now, tick=False):  # the page shows the year up to today
        shown = day_rows()
        apply_retention(now=now)
        assert day_rows() == shown and len(shown) > 30


def test_each_sync_keeps_its_last_runs_whatever_their_age(two_syncs):
    buyers, carts = two_syncs
    old = T0 - timedelta(days=300)
    runs = [
        SyncRun.objects.create(sync=buyers, started_at=old + timedelta(minutes=n), status=SyncRun.FAILED)
        for n in range(KEEP_LAST_RUNS + 5)
    ]
    sent = delivery(buyers, "a", Delivery.ENTER, Delivery.SENT, old, lag=DAY, run=runs[0])
    apply_retention(now=T0)
    assert list(SyncRun.objects.order_by("started_at")) == runs[5:]
    sent.refresh_from_db()
    assert sent.run is None  # the delivery stays (the person's last change), its run went
    assert SyncDay.objects.get(sync=buyers).runs_failed == 5


@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_count_each_row_once(two_syncs, settings):
    settings.RETENTION_CHUNK_ROWS = 20
    buyers, carts = two_syncs
    for n in range(400):
        delivery(
            buyers if n % 2 else carts,
            f"p{n % 7}",
            "enter",
            Delivery.SENT,
            T0 - timedelta(days=60, minutes=n),
            lag=timedelta(seconds=1),
        )
    counts = []

    def one_pass():
        try:
            counts.append(apply_retention(now=T0).deleted["deliveries"])
        finally:
            connection.close()

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counts) == 2 and sum(counts) == 400 - 14  # each of 7 people keeps its last change in each of 2 syncs
    assert sum(SyncDay.objects.values_list("sent", flat=True)) == 386


# --- worker task results --------------------------------------------------------------------


def test_old_task_results_go_and_successes_are_capped_per_function(settings):
    from django_q.conf import Conf
    from django_q.models import Task

    assert (Conf.SAVE_LIMIT, Conf.SAVE_LIMIT_PER) == (settings.Q_CLUSTER["save_limit"], "func")
    for n, (age, success) in enumerate([(40, True), (40, False), (3, False), (1, True)]):
        stopped = T0 - timedelta(days=age)
        Task.objects.create(
            id=f"{n:032x}", name=f"t{n}", func="syncs.tasks.deliver_due", started=stopped, stopped=stopped, success=success
        )
    run = apply_retention(now=T0)
    assert run.deleted["task results"] == 2
    assert sorted(Task.objects.values_list("name", flat=True)) == ["t2", "t3"]


# --- settings, schedule, page ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RETENTION_DELIVERY_DAYS", 3, "RETENTION_DELIVERY_DAYS=3 must be a whole number of days of at least 7"),
        ("RETENTION_EVENT_FLOOR_DAYS", 2.5, "RETENTION_EVENT_FLOOR_DAYS=2.5 must be a whole number of days of at least 1"),
        ("RETENTION_CHUNK_ROWS", 50_000, "RETENTION_CHUNK_ROWS=50000 is too many rows for one short transaction"),
        ("RETENTION_PAUSE_S", -1, "RETENTION_PAUSE_S=-1 must be a number of seconds of at least 0"),
    ],
)
def test_a_retention_setting_out_of_range_is_refused_with_its_name(settings, name, value, message):
    setattr(settings, name, value)
    with pytest.raises(SystemCheckError, match=re.escape(message)):
        call_command("check", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        apply_retention(now=T0)


def test_the_worker_runs_retention_every_hour():
    from django_q.models import Schedule

    from syncs.tasks import apply_retention as task

    call_command("setup_schedules", stdout=StringIO())
    schedule = Schedule.objects.get(name="downstream:retention")
    assert (schedule.func, schedule.schedule_type) == ("syncs.tasks.apply_retention", Schedule.HOURLY)
    assert task()["complete"] is True
    assert RetentionRun.objects.count() == 1


def test_the_storage_page_shows_the_store_and_what_is_kept(a_year_of_events, viewer_client):
    apply_retention(now=T0)
    html = viewer_client.get("/dashboard/storage/").content.decode()
    rows = {}
    for row in re.findall(r"<tr><td>(.*?)</tr>", html.split('class="ds-table storage-tables"')[1].split("</table>")[0], re.S):
        cells = [c.strip() for c in re.sub(r"<[^>]+>", "|", row).split("|") if c.strip()]
        rows[cells[0]] = cells[2]
    assert rows["Events"] == f"{Event.objects.count():,}"
    assert rows["Event aggregates"] == f"{EventStat.objects.count():,}"
    assert rows["Deliveries"] == "0"
    assert "132 days" in html and "Coupon Lapsed" in html  # the rule that needs the longest window
    assert "Newsletter Opened events" in html and "Never Opened Promo read them with no window" in html
    size = store_size()
    assert size.total_bytes > 0
    if connection.vendor == "postgresql":
        assert all(t.bytes for t in size.tables if t.table == Event._meta.db_table)
    else:
        assert size.free_bytes is not None and size.where.startswith("file ")


def test_storage_is_in_the_dashboard_menu(viewer_client):
    html = viewer_client.get("/dashboard/alerts/").content.decode()
    assert 'href="/dashboard/storage/"' in html


def test_a_deleted_sync_takes_its_rollups_with_it(two_syncs):
    buyers, _ = two_syncs
    delivery(buyers, "a", "enter", Delivery.CANCELLED, T0 - timedelta(days=60))
    apply_retention(now=T0)
    assert SyncDay.objects.filter(sync=buyers).exists()
    Sync.objects.filter(pk=buyers.pk).delete()
    assert not SyncDay.objects.exists()
    assert retention.pruned_lags([buyers.pk], since=T0 - timedelta(days=90), until=T0, action="enter") == Counter()


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's sessions")
def test_the_storage_page_names_a_transaction_held_open_in_another_database(viewer_client, monkeypatch):
    import psycopg

    def page():
        return viewer_client.get("/dashboard/storage/").content.decode()

    assert "Transaction held open" not in page()  # this session's own transaction is not counted
    params = connection.get_connection_params()
    params = {k: v for k, v in params.items() if k in ("host", "port", "user", "password")}
    with psycopg.connect(dbname="postgres", **params) as other:
        other.execute("SELECT txid_current()")  # a transaction with an xid, left open
        opened = retention.oldest_transaction()
        assert opened is not None and opened.database == "postgres" and opened.state == "idle in transaction"
        assert "Transaction held open" not in page()  # younger than LONG_TRANSACTION_S
        monkeypatch.setattr(retention, "LONG_TRANSACTION_S", 0)
        html = page()
        assert "Transaction held open" in html and "<code>postgres</code>" in html
        assert "idle_in_transaction_session_timeout" in html
        other.rollback()
    after = retention.oldest_transaction()
    assert after is None or after.database != "postgres"
