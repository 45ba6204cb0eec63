"""Delivery and segment-pull throughput at a million rows, on PostgreSQL.

1. Delivery: 1,000,000 pending changes (outbox rows) for one sync to a LiveLike destination
   limited to 10 requests/s of 500 rows, i.e. at most 5,000 rows/s. `deliver_destination` is
   called (as the worker's task calls it) until no row is pending; the LiveLike contract server
   runs in its own process and enforces 10 requests/s itself, so a 429 would show an
   over-eager sender. Target: at least 95 % of the 5,000 rows/s.
2. Customer.io pull: a 1,000,000-member segment (ids cus_0000001... of the people below)
   through the App API contract server (its own process, 10 requests/s), pulled by
   `syncs.sources.pull_segment` twice: the first pull writes the snapshot, the second finds
   nothing changed. Target: within twice the time the 10 requests/s limit allows.

The database is made fresh (dropped, migrated) and filled with 1,000,000 people in the
datagen format (cus_0000001 ... cus_1000000) by one INSERT ... SELECT generate_series.

    .venv/bin/python benchmarks/delivery.py [--rows 1000000] [--parts delivery,pull]
        [--pg-url postgres://postgres@127.0.0.1:5432/downstream_bench_delivery]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import django_env, load_line, machine_line, reset_database

TOKEN, CLIENT_ID, APP_KEY = "bench-producer-token", "bench-client", "bench-app-key"
SEGMENT_ID = 7


# --- contract servers in their own processes ------------------------------------------------


def segment_member(i: int) -> dict:
    n = i + 1
    return {"id": f"cus_{n:07d}", "email": f"cus_{n:07d}@example.com", "cio_id": f"{n:08x}"}


def _serve(kind: str, options: dict, conn) -> None:
    """Child process: one contract server until the parent closes the pipe."""
    if kind == "livelike":
        from tests.contract_servers.livelike import LiveLikeServer

        server = LiveLikeServer(TOKEN, CLIENT_ID, keep_rows=False, rate_limit_per_s=options["rate_limit"])
    else:
        from tests.contract_servers.customerio import CustomerIoServer

        server = CustomerIoServer(APP_KEY, rate_limit_per_s=options["rate_limit"])
        server.add_segment(SEGMENT_ID, "Bench segment", (options["members"], segment_member))
    conn.send(server.start())
    try:
        conn.recv()  # blocks until the parent sends or goes away
    except EOFError:
        pass
    server.stop()


class ServerProcess:
    def __init__(self, kind: str, **options):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(kind, options, child), daemon=True)
        self.process.start()
        self.url = self.conn.recv()

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/__state__?requests=0", timeout=30) as answer:
            return json.load(answer)

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join(timeout=10)


# --- data -----------------------------------------------------------------------------------


def make_people(count: int) -> float:
    from django.db import connection

    from audiences.models import Person

    started = time.perf_counter()
    table = connection.ops.quote_name(Person._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, customer_id, email, phone, phone_e164, cio_id, attributes, is_test, created_at, "
            "updated_at) SELECT n, 'cus_' || lpad(n::text, 7, '0'), 'cus_' || lpad(n::text, 7, '0') || '@example.com', "
            "'', '', lpad(to_hex(n), 8, '0'), '{}'::jsonb, false, now(), now() FROM generate_series(1, %s) n",
            [count],
        )
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{Person._meta.db_table}', 'id'), %s)", [count])
        cursor.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


def insert_deliveries(sync, count: int) -> float:
    """`count` pending entries, one per person, in one INSERT ... SELECT."""
    from django.db import connection

    from audiences.models import Person
    from syncs.models import Delivery

    started = time.perf_counter()
    delivery = connection.ops.quote_name(Delivery._meta.db_table)
    person = connection.ops.quote_name(Person._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {delivery} (sync_id, person_id, customer_id, action, triggered_at, changed_at, created_at, "
            "state, attempts, next_attempt_at, last_error, initial) "
            f"SELECT %s, p.id, p.customer_id, 'enter', now(), now(), now(), 'pending', 0, now(), '', false FROM {person} p "
            "ORDER BY p.id LIMIT %s",
            [sync.pk, count],
        )
        cursor.execute(f"VACUUM (ANALYZE) {delivery}")
    return time.perf_counter() - started


# --- 1. delivery ----------------------------------------------------------------------------


def run_delivery(args) -> None:
    from django.db.models import Count

    from audiences.services import audience_save
    from syncs.delivery import deliver_destination
    from syncs.models import Delivery, DeliveryBatch
    from syncs.services import destination_save, sync_save

    ceiling = args.rate_limit * args.batch_size
    print(
        f"\n[delivery] inputs: {args.rows:,} pending entries for one sync; LiveLike destination "
        f"rate_limit_per_s={args.rate_limit:g}, batch_size={args.batch_size} (ceiling {ceiling:,.0f} rows/s); "
        f"LiveLike contract server in its own process enforcing {args.rate_limit:g} requests/s; "
        f"deliver_destination(max_seconds={args.max_seconds:g}) called until nothing is pending"
    )
    livelike = ServerProcess("livelike", rate_limit=args.rate_limit)
    try:
        os.environ["BENCH_LIVELIKE_TOKEN"] = TOKEN
        destination = destination_save(data={
            "key": "livelike-bench", "name": "LiveLike (bench)", "kind": "livelike",
            "settings": {"base_url": livelike.url + "/api/v1", "client_id": CLIENT_ID},
            "credentials": {"producer_token": "env:BENCH_LIVELIKE_TOKEN"},
            "rate_limit_per_s": args.rate_limit, "batch_size": args.batch_size, "timeout_s": 10.0,
        })
        audience_save(data={"key": "bench_buyers", "name": "Bench buyers", "purpose": "suppression",
                            "rule": {"event": "Order Completed", "within": "24h"}, "cadence": "1d"})
        sync = sync_save(data={"key": "bench-buyers-livelike", "audience": "bench_buyers", "destination": "livelike-bench"})
        took = insert_deliveries(sync, args.rows)
        print(f"[delivery] {Delivery.objects.filter(state=Delivery.PENDING).count():,} pending rows inserted in {took:.1f} s")

        sent = calls = 0
        started = time.perf_counter()
        while Delivery.objects.filter(sync=sync, state=Delivery.PENDING).exists():
            call_started = time.perf_counter()
            summary = deliver_destination(destination.pk, max_seconds=args.max_seconds)
            calls += 1
            sent += summary.sent
            print(
                f"[delivery]   call {calls}: sent {summary.sent:,} in {summary.batches:,} batches, retried {summary.retried}, "
                f"{time.perf_counter() - call_started:.1f} s",
                flush=True,
            )
            if not summary.leased or (summary.sent == 0 and summary.retried == 0):
                break
        elapsed = time.perf_counter() - started
        state = livelike.state()["counters"]
        rate = sent / elapsed
        states = dict(Delivery.objects.values_list("state").annotate(n=Count("pk")))
        print(f"[delivery] {load_line()}")
        print(
            f"[delivery] {sent:,} rows sent in {elapsed:.1f} s = {rate:,.0f} rows/s = {rate / ceiling:.1%} of the "
            f"{ceiling:,.0f} rows/s the limit allows (target >= 95 %)"
        )
        print(
            f"[delivery] server: {state['requests']:,} requests, {state['rows_applied']:,} rows applied, "
            f"429s {state['rate_limited'] + state['faults']['429']}, max {state['max_requests_in_any_1s_window']} "
            f"requests in any 1 s window; batches recorded {DeliveryBatch.objects.filter(sync=sync).count():,}; "
            f"delivery states {states}"
        )
    finally:
        livelike.stop()


# --- 2. Customer.io pull --------------------------------------------------------------------


def run_pull(args) -> None:
    from audiences.services import audience_save
    from syncs.customerio import PAGE_LIMIT
    from syncs.models import SegmentMember
    from syncs.services import workspace_save
    from syncs.sources import pull_segment

    print(
        f"\n[pull] inputs: a Customer.io segment of {args.members:,} members (ids cus_0000001...; all known people), "
        f"App API contract server in its own process enforcing 10 requests/s, page limit {PAGE_LIMIT:,}, "
        "no sync mapping attributes (so no attribute calls)"
    )
    cio = ServerProcess("customerio", rate_limit=10.0, members=args.members)
    try:
        os.environ["BENCH_CIO_APP_KEY"] = APP_KEY
        workspace_save(data={"key": "bench", "name": "Bench workspace", "base_url": cio.url,
                             "credentials": {"app_key": "env:BENCH_CIO_APP_KEY"}})
        audience = audience_save(data={
            "key": "bench_segment", "name": "Bench segment", "source_kind": "customerio_segment",
            "source_settings": {"workspace": "bench", "segment_id": SEGMENT_ID}, "cadence": "1h",
        })
        figures = []
        for label in ("first pull (writes the snapshot)", "second pull (nothing changed)"):
            pages_before = cio.state()["counters"]["membership_pages"]
            started = time.perf_counter()
            pull = pull_segment(audience)
            took = time.perf_counter() - started
            pages = cio.state()["counters"]["membership_pages"] - pages_before
            allowed = pull.requests / 10.0
            figures.append(took / allowed)
            print(
                f"[pull] {label}: {pull.members:,} members, {pages} pages, {pull.requests} requests "
                f"({pull.throttled} throttled), people created {pull.people_created:,}, unmapped {pull.unmapped:,}; "
                f"the 10 requests/s limit allows {allowed:.1f} s, measured {took:.1f} s = {took / allowed:.2f}x "
                f"(target <= 2x)"
            )
        print(f"[pull] snapshot rows: {SegmentMember.objects.filter(audience=audience).count():,}; {load_line()}")
    finally:
        cio.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="pending deliveries")
    parser.add_argument("--members", type=int, default=1_000_000, help="members of the Customer.io segment")
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--rate-limit", type=float, default=10.0, help="destination requests/s")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=240.0, help="deliver_destination's max_seconds")
    parser.add_argument("--parts", default="delivery,pull")
    parser.add_argument(
        "--pg-url", default=os.environ.get("BENCH_DELIVERY_PG_URL", "postgres://postgres@127.0.0.1:5432/downstream_bench_delivery")
    )
    args = parser.parse_args()
    if not args.pg_url.startswith("postgres"):
        parser.error("this benchmark runs on PostgreSQL")

    print(machine_line())
    print(load_line())
    env = django_env(args.pg_url, LOG_LEVEL="WARNING")
    started = time.perf_counter()
    reset_database(args.pg_url, env)
    os.environ.update(env)
    import django

    django.setup()
    took = make_people(args.people)
    print(f"database: {args.pg_url} (fresh, migrated in {time.perf_counter() - started - took:.1f} s), "
          f"{args.people:,} people inserted in {took:.1f} s")
    parts = args.parts.split(",")
    if "delivery" in parts:
        run_delivery(args)
    if "pull" in parts:
        run_pull(args)
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
