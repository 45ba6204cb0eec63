"""The weekly monitoring review: per audience, sizes week over week, days at zero, suppression
lag, rejected rows, alerts opened and closed, and the launch baseline against latest outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.utils import timezone

from audiences.models import Audience, SizeSample

from .lift import Lift, lift_figures, summary_line
from .models import Alert, Baseline, Delivery, Outcome, Sync
from .retention import merged_lag_figures, pruned_failures, pruned_lags
from .selectors import LagFigures, SizeChange, acknowledged, size_change


@dataclass
class Figures:
    spend: Decimal = Decimal(0)
    conversions: int = 0
    clicks: int = 0
    impressions: int = 0
    reach: int = 0
    revenue: Decimal | None = None

    @property
    def cpa(self):
        return (self.spend / self.conversions).quantize(Decimal("0.01")) if self.conversions else None

    @property
    def roas(self):
        return (self.revenue / self.spend).quantize(Decimal("0.01")) if self.revenue is not None and self.spend else None

    @property
    def frequency(self):
        return round(self.impressions / self.reach, 2) if self.reach else None

    @property
    def conversion_rate(self):
        return round(self.conversions / self.clicks, 4) if self.clicks else None


@dataclass
class AudienceWeek:
    audience: Audience
    size_start: int | None
    size_end: int | None  # None: no size yet at the end of that week
    days_at_zero: int
    lag: LagFigures
    rejected: int
    dead: int
    alerts_opened: int
    alerts_closed: int
    baseline: Baseline | None
    outcomes: Figures = field(default_factory=Figures)
    lift: Lift | None = None  # measured against the holdouts, as of the week's end

    @property
    def change(self) -> float | None:
        """As the home page's "vs 7 days ago": see selectors.size_change."""
        return SizeChange(before=self.size_start, after=self.size_end).change


@dataclass
class WeeklyReport:
    start: datetime
    end: datetime
    rows: list[AudienceWeek]
    alerts_opened: int
    alerts_closed: int
    generated_at: datetime

    @property
    def last_day(self) -> date:
        """The week's last day (`end` is the midnight after it)."""
        return (self.end - timedelta(days=1)).date()

    @property
    def lift_rows(self) -> list[AudienceWeek]:
        """The audiences with members measured against a holdout."""
        return [row for row in self.rows if row.lift and row.lift.members]

    @property
    def previous_week_ending(self) -> date:
        return self.last_day - timedelta(days=7)

    @property
    def next_week_ending(self) -> date | None:
        """None when this week is still under way: the next has nothing to show yet."""
        if self.end > self.generated_at:
            return None
        return self.last_day + timedelta(days=7)


def _week(week_ending) -> tuple[datetime, datetime]:
    if isinstance(week_ending, str):
        day = date.fromisoformat(week_ending)
    else:
        day = week_ending or timezone.localdate()
    end = timezone.make_aware(datetime.combine(day + timedelta(days=1), datetime.min.time()))
    return end - timedelta(days=7), end


def weekly_review(*, week_ending=None) -> WeeklyReport:
    start, end = _week(week_ending)
    audiences = list(Audience.objects.order_by("purpose", "name"))
    ids = [a.pk for a in audiences]
    sizes = size_change(audiences, at=end)
    zero_days = {}
    for audience_id, n in (
        SizeSample.objects.filter(audience_id__in=ids, at__gte=start, at__lt=end, size=0)
        .values("audience_id")
        .annotate(n=Count("at__date", distinct=True))
        .values_list("audience_id", "n")
    ):
        zero_days[audience_id] = n
    week_deliveries = Delivery.objects.filter(sync__audience_id__in=ids, created_at__gte=start, created_at__lt=end)
    failures = {
        row["sync__audience_id"]: row
        for row in week_deliveries.values("sync__audience_id").annotate(
            rejected=Count("pk", filter=Q(state=Delivery.REJECTED)), dead=Count("pk", filter=Q(state=Delivery.DEAD))
        )
    }
    # days retention pruned were counted before the rows went: each row is in one place or the other
    for audience_id, pruned in pruned_failures(ids, since=start, until=end).items():
        row = failures.setdefault(audience_id, {"rejected": 0, "dead": 0})
        row["rejected"], row["dead"] = row["rejected"] + pruned["rejected"], row["dead"] + pruned["dead"]
    suppressing = Sync.objects.filter(audience_id__in=ids)
    lags = {}
    for audience in audiences:
        action = Delivery.ENTER if audience.purpose == Audience.SUPPRESSION else Delivery.EXIT
        sync_ids = [s.pk for s in suppressing if s.audience_id == audience.pk]
        rows = acknowledged(sync_ids, since=start, until=end, action=action).values_list("acknowledged_at", "triggered_at")[
            :20000
        ]
        lags[audience.pk] = merged_lag_figures(
            [max(0.0, (a - t).total_seconds()) for a, t in rows], pruned_lags(sync_ids, since=start, until=end, action=action)
        )
    alerts = Alert.objects.filter(audience_id__in=ids)
    opened = dict(
        alerts.filter(opened_at__gte=start, opened_at__lt=end)
        .values("audience_id")
        .annotate(n=Count("pk"))
        .values_list("audience_id", "n")
    )
    closed = dict(
        alerts.filter(resolved_at__gte=start, resolved_at__lt=end)
        .values("audience_id")
        .annotate(n=Count("pk"))
        .values_list("audience_id", "n")
    )
    baselines = {}
    for baseline in Baseline.objects.filter(audience_id__in=ids).order_by("audience_id", "-captured_on"):
        baselines.setdefault(baseline.audience_id, baseline)
    outcomes = {}
    for row in (
        Outcome.objects.filter(audience_id__in=ids, date__gte=start.date(), date__lt=end.date())
        .values("audience_id")
        .annotate(
            spend=Sum("spend"),
            conversions=Sum("conversions"),
            clicks=Sum("clicks"),
            impressions=Sum("impressions"),
            reach=Sum("reach"),
            revenue=Sum("revenue"),
        )
    ):
        audience_id = row.pop("audience_id")
        outcomes[audience_id] = Figures(**{k: (v if v is not None else (None if k == "revenue" else 0)) for k, v in row.items()})
    lifts = lift_figures([a for a in audiences if a.purpose == Audience.ACTIVATION], now=min(end, timezone.now()))
    report_rows = [
        AudienceWeek(
            audience=a,
            size_start=sizes[a.pk].before,
            size_end=sizes[a.pk].after,
            days_at_zero=zero_days.get(a.pk, 0),
            lag=lags[a.pk],
            rejected=failures.get(a.pk, {}).get("rejected", 0),
            dead=failures.get(a.pk, {}).get("dead", 0),
            alerts_opened=opened.get(a.pk, 0),
            alerts_closed=closed.get(a.pk, 0),
            baseline=baselines.get(a.pk),
            outcomes=outcomes.get(a.pk, Figures()),
            lift=lifts.get(a.pk),
        )
        for a in audiences
    ]
    return WeeklyReport(
        start=start,
        end=end,
        rows=report_rows,
        alerts_opened=Alert.objects.filter(opened_at__gte=start, opened_at__lt=end).count(),
        alerts_closed=Alert.objects.filter(resolved_at__gte=start, resolved_at__lt=end).count(),
        generated_at=timezone.now(),
    )


def _fmt(value, unit="") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}"


def render_text(report: WeeklyReport) -> str:
    lines = [
        f"Downstream weekly review, {report.start:%d %b} – {report.end - timedelta(days=1):%d %b %Y}",
        f"Alerts: {report.alerts_opened} opened, {report.alerts_closed} closed.",
        "",
    ]
    for row in report.rows:
        change = f"{row.change:+.0%}" if row.change is not None else "new"
        lines.append(f"{row.audience.name} ({row.audience.purpose})")
        lines.append(
            f"  size {_fmt(row.size_start)} → {_fmt(row.size_end)} ({change}); days at zero: {row.days_at_zero}; "
            f"rejected rows: {row.rejected}, dead letters: {row.dead}; alerts: {row.alerts_opened} opened, {row.alerts_closed} closed"
        )
        if row.lag.count:
            lines.append(
                f"  suppression lag p50 {_fmt(row.lag.p50, ' s')}, p95 {_fmt(row.lag.p95, ' s')} over {row.lag.count:,} changes"
            )
        if row.baseline or row.outcomes.conversions:
            b, o = row.baseline, row.outcomes
            lines.append(
                f"  CPA {_fmt(o.cpa)} (baseline {_fmt(b.cpa if b else None)}), ROAS {_fmt(o.roas)} "
                f"(baseline {_fmt(b.roas if b else None)}), frequency {_fmt(o.frequency)} "
                f"(baseline {_fmt(b.frequency if b else None)}), conversion rate "
                f"{_fmt(o.conversion_rate)} (baseline {_fmt(b.conversion_rate if b else None)})"
            )
        if row.lift and row.lift.members:
            lines.append(f"  measured against the holdout: {summary_line(row.lift)}")
        lines.append("")
    return "\n".join(lines)
