"""Delivery and segment-pull throughput at a million rows, on PostgreSQL.

1. Delivery, per destination kind (LiveLike, Meta, Google, TikTok): 1,000,000 pending changes
   (outbox rows) for one sync, sent at the contract server's own rate limit (PLATFORMS below:
   LiveLike 10 requests/s of 500 rows, Meta 2 of 2,500, Google 5 of 1,000, TikTok 2 of 5,000
   rows in two requests each, an upload and an update: 5,000 rows/s for every one).
   `deliver_destination` is called (as the worker's task calls it) until no row is pending;
   the server runs in its own process and enforces its limit itself, so a throttle answer
   would show an over-eager sender. Target: at least 95 % of what the limit allows.
2. Customer.io pull: a 1,000,000-member segment (ids cus_0000001... of the people below)
   through the App API contract server (its own process, 10 requests/s), pulled by
   `syncs.sources.pull_segment` twice: the first pull writes the snapshot, the second finds
   nothing changed. Target: within twice the time the 10 requests/s limit allows.
3. Suppression lag per platform, without faults: benchmarks/suppression_lag.py's run (real
   gunicorn, qcluster and contract server processes) for each destination kind.

The database is made fresh (dropped, migrated) and filled with 1,000,000 people in the
datagen format (cus_0000001 ... cus_1000000) by one INSERT ... SELECT generate_series.

    .venv/bin/python benchmarks/delivery.py [--rows 1000000] [--parts delivery,pull,lag]
        [--platforms livelike,meta,google,tiktok]
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import AutovacuumStandIn, django_env, load_line, machine_line, reset_database  # noqa: E402

TOKEN, CLIENT_ID, APP_KEY = "bench-producer-token", "bench-client", "bench-app-key"
SEGMENT_ID = 7
AUDIENCE_ID, ACCOUNT_ID, ADVERTISER_ID = "23850000000000001", "1234567890", "7000000000000000001"


@dataclass(frozen=True)
class Platform:
    """One destination kind in the delivery run: the contract server's rate limit (requests/s),
    the rows a request, and the requests one batch takes (TikTok: an upload, then an update)."""

    kind: str
    rate_limit: float
    batch_size: int
    requests_per_batch: int
    settings: dict

    @property
    def ceiling(self) -> float:
        return self.rate_limit / self.requests_per_batch * self.batch_size


# Each at its contract server's own limit; batch sizes keep every ceiling at 5,000 rows/s, what
# this 2-core machine sends while it also runs the server and PostgreSQL (Google's 5 requests/s
# is its documented quota of 300 a minute).
PLATFORMS = {
    "livelike": Platform("livelike", 10.0, 500, 1, {"client_id": CLIENT_ID}),
    "meta": Platform("meta", 2.0, 2500, 1, {}),
    "google": Platform(
        "google",
        5.0,
        1000,
        1,
        {
            "operating_account_id": ACCOUNT_ID,
            "customer_match_terms": "ACCEPTED",
            "ad_user_data": "CONSENT_GRANTED",
            "ad_personalization": "CONSENT_GRANTED",
        },
    ),
    "tiktok": Platform("tiktok", 2.0, 5000, 2, {"advertiser_id": ADVERTISER_ID}),
}


# --- contract servers in their own processes ------------------------------------------------


def segment_member(i: int) -> dict:
    n = i + 1
    return {"id": f"cus_{n:07d}", "email": f"cus_{n:07d}@example.com", "cio_id": f"{n:08x}"}


def _server(kind: str, options: dict):
    """The contract server for `kind`, built in the child process that runs it."""
    rate = options.get("rate_limit")
    if kind == "livelike":
        from tests.contract_servers.livelike import LiveLikeServer

        return LiveLikeServer(TOKEN, CLIENT_ID, keep_rows=False, rate_limit_per_s=rate)
    if kind == "meta":
        from tests.contract_servers.meta import MetaServer

        return MetaServer(TOKEN, audiences=(AUDIENCE_ID,), rate_limit_per_s=rate)
    if kind == "google":
        from tests.contract_servers.google import GoogleDataManagerServer

        return GoogleDataManagerServer(
            TOKEN, account_id=ACCOUNT_ID, user_lists=(AUDIENCE_ID,), keep_members=False, rate_limit_per_s=rate
        )
    if kind == "tiktok":
        from tests.contract_servers.tiktok import TikTokServer

        return TikTokServer(
            TOKEN, ADVERTISER_ID, audiences={AUDIENCE_ID: "EMAIL_SHA256"}, keep_files=False, rate_limit_per_s=rate
        )
    from tests.contract_servers.customerio import CustomerIoServer

    server = CustomerIoServer(APP_KEY, rate_limit_per_s=rate)
    server.add_segment(SEGMENT_ID, "Bench segment", (options["members"], segment_member))
    return server


def _serve(kind: str, options: dict, conn) -> None:
    """Child process: one contract server until the parent closes the pipe."""
    server = _server(kind, options)
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


def run_delivery(platform: Platform, args) -> None:
    from django.db.models import Count, Max

    from audiences.models import Audience
    from audiences.services import audience_save
    from syncs.delivery import deliver_destination
    from syncs.models import Delivery, DeliveryBatch, Destination, Sync
    from syncs.services import destination_save, sync_save

    kind = platform.kind
    tag = f"[delivery {kind}]"
    print(
        f"\n{tag} inputs: {args.rows:,} pending entries for one sync; {kind} destination "
        f"rate_limit_per_s={platform.rate_limit:g} requests, batch_size={platform.batch_size:,}, "
        f"{platform.requests_per_batch} request(s) a batch (ceiling {platform.ceiling:,.0f} rows/s); {kind} contract "
        f"server in its own process enforcing {platform.rate_limit:g} requests/s; deliver_destination("
        f"max_seconds={args.max_seconds:g}) called until nothing is pending"
    )
    server = ServerProcess(kind, rate_limit=platform.rate_limit)
    try:
        os.environ["BENCH_TOKEN"] = TOKEN
        Delivery.objects.all().delete()
        Sync.objects.all().delete()
        Destination.objects.all().delete()
        base_url = server.url + "/api/v1" if kind == "livelike" else server.url
        credential = "producer_token" if kind == "livelike" else "access_token"
        destination = destination_save(
            data={
                "key": f"{kind}-bench",
                "name": f"{kind} (bench)",
                "kind": kind,
                "settings": {"base_url": base_url, **platform.settings},
                "credentials": {credential: "env:BENCH_TOKEN"},
                # the sender paces every request, a TikTok batch's upload and update alike
                "rate_limit_per_s": platform.rate_limit,
                "batch_size": platform.batch_size,
                "timeout_s": 30.0,
            }
        )
        if not Audience.objects.filter(key="bench_buyers").exists():
            audience_save(
                data={
                    "key": "bench_buyers",
                    "name": "Bench buyers",
                    "purpose": "suppression",
                    "rule": {"event": "Order Completed", "within": "24h"},
                    "cadence": "1d",
                }
            )
        sync = sync_save(
            data={
                "key": f"bench-buyers-{kind}",
                "audience": "bench_buyers",
                "destination": destination.key,
                "downstream_audience_id": "" if kind == "livelike" else AUDIENCE_ID,
            }
        )
        took = insert_deliveries(sync, args.rows)
        print(f"{tag} {Delivery.objects.filter(state=Delivery.PENDING).count():,} pending rows inserted in {took:.1f} s")

        sent = calls = 0
        with AutovacuumStandIn(args.pg_url) as vacuum:
            started, started_at = time.perf_counter(), time.time()
            while Delivery.objects.filter(sync=sync, state=Delivery.PENDING).exists():
                call_started = time.perf_counter()
                summary = deliver_destination(destination.pk, max_seconds=args.max_seconds)
                calls += 1
                sent += summary.sent
                print(
                    f"{tag}   call {calls}: sent {summary.sent:,} in {summary.batches:,} batches, retried {summary.retried}, "
                    f"{time.perf_counter() - call_started:.1f} s",
                    flush=True,
                )
                if not summary.leased or (summary.sent == 0 and summary.retried == 0):
                    break
            took = time.perf_counter() - started
        # up to the last acknowledgement: a sender with nothing left stays a few seconds for new
        # rows (DELIVERY_IDLE_S) before its call returns, which is not sending time
        last_ack = Delivery.objects.filter(sync=sync).aggregate(at=Max("acknowledged_at"))["at"]
        elapsed = last_ack.timestamp() - started_at if last_ack else took
        counters = server.state()["counters"]
        rate = sent / elapsed
        states = dict(Delivery.objects.filter(sync=sync).values_list("state").annotate(n=Count("pk")))
        print(f"{tag} {load_line()}; {vacuum.line()}")
        print(
            f"{tag} {sent:,} rows sent in {elapsed:.1f} s (from the first call to the last acknowledgement; the calls took "
            f"{took:.1f} s with the idle sender's wait for new rows) = {rate:,.0f} rows/s = {rate / platform.ceiling:.1%} of the "
            f"{platform.ceiling:,.0f} rows/s the server's {platform.rate_limit:g} requests/s allow (target >= 95 %)"
        )
        extra = {k: v for k, v in counters.items() if k not in ("faults", "requests") and not isinstance(v, dict)}
        print(
            f"{tag} server: {counters['requests']:,} requests, throttled {counters['rate_limited'] + counters['faults']['429']}, "
            f"max {counters['max_requests_in_any_1s_window']} requests in any 1 s window, {extra}; "
            f"batches recorded {DeliveryBatch.objects.filter(sync=sync).count():,}; delivery states {states}"
        )
    finally:
        server.stop()


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
        workspace_save(
            data={
                "key": "bench",
                "name": "Bench workspace",
                "base_url": cio.url,
                "credentials": {"app_key": "env:BENCH_CIO_APP_KEY"},
            }
        )
        audience = audience_save(
            data={
                "key": "bench_segment",
                "name": "Bench segment",
                "source_kind": "customerio_segment",
                "source_settings": {"workspace": "bench", "segment_id": SEGMENT_ID},
                "cadence": "1h",
            }
        )
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


# --- 3. suppression lag per platform ---------------------------------------------------------


def run_lag(args) -> None:
    """benchmarks/suppression_lag.py's run (real web, worker and contract server processes, no
    faults) once per destination kind, on PostgreSQL with Redis."""
    import statistics
    from types import SimpleNamespace

    from benchmarks import suppression_lag
    from benchmarks.common import percentile

    options = SimpleNamespace(events=args.lag_events, per_second=4.0, web_workers=2, wait=120.0)
    print(
        f"\n[lag] inputs: {options.events} Order Completed events, one per ingest request at {options.per_second:g}/s, "
        f"a realtime suppression audience synced to each platform's contract server (own process); lag = the "
        f"platform's 200 for the add - the ingest request's return; no faults"
    )
    for kind in args.platforms.split(","):
        options.destination = kind
        result = suppression_lag.run_backend("postgres", args.lag_pg_url, args.lag_redis_url, options)
        lags = result["lags"]
        if not lags:
            print(f"[lag] {kind}: nothing acknowledged ({result['missing']} missing)")
            continue
        print(
            f"[lag] {kind:9s} p50 {statistics.median(lags):.2f} s  p95 {percentile(lags, 0.95):.2f} s  max {max(lags):.2f} s "
            f"({len(lags)} acknowledged, {result['missing']} missing); {load_line()}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="pending deliveries")
    parser.add_argument("--members", type=int, default=1_000_000, help="members of the Customer.io segment")
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--platforms", default=",".join(PLATFORMS), help="destination kinds for the delivery part")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="deliver_destination's max_seconds")
    parser.add_argument("--parts", default="delivery,pull,lag")
    parser.add_argument("--lag-events", type=int, default=100, help="events per platform in the lag part")
    parser.add_argument("--lag-pg-url", default="postgres://postgres@127.0.0.1:5432/downstream_bench_lag")
    parser.add_argument("--lag-redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DELIVERY_PG_URL", "postgres://postgres@127.0.0.1:5432/downstream_bench_delivery"),
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
    print(
        f"database: {args.pg_url} (fresh, migrated in {time.perf_counter() - started - took:.1f} s), "
        f"{args.people:,} people inserted in {took:.1f} s"
    )
    parts = args.parts.split(",")
    if "delivery" in parts:
        for kind in args.platforms.split(","):
            run_delivery(PLATFORMS[kind], args)
    if "pull" in parts:
        run_pull(args)
    if "lag" in parts:
        run_lag(args)
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
