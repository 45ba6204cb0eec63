"""The lift: the interval maths on known numbers, the SQL selector's counts against a plain
Python count of the same planted data, a planted effect (sent members convert at p·(1 + L))
covered by the 95 % interval in at least 90 of 100 seeds, and an interval that excludes zero
when the effect is large and the audience big; the `lift` command and its input checks.

The 100 seeds are counted in Python with the same unit rules the selector applies (each
person once, from their first recorded entry, conversions in (entry, entry + window]); the
selector itself runs on five of them (and on the large audience) and must return exactly those
counts, so the coverage measured is the selector's coverage, without loading 100 databases.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audiences.ingest import source_create
from audiences.models import Audience, Event, Membership, Person
from audiences.services import audience_save
from syncs import holdouts
from syncs.lift import Arm, Interval, lift_figures, lift_for, more_members_needed, t_quantile
from syncs.models import Delivery, Outcome
from syncs.services import destination_save, sync_save

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


# --- the maths ------------------------------------------------------------------------------


def lift_of(sent: Arm, held: Arm):
    from syncs.lift import Lift

    return Lift(audience_id=1, sync_id=None, event="Order Completed", window_days=7, since=NOW, until=NOW, sent=sent, held=held)


def test_the_rate_interval_and_the_members_it_needs_on_known_numbers():
    lift = lift_of(Arm(1000, 100), Arm(1000, 80))
    assert lift.difference == pytest.approx(0.02)
    assert (lift.interval.low, lift.interval.high) == pytest.approx((-0.005070, 0.045070), abs=1e-6)
    assert not lift.interval.excludes_zero
    # the standard error shrinks with the square root of the count: 1,143 more close the gap
    assert lift.more_members_needed == 1143
    bigger = lift_of(Arm(1572, 157.2), Arm(1572, 125.76))
    assert bigger.interval.excludes_zero and bigger.more_members_needed == 0
    assert "1,143 more members" in lift.verdict
    assert lift.relative == pytest.approx(0.25)
    low, high = lift.relative_interval.low, lift.relative_interval.high
    spread = 1.959964 * math.sqrt(0.9 / 100 + 0.92 / 80)  # Katz: on the log of the ratio
    assert (low, high) == pytest.approx((1.25 * math.exp(-spread) - 1, 1.25 * math.exp(spread) - 1), rel=1e-5)


def test_edge_cases_say_so_instead_of_dividing_by_zero():
    assert lift_of(Arm(100, 10), Arm()).verdict.startswith("No held-out members yet")
    assert lift_of(Arm(), Arm(5, 1)).verdict == "No sent members yet"
    same = lift_of(Arm(100, 10), Arm(100, 10))
    assert same.more_members_needed is None and same.verdict == "No difference between sent and held-out members so far"
    nobody = lift_of(Arm(50, 0), Arm(50, 0))
    assert nobody.interval == Interval(0.0, 0.0) and nobody.relative is None and nobody.more_members_needed is None
    assert lift_of(Arm(50, 5, 100.0, 2000.0), Arm(1, 0)).revenue_interval is None  # one member: no variance
    # two held-out members who did not buy: the normal interval would "exclude zero"; the verdict does not say so
    tiny = lift_of(Arm(49, 18), Arm(2, 0))
    assert tiny.interval.excludes_zero and not tiny.approximation_holds
    assert tiny.verdict == (
        "Too few members to judge yet: each group needs at least 5 who converted and 5 who did not (held out: 0 of 2 converted)"
    )
    assert more_members_needed(Arm(), Arm()) is None


def test_the_welch_interval_matches_a_direct_computation():
    rng = random.Random(5)
    sent = [rng.choice([0, 0, 0, 30.0, 45.5]) for _ in range(400)]
    held = [rng.choice([0, 0, 0, 0, 30.0]) for _ in range(60)]
    lift = lift_of(
        Arm(len(sent), sum(v > 0 for v in sent), sum(sent), sum(v * v for v in sent)),
        Arm(len(held), sum(v > 0 for v in held), sum(held), sum(v * v for v in held)),
    )
    va, vb = statistics.variance(sent) / len(sent), statistics.variance(held) / len(held)
    df = (va + vb) ** 2 / (va**2 / (len(sent) - 1) + vb**2 / (len(held) - 1))
    difference = statistics.mean(sent) - statistics.mean(held)
    assert lift.revenue_difference == pytest.approx(difference)
    assert lift.revenue_interval.high - difference == pytest.approx(t_quantile(df) * math.sqrt(va + vb))


@pytest.mark.parametrize("df, table", [(4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980), (1e9, 1.960)])
def test_the_t_quantile_is_the_table_s(df, table):
    assert t_quantile(df) == pytest.approx(table, abs=0.01)


# --- a planted effect -----------------------------------------------------------------------


@dataclass
class Unit:
    customer_id: str
    held: bool
    converted: bool
    revenue: float


def plant(seed: int, *, people: int, rate: float, lift: float, share: float) -> list[Unit]:
    """Members held out by the real holdout function; sent ones convert at rate·(1 + lift)."""
    rng = random.Random(seed)
    salt = f"seed-{seed}"
    units = []
    for n in range(people):
        customer_id = f"p{seed}-{n:05d}"
        held = holdouts.position(salt, customer_id) < share
        converted = rng.random() < (rate if held else rate * (1 + lift))
        units.append(Unit(customer_id, held, converted, round(rng.uniform(15, 90), 2) if converted else 0.0))
    return units


def arms(units: list[Unit]) -> tuple[Arm, Arm]:
    found = {True: Arm(), False: Arm()}
    for unit in units:
        arm = found[unit.held]
        arm.members += 1
        arm.converted += unit.converted
        arm.revenue += unit.revenue
        arm.revenue_sq += unit.revenue**2
    return found[False], found[True]


def load(units: list[Unit], audience: Audience, source, *, seed: int) -> None:
    """The planted units as the store would hold them, with what must not count beside them: a
    purchase before the entry, one after the window, a later re-entry that converts, and an
    internal test account that converts."""
    rng = random.Random(seed + 1)
    people = Person.objects.bulk_create([Person(customer_id=u.customer_id) for u in units])
    tester = Person.objects.create(customer_id=f"tester-{seed}", is_test=True)
    memberships, events = [], []

    def order(person, at, revenue, n):
        events.append(
            Event(
                person=person,
                source=source,
                name="Order Completed",
                occurred_at=at,
                received_at=at,
                properties={"revenue": revenue},
                message_id=f"{seed}-{person.customer_id}-{n}",
            )
        )

    for person, unit in zip(people, units):
        entered = NOW - timedelta(days=rng.uniform(8, 29))  # inside the 30 days retention keeps events for
        memberships.append(
            Membership(
                audience=audience, person=person, entered_at=entered, exited_at=entered + timedelta(hours=2), held_out=unit.held
            )
        )
        if unit.converted:
            order(person, entered + timedelta(seconds=rng.uniform(1, 7 * 86400 - 1)), unit.revenue, 1)
        if rng.random() < 0.3:
            order(person, entered - timedelta(hours=1), 50, 2)  # before the entry
            order(person, entered + timedelta(days=7, seconds=5), 50, 3)  # after the window
        if rng.random() < 0.1:  # comes back later and buys: the person counts once, from the first entry
            again = entered + timedelta(days=3)
            memberships.append(
                Membership(
                    audience=audience, person=person, entered_at=again, exited_at=again + timedelta(hours=2), held_out=unit.held
                )
            )
            order(person, again + timedelta(days=5), 70, 4)
    memberships.append(
        Membership(
            audience=audience,
            person=tester,
            entered_at=NOW - timedelta(days=20),
            exited_at=NOW - timedelta(days=19),
            held_out=True,
        )
    )
    order(tester, NOW - timedelta(days=19), 99, 1)
    Membership.objects.bulk_create(memberships, batch_size=2000)
    Event.objects.bulk_create(events, batch_size=2000)


SEEDS = range(100)
PEOPLE, RATE, LIFT, SHARE = 4000, 0.10, 0.30, 0.20


def test_the_interval_covers_a_planted_lift_in_at_least_90_of_100_seeds():
    covered = 0
    for seed in SEEDS:
        sent, held = arms(plant(seed, people=PEOPLE, rate=RATE, lift=LIFT, share=SHARE))
        interval = lift_of(sent, held).relative_interval
        covered += interval.low <= LIFT <= interval.high
    assert covered >= 90, covered


@pytest.mark.django_db
@pytest.mark.parametrize("seed", [3, 17, 42, 64, 99])
def test_the_selector_counts_the_planted_units_exactly(seed):
    source, _ = source_create(name=f"shop-{seed}")
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    units = plant(seed, people=PEOPLE, rate=RATE, lift=LIFT, share=SHARE)
    load(units, audience, source, seed=seed)
    lift = lift_for(audience, now=NOW)
    sent, held = arms(units)
    assert (lift.sent.members, lift.sent.converted, lift.held.members, lift.held.converted) == (
        sent.members,
        sent.converted,
        held.members,
        held.converted,
    )
    assert lift.sent.revenue == pytest.approx(sent.revenue) and lift.held.revenue_sq == pytest.approx(held.revenue_sq)


@pytest.mark.django_db
def test_a_large_effect_on_a_big_audience_excludes_zero():
    source, _ = source_create(name="shop")
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    units = plant(7, people=20_000, rate=0.10, lift=0.5, share=0.10)
    load(units, audience, source, seed=7)
    lift = lift_for(audience, now=NOW)
    assert lift.interval.excludes_zero and lift.interval.low > 0
    assert lift.relative_interval.low > 0 and lift.more_members_needed == 0
    assert lift.verdict == "Sent members converted more than held-out ones: the interval excludes zero"


# --- the sync's lift, other events and windows, spend ---------------------------------------


@pytest.mark.django_db
def test_the_sync_lift_reads_the_sync_s_own_entries_and_spend_gives_cost_per_incremental_conversion():
    source, _ = source_create(name="shop")
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    destination = destination_save(
        data={
            "key": "hook",
            "name": "Hook",
            "kind": "webhook",
            "settings": {"url": "http://127.0.0.1:9/hook"},
            "credentials": {"signing_secret": "s3cret-for-tests"},
        }
    )
    sync = sync_save(data={"key": "carts-hook", "audience": "carts", "destination": destination.key, "holdout_share": 0.2})
    units = plant(11, people=3000, rate=0.1, lift=0.4, share=0.2)
    load(units, audience, source, seed=11)
    first = {}
    for m in Membership.objects.filter(audience=audience).order_by("entered_at"):
        first.setdefault(m.person_id, m)
    Delivery.objects.bulk_create(
        [
            Delivery(
                sync=sync,
                person_id=m.person_id,
                customer_id=str(m.person_id),
                action=Delivery.ENTER,
                triggered_at=m.entered_at,
                changed_at=m.entered_at,
                held_out=m.held_out,
                state=Delivery.SKIPPED if m.held_out else Delivery.SENT,
            )
            for m in first.values()
        ]
        + [  # queued when the sync was created, for people already in: not a change, never counted
            Delivery(
                sync=sync,
                person_id=m.person_id,
                customer_id=str(m.person_id),
                action=Delivery.ENTER,
                initial=True,
                triggered_at=m.entered_at,
                changed_at=m.entered_at - timedelta(hours=1),
                held_out=False,
            )
            for m in list(first.values())[:200]
        ]
    )
    Outcome.objects.bulk_create(
        [
            Outcome(
                audience=audience, source=source, date=(NOW - timedelta(days=d)).date(), spend=Decimal("100.00"), conversions=10
            )
            for d in range(8, 40)
        ]
    )
    by_sync = lift_for(audience, sync=sync, now=NOW)
    by_audience = lift_for(audience, now=NOW)
    assert (by_sync.sent, by_sync.held) == (by_audience.sent, by_audience.held)
    # the days the counted members entered: as far back as retention keeps events (30 days), windows closed
    assert (by_sync.since, by_sync.until) == (NOW - timedelta(days=30), NOW - timedelta(days=7))
    assert by_sync.spend == Decimal("100.00") * 23
    extra = by_sync.difference * by_sync.sent.members
    assert by_sync.cost_per_incremental == (by_sync.spend / Decimal(str(extra))).quantize(Decimal("0.01"))
    low, high = by_sync.cost_per_incremental_interval
    assert low < by_sync.cost_per_incremental and (high is None or high > by_sync.cost_per_incremental)

    # another event and a shorter window: only what falls in it counts
    nobody = lift_for(audience, now=NOW, event="Subscription Started")
    assert nobody.sent.members == by_audience.sent.members and nobody.sent.converted == nobody.held.converted == 0
    short = lift_for(audience, now=NOW, window_days=1)
    assert short.sent.converted < by_audience.sent.converted


@pytest.mark.django_db
def test_revenue_that_is_not_a_number_counts_as_none():
    source, _ = source_create(name="shop")
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    values = [38, 12.5, "40", True, None, {"amount": 3}, [1], 1e300, -20]
    people = Person.objects.bulk_create([Person(customer_id=f"r{n}") for n in range(len(values))])
    entered = NOW - timedelta(days=10)
    Membership.objects.bulk_create(
        [Membership(audience=audience, person=p, entered_at=entered, exited_at=entered, held_out=False) for p in people]
    )
    Event.objects.bulk_create(
        [
            Event(
                person=p,
                source=source,
                name="Order Completed",
                occurred_at=entered + timedelta(days=1),
                properties={"revenue": v},
                message_id=f"m{n}",
            )
            for n, (p, v) in enumerate(zip(people, values))
        ]
    )
    lift = lift_for(audience, now=NOW)
    assert lift.sent.converted == len(values)
    assert lift.sent.revenue == pytest.approx(38 + 12.5 - 20)


@pytest.mark.django_db
def test_one_statement_serves_every_audience_of_the_review(django_assert_max_num_queries):
    source, _ = source_create(name="shop")
    audiences = [
        audience_save(data={"key": f"a{n}", "name": f"A{n}", "rule": {"event": "Added to Cart", "within": "2h"}})
        for n in range(4)
    ]
    for n, audience in enumerate(audiences):
        load(plant(n, people=200, rate=0.2, lift=0.2, share=0.3), audience, source, seed=n)
    # the rules (how far back retention keeps events), the statement and the spend; the statement
    # in a savepoint (with a SET first on PostgreSQL)
    with django_assert_max_num_queries(6) as queries:
        figures = lift_figures(audiences, now=NOW)
    assert sum("audiences_event" in q["sql"] for q in queries.captured_queries) == 1
    for n, audience in enumerate(audiences):
        sent, held = arms(plant(n, people=200, rate=0.2, lift=0.2, share=0.3))
        assert (figures[audience.pk].sent.converted, figures[audience.pk].held.members) == (sent.converted, held.members)


# --- the command ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_lift_command_prints_the_figures_and_checks_its_input(monkeypatch):
    source, _ = source_create(name="shop")
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    load(plant(1, people=2000, rate=0.1, lift=0.5, share=0.2), audience, source, seed=1)
    out = StringIO()
    call_command("lift", "carts", "--window-days", "7", "--now", NOW.isoformat(), stdout=out)
    text = out.getvalue()
    lift = lift_for(audience, now=NOW)
    assert f"sent      {lift.sent.members:>9,}" in text and f"held out  {lift.held.members:>9,}" in text
    assert f"{lift.difference * 100:+.2f} points" in text and "95 %" in text and lift.verdict in text
    for args, message in [
        (["nope"], "there is no audience 'nope'"),
        (["carts", "--sync", "nope"], "there is no sync 'nope' of the audience carts"),
        (["carts", "--window-days", "0"], "the window must be a whole number of days from 1 to 90"),
        (["carts", "--window-days", "400"], "the window must be a whole number of days from 1 to 90"),
        (["carts", "--event", " "], "the conversion event must be an event name of 1 to 255 characters"),
        (["carts", "--now", "yesterday"], "--now 'yesterday' is not an ISO date-time"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("lift", *args, stdout=StringIO())


@pytest.mark.django_db
def test_the_period_reaches_back_only_as_far_as_retention_keeps_what_it_reads(settings):
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    destination = destination_save(
        data={
            "key": "hook",
            "name": "Hook",
            "kind": "webhook",
            "settings": {"url": "http://127.0.0.1:9/hook"},
            "credentials": {"signing_secret": "s3cret-for-tests"},
        }
    )
    sync = sync_save(data={"key": "carts-hook", "audience": "carts", "destination": destination.key})
    assert lift_for(audience, now=NOW).since == NOW - timedelta(days=30)  # events: RETENTION_EVENT_FLOOR_DAYS
    settings.RETENTION_EVENT_FLOOR_DAYS = 200
    assert lift_for(audience, now=NOW).since == NOW - timedelta(days=97)  # the 90 days asked for, windows closed
    assert lift_for(audience, now=NOW, period_days=10).since == NOW - timedelta(days=17)
    settings.RETENTION_DELIVERY_DAYS = 12
    assert lift_for(audience, sync=sync, now=NOW).since == NOW - timedelta(days=12)  # a sync's entry rows go sooner
    settings.RETENTION_EVENT_FLOOR_DAYS, settings.RETENTION_EVENT_MARGIN_DAYS = 1, 0  # shorter than the window
    empty = lift_for(audience, now=NOW)
    assert empty.since == empty.until and empty.members == 0


# --- the pages ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_audience_page_the_sync_page_and_the_weekly_review_show_the_lift(client):
    from django.contrib.auth.models import User

    from syncs.review import render_text, weekly_review

    source, _ = source_create(name="shop")
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    destination_save(
        data={
            "key": "hook",
            "name": "Hook",
            "kind": "webhook",
            "settings": {"url": "http://127.0.0.1:9/hook"},
            "credentials": {"signing_secret": "s3cret-for-tests"},
        }
    )
    sync_save(data={"key": "carts-hook", "audience": "carts", "destination": "hook", "holdout_share": 0.2})
    load(plant(5, people=3000, rate=0.1, lift=0.5, share=0.2), audience, source, seed=5)
    Outcome.objects.create(audience=audience, source=source, date=(NOW - timedelta(days=12)).date(), spend=Decimal("900.00"))
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests-1"))
    import time_machine

    with time_machine.travel(NOW, tick=False):
        lift = lift_for(audience)
        page = client.get("/dashboard/audiences/carts/").content.decode()
        assert "Holdout and measured lift" in page and lift.verdict in page
        assert f"{lift.sent.converted:,} of {lift.sent.members:,} members" in page
        assert lift.shown["difference"] in page and lift.shown["cost"] in page and lift.shown["cost"] != "—"
        assert "This sync&#x27;s holdout: 20 % (salt &#x27;carts-hook&#x27;)" in page
        sync_page = client.get("/dashboard/syncs/carts-hook/").content.decode()
        assert "Holdout now" in sync_page and "20.0 %" in sync_page
        review = client.get("/dashboard/review/weekly/").content.decode()
        assert "Measured lift, as of the week" in review and lift.shown["difference"] in review
        text = render_text(weekly_review())
    assert f"measured against the holdout: lift {lift.shown['difference']}" in text
