"""Server time of the dashboard (the admin index) with 200 audiences and a year of hourly size
samples each, on PostgreSQL and SQLite.

    .venv/bin/python benchmarks/dashboard.py [--audiences 200] [--days 365] [--runs 20] [--backends postgres,sqlite]

It builds a fresh database (samples by one INSERT ... SELECT over a generated series), gives
every audience a sync with run history and acknowledged deliveries, then times GET /admin/ for
a logged-in user through Django's test client in-process (server time: view, queries,
template), and prints the median, p95 and the number of SQL queries.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import django_env, machine_line, reset_database  # noqa: E402

URLS = {
    "postgres": "postgres://postgres@127.0.0.1:5432/downstream_bench_dash",
    "sqlite": f"sqlite:///{ROOT / 'var' / 'bench-dash.sqlite3'}",
}


def build(audiences: int, days: int) -> None:
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.db import connection
    from django.utils import timezone

    from audiences.models import Audience
    from syncs.models import Delivery, Destination, Sync, SyncRun

    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    User.objects.create_superuser("bench", password="bench-password-1")
    Audience.objects.bulk_create(
        [
            Audience(
                key=f"aud_{n:03d}",
                name=f"paid_cart_{n}h_nopurch",
                purpose="suppression" if n % 4 == 0 else "activation",
                rule={"event": "Added to Cart", "within": f"{n % 48 + 1}h"},
                current_size=1000 + n * 37,
                last_evaluated_at=now,
                identifier_coverage=0.9,
            )
            for n in range(audiences)
        ]
    )
    start = now - timedelta(days=days)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                'INSERT INTO audiences_sizesample (audience_id, at, last_at, size, entered, exited, evaluations, "full", duration_ms) '
                "SELECT a.id, t, t, 1000 + (a.id * 37 + extract(hour from t)::int * 11) %% 500, 5, 4, 60, true, 3.0 "
                "FROM audiences_audience a CROSS JOIN generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') t",
                [start, now],
            )
        else:
            cursor.execute(
                "WITH RECURSIVE hours(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM hours WHERE n < %s) "
                'INSERT INTO audiences_sizesample (audience_id, at, last_at, size, entered, exited, evaluations, "full", duration_ms) '
                "SELECT a.id, datetime(%s, '+' || h.n || ' hours'), datetime(%s, '+' || h.n || ' hours'), "
                "1000 + (a.id * 37 + h.n * 11) %% 500, 5, 4, 60, 1, 3.0 FROM audiences_audience a CROSS JOIN hours h",
                [days * 24, start.strftime("%Y-%m-%d %H:%M:%S"), start.strftime("%Y-%m-%d %H:%M:%S")],
            )
    destination = Destination.objects.create(key="files", name="Files", kind="file", settings={"format": "csv"})
    syncs = Sync.objects.bulk_create(
        [Sync(key=f"sync-{a.key}", audience=a, destination=destination) for a in Audience.objects.all()]
    )
    runs, deliveries = [], []
    for sync in syncs:
        for k in range(20):
            at = now - timedelta(minutes=15 * k)
            runs.append(
                SyncRun(sync=sync, status="succeeded", sent=10, planned=10, started_at=at, finished_at=at + timedelta(seconds=2))
            )
        for k in range(50):
            at = now - timedelta(minutes=k * 10)
            deliveries.append(
                Delivery(
                    sync=sync,
                    customer_id=f"c{k}",
                    action="enter",
                    triggered_at=at,
                    changed_at=at,
                    state="sent",
                    acknowledged_at=at + timedelta(seconds=1 + k % 5),
                    next_attempt_at=at,
                )
            )
    SyncRun.objects.bulk_create(runs, batch_size=5000)
    Delivery.objects.bulk_create(deliveries, batch_size=5000)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


def measure(runs: int) -> tuple[list[float], int]:
    from django.db import connection, reset_queries
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.login(username="bench", password="bench-password-1")
    client.get("/admin/")  # warm caches
    timings = []
    queries = 0
    for _ in range(runs):
        reset_queries()
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get("/admin/")
            timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
        assert b"paid_cart_199h_nopurch" in response.content or b"paid_cart_" in response.content
        queries = len(captured)
    return timings, queries


def child(backend: str, audiences: int, days: int, runs: int) -> None:
    import django

    django.setup()
    from audiences.models import SizeSample

    started = time.perf_counter()
    build(audiences, days)
    built = time.perf_counter() - started
    timings, queries = measure(runs)
    timings.sort()
    print(
        f"[{backend}] {audiences} audiences, {SizeSample.objects.count():,} size samples (built in {built:.0f} s): "
        f"GET /admin/ median {1000 * statistics.median(timings):.0f} ms, p95 {1000 * timings[int(0.95 * (len(timings) - 1))]:.0f} ms, "
        f"max {1000 * timings[-1]:.0f} ms over {runs} requests; {queries} SQL queries per request"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audiences", type=int, default=200)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.audiences, args.days, args.runs)
        return
    print(machine_line())
    print(
        f"inputs: {args.audiences} audiences x {args.days} days of hourly size samples, one sync each with 20 runs and "
        f"50 acknowledged deliveries; {args.runs} timed GET /admin/ (the dashboard) in-process, target 300 ms"
    )
    for backend in args.backends.split(","):
        env = django_env(URLS[backend], LOG_LEVEL="WARNING", ALLOWED_HOSTS="testserver,localhost")
        reset_database(URLS[backend], env)
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                backend,
                "--audiences",
                str(args.audiences),
                "--days",
                str(args.days),
                "--runs",
                str(args.runs),
            ],
            env=env,
            check=True,
        )


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    main()
