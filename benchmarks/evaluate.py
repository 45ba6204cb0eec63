"""Audience evaluation at scale: the demo playbook's audiences on 1,000,000 people and
10,000,000 events (PostgreSQL) and 100,000 people / 1,000,000 events (SQLite).

For each demo audience it prints: the full evaluation time (the compiled rule over everyone,
diffed against current members, nothing changing: what the once-a-minute tick costs), the
first evaluation (every member enters), and the per-person evaluation time (the realtime path
for one person). Then a 1,000,000-member audience with 1 % churn (5,000 leave, 5,000 join)
gives the diff time, and the process's peak RSS is printed last.

    .venv/bin/python benchmarks/evaluate.py [--backends postgres,sqlite] [--regenerate]

The data is built by benchmarks/datagen.py (kept between runs unless --regenerate or the
database is missing).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import django_env, machine_line  # noqa: E402

SIZES = {"postgres": (1_000_000, 10_000_000), "sqlite": (100_000, 1_000_000)}
URLS = {
    "postgres": "postgres://postgres@127.0.0.1:5432/downstream_bench_eval",
    "sqlite": f"sqlite:///{ROOT / 'var' / 'bench-eval.sqlite3'}",
}
PER_PERSON_SAMPLES = 50


def ensure_data(backend: str, regenerate: bool) -> None:
    people, events = SIZES[backend]
    url = URLS[backend]
    if not regenerate and _has_data(backend, url, people):
        return
    print(f"[{backend}] generating {people:,} people and {events:,} events (benchmarks/datagen.py)...", flush=True)
    subprocess.run(
        [sys.executable, "benchmarks/datagen.py", "--database-url", url, "--people", str(people), "--events", str(events)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _has_data(backend, url, people) -> bool:
    if backend == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return False
        import sqlite3

        with sqlite3.connect(path) as db:
            try:
                return db.execute("SELECT count(*) FROM audiences_person").fetchone()[0] == people
            except sqlite3.OperationalError:
                return False
    probe = subprocess.run(["psql", url, "-tAc", "SELECT count(*) FROM audiences_person"], capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == str(people)


def run(backend: str) -> None:
    """Runs in a child process with DATABASE_URL set, so each backend has its own Django."""
    import django

    django.setup()
    from django.db import connection
    from django.db.models import Max

    from audiences.config import apply
    from audiences.dependencies import dependency_order
    from audiences.evaluation import evaluate_audience, evaluate_people
    from audiences.models import Audience, Event, Membership, Person, SizeSample
    from audiences.services import audience_save

    now = Event.objects.aggregate(m=Max("occurred_at"))["m"]
    people_count = Person.objects.count()
    print(
        f"[{backend}] {people_count:,} people, {Event.objects.count():,} events; rules evaluated at {now:%Y-%m-%d %H:%M:%S} UTC"
    )

    Membership.objects.all().delete()
    SizeSample.objects.all().delete()
    Audience.objects.all().delete()
    if connection.vendor == "postgresql":
        # set-up, not timed: this server runs with autovacuum off, so the rows an earlier run
        # deleted would otherwise stay in the way of every scan
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audiences_membership")
    apply(str(ROOT / "audiences" / "demo_config.yaml"))

    print(f"[{backend}] {'audience':24s} {'members':>9s} {'first eval':>11s} {'full eval':>10s} {'per person':>11s}")
    for audience in dependency_order(Audience.objects.prefetch_related("exclusions")):
        started = time.perf_counter()
        first = evaluate_audience(audience, now=now)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        steady = evaluate_audience(audience, now=now)
        full_s = time.perf_counter() - started
        assert not steady.entries and not steady.exits
        ids = random.Random(1).sample(range(1, people_count + 1), PER_PERSON_SAMPLES)
        timings = []
        for pid in ids:
            started = time.perf_counter()
            evaluate_audience(audience, now=now, person_ids=[pid])
            timings.append(time.perf_counter() - started)
        print(
            f"[{backend}] {audience.key:24s} {first.size:9,d} {first_s:10.2f}s {full_s:9.2f}s "
            f"{1000 * statistics.median(timings):8.1f} ms (p95 {1000 * sorted(timings)[int(0.95 * len(timings)) - 1]:.1f})"
        )

    timings = []
    for pid in random.Random(2).sample(range(1, people_count + 1), PER_PERSON_SAMPLES):
        started = time.perf_counter()
        evaluate_people([pid], now=now)
        timings.append(time.perf_counter() - started)
    print(
        f"[{backend}] realtime path, one person through all realtime audiences: "
        f"median {1000 * statistics.median(timings):.1f} ms, max {1000 * max(timings):.1f} ms"
    )

    # A (nearly) everyone audience, then 1 % churn.
    churn = max(people_count // 200, 1)
    rng = random.Random(3)
    ids = rng.sample(range(1, people_count + 1), 2 * churn)
    out_first, out_next = ids[:churn], ids[churn:]
    _set_flag(connection, out_first, True)
    everyone = audience_save(
        data={
            "key": "bench_everyone",
            "name": "paid_browse_any_none",
            "cadence": "1d",
            "rule": {"not": {"attribute": "bench_out", "eq": True}},
        }
    )
    started = time.perf_counter()
    first = evaluate_audience(everyone, now=now)
    first_s = time.perf_counter() - started
    _set_flag(connection, out_first, False)
    _set_flag(connection, out_next, True)
    started = time.perf_counter()
    diff = evaluate_audience(everyone, now=now)
    diff_s = time.perf_counter() - started
    print(
        f"[{backend}] {first.size:,}-member audience: first evaluation {first_s:.2f} s; "
        f"1% churn diff (+{len(diff.entries):,} / -{len(diff.exits):,}) {diff_s:.2f} s"
    )
    _set_flag(connection, out_next, False)
    Membership.objects.filter(audience=everyone).delete()
    everyone.delete()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[{backend}] peak RSS of the evaluating process: {peak_mb:,.0f} MB")
    from benchmarks.window_expiry import report as window_expiry

    window_expiry(backend, now, people_count)
    from benchmarks.lift import bench_lift

    bench_lift(backend, now=now)


def _set_flag(connection, person_ids, value: bool) -> None:
    """Benchmark set-up (not timed): flip an attribute without going through ingest."""
    chunk = 5000
    with connection.cursor() as cursor:
        for start in range(0, len(person_ids), chunk):
            part = person_ids[start : start + chunk]
            marks = ", ".join(["%s"] * len(part))
            if connection.vendor == "postgresql":
                sql = f"UPDATE audiences_person SET attributes = jsonb_set(attributes, '{{bench_out}}', %s::jsonb) WHERE id IN ({marks})"
            else:
                sql = f"UPDATE audiences_person SET attributes = json_set(attributes, '$.bench_out', json(%s)) WHERE id IN ({marks})"
            cursor.execute(sql, ["true" if value else "false", *part])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run(args.child)
        return
    print(machine_line())
    for backend in args.backends.split(","):
        people, events = SIZES[backend]
        print(f"inputs [{backend}]: {people:,} people, {events:,} events over 120 days (datagen seed 1), demo playbook audiences")
        ensure_data(backend, args.regenerate)
        env = django_env(URLS[backend], LOG_LEVEL="WARNING")
        # data kept from an earlier run may predate the latest migrations
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        subprocess.run([sys.executable, __file__, "--child", backend], env=env, check=True)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    main()
