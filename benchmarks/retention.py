"""A simulated year of a store with retention running: the database stays bounded while the
storage page, the lag figures, the run history and the weekly review stay correct.

    .venv/bin/python benchmarks/retention.py [--scale 1000] [--days 365] [--steps-per-day 1]
        [--backends sqlite|postgres|sqlite,postgres] [--delete-events 1000000]

A 1,000,000-customer store taking 1,000,000 events a day, scaled down by --scale (people and
events both; the default 1/1000 is 1,000 people and 1,000 events a day: what bounds the run
time on this 2-core machine is the fixed cost of each step, not the rows), for --days
simulated days. The clock (time-machine) moves forward --steps-per-day times a day; each step
ingests that period's funnel events (browse, cart, checkout, order) through the ingest path,
evaluates three audiences in full (purchasers 24 h, serum viewers 7 d, a winback on the last
order 60-90 days ago: the realtime pass's work in one go), wakes the sender once (a file
destination), then runs the retention pass, which in production runs every hour and here
once a step. The database's bytes per row kept are printed with the full-scale figure they
make.

At the end of each simulated week, before anything of it is pruned, it records the week's
review and each day's runs: a direct count of the raw rows. At the end it reads them again
(the pruned weeks now from the daily rollups) and compares; it compares the storage page's row
counts with count(*) and the home page's lag with one computed from the rows. It prints the
database size over the year and its largest.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (  # noqa: E402
    autovacuum_is_off,
    django_env,
    load_line,
    machine_line,
    reset_database,
    vacuum_as_autovacuum_would,
)

URLS = {
    "postgres": "postgres://postgres@127.0.0.1:5432/downstream_bench_retention",
    "sqlite": f"sqlite:///{ROOT / 'var' / 'bench-retention.sqlite3'}",
}
FULL_PEOPLE = 1_000_000
FULL_EVENTS_PER_DAY = 1_000_000
# Three of the playbook's audiences on events (a suppression, an activation with a property
# filter, which reads the event table) and a winback on the last order 60-90 days ago: events
# are kept 97 days. (A 2-hour cart audience is all but empty at a once-a-day step.)
AUDIENCES = [
    {
        "key": "recent_purchasers_24h",
        "name": "Purchasers 24h",
        "purpose": "suppression",
        "rule": {"event": "Order Completed", "within": "24h"},
    },
    {
        "key": "serum_viewers_7d",
        "name": "Serum viewers 7d",
        "rule": {"event": "Product Viewed", "within": "7d", "where": {"category": "serum"}},
        "exclusions": ["recent_purchasers_24h"],
    },
    {
        "key": "winback_60_90d",
        "name": "Winback 60-90d",
        "rule": {"event": "Order Completed", "last_between": ["60d", "90d"]},
        "exclusions": ["recent_purchasers_24h"],
    },
]


def funnel_events(rng, customer_ids, count, start, seconds, counter):
    """About `count` events in [start, start + seconds): sessions walking the demo's funnel."""
    from datetime import timedelta

    from audiences.demo import PRODUCTS
    from audiences.messages import Message

    messages = []
    while len(messages) < count:
        customer_id = rng.choice(customer_ids)
        at = start + timedelta(seconds=rng.uniform(0, seconds))
        sku, title, category, price = rng.choice(PRODUCTS)
        item = {"product_id": sku, "product_name": title, "category": category, "price": price}
        steps = [("Product Viewed", item)]
        if rng.random() < 0.32:
            steps.append(("Added to Cart", {**item, "quantity": 1}))
            if rng.random() < 0.55:
                steps.append(("Checkout Started", {"value": price, "currency": "USD", "category": category}))
                if rng.random() < 0.62:
                    steps.append(
                        (
                            "Order Completed",
                            {"order_id": f"ORD-{next(counter)}", "revenue": price, "currency": "USD", "category": category},
                        )
                    )
        for name, properties in steps:
            at += timedelta(minutes=rng.uniform(0.5, 6))
            messages.append(Message("event", customer_id, f"e{next(counter)}", at, name=name, properties=properties))
    return sorted(messages, key=lambda m: m.timestamp)


def week_figures(week_ending):
    from syncs.review import weekly_review

    return {
        row.audience.key: (row.lag.count, row.lag.p50, row.lag.p95, row.rejected, row.dead, row.size_end)
        for row in weekly_review(week_ending=week_ending).rows
    }


def day_figures(sync, now):
    from syncs.retention import run_days

    return {d.day: (d.runs, d.succeeded, d.partial, d.failed, d.planned, d.sent) for d in run_days(sync, now=now)}


def child(backend: str, scale: int, days: int, steps_per_day: int, seed: int, delete_events: int) -> None:
    import django

    django.setup()
    import itertools
    from datetime import UTC, datetime, timedelta

    import time_machine
    from django.db.models import Max, Sum
    from django.utils import timezone
    from django_q.models import OrmQ

    from audiences.demo import build_people
    from audiences.evaluation import evaluate_all
    from audiences.ingest import ingest_messages, source_create
    from audiences.models import Audience, Event, EventStat, Membership, Person, SizeSample
    from audiences.services import audience_save
    from audiences.signals import people_changed
    from dashboard.rows import dashboard_rows
    from syncs.delivery import deliver_destination
    from syncs.models import Delivery, DeliveryBatch, RetentionRun, SyncDay, SyncRun
    from syncs.retention import Policy, apply_retention, retention_overview, store_size
    from syncs.selectors import acknowledged, lag_figures
    from syncs.services import destination_save, sync_save

    # this process is the worker (below): no task to wake it after each ingest
    people_changed.disconnect(dispatch_uid="downstream-realtime-evaluation")
    rng = random.Random(seed)
    people, per_day = FULL_PEOPLE // scale, FULL_EVENTS_PER_DAY // scale
    start = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday: weeks end on Sundays
    step = timedelta(days=1) / steps_per_day
    policy = Policy.from_settings()
    counter = itertools.count()
    timings = {"ingest": 0.0, "evaluate": 0.0, "deliver": 0.0, "retention": 0.0, "vacuum": 0.0, "checks": 0.0}

    with time_machine.travel(start, tick=True) as clock:
        for data in AUDIENCES:
            audience_save(data=data)
        destination = destination_save(
            data={
                "key": "files",
                "name": "Files",
                "kind": "file",
                "settings": {"format": "csv"},
                "batch_size": 5000,
                "rate_limit_per_s": 1000,
            }
        )
        # a step a day turns the whole 24-hour audience over, which the mass-removal guard would rightly hold
        syncs = [
            sync_save(
                data={"key": f"{a.key}-files", "audience": a.key, "destination": destination.key, "removal_guard_share": 1.0}
            )
            for a in Audience.objects.order_by("key")
        ]
        source = source_create(name="shop")[0]
        # the profiles arrive as one bulk load (traits as identify would merge them; the ingest
        # path's per-person merge is not what this measures); events go through ingest
        profiles = build_people(rng, people, start)
        Person.objects.bulk_create(
            [
                Person(
                    customer_id=p.customer_id,
                    email=p.traits["email"].strip(),
                    attributes=p.traits,
                    created_at=start,
                    updated_at=start,
                )
                for p in profiles
            ],
            batch_size=2000,
        )
        customer_ids = [p.customer_id for p in profiles]
        horizon_days = retention_overview().horizon.days
        print(
            f"  [{backend}] {people:,} people ingested; events kept {horizon_days} days, deliveries "
            f"{policy.delivery_days}, batches {policy.batch_days}, runs {policy.run_days}, task results {policy.task_days}",
            flush=True,
        )

        stand_in_for_autovacuum = _autovacuum_off()
        if stand_in_for_autovacuum:
            print(
                f"  [{backend}] this server runs with autovacuum off: once a simulated day the benchmark vacuums each "
                "table autovacuum would (more dead rows than its threshold: by default 50 + 20 % of its rows)",
                flush=True,
            )
        recorded_weeks, recorded_days, sizes, vacuumed = {}, {}, [], 0
        watched = next(s for s in syncs if s.audience.key == "recent_purchasers_24h")
        largest = (0, None)
        held_open = (0.0, "")  # the oldest transaction seen open elsewhere on the server
        for day in range(days):
            for n in range(steps_per_day):
                now = start + day * timedelta(days=1) + (n + 1) * step
                clock.move_to(now)
                began = time.perf_counter()
                messages = funnel_events(rng, customer_ids, per_day // steps_per_day, now - step, step.total_seconds(), counter)
                for chunk in range(0, len(messages), 2500):
                    ingest_messages(
                        source=source, messages=[m for m in messages[chunk : chunk + 2500] if m.timestamp <= now], received_at=now
                    )
                timings["ingest"] += time.perf_counter() - began
                began = time.perf_counter()
                evaluate_all(now=timezone.now())
                timings["evaluate"] += time.perf_counter() - began
                began = time.perf_counter()
                # this process is the worker: it wakes the sender once, and the tasks queued to
                # wake it (and to evaluate the people ingest touched, which the full pass just did) are done
                deliver_destination(destination.pk)
                OrmQ.objects.all().delete()
                timings["deliver"] += time.perf_counter() - began
                began = time.perf_counter()
                apply_retention(now=timezone.now())
                timings["retention"] += time.perf_counter() - began
            if stand_in_for_autovacuum:
                began = time.perf_counter()
                vacuumed += autovacuum_as_by_default()
                timings["vacuum"] += time.perf_counter() - began
            began = time.perf_counter()
            today = timezone.localdate()
            if today.weekday() == 0:  # Monday: last week is over, and nothing of it pruned yet
                last_day = today - timedelta(days=1)
                recorded_weeks[last_day] = week_figures(last_day)
                recorded_days.update(
                    {
                        d: f
                        for d, f in day_figures(watched, timezone.now()).items()
                        if last_day - timedelta(days=6) <= d <= last_day
                    }
                )
            if day % 7 == 6 or day == days - 1:
                store = store_size()
                size = store.total_bytes
                if store.oldest_transaction and store.oldest_transaction.seconds > held_open[0]:
                    held_open = (store.oldest_transaction.seconds, store.oldest_transaction.database)
                sizes.append((day + 1, size, Event.objects.count(), Delivery.objects.count()))
                largest = max(largest, (size, day + 1))
            timings["checks"] += time.perf_counter() - began
            if day % 30 == 29:
                print(
                    f"  [{backend}] day {day + 1}: {sizes[-1][1] / 2**20:,.1f} MiB, {sizes[-1][2]:,} events, "
                    f"{sizes[-1][3]:,} deliveries kept; {load_line()}",
                    flush=True,
                )

        now = timezone.now()
        print(
            f"  [{backend}] time: ingest {timings['ingest']:.0f} s, evaluation {timings['evaluate']:.0f} s, "
            f"delivery {timings['deliver']:.0f} s, "
            f"retention {timings['retention']:.0f} s ({days * steps_per_day:,} passes; {RetentionRun.objects.count():,} "
            f"records kept), vacuum {timings['vacuum']:.0f} s ({vacuumed:,} tables), checks {timings['checks']:.0f} s"
        )
        print(
            f"  [{backend}] database size at the end of each month (MiB): "
            + ", ".join(f"{size / 2**20:.0f}" for d, size, _, _ in sizes if d % 28 == 0 or d == days)
        )
        print(
            f"  [{backend}] largest {largest[0] / 2**20:,.1f} MiB (day {largest[1]}); at the end "
            f"{sizes[-1][1] / 2**20:,.1f} MiB with {Event.objects.count():,} events "
            f"(oldest {(now - Event.objects.order_by('occurred_at').values_list('occurred_at', flat=True).first()).days} days), "
            f"{Delivery.objects.count():,} deliveries, {DeliveryBatch.objects.count():,} batches, "
            f"{SyncRun.objects.count():,} runs, {SyncDay.objects.count():,} daily rollups"
        )
        if held_open[0] >= 60:
            print(
                f"  [{backend}] NOTE: a transaction was held open {held_open[0]:,.0f} s in database {held_open[1]} of this "
                "server meanwhile: index pages emptied by deletes are not reused while it is, so the sizes above are "
                "larger than the store's own"
            )
        tables = store_size().tables
        print(
            f"  [{backend}] rows kept: "
            + ", ".join(
                f"{t.label.lower()} {t.rows:,}"
                + (f" ({t.bytes / 2**20:.1f} MiB, {t.bytes / t.rows:.0f} B a row)" if t.bytes and t.rows else "")
                for t in tables
            )
        )
        events = next(t for t in tables if t.label == "Events")
        if events.bytes:
            print(
                f"  [{backend}] at full scale (x{scale:,}) the events kept would be {events.rows * scale:,} rows, "
                f"{events.bytes * scale / 2**30:,.0f} GiB with their indexes"
            )
        print(
            f"  [{backend}] lifetime counts in the per-person aggregates: {EventStat.objects.aggregate(n=Sum('count'))['n']:,} "
            "events (none lost to pruning)"
        )

        failures = []
        # the weekly review of every week, pruned or not, against what it said when the week ended
        lag_checked = 0
        for last_day, then in recorded_weeks.items():
            again = week_figures(last_day)
            for key, before in then.items():
                after = again[key]
                if before[0] != after[0] or before[3:5] != after[3:5]:
                    failures.append(f"week ending {last_day} {key}: counts {before} then, {after} now")
                for was, now_is in zip(before[1:3], after[1:3], strict=True):
                    if was is not None and not (was - 1e-6 <= now_is <= was * 1.01 + 0.001):
                        failures.append(f"week ending {last_day} {key}: lag {was} then, {now_is} now")
                lag_checked += before[0]
        pruned_weeks = sum(1 for d in recorded_weeks if d < (now - timedelta(days=policy.delivery_days)).date())
        # the run history of every day
        days_now = day_figures(watched, now)
        for day, then in recorded_days.items():
            if days_now.get(day) != then:
                failures.append(f"runs of {watched.key} on {day}: {then} then, {days_now.get(day)} now")
        pruned_days = sum(1 for d in recorded_days if d < (now - timedelta(days=policy.run_days)).date())
        # the storage page's counts against count(*)
        overview = retention_overview()
        for table in overview.store.tables:
            model = {
                "Events": Event,
                "Deliveries": Delivery,
                "Sync runs": SyncRun,
                "People": Person,
                "Memberships": Membership,
                "Size samples": SizeSample,
            }.get(table.label)
            if model is not None:
                direct = model.objects.count()
                off = abs(table.rows - direct) / max(direct, 1)
                if (not table.estimated and table.rows != direct) or off > 0.2:
                    failures.append(f"storage page: {table.label} {table.rows:,}, count(*) {direct:,}")
        # the home page's lag (24 h) against the rows
        row = next(r for r in dashboard_rows() if r.audience.key == "recent_purchasers_24h")
        direct = lag_figures(
            sorted(
                (a - t).total_seconds()
                for a, t in acknowledged([watched.pk], since=now - timedelta(days=1), action=Delivery.ENTER).values_list(
                    "acknowledged_at", "triggered_at"
                )
            )
        )
        if row.lag_p95 != direct.p95:
            failures.append(f"home page lag p95 {row.lag_p95}, from the rows {direct.p95}")
        print(
            f"  [{backend}] checked {len(recorded_weeks)} weekly reviews ({pruned_weeks} of weeks whose deliveries were "
            f"pruned, {lag_checked:,} lags), {len(recorded_days)} days of run history ({pruned_days} pruned), the storage "
            f"page's row counts and the home page's 24 h lag p95 ({direct.p95:.3f} s over {direct.count:,}): "
            + ("all as they were" if not failures else f"{len(failures)} differ")
        )
        for failure in failures[:20]:
            print(f"    {failure}")
        newest = Event.objects.aggregate(m=Max("occurred_at"))["m"]
        print(f"  [{backend}] newest event {newest:%Y-%m-%d %H:%M}; simulated clock {now:%Y-%m-%d %H:%M}")
        if delete_events:
            deletion_rate(backend, delete_events, source, now, policy)
        if failures:
            raise SystemExit(1)


def _autovacuum_off() -> bool:
    from django.db import connection

    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        return autovacuum_is_off(cursor)


def autovacuum_as_by_default() -> int:
    """VACUUM the tables autovacuum's thresholds pick; returns how many."""
    from django.db import connection

    with connection.cursor() as cursor:
        return len(vacuum_as_autovacuum_would(cursor))


def deletion_rate(backend, count, source, now, policy):
    """A day's deletes at full scale: `count` events older than the horizon, loaded by SQL in
    one statement, then one retention pass (without its pauses) timed."""
    from datetime import timedelta

    from django.db import connection

    from audiences.models import Event, Person
    from syncs.retention import apply_retention

    first, people = Person.objects.order_by("pk").values_list("pk", flat=True).first(), Person.objects.count()
    old = now - timedelta(days=400)
    table = Event._meta.db_table
    columns = "person_id, source_id, name, occurred_at, received_at, properties, message_id"
    properties = '{"product_id": "SER-01", "product_name": "Vitamin C Glow Serum", "category": "serum", "price": 38.0}'
    started = time.perf_counter()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT %s + g %% %s, %s, 'Product Viewed', "
                "%s::timestamptz + g * interval '1 second', %s, %s::jsonb, 'old-' || g FROM generate_series(1, %s) g",
                [first, people, source.pk, old, old, properties, count],
            )
            cursor.execute(f"VACUUM ANALYZE {table}")
        else:
            stamp = old.strftime("%Y-%m-%d %H:%M:%S")
            cursor.execute(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < %s) "
                f"INSERT INTO {table} ({columns}) SELECT %s + n %% %s, %s, 'Product Viewed', "
                "datetime(%s, '+' || n || ' seconds'), %s, %s, 'old-' || n FROM g",
                [count, first, people, source.pk, stamp, stamp, properties],
            )
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    run = apply_retention(now=now)
    took = time.perf_counter() - started
    chunks = -(-run.deleted["events"] // policy.chunk_rows)
    print(
        f"  [{backend}] deleting a full-scale day: {run.deleted['events']:,} events past the horizon (loaded in "
        f"{loaded:.0f} s) deleted by one pass in {took:.1f} s, {run.deleted['events'] / took:,.0f} rows/s in {chunks:,} "
        f"chunks of {policy.chunk_rows:,} ({1000 * took / chunks:.0f} ms each; with the production pause of 0.2 s after "
        f"each, {took + 0.2 * chunks:.0f} s of a day's 24 passes)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1000, help="1/N of the people and of the events a day")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--steps-per-day", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--delete-events",
        type=int,
        default=0,
        help="then time one pass deleting this many old events (1000000: a full-scale day)",
    )
    parser.add_argument("--backends", default="sqlite", help="sqlite, postgres or both: sqlite,postgres")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.scale, args.days, args.steps_per_day, args.seed, args.delete_events)
        return
    print(machine_line())
    print(
        f"inputs: a {FULL_PEOPLE:,}-customer store at {FULL_EVENTS_PER_DAY:,} events a day, scaled 1/{args.scale}: "
        f"{FULL_PEOPLE // args.scale:,} people, {FULL_EVENTS_PER_DAY // args.scale:,} events a day "
        f"({FULL_EVENTS_PER_DAY // args.scale * args.days:,} in all) for {args.days} simulated days; the clock moves "
        f"{args.steps_per_day}× a day; each step: ingest, full evaluation of {len(AUDIENCES)} audiences (the longest "
        f"window 90 days), one wake of the sender (a file destination), the retention pass (hourly in production: "
        f"here once a step); "
        f"seed {args.seed}; default retention settings, RETENTION_PAUSE_S=0 (nothing else writes here)"
    )
    print(load_line())
    for backend in args.backends.split(","):
        exports = tempfile.mkdtemp(prefix="bench-retention-exports-")
        env = django_env(
            URLS[backend],
            LOG_LEVEL="WARNING",
            RETENTION_PAUSE_S="0",
            DELIVERY_IDLE_S="0",
            DELIVERY_ADDS_LINGER_S="0",
            EXPORT_ROOT=exports,
        )
        reset_database(URLS[backend], env)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                backend,
                "--scale",
                str(args.scale),
                "--days",
                str(args.days),
                "--steps-per-day",
                str(args.steps_per_day),
                "--seed",
                str(args.seed),
                "--delete-events",
                str(args.delete_events),
            ],
            env=env,
            check=True,
        )
        print(f"  [{backend}] ran in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    main()
