"""Events per second and request latency through POST /ingest/v1/batch.

A real multi-process server (gunicorn) on a fresh database, batches of 100 track events from
concurrent keep-alive clients, on PostgreSQL and on SQLite. Prints its inputs and figures.

    .venv/bin/python benchmarks/ingest.py [--seconds 20] [--concurrency 8] [--workers 4]
        [--backends postgres,sqlite] [--pg-url postgres://postgres@127.0.0.1:5432/downstream_bench]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import django_env, free_port, machine_line, reset_database, wait_for_port  # noqa: E402

EVENTS = ("Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")


def make_bodies(count: int, batch_size: int, people: int, seed: int) -> list[bytes]:
    import random

    rng = random.Random(seed)
    bodies = []
    n = 0
    for _ in range(count):
        batch = []
        for _ in range(batch_size):
            n += 1
            batch.append(
                {
                    "type": "track",
                    "userId": f"cus_{rng.randint(1, people):06d}",
                    "event": rng.choice(EVENTS),
                    "messageId": f"bench-{seed}-{n}",
                    "timestamp": "2026-11-29T10:00:00.000Z",
                    "properties": {"product_id": f"SKU-{rng.randint(1, 50)}", "price": 38.0, "category": "serum"},
                    "context": {"library": {"name": "analytics-python", "version": "1.1.0"}},
                }
            )
        bodies.append(json.dumps({"batch": batch}).encode())
    return bodies


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
                conn.request("POST", "/ingest/v1/batch", bodies[index], {"Authorization": auth, "Content-Type": "application/json"})
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


def run_backend(name: str, url: str, args) -> dict:
    env = django_env(url)
    reset_database(url, env)
    key = subprocess.run(
        [sys.executable, "manage.py", "create_source", "bench"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi", "-b", f"127.0.0.1:{port}",
         "-w", str(args.workers),
         "--worker-class", "gthread", "--threads", "2", "--keep-alive", "30", "--log-level", "warning"],
        cwd=ROOT, env={**env, "LOG_LEVEL": "ERROR", "GUNICORN_ACCESS_LOG": ""},
    )
    try:
        wait_for_port(port)
        batches_needed = int(args.seconds * 200) + 100
        bodies = make_bodies(batches_needed, args.batch_size, args.people, seed=1)
        load(port, key, bodies[:20], args.concurrency, 5)  # warm up connections and caches
        latencies, failures, wall = load(port, key, bodies[20:], args.concurrency, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies.sort()
    return {
        "backend": name,
        "requests": len(latencies),
        "events_per_s": len(latencies) * args.batch_size / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "failures": len(failures),
        "failure_kinds": sorted(set(failures)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (2 threads each)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--people", type=int, default=20000, help="distinct userIds the events spread over")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/downstream_bench"))
    args = parser.parse_args()

    print(machine_line())
    print(
        f"inputs: POST /ingest/v1/batch, {args.batch_size} track events per batch over {args.people:,} people, "
        f"{args.concurrency} concurrent keep-alive clients for {args.seconds:.0f} s, gunicorn {args.workers} "
        f"processes x 2 threads, client and server on the same machine"
    )
    urls = {"postgres": args.pg_url, "sqlite": f"sqlite:///{ROOT / 'var' / 'bench-ingest.sqlite3'}"}
    for backend in args.backends.split(","):
        result = run_backend(backend, urls[backend], args)
        print(
            f"{backend:9s} {result['events_per_s']:8,.0f} events/s  p50 {result['p50_ms']:6.1f} ms  "
            f"p95 {result['p95_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
            f"({result['requests']:,} requests, {result['failures']} failed {result['failure_kinds']})"
        )


if __name__ == "__main__":
    main()
