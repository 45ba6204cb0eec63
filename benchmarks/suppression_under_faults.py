"""Suppression lag on the unhappy path: a LiveLike that fails 30 % of requests and a worker
SIGKILLed and restarted at once, while activation audiences churn on the same destination.

Per backend, on a fresh database: a source, a config applied with `apply_config` (two realtime
suppression audiences, purchasers_24h and purchasers_1h, and five realtime activation audiences
`act_1..act_5` ({attribute: seg_i, eq: true}, excluding purchasers_24h), seven LiveLike syncs on
ONE destination with the product's defaults (rate limit 10 requests/s, timeout 10 s, retries from
2 s; suppression syncs 3 s and retries from 0.2 s), pointing at a LiveLike contract server in its
own process that answers 30 % of requests with a fault (429 with Retry-After 1, 500, an answer
only after 12 s (past every client timeout), or a connection reset) and holds a 10 requests/s
token bucket of its own), `setup_schedules`, then gunicorn and one `qcluster`.

A pool of people is identified first (each in some activation audiences; their entries are
delivered before the clock starts). Then, at once: a churn thread re-identifies random pool
people with new flags (entries and exits on the activation syncs), and purchases arrive one per
ingest request at a steady pace, each from a pool member who has not bought yet. During the
purchases the qcluster's process group is SIGKILLed `--kills` times, evenly spaced, and
restarted at once.

Printed per backend: suppression lag p50 / p95 / max from the purchase request returning to the
contract server's first acknowledgement of the person's add row in each suppression audience;
the same for their removal from the activation audiences they were in; kill → first delivered
request; Retry-After violations; rows lost (after everything settled: members downstream
that differ from the members in the database); exits for entries never delivered; faults
injected; inputs.

    .venv/bin/python benchmarks/suppression_under_faults.py [--purchases 150] [--per-second 2]
        [--kills 5] [--fault-rate 0.3] [--pool 400] [--churn-per-second 20]
        [--backends sqlite,postgres] [--pg-url ...] [--redis-url ...]

Floors: suppression p95 <= 10 s with faults and kills, 0 lost, 0 Retry-After violations, 0
exits for entries never delivered; goal p95 <= 3 s.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import (
    Processes,
    django_env,
    free_port,
    load_line,
    machine_line,
    manage,
    percentile,
    reset_database,
)

TOKEN, CLIENT_ID = "faults-producer-token", "faults-client"
SUPPRESSION = ["purchasers_24h", "purchasers_1h"]
ACTIVATION = [f"act_{i}" for i in range(1, 6)]
SLOW_SECONDS = 12.0

CONFIG_HEAD = """\
audiences:
  - {{key: purchasers_24h, name: purchasers_24h, purpose: suppression, cadence: realtime,
      rule: {{event: Order Completed, within: 24h}}}}
  - {{key: purchasers_1h, name: purchasers_1h, purpose: suppression, cadence: realtime,
      rule: {{event: Order Completed, within: 1h}}}}
{activation}
destinations:
  - key: livelike
    name: LiveLike
    kind: livelike
    settings: {{base_url: "{base_url}", client_id: {client_id}}}
    credentials: {{producer_token: "env:FAULTS_LIVELIKE_PRODUCER_TOKEN"}}
syncs:
{syncs}
"""


def config_text(base_url: str) -> str:
    activation = "\n".join(
        f"  - {{key: {a}, name: {a}, cadence: realtime, rule: {{attribute: seg_{i}, eq: true}}, exclusions: [purchasers_24h]}}"
        for i, a in enumerate(ACTIVATION, 1)
    )
    syncs = "\n".join(
        f"  - {{key: {a.replace('_', '-')}-livelike, audience: {a}, destination: livelike, removal_guard_share: 1.0}}"
        for a in SUPPRESSION + ACTIVATION
    )
    return CONFIG_HEAD.format(activation=activation, syncs=syncs, base_url=base_url, client_id=CLIENT_ID)


class Ingest:
    """POST /ingest/v1/batch with the source's write key, one connection per call."""

    def __init__(self, port: int, key: str):
        self.port = port
        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.ids = iter(range(10**9))
        self.lock = threading.Lock()

    def post(self, messages: list[dict]) -> float:
        with self.lock:
            for message in messages:
                message.setdefault("messageId", f"m-{next(self.ids)}-{time.time_ns()}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(
            "POST",
            "/ingest/v1/batch",
            json.dumps({"batch": messages}),
            {"Authorization": self.auth, "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"ingest answered {response.status}: {body[:300]!r}")
        return time.time()


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def identify(user: str, rng: random.Random) -> dict:
    return {
        "type": "identify",
        "userId": user,
        "timestamp": now_iso(),
        "traits": {f"seg_{i}": rng.random() < 0.5 for i in range(1, len(ACTIVATION) + 1)},
    }


def server_state(url: str, **flags) -> dict:
    query = "&".join(f"{k}={v}" for k, v in flags.items())
    with urllib.request.urlopen(f"{url}/__state__?{query}", timeout=60) as answer:
        return json.load(answer)


def first_acks(url: str, after: dict[str, float] | None = None) -> dict[tuple[str, str, bool], float]:
    """{(audience, user, action): first acknowledgement}, only those after `after[user]` when
    given (a purchaser's removal, not an earlier one of the churn)."""
    acks: dict[tuple[str, str, bool], float] = {}
    for row in server_state(url, requests=0, rows=1)["rows"]:
        if row["acked_at"] is None:
            continue
        if after is not None and (row["user_id"] not in after or row["acked_at"] < after[row["user_id"]]):
            continue
        key = (row["audience_id"], row["user_id"], row["action"])
        acks[key] = min(acks.get(key, row["acked_at"]), row["acked_at"])
    return acks


def db_snapshot(env) -> dict:
    code = (
        "import json; from audiences.models import Membership, PendingEvaluation; from syncs.models import Delivery; "
        "m = {}; "
        "[m.setdefault(a, []).append(c) for a, c in Membership.objects.filter(exited_at__isnull=True)"
        ".values_list('audience__key', 'person__customer_id')]; "
        "print(json.dumps({'members': m, 'open': Delivery.objects.filter(state__in=Delivery.OPEN_STATES).count(), "
        "'pending_people': PendingEvaluation.objects.count(), "
        "'dead': Delivery.objects.filter(state=Delivery.DEAD).count()}))"
    )
    return json.loads(manage(env, "shell", "-c", code).strip().splitlines()[-1])


def outbox_times(env, buyers: list[str]) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(audience, user): (outbox row written, first request sent)} of the suppression adds."""
    code = (
        "import json, sys; from syncs.models import Delivery, DeliveryBatch; "
        f"users = set(json.loads({json.dumps(json.dumps(buyers))})); out = {{}}; "
        "rows = Delivery.objects.filter(customer_id__in=users, action='enter', sync__audience__purpose='suppression')"
        ".values_list('sync__audience__key', 'customer_id', 'created_at', 'batch_id'); "
        "first = {}; "
        "[first.setdefault(str(b), t) for b, t in DeliveryBatch.objects.order_by('sent_at').values_list('batch_id', 'sent_at')]; "
        "print(json.dumps([[a, u, c.timestamp(), first[str(b)].timestamp() if str(b) in first else None] for a, u, c, b in rows]))"
    )
    rows = json.loads(manage(env, "shell", "-c", code).strip().splitlines()[-1])
    return {(a, u): (created, sent) for a, u, created, sent in rows}


def run_backend(name: str, database_url: str, redis_url: str, args) -> dict:
    env = django_env(
        database_url,
        redis_url=redis_url,
        LOG_LEVEL="WARNING",
        FAULTS_LIVELIKE_PRODUCER_TOKEN=TOKEN,
        DESTINATION_PRIVATE_HOSTS="127.0.0.1,localhost",
        Q_WORKERS=str(args.q_workers),
    )
    if redis_url:
        import redis

        redis.from_url(redis_url).flushdb()
    reset_database(database_url, env)
    processes = Processes()
    rng = random.Random(args.seed)
    try:
        livelike_url = processes.start_livelike(
            TOKEN,
            CLIENT_ID,
            "--fault-rate",
            str(args.fault_rate),
            "--fault-kinds",
            "429,500,timeout,reset",
            "--retry-after",
            "1",
            "--slow-seconds",
            str(SLOW_SECONDS),
            "--rate-limit",
            "10",
            "--seed",
            str(args.seed),
        )
        key = manage(env, "create_source", "shop").strip().splitlines()[-1]
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "downstream.yaml"
            config.write_text(config_text(livelike_url + "/api/v1"))
            manage(env, "apply_config", str(config))
        manage(env, "setup_schedules")
        port = free_port()
        processes.start_web(env, port, 3, threads=2)
        processes.start_worker(env)
        ingest = Ingest(port, key)

        pool = [f"pool-{i:04d}" for i in range(args.pool)]
        for start in range(0, len(pool), 100):
            ingest.post([identify(user, rng) for user in pool[start : start + 100]])
        # the pool's entries go out before the clock starts
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            snapshot = db_snapshot(env)
            if not snapshot["open"] and not snapshot["pending_people"]:
                break
            time.sleep(1)
        memberships_before = db_snapshot(env)["members"]

        stop_churn = threading.Event()
        churned = [0]

        def churn():
            churn_rng = random.Random(args.seed + 1)
            interval = 10 / args.churn_per_second
            while not stop_churn.is_set():
                started = time.monotonic()
                ingest.post([identify(user, churn_rng) for user in churn_rng.sample(pool, 10)])
                churned[0] += 10
                stop_churn.wait(max(0.0, interval - (time.monotonic() - started)))

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()

        buyers = rng.sample(pool, args.purchases)
        kill_at = {round((k + 0.5) * args.purchases / args.kills) for k in range(args.kills)} if args.kills else set()
        returned: dict[str, float] = {}
        kills: list[float] = []
        interval = 1.0 / args.per_second
        clock = time.monotonic()
        for n, user in enumerate(buyers):
            delay = clock + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if n in kill_at:
                kills.append(time.time())
                processes.kill_worker()
                processes.start_worker(env)
            returned[user] = ingest.post(
                [
                    {
                        "type": "track",
                        "userId": user,
                        "event": "Order Completed",
                        "timestamp": now_iso(),
                        "properties": {"order_id": f"o-{n}", "revenue": 38.0},
                    }
                ]
            )
        purchases_took = time.monotonic() - clock

        wanted = {(a, u, True) for u in buyers for a in SUPPRESSION}
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            acks = first_acks(livelike_url)
            if wanted <= acks.keys():
                break
            time.sleep(1)
        stop_churn.set()
        churner.join()
        # settle: every change delivered, then compare downstream with the database
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            snapshot = db_snapshot(env)
            if not snapshot["open"] and not snapshot["pending_people"]:
                break
            time.sleep(1)
        state = server_state(livelike_url, members=1)
        acks = first_acks(livelike_url)
        removals = first_acks(livelike_url, after=returned)
        outbox = outbox_times(env, buyers)
    finally:
        processes.stop()
        if redis_url:
            import redis

            redis.from_url(redis_url).flushdb()

    lags = [acks[(a, u, True)] - returned[u] for u in buyers for a in SUPPRESSION if (a, u, True) in acks]
    missing = [(a, u) for u in buyers for a in SUPPRESSION if (a, u, True) not in acks]
    # members just before the purchases began, removed after their purchase (the churn may
    # have taken some out before: their removal then comes later, or never, and is not counted)
    removal_lags = [
        removals[(a, u, False)] - returned[u]
        for u in buyers
        for a in ACTIVATION
        if u in memberships_before.get(a, []) and (a, u, False) in removals and removals[(a, u, False)] - returned[u] < 60
    ]
    log = state["requests"]
    kill_to_first = []
    for killed in kills:
        after = [r["answered_at"] for r in log if r["received_at"] > killed and r["status"] == 200 and r["answered_at"]]
        kill_to_first.append(min(after) - killed if after else float("nan"))
    downstream = {a: set(m) for a, m in state.get("members", {}).items()}
    lost = 0
    for audience in SUPPRESSION + ACTIVATION:
        in_db = set(snapshot["members"].get(audience, []))
        there = downstream.get(audience, set())
        lost += len(in_db - there) + len(there - in_db)
    to_outbox = [outbox[(a, u)][0] - returned[u] for u in buyers for a in SUPPRESSION if (a, u) in outbox]
    to_request = [
        outbox[(a, u)][1] - outbox[(a, u)][0] for u in buyers for a in SUPPRESSION if (a, u) in outbox and outbox[(a, u)][1]
    ]
    return {
        "to_outbox": to_outbox,
        "to_request": to_request,
        "backend": name,
        "lags": lags,
        "missing": missing,
        "removal_lags": removal_lags,
        "kills": kill_to_first,
        "violations": state["counters"]["retry_after_violations"],
        "faults": state["counters"]["faults"],
        "rate_limited": state["counters"]["rate_limited"],
        "requests": state["counters"]["requests"],
        "lost": lost,
        "exit_before_entry": state["counters"]["exit_before_entry"],
        "dead": snapshot["dead"],
        "open": snapshot["open"],
        "purchases_took": purchases_took,
        "churned": churned[0],
        "max_in_1s": state["counters"]["max_requests_in_any_1s_window"],
    }


def fmt(values: list[float]) -> str:
    if not values:
        return "none"
    return f"p50 {statistics.median(values):.2f} s  p95 {percentile(values, 0.95):.2f} s  max {max(values):.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purchases", type=int, default=150)
    parser.add_argument("--per-second", type=float, default=2.0, help="purchases a second, one ingest request each")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--pool", type=int, default=400, help="people churning in the activation audiences")
    parser.add_argument("--churn-per-second", type=float, default=20.0, help="identify calls a second on the pool")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--q-workers", type=int, default=2, help="the qcluster's worker processes (Q_WORKERS)")
    parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for acknowledgements and to settle")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument(
        "--pg-url", default=os.environ.get("BENCH_FAULTS_PG_URL", "postgres://postgres@127.0.0.1:5432/downstream_bench_faults")
    )
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_FAULTS_REDIS_URL", "redis://127.0.0.1:6379/14"))
    args = parser.parse_args()
    if args.purchases > args.pool:
        parser.error("--purchases must not exceed --pool (each purchase is a pool member's first)")

    print(machine_line())
    print(load_line())
    print(
        f"inputs: {args.purchases} purchases (Order Completed, one per POST /ingest/v1/batch) at {args.per_second:g}/s "
        f"from a pool of {args.pool} people churning at {args.churn_per_second:g} identifies/s over "
        f"{len(ACTIVATION)} activation audiences; {len(SUPPRESSION) + len(ACTIVATION)} LiveLike syncs on one destination "
        f"({len(SUPPRESSION)} suppression), product defaults (10 requests/s, timeout 10 s, suppression 3 s); contract "
        f"server in its own process: {args.fault_rate:.0%} faults (429 + Retry-After 1 s, 500, an answer after "
        f"{SLOW_SECONDS:g} s, reset; seed {args.seed}) and its own 10 requests/s bucket; gunicorn 3x2 threads, one "
        f"qcluster (Q_WORKERS {args.q_workers}) SIGKILLed {args.kills} times during the purchases and restarted at once"
    )
    backends = {
        "sqlite": (f"sqlite:///{ROOT / 'var' / 'bench-faults.sqlite3'}", "", "SQLite file + ORM broker"),
        "postgres": (args.pg_url, args.redis_url, "PostgreSQL + Redis"),
    }
    for name in args.backends.split(","):
        url, redis_url, label = backends[name]
        r = run_backend(name, url, redis_url, args)
        p95 = percentile(r["lags"], 0.95) if r["lags"] else float("inf")
        floors = p95 <= 10 and not r["lost"] and not r["violations"] and not r["exit_before_entry"] and not r["missing"]
        print(f"{name} ({label}):")
        print(
            f"  suppression lag (purchase returned -> first ack of the add, {len(r['lags'])} adds in 2 audiences): "
            f"{fmt(r['lags'])}; {len(r['missing'])} never acknowledged"
        )
        print(
            f"  of which: purchase returned -> outbox row {fmt(r['to_outbox'])}; outbox row -> first request "
            f"{fmt(r['to_request'])}"
        )
        print(
            f"  first removal after the purchase from the activation audiences they were in ({len(r['removal_lags'])} removals): {fmt(r['removal_lags'])}"
        )
        print("  kill -> first delivered request: " + ", ".join(f"{k:.2f} s" for k in r["kills"]))
        print(
            f"  Retry-After violations {r['violations']}; rows lost {r['lost']}; exits for entries never delivered "
            f"{r['exit_before_entry']}; dead letters {r['dead']}; still open {r['open']}"
        )
        print(
            f"  {r['requests']} requests, faults {r['faults']}, {r['rate_limited']} refused by the server's bucket, "
            f"at most {r['max_in_1s']} in a second; purchases took {r['purchases_took']:.1f} s, {r['churned']} churn identifies"
        )
        print(
            f"  floors (p95 <= 10 s, 0 lost, 0 violations, 0 exits without entry): {'met' if floors else 'MISSED'}; "
            f"goal p95 <= 3 s: {'met' if p95 <= 3 else 'missed'}; {load_line()}"
        )


if __name__ == "__main__":
    main()
