"""What the pages show, assembled from the selectors in a bounded number of queries."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone

from audiences.models import Audience
from syncs.models import Alert, Sync, SyncRun
from syncs.selectors import last_runs, size_change, size_series, suppression_lag_by_sync

from . import charts

SPARK_DAYS = 7


@dataclass
class AudienceRow:
    audience: Audience
    spark: str
    change: float | None  # against 7 days ago, as a share
    size_week_ago: int | None
    syncs: list = field(default_factory=list)
    last_run: SyncRun | None = None
    lag_p95: float | None = None
    open_alerts: int = 0

    @property
    def sync_status(self) -> str:
        if not self.syncs:
            return "none"
        if any(s.paused for s in self.syncs):
            return "paused"
        return self.last_run.status if self.last_run else "waiting"


def dashboard_rows(*, purpose: str = "", destination: str = "", owner: str = "") -> list[AudienceRow]:
    now = timezone.now()
    audiences = Audience.objects.select_related("owner").order_by("purpose", "name")
    if purpose:
        audiences = audiences.filter(purpose=purpose)
    if destination:
        audiences = audiences.filter(syncs__destination__key=destination).distinct()
    if owner:
        audiences = audiences.filter(owner__username=owner)
    audiences = list(audiences)
    ids = [a.pk for a in audiences]
    since = now - timedelta(days=SPARK_DAYS)
    changes = size_change(audiences, now=now)
    week_ago = {pk: c.before for pk, c in changes.items()}
    series = size_series(ids, since=since, until=now, bucket=timedelta(hours=2), before=week_ago)
    syncs = list(Sync.objects.filter(audience_id__in=ids).select_related("destination"))
    by_audience = defaultdict(list)
    for sync in syncs:
        by_audience[sync.audience_id].append(sync)
    runs = last_runs([s.pk for s in syncs])
    lag = suppression_lag_by_sync([s.pk for s in syncs if s.audience_id in ids], since=now - timedelta(days=1))
    alerts = defaultdict(int)
    for audience_id in Alert.objects.open().filter(audience_id__in=ids).values_list("audience_id", flat=True):
        alerts[audience_id] += 1
    rows = []
    for audience in audiences:
        sizes = [p[1] for p in series.get(audience.pk, [])] + [audience.current_size]
        before, change = changes[audience.pk].before, changes[audience.pk].change
        own_syncs = by_audience.get(audience.pk, [])
        own_runs = [runs[s.pk] for s in own_syncs if s.pk in runs]
        last_run = max(own_runs, key=lambda r: r.started_at) if own_runs else None
        lags = [lag[s.pk].p95 for s in own_syncs if s.pk in lag and lag[s.pk].p95 is not None]
        rows.append(
            AudienceRow(
                audience=audience,
                spark=charts.sparkline(sizes, label=f"{audience.name}: size over the last 7 days"),
                change=change,
                size_week_ago=before,
                syncs=own_syncs,
                last_run=last_run,
                lag_p95=max(lags) if lags else None,
                open_alerts=alerts.get(audience.pk, 0),
            )
        )
    return rows


def open_alerts(limit: int = 50):
    return Alert.objects.open().select_related("audience", "sync", "acknowledged_by")[:limit]
