"""Events per second and request latency through POST /ingest/v1/batch, beside the database's
own ceiling.

A real multi-process server (gunicorn) on a fresh database, batches of 100 track events from
concurrent keep-alive clients, on PostgreSQL and on SQLite. On PostgreSQL the same writes are
also made straight through psycopg from as many processes as there are clients (no HTTP, no
validation): once with the statements ingest used before its one-statement write ("per-table
statements", one INSERT of a VALUES list per table), once with the statement it uses now. After
each run the store is checked: events equal the events accepted, every aggregate equals a recount
from the events, every person written to is queued for the realtime pass. The CPU every process
of the run used (web server, database backends, client) is counted too, since the machine is
shared: what two idle cores would carry at that cost is printed beside the figure measured.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--concurrency 8] [--workers 4] [--threads 2]
        [--backends postgres,sqlite] [--pg-url postgres://postgres@127.0.0.1:5432/downstream_bench]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (  # noqa: E402
    Processes,
    django_env,
    free_port,
    load_line,
    machine_line,
    manage,
    reset_database,
)

EVENTS = ("Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
TICKS = os.sysconf("SC_CLK_TCK")


def make_batch(rng: random.Random, batch_size: int, people: int, prefix: str) -> list[dict]:
    return [
        {
            "type": "track",
            "userId": f"cus_{rng.randint(1, people):06d}",
            "event": rng.choice(EVENTS),
            "messageId": f"{prefix}-{n}",
            "timestamp": "2026-11-29T10:00:00.000Z",
            "properties": {"product_id": f"SKU-{rng.randint(1, 50)}", "price": 38.0, "category": "serum"},
            "context": {"library": {"name": "analytics-python", "version": "1.1.0"}},
        }
        for n in range(batch_size)
    ]


def make_bodies(count: int, batch_size: int, people: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [json.dumps({"batch": make_batch(rng, batch_size, people, f"bench-{seed}-{i}")}).encode() for i in range(count)]


def load(port: int, key: str, bodies: list[bytes], concurrency: int, seconds: float):
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))
    stop_at = time.monotonic() + seconds

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.monotonic() < stop_at:
            with lock:
                index = next(cursor, None)
            if index is None:
                break
            started = time.perf_counter()
            try:
                conn.request(
                    "POST", "/ingest/v1/batch", bodies[index], {"Authorization": auth, "Content-Type": "application/json"}
                )
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(str(response.status))
            except (OSError, http.client.HTTPException) as exc:
                failures.append(exc.__class__.__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures, time.perf_counter() - began


# --- CPU accounting ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def backend_pids(pg_url: str) -> list[int]:
    import psycopg

    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [name])]


class CpuMeter:
    """CPU used between `start` and `stop` by some processes, found again at `stop` (database
    backends and server workers that started meanwhile count from zero)."""

    def __init__(self, find):
        self.find = find

    def start(self):
        self.before = {pid: cpu_seconds(pid) for pid in self.find()}

    def stop(self) -> float:
        return sum(cpu_seconds(pid) - self.before.get(pid, 0.0) for pid in self.find())


# --- the store after a run ---------------------------------------------------------------------


STORE_TABLES = "audiences_person, audiences_event, audiences_eventstat, audiences_pendingevaluation, django_q_ormq"


def check_store(cursor, expected_events: int) -> str:
    """The promises, checked on what a run left: nothing lost or doubled, aggregates equal a
    recount, everyone written to queued for the realtime pass."""
    cursor.execute("SELECT count(*) FROM audiences_event")
    events = cursor.fetchone()[0]
    cursor.execute(
        "SELECT count(*) FROM audiences_eventstat s FULL JOIN (SELECT person_id, name, count(*) AS n, min(occurred_at) AS f, "
        "max(occurred_at) AS l FROM audiences_event GROUP BY person_id, name) e USING (person_id, name) "
        "WHERE s.count IS DISTINCT FROM e.n OR s.first_at IS DISTINCT FROM e.f OR s.last_at IS DISTINCT FROM e.l"
    )
    wrong_stats = cursor.fetchone()[0]
    cursor.execute(
        "SELECT count(DISTINCT person_id) FROM audiences_event e WHERE NOT EXISTS "
        "(SELECT 1 FROM audiences_pendingevaluation q WHERE q.person_id = e.person_id)"
    )
    unqueued = cursor.fetchone()[0]
    problems = []
    if events != expected_events:
        problems.append(f"{events:,} events stored for {expected_events:,} accepted")
    if wrong_stats:
        problems.append(f"{wrong_stats:,} aggregates differ from a recount")
    if unqueued:
        problems.append(f"{unqueued:,} people with events not queued")
    return "; ".join(problems) or (
        f"checked: {events:,} events = accepted, every aggregate = its recount, everyone written to queued"
    )


# --- the database ceiling: the same writes straight through psycopg ---------------------------


def per_table_statements(cursor, source_id, batch, now):
    """Ingest's writes before its one-statement form: a VALUES list per table."""
    customer_ids = sorted({m["userId"] for m in batch})
    cursor.execute(
        f"SELECT customer_id, id FROM audiences_person WHERE customer_id IN ({', '.join(['%s'] * len(customer_ids))})",
        customer_ids,
    )
    people = dict(cursor.fetchall())
    missing = [c for c in customer_ids if c not in people]
    if missing:
        people.update(insert_people(cursor, missing, now))
    params = []
    for m in batch:
        params += [people[m["userId"]], source_id, m["event"], m["timestamp"], now, json.dumps(m["properties"]), m["messageId"]]
    cursor.execute(
        "INSERT INTO audiences_event (person_id, source_id, name, occurred_at, received_at, properties, message_id) VALUES "
        + ", ".join(["(%s, %s, %s, %s, %s, %s::jsonb, %s)"] * len(batch))
        + " ON CONFLICT (source_id, message_id) DO NOTHING RETURNING message_id",
        params,
    )
    new = {r[0] for r in cursor.fetchall()}
    folded: dict = {}
    for m in batch:
        if m["messageId"] in new:
            entry = folded.setdefault((people[m["userId"]], m["event"]), [m["timestamp"], m["timestamp"], 0])
            entry[0], entry[1], entry[2] = min(entry[0], m["timestamp"]), max(entry[1], m["timestamp"]), entry[2] + 1
    if folded:
        params = [v for key in sorted(folded) for v in (*key, *folded[key])]
        cursor.execute(
            "INSERT INTO audiences_eventstat AS s (person_id, name, first_at, last_at, count) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s)"] * len(folded))
            + " ON CONFLICT (person_id, name) DO UPDATE SET first_at = LEAST(s.first_at, excluded.first_at), "
            "last_at = GREATEST(s.last_at, excluded.last_at), count = s.count + excluded.count",
            params,
        )
    ids = sorted(set(people.values()))
    cursor.execute(
        "INSERT INTO audiences_pendingevaluation (person_id, queued_at) VALUES "
        + ", ".join(["(%s, %s)"] * len(ids))
        + " ON CONFLICT (person_id) DO NOTHING",
        [v for pid in ids for v in (pid, now)],
    )
    return len(new)


def one_statement(cursor, source_id, batch, now):
    """Ingest's write now: the people by one array, then audiences.ingest.POSTGRESQL_WRITE."""
    from audiences.ingest import POSTGRESQL_WRITE

    customer_ids = sorted({m["userId"] for m in batch})
    cursor.execute(
        "SELECT customer_id, id FROM audiences_person WHERE customer_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%s::jsonb)))",
        [json.dumps(customer_ids)],
    )
    people = dict(cursor.fetchall())
    missing = [c for c in customer_ids if c not in people]
    if missing:
        people.update(insert_people(cursor, missing, now))
    received = now.isoformat()
    unique = {m["messageId"]: m for m in reversed(batch)}.values()
    events = [
        {
            "p": people[m["userId"]],
            "s": source_id,
            "n": m["event"],
            "t": m["timestamp"],
            "r": received,
            "d": m["properties"],
            "m": m["messageId"],
        }
        for m in unique
    ]
    sql = POSTGRESQL_WRITE.format(event="audiences_event", stat="audiences_eventstat", pending="audiences_pendingevaluation")
    queue = [{"p": pid, "t": received} for pid in sorted(set(people.values()))]
    cursor.execute(sql, {"events": json.dumps(events), "queue": json.dumps(queue)})
    return len(cursor.fetchall())


def insert_people(cursor, customer_ids, now):
    cursor.execute(
        "INSERT INTO audiences_person (customer_id, email, phone, cio_id, attributes, is_test, created_at, updated_at, phone_e164) "
        "SELECT c, '', '', '', '{}', false, %s, %s, '' FROM unnest(%s::varchar[]) AS c "
        "ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id, id",
        [now, now, customer_ids],
    )
    found = dict(cursor.fetchall())
    rest = [c for c in customer_ids if c not in found]
    if rest:
        cursor.execute("SELECT customer_id, id FROM audiences_person WHERE customer_id = ANY(%s::varchar[])", [rest])
        found.update(cursor.fetchall())
    return found


def ceiling_process(pg_url, form, source_id, seconds, batch_size, people, seed, start_at, out, counted):
    import psycopg
    from psycopg import ClientCursor  # Django's psycopg cursor: parameters bound on the client

    if form == "one statement":
        sys.path.insert(0, str(ROOT))
        os.environ.update(django_env(pg_url))
        import django

        django.setup()
    write = per_table_statements if form == "per-table statements" else one_statement
    rng = random.Random(seed)
    batches = [make_batch(rng, batch_size, people, f"ceiling-{seed}-{i}") for i in range(int(seconds * 60) + 20)]
    events = 0
    with psycopg.connect(pg_url, cursor_factory=ClientCursor) as conn:
        cursor = conn.cursor()
        time.sleep(max(0.0, start_at - time.time()))
        stop_at = time.monotonic() + seconds
        for batch in batches:
            if time.monotonic() >= stop_at:
                break
            now = datetime.now(UTC)
            events += write(cursor, source_id, batch, now)
            conn.commit()
        out.put(events)
        counted.wait(60)  # connected until its backend's CPU is read


def run_ceiling(pg_url: str, form: str, args) -> dict:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {STORE_TABLES} CASCADE")
        source_id = conn.execute("SELECT id FROM audiences_source WHERE name = 'bench'").fetchone()[0]
    context = multiprocessing.get_context("spawn")
    out, counted = context.Queue(), context.Event()
    start_at = time.time() + 3  # every process connected and its batches made
    processes = [
        context.Process(
            target=ceiling_process,
            args=(pg_url, form, source_id, args.seconds, args.batch_size, args.people, 100 + i, start_at, out, counted),
        )
        for i in range(args.concurrency)
    ]
    for p in processes:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    meter = CpuMeter(lambda: backend_pids(pg_url))
    meter.start()
    began = time.perf_counter()
    events = sum(out.get() for _ in processes)
    wall = time.perf_counter() - began
    database_cpu = meter.stop()
    counted.set()
    for p in processes:
        p.join()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        check = check_store(conn.cursor(), events)
    return {"events_per_s": events / wall, "database_cpu_ms": 1000 * database_cpu * 100 / max(events, 1), "check": check}


# --- through HTTP -----------------------------------------------------------------------------


def run_http(name: str, url: str, env: dict, key: str, args) -> dict:
    if name == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {STORE_TABLES} CASCADE")
    port = free_port()
    processes = Processes()
    processes.start_web({**env, "LOG_LEVEL": "ERROR"}, port, args.workers, threads=args.threads, flags=("--keep-alive", "30"))
    server = processes.web
    try:
        batches_needed = int(args.seconds * 400) + 100
        bodies = make_bodies(batches_needed, args.batch_size, args.people, seed=1)
        warm, _, _ = load(port, key, bodies[:40], args.concurrency, 10)  # warm up connections and caches
        web = CpuMeter(lambda: [server.pid, *children(server.pid)])
        database = CpuMeter(lambda: backend_pids(url) if name == "postgres" else [])
        web.start()
        database.start()
        client_before = time.process_time()
        latencies, failures, wall = load(port, key, bodies[40:], args.concurrency, args.seconds)
        client_cpu = time.process_time() - client_before
        web_cpu, database_cpu = web.stop(), database.stop()
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies.sort()
    events = len(latencies) * args.batch_size
    result = {
        "requests": len(latencies),
        "events_per_s": events / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "failures": len(failures),
        "failure_kinds": sorted(set(failures)),
        "cpu_ms": {
            k: 1000 * v * 100 / max(events, 1) for k, v in (("web", web_cpu), ("database", database_cpu), ("client", client_cpu))
        },
    }
    if name == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            result["check"] = check_store(conn.cursor(), events + len(warm) * args.batch_size)
            result["wake_ups"] = conn.execute("SELECT count(*) FROM django_q_ormq").fetchone()[0]
            result["all_requests"] = len(latencies) + len(warm)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per gunicorn worker")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--people", type=int, default=20000, help="distinct userIds the events spread over")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the psycopg runs")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/downstream_bench"))
    args = parser.parse_args()

    print(machine_line())
    print(
        f"inputs: POST /ingest/v1/batch, {args.batch_size} track events per batch over {args.people:,} people, "
        f"{args.concurrency} concurrent keep-alive clients for {args.seconds:.0f} s, gunicorn {args.workers} "
        f"processes x {args.threads} threads, client and server on the same machine, no worker running"
    )
    urls = {"postgres": args.pg_url, "sqlite": f"sqlite:///{ROOT / 'var' / 'bench-ingest.sqlite3'}"}
    for backend in args.backends.split(","):
        env = django_env(urls[backend])
        reset_database(urls[backend], env)
        key = manage(env, "create_source", "bench").strip().splitlines()[-1]
        print(f"{backend}: {load_line()}")
        result = run_http(backend, urls[backend], env, key, args)
        cpu = result["cpu_ms"]
        total = sum(cpu.values())
        print(
            f"{backend:9s} {result['events_per_s']:8,.0f} events/s  p50 {result['p50_ms']:6.1f} ms  "
            f"p95 {result['p95_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
            f"({result['requests']:,} requests, {result['failures']} failed {result['failure_kinds']})"
        )
        print(
            f"          CPU per 100 events: web {cpu['web']:.1f} ms, database backends {cpu['database']:.1f} ms, "
            f"client {cpu['client']:.1f} ms: two idle cores would carry about {2 * 100_000 / total:,.0f} events/s"
        )
        if "check" in result:
            print(
                f"          {result['check']}; {result['wake_ups']:,} realtime wake-ups queued for "
                f"{result['all_requests']:,} requests"
            )
        if backend == "postgres" and not args.no_ceiling:
            for form in ("per-table statements", "one statement"):
                print(f"  ceiling, {form}: {load_line()}")
                ceiling = run_ceiling(urls[backend], form, args)
                print(
                    f"  ceiling  {ceiling['events_per_s']:8,.0f} events/s  psycopg from {args.concurrency} processes, "
                    f"{form}, no HTTP, no validation; database backends {ceiling['database_cpu_ms']:.1f} ms CPU "
                    f"per 100 events; {ceiling['check']}"
                )
        print(f"after {backend}: {load_line()}")


if __name__ == "__main__":
    main()
