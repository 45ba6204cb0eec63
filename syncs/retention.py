"""Retention: bounded storage for events, deliveries, request batches, sync runs and the
worker's task results, and the daily counts the pages read for what was pruned.

Events go once they are older than the longest window any audience's rule names, plus a
margin, never sooner than a floor; the per-person aggregates the rules read (first and last
time, lifetime count) are kept on ingest, never recomputed from events, so they stay as they
were. Settled deliveries, batches and runs go after their own number of days; what they
counted is added to one `SyncDay` per sync and day in the same transaction as the delete, so
a page adds the rollups to the rows still there and reads the same figures as before.

Everything is deleted in chunks of RETENTION_CHUNK_ROWS rows, one short transaction each,
with a pause after each, so a pass never holds a lock for long (SQLite has one writer) nor
starves ingest; a pass stops at its time budget and the next goes on where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Task

from audiences import rules as r
from audiences.models import Audience, Event, EventStat, Membership, Person, SizeSample

from .models import Delivery, DeliveryBatch, RetentionRun, Sync, SyncDay, SyncRun
from .selectors import LagFigures, lag_figures

# Each sync keeps its last runs whatever their age: the failing-sync alert reads the last
# three, the home page the last one.
KEEP_LAST_RUNS = 10
# Rows a pass has settled for good: a later change of the same person may depend on them.
SETTLED = (Delivery.SENT, Delivery.REJECTED, Delivery.DEAD, Delivery.SKIPPED, Delivery.DRY_RUN)
DONE = (*SETTLED, Delivery.CANCELLED)
RUN_HISTORY_DAYS = 366


@dataclass(frozen=True)
class Policy:
    """What retention keeps, from settings (README "Retention")."""

    event_margin_days: int
    event_floor_days: int
    delivery_days: int
    batch_days: int
    run_days: int
    task_days: int
    chunk_rows: int
    pause_s: float

    # setting → (field, least value, why)
    SETTINGS = {
        "RETENTION_EVENT_MARGIN_DAYS": ("event_margin_days", 0, "days"),
        "RETENTION_EVENT_FLOOR_DAYS": ("event_floor_days", 1, "days"),
        # the pages' 24-hour figures and the alert checks read raw rows of the last day
        "RETENTION_DELIVERY_DAYS": ("delivery_days", 7, "days"),
        "RETENTION_BATCH_DAYS": ("batch_days", 7, "days"),
        "RETENTION_RUN_DAYS": ("run_days", 7, "days"),
        "RETENTION_TASK_DAYS": ("task_days", 1, "days"),
        "RETENTION_CHUNK_ROWS": ("chunk_rows", 1, "rows"),
        "RETENTION_PAUSE_S": ("pause_s", 0, "seconds"),
    }

    @classmethod
    def problems(cls) -> list[str]:
        found = []
        for name, (_, least, unit) in cls.SETTINGS.items():
            value = getattr(settings, name, None)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            whole = isinstance(value, int) or unit == "seconds"
            if not number or not whole or value < least:
                kind = "a number of seconds" if unit == "seconds" else f"a whole number of {unit}"
                found.append(f"{name}={value!r} must be {kind} of at least {least}")
        chunk = getattr(settings, "RETENTION_CHUNK_ROWS", 0)
        if isinstance(chunk, int) and chunk > 10_000:
            found.append(f"RETENTION_CHUNK_ROWS={chunk} is too many rows for one short transaction; at most 10000")
        return found

    @classmethod
    def from_settings(cls) -> Policy:
        if problems := cls.problems():
            raise ImproperlyConfigured("; ".join(problems))
        return cls(**{f: getattr(settings, name) for name, (f, _, _) in cls.SETTINGS.items()})


@checks.register(checks.Tags.compatibility)
def check_retention_settings(app_configs=None, **kwargs):
    """`manage.py check`, `migrate` and `qcluster` refuse a retention setting out of range."""
    return [checks.Error(problem, id="syncs.E101") for problem in Policy.problems()]


# --- what the rules need --------------------------------------------------------------------


def event_windows(rule):
    """(event name, window) of each event condition of a stored rule with a window, the older
    bound of `last_between` included; (name, None) for a `where` with no window, which reads
    that event's whole history. Conditions without either read the per-person aggregates only.
    Reads the JSON as stored (iteratively: a rule stored before the bounds may nest deeply), so
    that a rule evaluation refuses until it is fixed still keeps the events it names."""
    stack = [rule]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node[key] for key in ("all", "any", "not") if key in node)
        name = node.get("event")
        if not isinstance(name, str) or not name.strip():
            continue
        within, between = node.get("within"), node.get("last_between")
        if r.is_duration(within):
            yield name.strip(), r.Duration(within).delta
        elif isinstance(between, list) and between and all(r.is_duration(d) for d in between):
            yield name.strip(), max(r.Duration(d).delta for d in between)
        elif "where" in node:
            yield name.strip(), None


@dataclass(frozen=True)
class EventHorizon:
    days: int
    longest: timedelta | None  # the longest window a rule names
    longest_in: str  # the audience whose rule names it
    kept_in_full: dict = field(default_factory=dict)  # event name → audiences reading its whole history

    def cutoff(self, now: datetime) -> datetime | None:
        """Events before this go; None: nothing can (a window longer than the calendar)."""
        try:
            return now - timedelta(days=self.days)
        except OverflowError:
            return None


def event_horizon(policy: Policy | None = None) -> EventHorizon:
    """From the current rules of every audience, enabled or not (a disabled one may come back)."""
    policy = policy or Policy.from_settings()
    longest, longest_in = None, ""
    kept = defaultdict(set)
    for name, rule in Audience.objects.order_by("name").values_list("name", "rule"):
        for event, window in event_windows(rule):
            if window is None:
                kept[event].add(name)
            elif longest is None or window > longest:
                longest, longest_in = window, name
    days = policy.event_floor_days
    if longest is not None:
        days = max(days, math.ceil(longest / timedelta(days=1)) + policy.event_margin_days)
    return EventHorizon(days, longest, longest_in, {k: tuple(sorted(v)) for k, v in sorted(kept.items())})


# --- the pass -------------------------------------------------------------------------------


class _Clock:
    """The pass's time budget and its pause after each write."""

    def __init__(self, max_seconds: float, pause_s: float, sleep):
        self.deadline = time.monotonic() + max_seconds
        self.pause_s = pause_s
        self.sleep = sleep

    @property
    def out(self) -> bool:
        return time.monotonic() >= self.deadline

    def pause(self) -> None:
        if self.pause_s:
            self.sleep(self.pause_s)


def default_budget_s() -> float:
    """Well inside the worker's task timeout, so a pass is never killed half-way."""
    return 0.8 * settings.Q_CLUSTER.get("timeout", 300)


def apply_retention(*, now: datetime | None = None, max_seconds: float | None = None, sleep=time.sleep) -> RetentionRun:
    """One pass: the small tables first, then deliveries, then events (by far the largest)."""
    now = now or timezone.now()
    policy = Policy.from_settings()
    horizon = event_horizon(policy)
    clock = _Clock(default_budget_s() if max_seconds is None else max_seconds, policy.pause_s, sleep)
    started = time.monotonic()
    run = RetentionRun.objects.create(started_at=now, event_days=horizon.days)
    chunk = policy.chunk_rows
    deleted = {
        "task results": prune_task_results(now - timedelta(days=policy.task_days), chunk, clock),
        "runs": prune_runs(now - timedelta(days=policy.run_days), chunk, clock),
        "batches": prune_batches(now - timedelta(days=policy.batch_days), chunk, clock),
        "deliveries": prune_deliveries(now - timedelta(days=policy.delivery_days), chunk, clock),
        "events": prune_events(horizon, now, chunk, clock),
    }
    RetentionRun.objects.filter(started_at__lt=now - timedelta(days=policy.run_days)).delete()
    run.deleted, run.complete = deleted, not clock.out
    run.finished_at = now + timedelta(seconds=time.monotonic() - started)
    run.save(update_fields=["deleted", "complete", "finished_at"])
    return run


def prune_events(horizon: EventHorizon, now: datetime, chunk: int, clock: _Clock) -> int:
    """Per event name, through the (name, occurred_at) index; names a rule reads with no window
    are kept whole."""
    cutoff = horizon.cutoff(now)
    if cutoff is None:
        return 0
    deleted, name = 0, None
    while not clock.out:
        names = Event.objects.order_by("name").values_list("name", flat=True)
        name = (names.filter(name__gt=name) if name is not None else names).first()
        if name is None:
            break
        if name in horizon.kept_in_full:
            continue
        while not clock.out:
            ids = list(Event.objects.filter(name=name, occurred_at__lt=cutoff).values_list("pk", flat=True)[:chunk])
            if not ids:
                break
            deleted += Event.objects.filter(pk__in=ids).delete()[0]
            clock.pause()
    return deleted


def prune_task_results(cutoff: datetime, chunk: int, clock: _Clock) -> int:
    """django-q keeps SAVE_LIMIT successes (per function) but every failure: old ones go."""
    deleted = 0
    while not clock.out:
        ids = list(Task.objects.filter(stopped__lt=cutoff).values_list("pk", flat=True)[:chunk])
        if not ids:
            break
        deleted += Task.objects.filter(pk__in=ids).delete()[0]
        clock.pause()
    return deleted


def _day(moment: datetime) -> date:
    return timezone.localdate(moment)


def lag_key(lag: timedelta) -> int:
    """A lag as a rollup keeps it: whole milliseconds rounded up, to 3 significant digits from
    1 s on (at most 1 % more), so that a day's lags fit in a few hundred keys. Rounding up
    keeps "at most N seconds" true: a lag within a bound of 3 significant digits stays within it."""
    micros = max(0, lag // timedelta(microseconds=1))
    ms = -(-micros // 1000)
    step = 10 ** max(0, len(str(ms)) - 3) if ms >= 1000 else 1
    return -(-ms // step) * step


def _add_to_days(changes: dict) -> None:
    """Add {(sync id, day): {field: count or {lag key: count}}} to the rollups, in one order so
    that two passes at once cannot deadlock."""
    if not changes:
        return
    keys = sorted(changes)
    SyncDay.objects.bulk_create([SyncDay(sync_id=s, day=d) for s, d in keys], ignore_conflicts=True)
    rows = {
        (row.sync_id, row.day): row
        for row in SyncDay.objects.select_for_update()
        .order_by("sync_id", "day")
        .filter(sync_id__in={s for s, _ in keys}, day__in={d for _, d in keys})
    }
    changed = set()
    for key in keys:
        row = rows[key]
        for name, value in changes[key].items():
            if isinstance(value, Counter):
                if value:
                    merged = Counter({int(k): n for k, n in getattr(row, name).items()}) + value
                    setattr(row, name, {str(k): n for k, n in sorted(merged.items())})
                    changed.add(name)
            else:
                setattr(row, name, getattr(row, name) + value)
                changed.add(name)
    SyncDay.objects.bulk_update([rows[key] for key in keys], sorted(changed))


def _empty_day():
    return defaultdict(int, lag_enter=Counter(), lag_exit=Counter())


def prune_deliveries(cutoff: datetime, chunk: int, clock: _Clock) -> int:
    """Settled and cancelled deliveries created (and acknowledged) before `cutoff`, in id order.
    Never an open one (pending, sending, held), and never the last settled change of a person
    in a sync: the sender reads it to tell whether the destination has the person, so an exit
    years after the entry still goes (and one after a skipped entry still does not)."""
    later = Delivery.objects.filter(
        sync_id=OuterRef("sync_id"), customer_id=OuterRef("customer_id"), id__gt=OuterRef("id"), state__in=SETTLED
    )
    prunable = (
        Q(state__in=DONE, created_at__lt=cutoff)
        & (Q(acknowledged_at__isnull=True) | Q(acknowledged_at__lt=cutoff))
        & (Q(state=Delivery.CANCELLED) | Q(Exists(later)))
    )
    deleted, last = 0, 0
    while not clock.out:
        window = list(Delivery.objects.filter(pk__gt=last).order_by("pk").values_list("pk", "created_at")[:chunk])
        if not window:
            break
        upper = window[-1][0]
        with transaction.atomic():
            rows = list(
                Delivery.objects.select_for_update(skip_locked=True)
                .filter(pk__gt=last, pk__lte=upper)
                .filter(prunable)
                .values_list("pk", "sync_id", "state", "action", "initial", "created_at", "triggered_at", "acknowledged_at")
            )
            if rows:
                days = defaultdict(_empty_day)
                for _, sync_id, state, action, initial, created, triggered, acked in rows:
                    days[(sync_id, _day(created))][state] += 1
                    if state == Delivery.SENT and not initial and acked:
                        lag = "lag_enter" if action == Delivery.ENTER else "lag_exit"
                        days[(sync_id, _day(acked))][lag][lag_key(acked - triggered)] += 1
                _add_to_days(days)
                deleted += Delivery.objects.filter(pk__in=[row[0] for row in rows]).delete()[0]
        last = upper
        if rows:
            clock.pause()
        if min(created for _, created in window) >= cutoff:  # ids follow creation: the rest is newer
            break
    return deleted


def prune_batches(cutoff: datetime, chunk: int, clock: _Clock) -> int:
    deleted = 0
    for sync_id in Sync.objects.order_by("pk").values_list("pk", flat=True):
        while not clock.out:
            ids = list(
                DeliveryBatch.objects.filter(sync_id=sync_id, sent_at__lt=cutoff)
                .order_by("sent_at")
                .values_list("pk", flat=True)[:chunk]
            )
            if not ids:
                break
            with transaction.atomic():
                rows = list(
                    DeliveryBatch.objects.select_for_update(skip_locked=True)
                    .filter(pk__in=ids)
                    .values_list("pk", "sent_at", "status", "error")
                )
                days = defaultdict(_empty_day)
                for _, sent_at, status, error in rows:
                    day = days[(sync_id, _day(sent_at))]
                    day["batches"] += 1
                    if (status is None or status >= 300) and not error.startswith("dry run"):
                        day["batches_failed"] += 1
                _add_to_days(days)
                deleted += DeliveryBatch.objects.filter(pk__in=[row[0] for row in rows]).delete()[0]
            clock.pause()
    return deleted


RUN_STATUS_FIELDS = {SyncRun.SUCCEEDED: "runs_succeeded", SyncRun.PARTIAL: "runs_partial", SyncRun.FAILED: "runs_failed"}
RUN_COUNT_FIELDS = ("planned", "sent", "rejected", "skipped", "retried", "requests")


def prune_runs(cutoff: datetime, chunk: int, clock: _Clock) -> int:
    """Runs started before `cutoff`, except each sync's last KEEP_LAST_RUNS. Deliveries and
    batches still there lose their link to a pruned run (SET NULL), nothing else."""
    deleted = 0
    for sync_id in Sync.objects.order_by("pk").values_list("pk", flat=True):
        runs = SyncRun.objects.filter(sync_id=sync_id)
        kept_from = runs.order_by("-started_at").values_list("started_at", flat=True)[KEEP_LAST_RUNS - 1 : KEEP_LAST_RUNS].first()
        if kept_from is None:
            continue
        before = min(cutoff, kept_from)
        while not clock.out:
            ids = list(runs.filter(started_at__lt=before).order_by("started_at").values_list("pk", flat=True)[:chunk])
            if not ids:
                break
            with transaction.atomic():
                rows = list(
                    SyncRun.objects.select_for_update(skip_locked=True)
                    .filter(pk__in=ids)
                    .values_list("pk", "started_at", "status", *RUN_COUNT_FIELDS)
                )
                days = defaultdict(_empty_day)
                for _, started_at, status, *counts in rows:
                    day = days[(sync_id, _day(started_at))]
                    day["runs"] += 1
                    if status in RUN_STATUS_FIELDS:
                        day[RUN_STATUS_FIELDS[status]] += 1
                    for name, value in zip(RUN_COUNT_FIELDS, counts, strict=True):
                        day[f"run_{name}"] += value
                _add_to_days(days)
                deleted += SyncRun.objects.filter(pk__in=[row[0] for row in rows]).delete()[0]
            clock.pause()
    return deleted


# --- reading pruned days --------------------------------------------------------------------


def _days_of(since: datetime, until: datetime) -> tuple[date, date]:
    """The rollup days a window of whole days covers: [first, last)."""
    return _day(since), _day(until)


def pruned_lags(sync_ids, *, since: datetime, until: datetime, action: str) -> Counter:
    """{lag key in ms: count} of the pruned changes acknowledged in [since, until) (whole days)."""
    first, last = _days_of(since, until)
    column = "lag_enter" if action == Delivery.ENTER else "lag_exit"
    merged = Counter()
    for lags in SyncDay.objects.filter(sync_id__in=list(sync_ids), day__gte=first, day__lt=last).values_list(column, flat=True):
        merged.update({int(k): n for k, n in lags.items()})
    return merged


def merged_lag_figures(values: list[float], pruned: Counter) -> LagFigures:
    """lag_figures over the rows still there and the pruned days' lags together: the same
    ranks as if every row were still there (values of pruned rows rounded up, see lag_key)."""
    if not pruned:
        return lag_figures(values)
    points = sorted([(v, 1) for v in values] + [(ms / 1000, n) for ms, n in pruned.items()])
    total = sum(n for _, n in points)

    def at(share: float) -> float:
        index, seen = min(total - 1, max(0, round(share * (total - 1)))), 0
        for value, n in points:
            seen += n
            if index < seen:
                return value
        return points[-1][0]

    return LagFigures(total, at(0.5), at(0.95), points[-1][0])


def pruned_failures(audience_ids, *, since: datetime, until: datetime) -> dict[int, dict[str, int]]:
    """Per audience, rejected and dead deliveries created in [since, until) that were pruned."""
    first, last = _days_of(since, until)
    return {
        row.pop("sync__audience_id"): row
        for row in SyncDay.objects.filter(sync__audience_id__in=list(audience_ids), day__gte=first, day__lt=last)
        .values("sync__audience_id")
        .annotate(rejected=Sum("rejected"), dead=Sum("dead"))
        .order_by()
    }


@dataclass
class RunDay:
    day: date
    runs: int = 0
    succeeded: int = 0
    partial: int = 0
    failed: int = 0
    planned: int = 0
    sent: int = 0
    rejected: int = 0
    skipped: int = 0
    retried: int = 0
    requests: int = 0
    pruned: bool = False  # some of the day's runs are counted from its rollup


def run_days(sync: Sync, *, now: datetime | None = None, days: int = RUN_HISTORY_DAYS) -> list[RunDay]:
    """The sync's runs per day, newest first: the runs still there and the pruned ones'
    rollups, so a day reads the same before and after its runs go."""
    now = now or timezone.now()
    first = _day(now) - timedelta(days=days - 1)
    found: dict[date, RunDay] = {}
    statuses = {"succeeded": SyncRun.SUCCEEDED, "partial": SyncRun.PARTIAL, "failed": SyncRun.FAILED}
    since = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    for row in (
        SyncRun.objects.filter(sync=sync, started_at__gte=since)
        .annotate(day=TruncDate("started_at"))
        .values("day")
        .order_by()
        .annotate(
            runs=Count("pk"),
            **{k: Count("pk", filter=Q(status=v)) for k, v in statuses.items()},
            **{f"total_{name}": Sum(name) for name in RUN_COUNT_FIELDS},
        )
    ):
        found[row["day"]] = RunDay(
            row["day"],
            row["runs"],
            row["succeeded"],
            row["partial"],
            row["failed"],
            *(row[f"total_{name}"] or 0 for name in RUN_COUNT_FIELDS),
        )
    for rollup in SyncDay.objects.filter(sync=sync, day__gte=first, runs__gt=0):
        day = found.setdefault(rollup.day, RunDay(rollup.day))
        day.runs += rollup.runs
        day.succeeded += rollup.runs_succeeded
        day.partial += rollup.runs_partial
        day.failed += rollup.runs_failed
        for name in RUN_COUNT_FIELDS:
            setattr(day, name, getattr(day, name) + getattr(rollup, f"run_{name}"))
        day.pruned = True
    return [found[d] for d in sorted(found, reverse=True)]


# --- the store's size -----------------------------------------------------------------------


TABLES = (
    ("People", Person),
    ("Events", Event),
    ("Event aggregates", EventStat),
    ("Memberships", Membership),
    ("Size samples", SizeSample),
    ("Deliveries", Delivery),
    ("Request batches", DeliveryBatch),
    ("Sync runs", SyncRun),
    ("Daily rollups", SyncDay),
    ("Worker task results", Task),
)
# Above this many rows PostgreSQL's own estimate is shown rather than counting every row.
EXACT_COUNT_BELOW = 200_000


@dataclass
class TableSize:
    label: str
    table: str
    rows: int
    estimated: bool = False
    bytes: int | None = None


@dataclass
class OpenTransaction:
    """The oldest transaction open on the PostgreSQL server, in any of its databases."""

    database: str
    seconds: float
    state: str

    @property
    def holds_back_reuse(self) -> bool:
        return self.seconds >= LONG_TRANSACTION_S


# A transaction open this long on the server is shown on the storage page: while it is, even in
# another database, PostgreSQL 15 reuses none of the index pages that deletes empty (a deleted
# B-tree page waits until no transaction in the cluster could still see it), so every index the
# deletes and updates go through grows. Held open for a simulated year of benchmarks/retention.py,
# the database ended at 147 MiB instead of 87 and was still growing by 7 MiB a month.
LONG_TRANSACTION_S = 300


@dataclass
class StoreSize:
    vendor: str
    where: str
    tables: list[TableSize]
    total_bytes: int
    free_bytes: int | None = None  # SQLite: pages deleted rows left, reused before the file grows
    oldest_transaction: OpenTransaction | None = None  # PostgreSQL, where this role may see it


def oldest_transaction() -> OpenTransaction | None:
    """The oldest transaction another session holds open on this server (None on SQLite, when
    there is none, or when this role may not see other roles' sessions)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # not the view as first read in this transaction
        cursor.execute(
            "SELECT coalesce(datname, ''), extract(epoch FROM clock_timestamp() - xact_start)::float, coalesce(state, '') "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND xact_start IS NOT NULL "
            "AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) ORDER BY xact_start LIMIT 1"
        )
        row = cursor.fetchone()
    return OpenTransaction(*row) if row else None


def store_size() -> StoreSize:
    """Rows per table (PostgreSQL's estimate for large ones) and bytes: per table and the
    database on PostgreSQL, the file (with its write-ahead log) on SQLite."""
    if connection.vendor == "postgresql":
        return _postgresql_size(TABLES)
    return _sqlite_size(TABLES)


def _postgresql_size(models) -> StoreSize:
    names = [m._meta.db_table for _, m in models]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) FROM pg_class c "
            "WHERE c.relname = ANY(%s) AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)",
            [names],
        )
        stats = {name: (estimate, size) for name, estimate, size in cursor.fetchall()}
        cursor.execute("SELECT current_database(), pg_database_size(current_database())")
        database, total = cursor.fetchone()
    tables = []
    for label, model in models:
        estimate, size = stats.get(model._meta.db_table, (-1, None))
        exact = estimate < EXACT_COUNT_BELOW
        tables.append(TableSize(label, model._meta.db_table, model.objects.count() if exact else estimate, not exact, size))
    return StoreSize("PostgreSQL", f"database {database}", tables, total, oldest_transaction=oldest_transaction())


def _sqlite_size(models) -> StoreSize:
    path = str(connection.settings_dict["NAME"])
    total = sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA freelist_count")
        free_pages = cursor.fetchone()[0]
        cursor.execute("PRAGMA page_size")
        page_size = cursor.fetchone()[0]
    tables = [TableSize(label, m._meta.db_table, m.objects.count()) for label, m in models]
    return StoreSize("SQLite", f"file {os.path.basename(path)}", tables, total, free_pages * page_size)


@dataclass
class Kept:
    what: str
    days: int | None
    why: str


@dataclass
class RetentionOverview:
    store: StoreSize
    kept: list[Kept]
    horizon: EventHorizon
    last_run: RetentionRun | None
    rolled_up_days: int


def retention_overview() -> RetentionOverview:
    """The storage page: how big the store is and what retention keeps, and why."""
    policy = Policy.from_settings()
    horizon = event_horizon(policy)
    if horizon.longest is not None and horizon.days > policy.event_floor_days:
        why = (
            f"the longest window a rule names is {_words(horizon.longest)} ({horizon.longest_in}), "
            f"plus a margin of {policy.event_margin_days} days"
        )
    else:
        why = "the floor (RETENTION_EVENT_FLOOR_DAYS); no rule needs more" + (
            f": the longest window is {_words(horizon.longest)} ({horizon.longest_in})" if horizon.longest else ""
        )
    kept = [Kept("Events", horizon.days, why)]
    for event, audiences in horizon.kept_in_full.items():
        kept.append(Kept(f"{event} events", None, f"kept whole: {', '.join(audiences)} read them with no window"))
    kept += [
        Kept(
            "Deliveries (sent, rejected, dead, skipped, cancelled, dry runs)",
            policy.delivery_days,
            "then counted per day; pending and held ones, and each person's last change per sync, are kept",
        ),
        Kept("Request batches", policy.batch_days, "then counted per day"),
        Kept("Sync runs", policy.run_days, f"then counted per day; each sync keeps its last {KEEP_LAST_RUNS}"),
        Kept(
            "Worker task results", policy.task_days, f"and at most {Conf.SAVE_LIMIT:,} successes per task function (Q_SAVE_LIMIT)"
        ),
    ]
    return RetentionOverview(
        store=store_size(),
        kept=kept,
        horizon=horizon,
        last_run=RetentionRun.objects.first(),
        rolled_up_days=SyncDay.objects.values("day").distinct().count(),
    )


def _words(delta: timedelta) -> str:
    if delta % timedelta(days=1):
        hours = math.ceil(delta / timedelta(hours=1))
        return f"{hours} hour{'s' if hours != 1 else ''}"
    days = delta // timedelta(days=1)
    return f"{days} day{'s' if days != 1 else ''}"
