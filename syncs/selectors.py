"""Reads shared by the dashboard, the audience and sync pages, the weekly review and the alert
checks. Each is a bounded number of queries whatever the number of audiences or samples."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, F, Func, IntegerField, Max, Min, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from audiences.models import Audience, SizeSample

from .models import Delivery, Sync, SyncRun

LAG_SAMPLE = 5000


@dataclass
class LagFigures:
    count: int
    p50: float | None
    p95: float | None
    max: float | None


def percentile(sorted_values: list[float], share: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(share * (len(sorted_values) - 1))))
    return sorted_values[index]


def lag_figures(values: list[float]) -> LagFigures:
    values = sorted(values)
    return LagFigures(len(values), percentile(values, 0.5), percentile(values, 0.95), values[-1] if values else None)


def _lag_seconds(deliveries) -> list[float]:
    rows = deliveries.order_by("-acknowledged_at").values_list("acknowledged_at", "triggered_at")[:LAG_SAMPLE]
    return [max(0.0, (acked - triggered).total_seconds()) for acked, triggered in rows]


def acknowledged(sync_ids=None, *, since: datetime, until: datetime | None = None, action: str | None = None):
    # entries queued when a sync was created are not changes anyone waited for: no lag
    deliveries = Delivery.objects.filter(state=Delivery.SENT, acknowledged_at__gte=since, initial=False)
    if until:
        deliveries = deliveries.filter(acknowledged_at__lt=until)
    if sync_ids is not None:
        deliveries = deliveries.filter(sync_id__in=list(sync_ids))
    if action:
        deliveries = deliveries.filter(action=action)
    return deliveries


def suppression_lag(sync: Sync, *, since: datetime, until: datetime | None = None) -> LagFigures:
    """Request → destination acknowledgement, for the changes that suppress: people entering a
    suppression audience (and leaving an activation one)."""
    action = Delivery.ENTER if sync.audience.purpose == Audience.SUPPRESSION else Delivery.EXIT
    return lag_figures(_lag_seconds(acknowledged([sync.pk], since=since, until=until, action=action)))


def suppression_lag_by_sync(sync_ids, *, since: datetime) -> dict[int, LagFigures]:
    rows = (
        acknowledged(sync_ids, since=since)
        .filter(
            Q(action=Delivery.ENTER, sync__audience__purpose=Audience.SUPPRESSION)
            | Q(action=Delivery.EXIT, sync__audience__purpose=Audience.ACTIVATION)
        )
        .annotate(lag=F("acknowledged_at") - F("triggered_at"))  # computed by the database
        .order_by("-acknowledged_at")
        .values_list("sync_id", "lag")[: LAG_SAMPLE * 4]
    )
    values = defaultdict(list)
    for sync_id, lag in rows:
        values[sync_id].append(max(0.0, lag.total_seconds()))
    return {sync_id: lag_figures(v) for sync_id, v in values.items()}


def lag_histogram(values: list[float], edges=(0.5, 1, 2, 5, 10, 30, 60, 300)) -> list[tuple[str, int]]:
    buckets = [0] * (len(edges) + 1)
    for value in values:
        position = next((i for i, edge in enumerate(edges) if value <= edge), len(edges))
        buckets[position] += 1
    labels = [f"≤ {edge:g} s" for edge in edges] + [f"> {edges[-1]:g} s"]
    return list(zip(labels, buckets))


def suppression_lag_values(sync: Sync, *, since: datetime) -> list[float]:
    action = Delivery.ENTER if sync.audience.purpose == Audience.SUPPRESSION else Delivery.EXIT
    return _lag_seconds(acknowledged([sync.pk], since=since, action=action))


def suppression_lag_series(sync: Sync, *, since: datetime, bucket: timedelta) -> list[tuple[datetime, LagFigures]]:
    action = Delivery.ENTER if sync.audience.purpose == Audience.SUPPRESSION else Delivery.EXIT
    rows = acknowledged([sync.pk], since=since, action=action).values_list("acknowledged_at", "triggered_at")[: LAG_SAMPLE * 4]
    grouped = defaultdict(list)
    for acked, triggered in rows:
        grouped[_floor(acked, since, bucket)].append(max(0.0, (acked - triggered).total_seconds()))
    return [(start, lag_figures(grouped[start])) for start in sorted(grouped)]


def _floor(moment: datetime, origin: datetime, bucket: timedelta) -> datetime:
    return origin + ((moment - origin) // bucket) * bucket


# --- sizes ----------------------------------------------------------------------------------


class BucketIndex(Func):
    """Which bucket of `seconds` since `origin` a datetime column falls in, computed by the
    database so that a year of samples never has to be turned into Python datetimes."""

    output_field = IntegerField()

    def __init__(self, column: str, *, origin: datetime, seconds: int):
        super().__init__(F(column))
        self.origin = int(origin.timestamp())
        self.seconds = int(seconds)

    def as_postgresql(self, compiler, connection):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"FLOOR((EXTRACT(EPOCH FROM {sql}) - %s) / %s)::integer", (*params, self.origin, self.seconds)

    def as_sqlite(self, compiler, connection):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"((CAST(strftime('%%s', {sql}) AS INTEGER) - %s) / %s)", (*params, self.origin, self.seconds)


def _slot_count(since: datetime, until: datetime, bucket: timedelta) -> int:
    return max(0, int((until - since) / bucket)) + (1 if (until - since) % bucket else 0)


def _grouped_samples(audience_ids, since: datetime, until: datetime, bucket: timedelta):
    """(audience, bucket index, largest size, smallest size, entered, exited) per bucket with
    samples, grouped by the database."""
    slots = _slot_count(since, until, bucket)
    grouped = (
        SizeSample.objects.filter(audience_id__in=list(audience_ids), at__gte=since, at__lt=until)
        .annotate(slot=BucketIndex("at", origin=since, seconds=int(bucket.total_seconds())))
        .values("audience_id", "slot")
        .annotate(peak=Max("size"), low=Min("size"), entered_total=Sum("entered"), exited_total=Sum("exited"))
        .order_by()
        .values_list("audience_id", "slot", "peak", "low", "entered_total", "exited_total")
    )
    for audience_id, slot, peak, low, entered, exited in grouped:
        # the database counts whole seconds from a whole-second origin, so a sample taken less
        # than a second before `until` can come back one bucket past the last one: it joins the last
        yield audience_id, min(slot, slots - 1), peak, low, entered, exited


def size_lows(audience_ids, *, since: datetime, until: datetime | None = None, bucket: timedelta) -> dict:
    """Per audience, {bucket index: smallest size} for the buckets of `size_series` whose samples
    dipped under the bucket's largest size: the chart marks the dip, a drop to 0 included."""
    lows = defaultdict(dict)
    for audience_id, slot, peak, low, _, _ in _grouped_samples(audience_ids, since, until or timezone.now(), bucket):
        low = min(low, lows[audience_id].get(slot, low))
        if low < peak:
            lows[audience_id][slot] = low
    return lows


def size_series(audience_ids, *, since: datetime, until: datetime | None = None, bucket: timedelta, before=None) -> dict:
    """Per audience: [(bucket start, largest size in the bucket, entered, exited)]. Buckets
    without a sample carry the size forward. Grouped by the database: one row per audience
    and bucket comes back, not one per sample."""
    until = until or timezone.now()
    slots = _slot_count(since, until, bucket)
    raw = defaultdict(dict)
    for audience_id, slot, peak, _, entered, exited in _grouped_samples(audience_ids, since, until, bucket):
        if slot in raw[audience_id]:
            was = raw[audience_id][slot]
            peak, entered, exited = max(peak, was[0]), entered + was[1], exited + was[2]
        raw[audience_id][slot] = (peak, entered, exited)
    before = size_before(audience_ids, at=since) if before is None else before
    series = {}
    for audience_id in audience_ids:
        size = before.get(audience_id)
        own = raw.get(audience_id, {})
        points = []
        for n in range(slots):
            if n in own:
                size, entered, exited = own[n]
            else:
                entered = exited = 0
            points.append((since + n * bucket, size, entered, exited))
        series[audience_id] = points
    return series


def size_before(audience_ids, *, at: datetime) -> dict[int, int]:
    """Each audience's size as of `at`: its last sample before then (one query)."""
    latest = SizeSample.objects.filter(audience_id=OuterRef("pk"), at__lt=at).order_by("-at").values("size")[:1]
    return dict(Audience.objects.filter(pk__in=list(audience_ids)).annotate(size=Subquery(latest)).values_list("pk", "size"))


@dataclass(frozen=True)
class SizeChange:
    """An audience's size at a moment against its size a week earlier: "vs 7 days ago"."""

    before: int | None
    after: int | None

    @property
    def change(self) -> float | None:
        return (self.after - self.before) / self.before if self.before and self.after is not None else None


COMPARED_DAYS = 7


def size_change(audiences, *, at: datetime | None = None, now: datetime | None = None) -> dict[int, SizeChange]:
    """Per audience, its size at `at` (None: now, its current size) against its size
    COMPARED_DAYS earlier, each the last sample before that moment. The home page's "vs 7 days
    ago" and the weekly review's change are both this, so they agree."""
    audiences = list(audiences)
    ids = [a.pk for a in audiences]
    now = now or timezone.now()
    at_before = size_before(ids, at=(at or now) - timedelta(days=COMPARED_DAYS))
    at_after = size_before(ids, at=at) if at is not None else {}
    changes = {}
    for audience in audiences:
        after = at_after.get(audience.pk)
        if after is None and (at is None or at >= now):  # a moment still to come: the size now
            after = audience.current_size
        changes[audience.pk] = SizeChange(before=at_before.get(audience.pk), after=after)
    return changes


def trailing_mean(audience_ids, *, until: datetime, days: int = 7) -> dict[int, float]:
    """Mean size over the trailing days, by daily buckets (carrying sizes forward)."""
    series = size_series(audience_ids, since=until - timedelta(days=days), until=until, bucket=timedelta(days=1))
    means = {}
    for audience_id, points in series.items():
        sizes = [size for _, size, _, _ in points if size is not None]
        if sizes:
            means[audience_id] = sum(sizes) / len(sizes)
    return means


# --- syncs ----------------------------------------------------------------------------------


def last_runs(sync_ids) -> dict[int, SyncRun]:
    """Each sync's latest run: one index probe per sync, then the runs by id."""
    latest = SyncRun.objects.filter(sync_id=OuterRef("pk")).order_by("-started_at").values("pk")[:1]
    ids = Sync.objects.filter(pk__in=list(sync_ids)).annotate(run_id=Subquery(latest)).values_list("run_id", flat=True)
    return {run.sync_id: run for run in SyncRun.objects.filter(pk__in=[i for i in ids if i])}


def last_success(sync_ids) -> dict[int, datetime]:
    return dict(
        SyncRun.objects.filter(sync_id__in=list(sync_ids), status=SyncRun.SUCCEEDED)
        .values("sync_id")
        .annotate(at=Max("finished_at"))
        .values_list("sync_id", "at")
    )


def delivery_counts(sync_ids, *, since: datetime) -> dict[int, dict[str, int]]:
    counts = defaultdict(lambda: defaultdict(int))
    rows = (
        Delivery.objects.filter(sync_id__in=list(sync_ids), created_at__gte=since)
        .values("sync_id", "state")
        .annotate(n=Count("pk"))
        .values_list("sync_id", "state", "n")
    )
    for sync_id, state, n in rows:
        counts[sync_id][state] = n
    return counts


def rejected_rows(sync: Sync, *, limit: int = 100):
    return (
        Delivery.objects.filter(sync=sync, state__in=[Delivery.REJECTED, Delivery.DEAD])
        .order_by("-id")
        .select_related("person")[:limit]
    )


def run_durations(runs) -> list[float]:
    return [r.duration_s for r in runs if r.duration_s is not None]


def oldest_open_delivery(sync_ids) -> dict[int, datetime]:
    return dict(
        Delivery.objects.pending()
        .filter(sync_id__in=list(sync_ids))
        .values("sync_id")
        .annotate(at=Min("created_at"))
        .values_list("sync_id", "at")
    )
