"""The lift selector at scale, on the data benchmarks/datagen.py builds (1,000,000 people and
10,000,000 events on PostgreSQL, 100,000 / 1,000,000 on SQLite).

A cart-abandoner audience gets the entry history a live store would have given it: one
membership per person and day with an Added to Cart event over the last 97 days (the 90-day
period and the 7-day window), a sync of it with a 10 % holdout chosen by syncs.holdouts, and
the sync's entry rows (sent, or skipped as held out). Then `lift` for the audience and for the
sync (Order Completed within 7 days), each timed five times: over the default period (as far
back as retention keeps events: 30 days by default, so 23 days of entries) and over the whole
90 days (retention raised). The set-up is not timed and is removed afterwards.

    .venv/bin/python benchmarks/evaluate.py    # calls bench_lift() after the evaluation figures

`bench_lift()` runs in a process whose Django is set up on the benchmark database.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

SHARE = 0.10
SALT = "bench"
RUNS = 5


def bench_lift(backend: str, *, now) -> None:
    from django.db import connection
    from django.test.utils import override_settings

    from syncs.lift import DEFAULT_WINDOW_DAYS, PERIOD_DAYS

    started = time.perf_counter()
    audience, sync, entries = _set_up(connection, now=now, days=PERIOD_DAYS + DEFAULT_WINDOW_DAYS)
    print(
        f"[{backend}] lift: {entries:,} entries of a cart audience over {PERIOD_DAYS + DEFAULT_WINDOW_DAYS} days, "
        f"a sync holding {SHARE:.0%} out (set-up {time.perf_counter() - started:.0f} s, not timed)"
    )
    try:
        _time_lifts(backend, audience, sync, now=now, label="default period (as far back as retention keeps events)")
        # what a store keeping its events longer gets: the whole 90 days
        with override_settings(RETENTION_EVENT_FLOOR_DAYS=PERIOD_DAYS + 30, RETENTION_DELIVERY_DAYS=PERIOD_DAYS + 30):
            _time_lifts(backend, audience, sync, now=now, label=f"{PERIOD_DAYS} days (retention raised)")
    finally:
        _tear_down(audience, sync)


def _time_lifts(backend, audience, sync, *, now, label) -> None:
    from benchmarks.common import load_line
    from syncs.lift import lift_for

    print(f"[{backend}] {load_line()}")

    for scope, options in (("audience", {}), ("sync", {"sync": sync})):
        timings, lift = [], None
        for _ in range(RUNS):
            started = time.perf_counter()
            lift = lift_for(audience, now=now, **options)
            timings.append(time.perf_counter() - started)
        interval = lift.interval
        print(
            f"[{backend}] lift of the {scope}, {label}: entries {lift.since:%Y-%m-%d} to {lift.until:%Y-%m-%d}, "
            f"{lift.members:,} members ({lift.held.members:,} held out), converted {lift.sent.rate:.2%} sent vs "
            f"{lift.held.rate:.2%} held out, lift {lift.difference * 100:+.2f} points "
            f"[{interval.low * 100:+.2f}, {interval.high * 100:+.2f}]; "
            f"first {timings[0]:.2f} s, median {statistics.median(timings):.2f} s, max {max(timings):.2f} s"
        )


def _set_up(connection, *, now, days: int):
    from audiences.models import Event, Membership, Person
    from audiences.services import audience_save
    from syncs import holdouts
    from syncs.models import Delivery, Destination, Sync
    from syncs.services import destination_save, sync_save

    left_over = Sync.objects.filter(key="bench-cart-hook").first()
    if left_over:  # a run that stopped half-way
        _tear_down(left_over.audience, left_over)
    audience = audience_save(
        data={
            "key": "bench_cart_history",
            "name": "paid_cart_2h_nopurch",
            "cadence": "1d",
            "enabled": False,
            "rule": {"event": "Added to Cart", "within": "2h"},
        }
    )
    destination = Destination.objects.filter(key="bench-hook").first() or destination_save(
        data={
            "key": "bench-hook",
            "name": "Bench hook",
            "kind": "webhook",
            "settings": {"url": "http://127.0.0.1:9/hook"},
            "credentials": {"signing_secret": "bench-secret"},
        }
    )
    sync = sync_save(
        data={
            "key": "bench-cart-hook",
            "audience": audience.key,
            "destination": destination.key,
            "enabled": False,
            "holdout_share": SHARE,
            "holdout_salt": SALT,
        }
    )
    q = connection.ops.quote_name
    membership, event, person, delivery = (q(m._meta.db_table) for m in (Membership, Event, Person, Delivery))
    since = connection.ops.adapt_datetimefield_value(now - timedelta(days=days))
    if connection.vendor == "postgresql":
        day, two_hours = "date_trunc('day', e.occurred_at)", "MIN(e.occurred_at) + interval '2 hours'"
    else:
        day, two_hours = "date(e.occurred_at)", "datetime(MIN(e.occurred_at), '+2 hours')"
    carts = f"FROM {event} e WHERE e.name = 'Added to Cart' AND e.occurred_at >= %s"
    with connection.cursor() as cursor:
        # who the holdout picks, decided in Python by the one function the outbox uses
        cursor.execute(f"SELECT p.id, p.customer_id FROM {person} p WHERE p.id IN (SELECT e.person_id {carts})", [since])
        held = [(pid,) for pid, customer_id in cursor.fetchall() if holdouts.position(SALT, customer_id) < SHARE]
        cursor.execute("CREATE TEMPORARY TABLE bench_held (person_id bigint PRIMARY KEY)")
        cursor.executemany("INSERT INTO bench_held (person_id) VALUES (%s)", held)
        cursor.execute(
            f"INSERT INTO {membership} (audience_id, person_id, entered_at, exited_at, held_out) "
            f"SELECT %s, e.person_id, MIN(e.occurred_at), {two_hours}, "
            "EXISTS (SELECT 1 FROM bench_held h WHERE h.person_id = e.person_id) "
            f"{carts} GROUP BY e.person_id, {day}",
            [audience.pk, since],
        )
        entries = cursor.rowcount
        cursor.execute("DROP TABLE bench_held")
        cursor.execute(
            f"INSERT INTO {delivery} (sync_id, person_id, customer_id, action, triggered_at, changed_at, created_at, state, "
            "attempts, next_attempt_at, last_error, initial, may_have_arrived, held_out) "
            f"SELECT %s, m.person_id, p.customer_id, 'enter', m.entered_at, m.entered_at, m.entered_at, "
            "CASE WHEN m.held_out THEN 'skipped' ELSE 'sent' END, 1, m.entered_at, "
            "CASE WHEN m.held_out THEN 'held out' ELSE '' END, %s, %s, m.held_out "
            f"FROM {membership} m JOIN {person} p ON p.id = m.person_id WHERE m.audience_id = %s",
            [sync.pk, False, False, audience.pk],
        )
        for table in (membership, delivery):
            cursor.execute(f"VACUUM ANALYZE {table}" if connection.vendor == "postgresql" else f"ANALYZE {table}")
    return audience, sync, entries


def _tear_down(audience, sync) -> None:
    from audiences.models import Membership
    from syncs.models import Delivery

    Delivery.objects.filter(sync=sync).delete()
    sync.delete()
    Membership.objects.filter(audience=audience).delete()
    audience.delete()
