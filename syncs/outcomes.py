"""The feedback loop: downstream reports impressions, clicks, conversions and spend per audience
per day; the pages show them beside sizes, with cost per conversion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.utils import timezone

from audiences.messages import Problem, Rejected
from audiences.models import Audience

from .models import Outcome

COUNTS = ("impressions", "reach", "clicks", "conversions")
MONEY = ("spend", "revenue")
MAX_ITEMS = 1000


def parse_outcomes(body) -> list[dict]:
    if not isinstance(body, dict) or not isinstance(body.get("outcomes"), list):
        raise Rejected(
            400, [Problem(None, "outcomes", "is required: an array of {audience, date, impressions, clicks, conversions, spend}")]
        )
    items = body["outcomes"]
    if len(items) > MAX_ITEMS:
        raise Rejected(413, [Problem(None, "outcomes", f"at most {MAX_ITEMS} rows a request", True)])
    keys = {i.get("audience") for i in items if isinstance(i, dict)}
    audiences = {a.key: a for a in Audience.objects.filter(key__in=[k for k in keys if isinstance(k, str)])}
    problems, rows = [], []
    today = timezone.localdate()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(Problem(index, "", "each outcome must be an object"))
            continue
        row = {}
        audience = audiences.get(item.get("audience")) if isinstance(item.get("audience"), str) else None
        if audience is None:
            problems.append(Problem(index, "audience", f"{item.get('audience')!r} is not an audience key"))
        row["audience"] = audience
        try:
            day = date.fromisoformat(item.get("date")) if isinstance(item.get("date"), str) else None
        except ValueError:
            day = None
        if day is None or day > today:
            problems.append(Problem(index, "date", "must be a day such as 2026-11-28, not in the future"))
        row["date"] = day
        for name in COUNTS:
            value = item.get(name, None if name == "reach" else 0)
            if value is None and name == "reach":
                row[name] = None
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 10**15:
                problems.append(Problem(index, name, "must be a whole number of 0 or more"))
            else:
                row[name] = value
        for name in MONEY:
            value = item.get(name, 0 if name == "spend" else None)
            if value is None:
                row[name] = None
                continue
            try:
                amount = Decimal(str(value)) if not isinstance(value, bool) and isinstance(value, (int, float, str)) else None
            except InvalidOperation:
                amount = None
            if amount is None or not amount.is_finite() or amount < 0 or amount >= 10**12:
                problems.append(Problem(index, name, "must be an amount of 0 or more, such as 125.40"))
            else:
                row[name] = amount.quantize(Decimal("0.01"))
        currency = item.get("currency", "USD")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            problems.append(Problem(index, "currency", "must be a three-letter code such as USD"))
        row["currency"] = str(currency).upper()
        rows.append(row)
    if problems:
        raise Rejected(400, problems)
    return rows


@transaction.atomic
def outcomes_record(*, source, rows: list[dict]) -> int:
    """A day reported again replaces what that source said before (downstream numbers settle)."""
    for row in rows:
        Outcome.objects.update_or_create(
            audience=row["audience"],
            date=row["date"],
            source=source,
            defaults={k: v for k, v in row.items() if k not in ("audience", "date")},
        )
    return len(rows)


@dataclass
class OutcomeDay:
    date: date
    size: int | None
    impressions: int
    clicks: int
    conversions: int
    spend: Decimal
    revenue: Decimal | None

    @property
    def cost_per_conversion(self) -> Decimal | None:
        return (self.spend / self.conversions).quantize(Decimal("0.01")) if self.conversions else None

    @property
    def roas(self) -> Decimal | None:
        return (self.revenue / self.spend).quantize(Decimal("0.01")) if self.revenue is not None and self.spend else None


def outcome_rows(audience: Audience, *, days: int = 14) -> list[OutcomeDay]:
    from .selectors import size_series

    since = timezone.localdate() - timedelta(days=days - 1)
    totals: dict[date, dict] = {}
    for o in Outcome.objects.filter(audience=audience, date__gte=since):
        day = totals.setdefault(o.date, {"impressions": 0, "clicks": 0, "conversions": 0, "spend": Decimal(0), "revenue": None})
        for name in ("impressions", "clicks", "conversions", "spend"):
            day[name] += getattr(o, name)
        if o.revenue is not None:
            day["revenue"] = (day["revenue"] or Decimal(0)) + o.revenue
    if not totals:
        return []
    start = timezone.make_aware(timezone.datetime.combine(since, timezone.datetime.min.time()))
    sizes = {p[0].date(): p[1] for p in size_series([audience.pk], since=start, bucket=timedelta(days=1))[audience.pk]}
    return [OutcomeDay(day, sizes.get(day), **values) for day, values in sorted(totals.items(), reverse=True)]
