"""Measured lift: did sending the audience cause the conversions?

Members who were sent are compared with members who were held out (syncs.holdouts), on a
conversion event (default Order Completed) in a window after entry (default 7 days): the
share who converted and the revenue per member, their difference with a 95 % interval, and
how many more members the interval needs to exclude zero at the rates seen so far.

The unit is a person's first entry in the period whose holdout decision was recorded, so one
person who comes back ten times counts once (repeated entries of one person are not
independent), in the arm that entry was in. Only entries whose window has closed count (a
member who entered yesterday has not had seven days to buy). Test accounts never count.

For an audience the arms are its memberships: held out of every sync (sent nowhere) against
sent to at least one. For a sync they are its entry rows: held out of that sync (by its own
holdout or the global one) against sent to it. Both are one SQL statement (`lift_figures`),
the same on SQLite and PostgreSQL: the units come from a partial index of recorded entries, in
person order, and each unit's conversions from an index of the conversion event's rows in that
same order: for the default event, the partial index `event_conversions` (audiences migration
0008), which on PostgreSQL carries the properties, so revenue is read without a heap page per
purchase; for another event, the event index (person, name, time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from statistics import NormalDist

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, DateTimeField, ExpressionWrapper, F, Q, Sum, Value, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from audiences.models import Event, Membership, Person

from . import holdouts
from .models import Delivery, Outcome, Sync

DEFAULT_EVENT = "Order Completed"
DEFAULT_WINDOW_DAYS = 7
# entries of the last 90 days whose window has closed are counted, as far back as retention
# keeps the events (by default 30 days: raise RETENTION_EVENT_FLOOR_DAYS for a longer period)
PERIOD_DAYS = 90
MAX_WINDOW_DAYS = 90
Z = NormalDist().inv_cdf(0.975)
# a revenue property beyond this is a typo or a test, not an order; it counts as none, which
# also keeps the sums of squares finite on PostgreSQL
REVENUE_LIMIT = 1e12
MARKS_WIDTH = 600
# fewer conversions (or non-conversions) than this in a group and the normal approximation fails
MIN_OUTCOMES = 5


def revenue_sql(properties: str) -> str:
    """An event's `revenue` property when it is a number (under REVENUE_LIMIT), else 0. Text,
    booleans and objects are not revenue (a cast of them would fail on PostgreSQL). Nested
    CASEs, because PostgreSQL may evaluate either side of an AND first; a CASE evaluates a
    branch only once its condition holds."""
    limit = f"{REVENUE_LIMIT:.0f}"
    if connection.vendor == "postgresql":
        value = f"({properties} ->> 'revenue')"
        return (
            f"(CASE WHEN jsonb_typeof({properties} -> 'revenue') = 'number' THEN (CASE WHEN abs({value}::numeric) "
            f"< {limit} THEN {value}::double precision ELSE 0 END) ELSE 0 END)"
        )
    value = f"json_extract({properties}, '$.revenue')"
    return (
        f"(CASE WHEN json_type({properties}, '$.revenue') IN ('integer', 'real') THEN "
        f"(CASE WHEN abs({value}) < {limit} THEN {value} ELSE 0 END) ELSE 0 END)"
    )


def _points(value: float) -> str:
    return f"{value * 100:+.2f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}".replace("%", " %")


def _signed_share(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}".replace("%", " %")


def _money(value, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+,.2f}" if signed else f"{value:,.2f}"


# --- the numbers ----------------------------------------------------------------------------


@dataclass
class Arm:
    """Sent or held-out members: how many, how many converted, revenue and its sum of squares."""

    members: int = 0
    converted: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.converted / self.members if self.members else None

    @property
    def revenue_per_member(self) -> float | None:
        return self.revenue / self.members if self.members else None

    @property
    def revenue_variance(self) -> float | None:
        if self.members < 2:
            return None
        mean = self.revenue / self.members
        return max(0.0, (self.revenue_sq - self.members * mean * mean) / (self.members - 1))


@dataclass
class Interval:
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def t_quantile(df: float) -> float:
    """The 97.5 % quantile of Student's t (Cornish-Fisher series; within 0.01 of the table
    from 4 degrees of freedom, and the normal's in the limit)."""
    z = Z
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def rate_difference(sent: Arm, held: Arm) -> tuple[float, float] | None:
    """(difference of conversion rates, its standard error), normal approximation."""
    if not sent.members or not held.members:
        return None
    p1, p0 = sent.rate, held.rate
    return p1 - p0, math.sqrt(p1 * (1 - p1) / sent.members + p0 * (1 - p0) / held.members)


def relative_interval(sent: Arm, held: Arm) -> tuple[float, Interval] | None:
    """Relative lift (rate sent / rate held out − 1) and its interval on the log of the ratio
    (Katz), which keeps its coverage where the held-out group is small; needs conversions in both."""
    if not sent.converted or not held.converted:
        return None
    ratio = sent.rate / held.rate
    spread = Z * math.sqrt((1 - sent.rate) / sent.converted + (1 - held.rate) / held.converted)
    return ratio - 1, Interval(math.exp(math.log(ratio) - spread) - 1, math.exp(math.log(ratio) + spread) - 1)


def revenue_interval(sent: Arm, held: Arm) -> tuple[float, Interval] | None:
    """Difference of revenue per member with Welch's interval (unequal variances)."""
    a, b = sent.revenue_variance, held.revenue_variance
    if a is None or b is None:
        return None
    difference = sent.revenue_per_member - held.revenue_per_member
    va, vb = a / sent.members, b / held.members
    if va + vb == 0:
        return difference, Interval(difference, difference)
    df = (va + vb) ** 2 / (va**2 / (sent.members - 1) + vb**2 / (held.members - 1))
    spread = t_quantile(df) * math.sqrt(va + vb)
    return difference, Interval(difference - spread, difference + spread)


def more_members_needed(sent: Arm, held: Arm) -> int | None:
    """How many more members (split as now) the rate interval needs to exclude zero, were the
    rates to stay as they are: the standard error shrinks with the square root of the count.
    0 when it already does; None when there is no difference to find (or nothing to go on)."""
    found = rate_difference(sent, held)
    if found is None:
        return None
    difference, error = found
    if abs(difference) > Z * error:
        return 0
    if difference == 0 or error == 0:
        return None
    members = sent.members + held.members
    return max(1, math.ceil(members * (Z * error / difference) ** 2 - members))


@dataclass
class Lift:
    audience_id: int
    sync_id: int | None
    event: str
    window_days: int
    since: datetime
    until: datetime
    sent: Arm = field(default_factory=Arm)
    held: Arm = field(default_factory=Arm)
    spend: Decimal | None = None  # outcomes posted for the audience over the entry days

    @property
    def members(self) -> int:
        return self.sent.members + self.held.members

    @property
    def measurable(self) -> bool:
        return bool(self.sent.members and self.held.members)

    @property
    def difference(self) -> float | None:
        found = rate_difference(self.sent, self.held)
        return found[0] if found else None

    @property
    def interval(self) -> Interval | None:
        found = rate_difference(self.sent, self.held)
        if found is None:
            return None
        difference, error = found
        return Interval(difference - Z * error, difference + Z * error)

    @property
    def relative(self) -> float | None:
        found = relative_interval(self.sent, self.held)
        return found[0] if found else None

    @property
    def relative_interval(self) -> Interval | None:
        found = relative_interval(self.sent, self.held)
        return found[1] if found else None

    @property
    def revenue_difference(self) -> float | None:
        found = revenue_interval(self.sent, self.held)
        return found[0] if found else None

    @property
    def revenue_interval(self) -> Interval | None:
        found = revenue_interval(self.sent, self.held)
        return found[1] if found else None

    @property
    def more_members_needed(self) -> int | None:
        return more_members_needed(self.sent, self.held)

    @property
    def incremental_conversions(self) -> float | None:
        """Conversions among the sent members that sending them caused, at the measured lift."""
        return self.difference * self.sent.members if self.measurable else None

    @property
    def cost_per_incremental(self) -> Decimal | None:
        extra = self.incremental_conversions
        if self.spend is None or extra is None or extra <= 0:
            return None
        return (self.spend / Decimal(str(extra))).quantize(Decimal("0.01"))

    @property
    def cost_per_incremental_interval(self) -> tuple[Decimal | None, Decimal | None] | None:
        """(low, high) at the rate interval's ends; high is None (no bound) while the interval
        reaches zero. None when there is no spend or no positive lift to divide by."""
        interval = self.interval
        if self.cost_per_incremental is None or interval is None or interval.high <= 0:
            return None

        def cost(rate_difference):
            return (self.spend / Decimal(str(rate_difference * self.sent.members))).quantize(Decimal("0.01"))

        return cost(interval.high), cost(interval.low) if interval.low > 0 else None

    @property
    def shown(self) -> dict[str, str]:
        """The figures as the pages print them ("—" where there is nothing to show)."""
        interval, relative, revenue = self.interval, self.relative_interval, self.revenue_interval
        cost, bounds = self.cost_per_incremental, self.cost_per_incremental_interval
        return {
            "rate_sent": _share(self.sent.rate),
            "rate_held": _share(self.held.rate),
            "difference": f"{_points(self.difference)} points" if self.measurable else "—",
            "interval": f"{_points(interval.low)} to {_points(interval.high)}" if interval else "—",
            "relative": _signed_share(self.relative),
            "relative_interval": (f"{_signed_share(relative.low)} to {_signed_share(relative.high)}" if relative else "—"),
            "revenue_sent": _money(self.sent.revenue_per_member),
            "revenue_held": _money(self.held.revenue_per_member),
            "revenue_difference": _money(self.revenue_difference, signed=True),
            "revenue_interval": (
                f"{_money(revenue.low, signed=True)} to {_money(revenue.high, signed=True)}" if revenue else "—"
            ),
            "spend": _money(self.spend),
            "cost": _money(cost),
            "cost_interval": (
                f"{_money(bounds[0])} to {_money(bounds[1]) if bounds[1] is not None else 'no bound yet'}" if bounds else "—"
            ),
        }

    @property
    def marks(self) -> dict[str, float] | None:
        """Where the pages' bar draws zero, the interval's ends and the estimate, on a drawing
        MARKS_WIDTH wide with zero in the middle."""
        interval = self.interval
        if interval is None:
            return None
        reach = max(abs(interval.low), abs(interval.high), 1e-9) * 1.15

        def place(value):
            return round(MARKS_WIDTH / 2 * (1 + value / reach), 1)

        return {
            "zero": MARKS_WIDTH / 2,
            "low": place(interval.low),
            "high": place(interval.high),
            "point": place(self.difference),
            "width": MARKS_WIDTH,
        }

    @property
    def approximation_holds(self) -> bool:
        """The normal approximation needs a few conversions and non-conversions in each group; with
        fewer, its interval is too narrow to trust (two held-out members who did not buy say nothing)."""
        return all(
            arm.converted >= MIN_OUTCOMES and arm.members - arm.converted >= MIN_OUTCOMES for arm in (self.sent, self.held)
        )

    @property
    def verdict(self) -> str:
        """One line a person can act on."""
        if not self.members:
            return "No entry recorded with a holdout whose window has closed yet"
        if not self.held.members:
            return "No held-out members yet: set a holdout on the audience's syncs, or wait for entries"
        if not self.sent.members:
            return "No sent members yet"
        if not self.approximation_holds:
            return (
                f"Too few members to judge yet: each group needs at least {MIN_OUTCOMES} who converted and "
                f"{MIN_OUTCOMES} who did not (held out: {self.held.converted:,} of {self.held.members:,} converted)"
            )
        interval = self.interval
        if interval.excludes_zero:
            word = "more" if interval.low > 0 else "fewer"
            return f"Sent members converted {word} than held-out ones: the interval excludes zero"
        more = self.more_members_needed
        if more is None:
            return "No difference between sent and held-out members so far"
        return f"Not conclusive yet: about {more:,} more members would settle it at these rates"


# --- the selector ---------------------------------------------------------------------------


def period(
    *, now: datetime | None, window_days: int, period_days: int = PERIOD_DAYS, sync: Sync | None = None
) -> tuple[datetime, datetime]:
    """Entries from `since` to `until`: the last `period_days` whose window closed by `now`, and
    never further back than retention keeps what the lift reads (syncs.retention): the events of
    the window (an entry whose purchase was pruned would count as a member who never bought),
    and for a sync its entry rows, which go after RETENTION_DELIVERY_DAYS."""
    from .retention import event_horizon

    now = now or timezone.now()
    until = now - timedelta(days=window_days)
    oldest = now - timedelta(days=event_horizon().days)
    if sync is not None:
        oldest = max(oldest, now - timedelta(days=settings.RETENTION_DELIVERY_DAYS))
    return min(until, max(until - timedelta(days=period_days), oldest)), until


def _first_entries(audience_ids, sync: Sync | None, since, until, window):
    """Each person's first recorded entry of the period (test accounts aside), with its arm and
    its window's end, read off the covering partial index in (audience or sync, person, time)
    order: the entries come out person by person, and so do the conversion look-ups that
    follow, which then walk the event index in order. PostgreSQL keeps the first of each
    person with DISTINCT ON (a pass over the index); SQLite, which has no DISTINCT ON, with
    ROW_NUMBER()."""
    if sync:
        rows, at, scope = (
            Delivery.objects.filter(
                sync=sync,
                action=Delivery.ENTER,
                initial=False,
                held_out__isnull=False,
                changed_at__gte=since,
                changed_at__lt=until,
            ).annotate(grp=Value(sync.audience_id)),
            "changed_at",
            "sync_id",
        )
    else:
        rows, at, scope = (
            Membership.objects.filter(
                audience_id__in=audience_ids,
                held_out__isnull=False,
                entered_at__gte=since,
                entered_at__lt=until,
            ).annotate(grp=F("audience_id")),
            "entered_at",
            "audience_id",
        )
    rows = (
        rows.filter(person__isnull=False)
        .exclude(person_id__in=Person.objects.filter(is_test=True).values("pk"))
        .annotate(
            arm=F("held_out"),
            unit_person=F("person_id"),
            unit_at=F(at),
            window_end=ExpressionWrapper(F(at) + window, output_field=DateTimeField()),
        )
    )
    columns = ("grp", "arm", "unit_person", "unit_at", "window_end")
    if connection.vendor == "postgresql":
        return rows.order_by(scope, "person_id", at).distinct(scope, "person_id").values(*columns), ""
    ranked = rows.annotate(rank=Window(RowNumber(), partition_by=[F(scope), F("person_id")], order_by=F(at).asc()))
    return ranked.values(*columns, "rank"), "WHERE u.rank = 1"


def lift_figures(
    audiences,
    *,
    sync: Sync | None = None,
    event: str = DEFAULT_EVENT,
    window_days: int = DEFAULT_WINDOW_DAYS,
    now: datetime | None = None,
    period_days: int = PERIOD_DAYS,
) -> dict[int, Lift]:
    """Lift per audience id (of `audiences`, or of `sync`'s audience for that sync): one
    statement for the arms of every audience asked about, one for their spend."""
    audience_ids = [sync.audience_id] if sync else [a.pk for a in audiences]
    since, until = period(now=now, window_days=window_days, period_days=period_days, sync=sync)
    figures = {
        audience_id: Lift(
            audience_id=audience_id,
            sync_id=sync.pk if sync else None,
            event=event,
            window_days=window_days,
            since=since,
            until=until,
        )
        for audience_id in audience_ids
    }
    firsts, keep = _first_entries(audience_ids, sync, since, until, timedelta(days=window_days))
    sql, params = firsts.query.sql_with_params()
    event_table = connection.ops.quote_name(Event._meta.db_table)
    # the first entry of each person, with the revenue of their conversions in its window (NULL:
    # none); materialised, so each look-up runs once however often the sums below read it
    statement = (
        f"WITH firsts AS MATERIALIZED (SELECT u.grp, u.arm, (SELECT SUM({revenue_sql('e.properties')}) "
        f"FROM {event_table} e WHERE e.person_id = u.unit_person AND e.name = %s AND e.occurred_at > u.unit_at "
        f"AND e.occurred_at <= u.window_end) AS revenue FROM ({sql}) u {keep}) "
        "SELECT grp, arm, COUNT(*), COUNT(revenue), COALESCE(SUM(revenue), 0), COALESCE(SUM(revenue * revenue), 0) "
        "FROM firsts GROUP BY grp, arm"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # the look-ups make the estimated cost large, and compiling the plan (JIT) cost more
            # than running it: seconds on a busy machine
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(statement, [event, *params])
        for audience_id, held_out, members, converted, revenue, revenue_sq in cursor.fetchall():
            arm = Arm(members, converted, float(revenue), float(revenue_sq))
            if held_out:
                figures[audience_id].held = arm
            else:
                figures[audience_id].sent = arm
    for row in (
        Outcome.objects.filter(audience_id__in=audience_ids, date__gte=since.date(), date__lt=until.date())
        .values("audience_id")
        .annotate(spend=Sum("spend"))
    ):
        figures[row["audience_id"]].spend = Decimal(row["spend"]).quantize(Decimal("0.01"))
    return figures


def lift_for(audience, *, sync: Sync | None = None, **options) -> Lift:
    return lift_figures([audience], sync=sync, **options)[audience.pk]


# --- what the audience and sync pages show ----------------------------------------------------


@dataclass
class SyncHoldout:
    """A sync's holdout as its pages show it: what is in force now, what was recorded, its lift."""

    sync: Sync
    in_force: list  # syncs.holdouts.Holdout
    held_entries: int  # entries held out since holdouts were recorded
    recorded_entries: int  # entries with a holdout decision
    lift: Lift | None  # None while nothing was recorded

    @property
    def share_now(self) -> float:
        """The share held out of this sync now: its own and the global one choose independently."""
        sent = 1.0
        for holdout in self.in_force:
            sent *= 1 - holdout.share
        return 1 - sent

    @property
    def ignored_share(self) -> bool:
        """A share stored on a sync of what is now a suppression audience: never applied."""
        return self.sync.is_suppression and self.sync.holdout_share > 0


def sync_holdout(sync: Sync, *, now: datetime | None = None) -> SyncHoldout:
    counts = Delivery.objects.filter(sync=sync, action=Delivery.ENTER, initial=False, held_out__isnull=False).aggregate(
        recorded=Count("pk"), held=Count("pk", filter=Q(held_out=True))
    )
    return SyncHoldout(
        sync=sync,
        in_force=holdouts.holdouts_of(sync, holdouts.paid_holdout_for([sync])),
        held_entries=counts["held"],
        recorded_entries=counts["recorded"],
        lift=lift_for(sync.audience, sync=sync, now=now) if counts["recorded"] else None,
    )


@dataclass
class LiftPanel:
    audience: Lift
    syncs: list[SyncHoldout]

    @property
    def any_holdout(self) -> bool:
        return any(s.in_force or s.recorded_entries for s in self.syncs)


def lift_panel(audience, *, now: datetime | None = None) -> LiftPanel:
    """The audience's lift (sent anywhere against sent nowhere) and each sync's."""
    syncs = audience.syncs.select_related("audience", "destination").order_by("key")
    return LiftPanel(audience=lift_for(audience, now=now), syncs=[sync_holdout(s, now=now) for s in syncs])


def window_problem(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW_DAYS:
        return f"the window must be a whole number of days from 1 to {MAX_WINDOW_DAYS}"
    return None


def event_problem(value) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        return "the conversion event must be an event name of 1 to 255 characters, such as Order Completed"
    return None


# --- as text (the command, the weekly review's mail) ------------------------------------------


def summary_line(lift: Lift) -> str:
    """One line: the lift with its interval and the verdict."""
    if not lift.measurable:
        return lift.verdict
    interval = lift.interval
    line = f"lift {_points(lift.difference)} points (95 % {_points(interval.low)} to {_points(interval.high)})"
    if lift.cost_per_incremental is not None:
        line += f", cost per incremental conversion {lift.cost_per_incremental:,}"
    return f"{line}; {lift.verdict[0].lower()}{lift.verdict[1:]}"


def report_lines(lift: Lift, *, label: str) -> list[str]:
    lines = [
        f"Lift of {label}: {lift.event} within {lift.window_days} days of entry",
        f"entries from {lift.since:%Y-%m-%d} to {lift.until:%Y-%m-%d} (their window has closed); "
        "each person once, from their first entry; test accounts left out",
        "",
        f"{'':<10}{'members':>9}  {'converted':>9}  {'rate':>8}  {'revenue / member':>16}",
    ]
    for name, arm in (("sent", lift.sent), ("held out", lift.held)):
        per_member = "—" if arm.revenue_per_member is None else f"{arm.revenue_per_member:,.2f}"
        lines.append(f"{name:<10}{arm.members:>9,}  {arm.converted:>9,}  {_share(arm.rate):>8}  {per_member:>16}")
    lines.append("")
    if lift.measurable:
        interval = lift.interval
        lines.append(
            f"conversion lift {_points(lift.difference)} points, 95 % {_points(interval.low)} to {_points(interval.high)}"
        )
        if lift.relative is not None:
            relative = lift.relative_interval
            lines.append(
                f"relative lift {_signed_share(lift.relative)}, 95 % {_signed_share(relative.low)} to "
                f"{_signed_share(relative.high)}"
            )
        if lift.revenue_difference is not None:
            revenue = lift.revenue_interval
            lines.append(
                f"revenue per member {lift.revenue_difference:+,.2f}, 95 % {revenue.low:+,.2f} to {revenue.high:+,.2f} (Welch)"
            )
        if lift.spend is not None:
            cost = lift.cost_per_incremental
            bounds = lift.cost_per_incremental_interval
            if cost is None:
                lines.append(f"spend {lift.spend:,} on those days; no incremental conversion to divide it by")
            else:
                high = f"{bounds[1]:,}" if bounds and bounds[1] is not None else "no bound yet"
                lines.append(
                    f"spend {lift.spend:,} on those days: cost per incremental conversion {cost:,} (95 % {bounds[0]:,} to {high})"
                )
    lines.append(lift.verdict)
    return lines
