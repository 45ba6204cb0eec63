"""Window expiry at scale, called by benchmarks/evaluate.py once the playbook has been evaluated
in full at the data's `now` (its realtime audiences' times written):

* today's full pass: the database time of a full evaluation of every realtime audience with
  nothing changing (what the once-a-minute tick used to cost), without the time the same
  evaluations now spend writing the expiry times, which is shown apart;
* the realtime tick: the instant by which `share` of the people have had their time come (the
  earliest due times, as the data has them), and the database time of the one tick that
  applies their changes at that instant; beside it, what today's full pass costs at that same
  instant, when it has the same entries and exits to write;
* the floor under the tick (PostgreSQL): the same changes written in the least any layout of
  this database could write them, bare tables of the current members (the audience and person
  as the only key, no history) and of the due times (one index), filled as the tick found them:
  the rows due taken off by due time, the exits deleted, the entries inserted and one next time
  written per entry; against the target, what the writes alone cost;
* the minute after it, ticked every second as the worker does: the people and database time;
* the hourly consistency check then: whom it corrects (target 0);
* exit latency with the worker running: `planted` new people, each with an Added to Cart whose
  two hours end 8 to 38 seconds from now (wall clock), ingested in one batch; one qcluster
  (this database, its ORM broker); the time from each window's end to the bench process seeing
  the exit written (polled every 20 ms), then the consistency check at that moment; then again
  with the qcluster SIGKILLed 20 s after planting and started again at once. The planted
  people are deleted afterwards, so the data stays datagen's.

Database time is the time spent in the database driver's execute (each statement's round trip);
the tick's commits are shown apart, beside those of today's full pass.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from contextlib import contextmanager
from datetime import timedelta

from benchmarks.common import Processes, percentile

PLANTED_PREFIX = "bench-expiry-"


@contextmanager
def database_time():
    """Seconds spent in execute, split into the expiry bookkeeping and everything else, and
    apart from them the commits (where PostgreSQL checks the deferred foreign keys of the rows
    written and flushes the log)."""
    from django.db import connection

    spent = {"expiry": 0.0, "other": 0.0, "commit": 0.0}

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            part = "expiry" if "audiences_windowexpiry" in sql or '"expiry_0"' in sql else "other"
            spent[part] += time.perf_counter() - started

    commit = connection._commit

    def timed_commit():
        started = time.perf_counter()
        try:
            return commit()
        finally:
            spent["commit"] += time.perf_counter() - started

    connection._commit = timed_commit
    try:
        with connection.execute_wrapper(timed):
            yield spent
    finally:
        del connection._commit


def realtime_audiences():
    from audiences.dependencies import dependency_order
    from audiences.evaluation import enabled_audiences, follows_windows

    return [a for a in dependency_order(enabled_audiences()) if follows_windows(a)]


def check(at):
    """A full evaluation of every realtime audience at `at`: (people corrected, audiences checked)."""
    from audiences.evaluation import evaluate_audience

    evaluations = [evaluate_audience(a, now=at) for a in realtime_audiences()]
    checked = [e for e in evaluations if e.differences is not None]
    return sum(e.differences for e in checked), len(checked)


def tick_figures(backend: str, now, people: int, share: float = 0.01) -> None:
    from django.db import connection
    from django.db.models import Min, Q

    from audiences.evaluation import evaluate_audience, evaluate_expired
    from audiences.models import Audience, Membership, WindowExpiry

    if connection.vendor == "postgresql":
        # set-up, not timed: this server runs with autovacuum off, so the rows earlier runs
        # deleted would otherwise stay in the way of every scan
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audiences_windowexpiry")
    realtime = realtime_audiences()
    print(
        f"[{backend}] window expiry: realtime audiences {', '.join(a.key for a in realtime)}; "
        f"{WindowExpiry.objects.count():,} expiry times for {WindowExpiry.objects.values('person').distinct().count():,} people"
    )
    full = {}
    checking = 0.0
    for audience in realtime:
        with database_time() as spent:
            started = time.perf_counter()
            evaluate_audience(audience, now=now)
            checking += time.perf_counter() - started
        full[audience.key] = spent
    today = sum(s["other"] for s in full.values())
    committed = sum(s["commit"] for s in full.values())
    parts = ", ".join(f"{key} {s['other'] * 1000:,.0f}" for key, s in full.items())
    writing = sum(s["expiry"] for s in full.values())
    print(
        f"[{backend}] today's full pass (realtime audiences, nothing changing): {today * 1000:,.0f} ms database time "
        f"({parts} ms); the same pass as the hourly check, which also reads and writes the expiry times: "
        f"{checking * 1000:,.0f} ms wall ({writing * 1000:,.0f} ms of it in statements on the expiry times, the rest "
        "mostly the server streaming the rows the times are read from, and Python computing them)"
    )
    wanted = max(1, round(people * share))
    firsts = WindowExpiry.objects.values("person").annotate(first=Min("due_at")).order_by("first").values_list("first", flat=True)
    at = firsts[min(wanted, firsts.count()) - 1]
    # what the full pass costs at that instant, when it has the same changes to write; then back
    # to the state at `now` (set-up, not timed: a first evaluation, not a check) for the tick
    with database_time() as spent:
        changed = sum(len(e.entries) + len(e.exits) for e in (evaluate_audience(a, now=at) for a in realtime))
    full_then = spent["expiry"] + spent["other"]
    Audience.objects.filter(pk__in=[a.pk for a in realtime]).update(evaluated_definition="")
    for audience in realtime:
        evaluate_audience(audience, now=now)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audiences_membership")
            cursor.execute("VACUUM ANALYZE audiences_windowexpiry")
    written_at_then = Membership.objects.filter(Q(entered_at=at) | Q(exited_at=at))
    before = set(written_at_then.values_list("pk", flat=True))
    rows_due = WindowExpiry.objects.filter(due_at__lte=at).count()
    with database_time() as spent:
        started = time.perf_counter()
        evaluated = evaluate_expired(now=at)
        wall = time.perf_counter() - started
    db = spent["expiry"] + spent["other"]
    changes = list(written_at_then.exclude(pk__in=before).values_list("pk", "audience_id", "person_id", "exited_at"))
    moved = len(changes)
    print(
        f"[{backend}] realtime tick at now + {(at - now).total_seconds() / 60:,.1f} min, when {evaluated:,} people "
        f"({evaluated / people:.2%}) have had their time come ({moved:,} entries and exits written): "
        f"{db * 1000:,.0f} ms database time ({db / today:.1%} of today's full pass; target <= 5%), "
        f"{spent['commit'] * 1000:,.0f} ms more in its commits (today's full pass: {committed * 1000:,.0f} ms), "
        f"{wall * 1000:,.0f} ms wall"
    )
    print(
        f"[{backend}] today's full pass at that instant, writing the same {changed:,} entries and exits: "
        f"{full_then * 1000:,.0f} ms database time; the tick is {db / full_then:.1%} of it"
    )
    if connection.vendor == "postgresql":
        floor = write_floor(at, [a.pk for a in realtime], rows_due, changes)
        print(
            f"[{backend}] the floor under it: the same {rows_due:,} due rows taken, {moved:,} entries and exits and a next "
            f"time per entry written to bare tables of current members and due times (no history, one index each): "
            f"{floor * 1000:,.0f} ms database time ({floor / today:.1%} of today's full pass"
            + ("; the writes alone are above the 5% target)" if floor / today > 0.05 else ")")
        )
    with database_time() as spent:
        evaluated = sum(evaluate_expired(now=at + timedelta(seconds=s)) for s in range(1, 61))
    db = spent["expiry"] + spent["other"]
    print(
        f"[{backend}] the minute after, ticked every second as the worker does: {evaluated:,} people, "
        f"{db * 1000:,.0f} ms database time in all ({db / today:.1%} of one full pass, which ran every minute)"
    )
    corrected, checked = check(at + timedelta(seconds=60))
    print(f"[{backend}] hourly consistency check then: {corrected:,} people corrected over {checked} audiences (target 0)")


def write_floor(at, audience_ids: list[int], rows_due: int, changes) -> float:
    """Seconds of database time to write the tick's changes at `at` (`changes`: the memberships
    it wrote, (id, audience, person, exit time)) in the barest layout: a table of current members
    keyed by (audience, person) and one of due times indexed by time, both filled as they stood
    before the tick. The statements run in a transaction that is rolled back; the tables are
    dropped."""
    from django.db import connection, transaction

    exits, entries = {}, {}
    for _, audience_id, person_id, exited_at in changes:
        (exits if exited_at == at else entries).setdefault(audience_id, []).append(person_id)
    entered = [pk for pk, _, _, exited_at in changes if exited_at != at]
    spent = 0.0
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_floor_members, bench_floor_due")
        cursor.execute(
            "CREATE TABLE bench_floor_members (audience_id bigint, person_id bigint, PRIMARY KEY (audience_id, person_id))"
        )
        cursor.execute(
            "INSERT INTO bench_floor_members SELECT audience_id, person_id FROM audiences_membership "
            "WHERE audience_id = ANY(%s) AND exited_at IS NULL AND NOT id = ANY(%s)",
            [audience_ids, entered],
        )
        for audience_id, ids in exits.items():
            cursor.execute("INSERT INTO bench_floor_members SELECT %s, unnest(%s::bigint[])", [audience_id, ids])
        cursor.execute("CREATE TABLE bench_floor_due (audience_id bigint, person_id bigint, due_at timestamptz)")
        cursor.execute("INSERT INTO bench_floor_due SELECT audience_id, person_id, due_at FROM audiences_windowexpiry")
        # as many rows due as the tick took (what is left now has its own due times; the cost
        # of taking n rows off by the index does not depend on which)
        cursor.execute(
            "INSERT INTO bench_floor_due SELECT audience_id, person_id, %s FROM bench_floor_due LIMIT %s", [at, rows_due]
        )
        cursor.execute("CREATE INDEX ON bench_floor_due (due_at)")
        cursor.execute("VACUUM ANALYZE bench_floor_members")
        cursor.execute("VACUUM ANALYZE bench_floor_due")
        statements = [
            (
                "DELETE FROM bench_floor_due WHERE ctid = ANY(ARRAY(SELECT ctid FROM bench_floor_due WHERE due_at <= %s "
                "ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING audience_id, person_id",
                [at, rows_due],
            )
        ]
        for audience_id, ids in exits.items():
            statements.append(
                ("DELETE FROM bench_floor_members WHERE audience_id = %s AND person_id = ANY(%s)", [audience_id, ids])
            )
        for audience_id, ids in entries.items():
            statements.append(("INSERT INTO bench_floor_members SELECT %s, unnest(%s::bigint[])", [audience_id, ids]))
            statements.append(
                ("INSERT INTO bench_floor_due SELECT %s, unnest(%s::bigint[]), %s", [audience_id, ids, at + timedelta(days=1)])
            )
        with transaction.atomic():
            for sql, params in statements:
                started = time.perf_counter()
                cursor.execute(sql, params)
                spent += time.perf_counter() - started
            transaction.set_rollback(True)
        cursor.execute("DROP TABLE bench_floor_members, bench_floor_due")
    return spent


def exit_latency(backend: str, planted: int = 200, seed: int = 4, crash_after: float | None = None) -> None:
    """`crash_after`: seconds after planting at which the qcluster is SIGKILLed (its whole
    process group, the waiter with it) and started again at once."""
    from django.db import close_old_connections
    from django.utils import timezone

    from audiences.evaluation import evaluate_audience
    from audiences.ingest import ingest_messages, source_create
    from audiences.messages import Message
    from audiences.models import Audience, Membership, Person, Source

    Person.objects.filter(customer_id__startswith=PLANTED_PREFIX).delete()
    # the state at the wall clock, where the worker evaluates (the data ends at its own `now`,
    # maybe after the instant the tick above was measured at: a first evaluation, not a check),
    # and no full evaluation due while this runs
    wall = timezone.now()
    Audience.objects.update(evaluated_definition="")
    for audience in realtime_audiences():
        evaluate_audience(audience, now=wall)
    Audience.objects.update(next_evaluation_at=wall + timedelta(hours=1))
    source = Source.objects.filter(name="bench-expiry").first() or source_create(name="bench-expiry")[0]
    processes = Processes()
    processes.start_worker(os.environ.copy())
    killed_at = None
    try:
        warm = f"{PLANTED_PREFIX}warm-up"
        ingest_messages(
            source=source,
            messages=[Message("event", warm, "warm", timezone.now(), name="Added to Cart")],
            received_at=timezone.now(),
        )
        started = time.monotonic()
        while not Membership.objects.filter(person__customer_id=warm).exists():
            if time.monotonic() - started > 120:
                raise RuntimeError("the worker evaluated nothing in 120 s")
            time.sleep(0.1)
        rng = random.Random(seed)
        now = timezone.now()
        ends = {f"{PLANTED_PREFIX}{n}": now + timedelta(seconds=8 + 30 * rng.random()) for n in range(planted)}
        messages = [
            Message("event", cid, f"cart-{cid}", end - timedelta(hours=2), name="Added to Cart") for cid, end in ends.items()
        ]
        ingest_messages(source=source, messages=messages, received_at=now)
        seen = {}
        planted_at = time.monotonic()
        deadline = planted_at + 120
        while len(seen) < planted and time.monotonic() < deadline:
            if crash_after is not None and killed_at is None and time.monotonic() - planted_at >= crash_after:
                processes.kill_worker()
                killed_at = timezone.now()
                processes.start_worker(os.environ.copy())
            close_old_connections()
            for cid, exited in Membership.objects.filter(
                audience__key="cart_0_2h", person__customer_id__in=list(set(ends) - set(seen)), exited_at__isnull=False
            ).values_list("person__customer_id", "exited_at"):
                seen[cid] = (timezone.now(), exited)
            time.sleep(0.02)
    finally:
        processes.stop()
    late = sorted((observed - ends[cid]).total_seconds() for cid, (observed, _) in seen.items())
    written = sorted((exited - ends[cid]).total_seconds() for cid, (_, exited) in seen.items())
    crash = ""
    if killed_at is not None:
        after = [
            (observed - ends[cid]).total_seconds()
            for cid, (observed, _) in seen.items()
            if 0 <= (ends[cid] - killed_at).total_seconds() < 10
        ]
        crash = (
            f", the qcluster SIGKILLed {crash_after:.0f} s after planting and started again at once "
            f"(the {len(after)} carts whose window ended in the 10 s after the kill: max {max(after, default=0):.2f} s late)"
        )
    print(
        f"[{backend}] exit latency, {planted} carts whose 2 h end 8-38 s after planting, one qcluster running{crash}: "
        f"{len(seen)} exits seen; window end -> exit seen p50 {statistics.median(late):.2f} s, "
        f"p95 {percentile(late, 0.95):.2f} s, max {late[-1]:.2f} s (target p95 <= 5 s); "
        f"exit time written - window end p95 {percentile(written, 0.95):.2f} s"
    )
    corrected, checked = check(timezone.now())
    print(f"[{backend}] consistency check after the worker ran: {corrected:,} people corrected over {checked} audiences")
    Person.objects.filter(customer_id__startswith=PLANTED_PREFIX).delete()
    Source.objects.filter(name="bench-expiry").delete()


def report(backend: str, now, people: int) -> None:
    tick_figures(backend, now, people)
    exit_latency(backend)
    exit_latency(backend, crash_after=20)
