"""The read-back: what each ad platform itself says of the audiences Downstream keeps there.

Every `READBACK_EVERY_MINUTES` (15), each enabled sync that is not paused, and whose
destination kind's transport has `read_back(sync) -> ReadBack`, is asked for its size and match
rate. Both are stored on the sync (`downstream_size`, `downstream_match_rate`,
`downstream_read_at`: excluded from the setting history) and judged against what Downstream
has sent, `downstream_count(sync)`:

- **Low match rate** when the platform matches under `READBACK_MIN_MATCH_RATE` (0.3) of them.
  A platform that reports no match rate of its own but counts the people it matched (Meta's
  approximate count) gets size / members, at most 1.
- **Drift** when the size is more than `READBACK_DRIFT_SHARE` (0.2) away from what is expected:
  members × the platform's match rate where it reports one; where the rate is derived from the
  size itself, only a count above the members (+ the share) can be told apart from matching,
  and that is drift: removals that were lost, or another tool uploading to the same audience.
  The share is wide on purpose: platforms count approximately (Meta gives a range, ±5 % or so).
- **Failing sync** when the read is refused for good (a token that stopped working), in the
  platform's own words; a read that fails for now (throttled, a 5xx) changes nothing.

Nothing is judged until the sync is `READBACK_SETTLE_HOURS` (24) old (platforms take hours to
match a new upload), nor on fewer people than the kind's `min_audience_size` (platforms hide
counts that small). One sync's failure never stops the others; each alert key starts with
`readback:`, so the minute check (syncs.monitoring) leaves them to this pass.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from audiences.models import Membership

from .alerts import alert_open, alert_resolve
from .destinations.registry import spec_for, transport_for
from .http import TransportError
from .models import Alert, Delivery, Sync

log = logging.getLogger(__name__)

PREFIX = "readback:"
# a member whose latest change in the sync ended in one of these is not downstream (a cancelled
# one is: someone who came back while their removal was held, whom the platform still has)
NOT_SENT = (Delivery.SKIPPED, Delivery.REJECTED, Delivery.DRY_RUN, Delivery.DEAD)


def alert_key(kind: str, sync: Sync) -> str:
    return f"{PREFIX}{kind}:sync:{sync.pk}"


def downstream_members(sync: Sync):
    """The audience's current members Downstream has on the platform (or on their way there):
    not those whose latest change in this sync was skipped (held out, no identifier), refused,
    a dry run, a dead letter or cancelled; only test accounts for a test-cohort sync. Members
    whose deliveries are long gone (retention) count as sent."""
    members = Membership.objects.current().filter(audience_id=sync.audience_id)
    if sync.test_cohort_only:
        members = members.filter(person__is_test=True)
    latest = Delivery.objects.filter(sync=sync, person_id=OuterRef("person_id")).order_by("-id").values("state")[:1]
    return members.annotate(last_state=Subquery(latest)).filter(Q(last_state__isnull=True) | ~Q(last_state__in=NOT_SENT))


def downstream_count(sync: Sync) -> int:
    """How many people the platform should have: the members above and those who left but
    whose removal is held (a mass removal, the platform's minimum), whom it still has."""
    held = Delivery.objects.filter(sync=sync, action=Delivery.EXIT, state=Delivery.HELD).values("customer_id").distinct()
    return downstream_members(sync).count() + held.count()


def has_read_back(sync: Sync) -> bool:
    try:
        return callable(getattr(spec_for(sync.destination.kind).transport, "read_back", None))
    except LookupError:
        return False


def read_back_syncs(now: datetime | None = None) -> dict:
    """Read every eligible sync back, store what the platform said, open and resolve alerts."""
    now = now or timezone.now()
    summary = {"read": 0, "failed": 0, "unavailable": 0, "alerts": []}
    active = [
        s for s in Sync.objects.filter(enabled=True, paused=False).select_related("audience", "destination") if has_read_back(s)
    ]
    _resolve_unchecked({s.pk for s in active})
    for sync in active:
        try:
            outcome = read_back_one(sync, now=now)
        except Exception:  # one sync's failure (a bug, the database) never stops the others
            log.exception("read-back of sync %s failed", sync.key)
            summary["failed"] += 1
            continue
        summary[outcome["result"]] += 1
        summary["alerts"] += outcome["alerts"]
    return summary


def read_back_one(sync: Sync, *, now: datetime) -> dict:
    """One sync: ask, store, judge. Its result (read, failed, unavailable) and the alerts open."""
    spec = spec_for(sync.destination.kind)
    try:
        answer = transport_for(sync.destination).read_back(sync)
    except TransportError as exc:
        if not exc.permanent:
            log.info("read-back of sync %s: %s; next pass tries again", sync.key, exc)
            return {"result": "unavailable", "alerts": []}
        alert_open(
            key=alert_key("failing_sync", sync),
            kind=Alert.FAILING_SYNC,
            sync=sync,
            audience=sync.audience,
            message=f"{sync.key}: {spec.label} refused to tell the audience's size: {exc}",
            details={"read_back": True},
        )
        return {"result": "failed", "alerts": [alert_key("failing_sync", sync)]}
    alert_resolve(key=alert_key("failing_sync", sync), resolution=f"{spec.label} answers the read-back of {sync.key} again.")
    members = downstream_count(sync)
    size, rate = answer.size, answer.match_rate
    if rate is None and size is not None and members > 0:
        rate = min(1.0, size / members)
    Sync.objects.filter(pk=sync.pk).update(downstream_size=size, downstream_match_rate=rate, downstream_read_at=now)
    sync.downstream_size, sync.downstream_match_rate, sync.downstream_read_at = size, rate, now
    if sync.created_at > now - timedelta(hours=settings.READBACK_SETTLE_HOURS):
        young = (
            f"{sync.key} is under {settings.READBACK_SETTLE_HOURS:g} hours old: {spec.label} may still be matching "
            "its first upload, so nothing is judged yet."
        )
        for kind in ("low_match_rate", "downstream_drift"):
            alert_resolve(key=alert_key(kind, sync), resolution=young)
        return {"result": "read", "alerts": []}
    said = f" ({answer.detail})" if answer.detail else ""
    smallest = spec.min_audience_size or 1
    opened = []

    key, minimum = alert_key("low_match_rate", sync), settings.READBACK_MIN_MATCH_RATE
    if rate is not None and members >= smallest and rate < minimum:
        alert_open(
            key=key,
            kind=Alert.LOW_MATCH_RATE,
            sync=sync,
            audience=sync.audience,
            message=f"{sync.key}: {spec.label} matches only {rate:.0%} of the {members:,} people Downstream sent{said}; "
            f"the floor is {minimum:.0%}. Check which identifiers went out (the runs' rows_with_* counts) and "
            "whether the audience's people have emails or phones in the right form.",
            details={"match_rate": round(rate, 4), "members": members, "size": size},
        )
        opened.append(key)
    elif rate is None:
        alert_resolve(key=key, resolution=f"{spec.label} gives no count for {sync.key} now, so its match rate is not judged.")
    elif members < smallest:
        alert_resolve(key=key, resolution=f"{sync.key} has {members:,} people, under the {smallest:,} a match rate is judged on.")
    else:
        alert_resolve(
            key=key, resolution=f"{spec.label} matches {rate:.0%} of {sync.key}'s {members:,} people (floor {minimum:.0%})."
        )

    key, share = alert_key("downstream_drift", sync), settings.READBACK_DRIFT_SHARE
    expected = members * (answer.match_rate if answer.match_rate is not None else 1.0)
    if size is None:
        drifted = False
    elif answer.match_rate is None:
        drifted = size > members * (1 + share)  # a count of matched people exceeds what was sent only by drift
    else:
        drifted = abs(size - expected) > share * expected
    if drifted and max(size, members) >= smallest:
        repair = getattr(spec.transport, "repair", "")
        alert_open(
            key=key,
            kind=Alert.DOWNSTREAM_DRIFT,
            sync=sync,
            audience=sync.audience,
            message=f"{sync.key}: {spec.label} counts {size:,} people where Downstream expects {expected:,.0f}{said}, "
            f"more than {share:.0%} apart: removals may have been lost, or another tool writes to the same "
            "audience." + (f" Repair it with a full upload: {repair.format(key=sync.key)}." if repair else ""),
            details={"size": size, "expected": round(expected, 1), "members": members},
        )
        opened.append(key)
    elif size is None:
        alert_resolve(key=key, resolution=f"{spec.label} gives no count for {sync.key} now, so drift is not judged.")
    else:
        alert_resolve(
            key=key,
            resolution=f"{spec.label} counts {size:,} people in {sync.key}, within {share:.0%} of "
            f"the {expected:,.0f} Downstream expects.",
        )
    return {"result": "read", "alerts": opened}


def _resolve_unchecked(active_ids: set[int]) -> None:
    """A sync that is paused, disabled or gone is not read, so nothing it said stays open."""
    for alert in Alert.objects.open().filter(key__startswith=PREFIX).select_related("sync"):
        if alert.sync_id not in active_ids:
            why = "is paused" if alert.sync and alert.sync.paused else "is not enabled"
            alert_resolve(
                key=alert.key,
                resolution=f"{alert.sync.key if alert.sync else 'The sync'} {why}, so it is not read back until it runs again.",
            )


def read_back_summary(sync: Sync) -> dict | None:
    """What the sync page shows beside Downstream's own size; None for a kind without read-back."""
    if not has_read_back(sync):
        return None
    return {
        "platform": spec_for(sync.destination.kind).label,
        "members": downstream_count(sync),
        "size": sync.downstream_size,
        "match_rate": sync.downstream_match_rate,
        "read_at": sync.downstream_read_at,
    }
