"""The periodic check: open and resolve alerts, then notify (email and a Slack-compatible chat
webhook) once when an alert opens and once when it resolves."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Max
from django.urls import reverse
from django.utils import timezone

from audiences.evaluation import interval_of
from audiences.models import Audience, SizeSample

from .alerts import alert_open, alert_resolution, alert_resolve
from .http import TransportError, refused, request
from .models import Alert, Delivery, Sync, SyncRun
from .selectors import oldest_open_delivery, suppression_lag, trailing_mean

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    drop_share: float = 0.5  # below half its trailing 7-day mean
    drop_min_mean: float = 20  # too small to call a drop below this
    failed_runs: int = 3
    lag_target_s: float = 60.0
    min_coverage: float = 0.8
    stale_factor: float = 3.0

    @classmethod
    def from_settings(cls):
        return cls(**getattr(settings, "ALERT_THRESHOLDS", {}))


def check_alerts(*, now: datetime | None = None, thresholds: Thresholds | None = None) -> dict[str, int]:
    now = now or timezone.now()
    limits = thresholds or Thresholds.from_settings()
    opened_before = set(Alert.objects.open().values_list("key", flat=True))
    wanted: dict[str, dict] = {}
    audiences = list(Audience.objects.filter(enabled=True))
    _audience_alerts(audiences, now, limits, wanted)
    syncs = list(Sync.objects.filter(enabled=True).select_related("audience", "destination"))
    _sync_alerts(syncs, now, limits, wanted)
    for key, spec in wanted.items():
        alert_open(key=key, **spec)
    checked_kinds = {
        Alert.ZERO_COUNT,
        Alert.SUDDEN_DROP,
        Alert.FAILING_SYNC,
        Alert.LAG_OVER_TARGET,
        Alert.LOW_COVERAGE,
        Alert.STALE_SYNC,
        Alert.FAILING_EVALUATION,
    }
    resolved = 0
    # the read-back (syncs/readback.py) opens and resolves its own, keyed readback:...
    for alert in (
        Alert.objects.open()
        .filter(kind__in=checked_kinds)
        .exclude(key__startswith="readback:")
        .select_related("audience", "sync")
    ):
        if alert.key not in wanted:
            alert_resolve(key=alert.key, resolution=_resolution(alert, now, limits))
            resolved += 1
    return {"open": len(wanted), "opened": len(set(wanted) - opened_before), "resolved": resolved}


def _members(count: int) -> str:
    return f"{count:,} member{'' if count == 1 else 's'}"


def _resolution(alert: Alert, now: datetime, limits: Thresholds) -> str:
    """What is true now that the alert's condition is gone, so that "Resolved" never repeats the
    opening message ("X is at 0 members" when X is back at 5)."""
    audience, sync = alert.audience, alert.sync
    if sync is not None:
        if not sync.enabled:
            return f"{sync.key} was disabled, so it is no longer checked."
        if alert.kind == Alert.FAILING_SYNC:
            return f"{sync.key} is sending again: its last runs succeeded and no row went to dead letters in the last 24 hours."
        if sync.paused:
            return f"{sync.key} is paused, so its lag and queue are not checked until it resumes."
        if alert.kind == Alert.LAG_OVER_TARGET:
            lag = suppression_lag(sync, since=now - timedelta(hours=1))
            if lag.p95 is None:
                return f"{sync.key}: no suppression was acknowledged in the last hour, so its lag is no longer over target."
            return (
                f"{sync.key}: suppression lag p95 is back at {lag.p95:,.1f} s over the last hour "
                f"(target {limits.lag_target_s:g} s)."
            )
        if alert.kind == Alert.STALE_SYNC:
            return f"{sync.key} is moving again: no change has waited over {limits.stale_factor:g}× its cadence."
    if audience is not None:
        if not audience.enabled:
            return f"{audience.name} was disabled, so it is no longer checked."
        if alert.kind == Alert.FAILING_EVALUATION and alert.key.startswith("failing_evaluation:consistency:"):
            return f"{audience.name}: its last consistency check had nothing to correct."
        if alert.kind == Alert.FAILING_EVALUATION:
            return f"{audience.name} evaluates again: it is at {_members(audience.current_size)}."
        if alert.kind in (Alert.ZERO_COUNT, Alert.SUDDEN_DROP):
            return f"{audience.name} is back at {_members(audience.current_size)}."
        if alert.kind == Alert.LOW_COVERAGE:
            if audience.identifier_coverage is None or not audience.current_size:
                return f"{audience.name} has no members to match downstream, so its coverage is not checked."
            return (
                f"{audience.identifier_coverage:.0%} of {audience.name} now have a valid identifier "
                f"(target {limits.min_coverage:.0%})."
            )
    return "The condition has cleared."


def _audience_alerts(audiences, now, limits, wanted):
    ids = [a.pk for a in audiences]
    had_members = dict(
        SizeSample.objects.filter(audience_id__in=ids, at__gte=now - timedelta(days=30))
        .values("audience_id")
        .annotate(m=Max("size"))
        .values_list("audience_id", "m")
    )
    means = trailing_mean(ids, until=now - timedelta(hours=1))
    synced = set(Sync.objects.filter(enabled=True).values_list("audience_id", flat=True))
    for audience in audiences:
        if count := audience.consistency_differences:
            # people window expiry had missed, corrected by the hourly full evaluation: a bug in
            # the evaluation engine, not in the rule
            wanted[f"failing_evaluation:consistency:audience:{audience.pk}"] = dict(
                kind=Alert.FAILING_EVALUATION,
                audience=audience,
                message=f"{audience.name}: the consistency check at {audience.consistency_checked_at:%Y-%m-%d %H:%M} UTC "
                f"corrected {count:,} {'person' if count == 1 else 'people'} whose membership window expiry had "
                "missed. This is a bug in Downstream's evaluation, not in the rule: report it with the worker "
                "log's consistency check line.",
                details={"checked_at": audience.consistency_checked_at.isoformat(), "differences": count},
            )
        if audience.is_failing:
            # evaluation records the failure on the audience (it knows nothing of alerts); its
            # figures are stale while it fails, so the other audience alerts wait
            wanted[f"failing_evaluation:audience:{audience.pk}"] = dict(
                kind=Alert.FAILING_EVALUATION,
                audience=audience,
                message=f"{audience.name} is failing to evaluate and is skipped until it evaluates again: "
                f"{audience.evaluation_error.rstrip('.')}. Audiences that read it keep its last good members; "
                "open the editor to fix its rule.",
                details={"since": audience.evaluation_failed_at.isoformat()},
            )
            continue
        if audience.last_evaluated_at is None:
            continue
        if audience.current_size == 0 and had_members.get(audience.pk):
            wanted[f"zero_count:audience:{audience.pk}"] = dict(
                kind=Alert.ZERO_COUNT,
                audience=audience,
                message=f"{audience.name} is at 0 members (it had up to {had_members[audience.pk]:,} in the last 30 days). "
                "Check the tracking of its events and its rule.",
            )
            continue
        mean = means.get(audience.pk)
        if mean and mean >= limits.drop_min_mean and audience.current_size < limits.drop_share * mean:
            wanted[f"sudden_drop:audience:{audience.pk}"] = dict(
                kind=Alert.SUDDEN_DROP,
                audience=audience,
                message=f"{audience.name} fell to {audience.current_size:,}, under {limits.drop_share:.0%} of its "
                f"7-day mean ({mean:,.0f}).",
                details={"size": audience.current_size, "mean": round(mean, 1)},
            )
        if audience.pk in synced and audience.identifier_coverage is not None and audience.current_size:
            if audience.identifier_coverage < limits.min_coverage:
                wanted[f"low_coverage:audience:{audience.pk}"] = dict(
                    kind=Alert.LOW_COVERAGE,
                    audience=audience,
                    message=f"Only {audience.identifier_coverage:.0%} of {audience.name} have a valid identifier under "
                    f"its policy (target {limits.min_coverage:.0%}): the rest never match downstream.",
                )


def _sync_alerts(syncs, now, limits, wanted):
    ids = [s.pk for s in syncs]
    oldest = oldest_open_delivery(ids)
    recent_runs: dict[int, list[str]] = {}
    for sync_id, status in (
        SyncRun.objects.filter(sync_id__in=ids)
        .exclude(status=SyncRun.RUNNING)
        .order_by("sync_id", "-started_at")
        .values_list("sync_id", "status")
    ):
        runs = recent_runs.setdefault(sync_id, [])
        if len(runs) < limits.failed_runs:
            runs.append(status)
    dead = set(
        Delivery.objects.filter(sync_id__in=ids, state=Delivery.DEAD, created_at__gte=now - timedelta(days=1))
        .values_list("sync_id", flat=True)
        .distinct()
    )
    for sync in syncs:
        runs = recent_runs.get(sync.pk, [])
        if (len(runs) == limits.failed_runs and all(s == SyncRun.FAILED for s in runs)) or sync.pk in dead:
            why = f"{limits.failed_runs} failed runs in a row" if sync.pk not in dead else "dead letters in the last 24 hours"
            wanted[f"failing_sync:sync:{sync.pk}"] = dict(
                kind=Alert.FAILING_SYNC,
                sync=sync,
                audience=sync.audience,
                message=f"{sync.key} is failing: {why}. Open the sync page for the errors.",
            )
        if sync.paused:
            continue
        if sync.audience.purpose == Audience.SUPPRESSION:
            lag = suppression_lag(sync, since=now - timedelta(hours=1))
            if lag.p95 is not None and lag.p95 > limits.lag_target_s:
                wanted[f"lag_over_target:sync:{sync.pk}"] = dict(
                    kind=Alert.LAG_OVER_TARGET,
                    sync=sync,
                    audience=sync.audience,
                    message=f"{sync.key}: suppression lag p95 {lag.p95:,.1f} s over the last hour "
                    f"(target {limits.lag_target_s:g} s); people who bought still see ads.",
                    details={"p95": lag.p95, "count": lag.count},
                )
        cadence = interval_of(sync.audience.cadence) or timedelta(minutes=1)
        waiting_since = oldest.get(sync.pk)
        if waiting_since and now - waiting_since > limits.stale_factor * cadence:
            wanted[f"stale_sync:sync:{sync.pk}"] = dict(
                kind=Alert.STALE_SYNC,
                sync=sync,
                audience=sync.audience,
                message=f"{sync.key} is stale: changes have waited since {waiting_since:%Y-%m-%d %H:%M} UTC "
                f"(over {limits.stale_factor:g}× its cadence) without going out. Is the worker running?",
            )


# --- notifications --------------------------------------------------------------------------


def alert_link(alert: Alert) -> str:
    base = settings.BASE_URL.rstrip("/")
    if alert.sync_id:
        return base + reverse("dashboard:sync", args=[alert.sync.key])
    if alert.audience_id:
        return base + reverse("dashboard:audience", args=[alert.audience.key])
    return base + reverse("dashboard:alerts")


def _channels(alert: Alert, *, resolved: bool) -> dict:
    """The configured channels, each a function that sends this notification or raises."""
    if resolved:
        said = f"{alert_resolution(alert)} It was: {alert.message}"
        text = f"[Downstream] Resolved: {said}"
    else:
        said = alert.message
        text = f"[Downstream] Alert: {said}"
    link = alert_link(alert)
    channels = {}
    if settings.ALERT_EMAILS:
        channels["email"] = lambda: send_mail(
            subject=text[:150],
            message=f"{said}\n\n{link}\n",
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=settings.ALERT_EMAILS,
        )
    if settings.ALERT_WEBHOOK_URL:

        def post():
            response = request(
                "POST",
                settings.ALERT_WEBHOOK_URL,
                json={"text": f"{text} <{link}|Open in Downstream>"},
                timeout=10,
                who="the alert webhook",
            )
            if response.status_code >= 300:
                raise refused(response)

        channels["webhook"] = post
    return channels


def notify_alerts() -> int:
    """Open notifications first, then resolutions; each claimed by a conditional UPDATE so two
    workers never notify twice, and given back when a channel fails, so none is lost. The
    channels it already went out on are recorded and not sent again on the retry."""
    sent = 0
    for field, resolved in (("notified_open_at", False), ("notified_resolved_at", True)):
        phase = "resolved" if resolved else "open"
        pending = Alert.objects.filter(**{f"{field}__isnull": True})
        if resolved:
            pending = pending.filter(resolved_at__isnull=False, notified_open_at__isnull=False)
        for alert in pending.select_related("sync", "audience"):
            if not Alert.objects.filter(pk=alert.pk, **{f"{field}__isnull": True}).update(**{field: timezone.now()}):
                continue
            # read after the claim: a pass that failed a moment ago may have recorded a channel
            done_by_phase = Alert.objects.values_list("notified_channels", flat=True).get(pk=alert.pk) or {}
            done = list(done_by_phase.get(phase, []))
            failed = False
            for channel, send in _channels(alert, resolved=resolved).items():
                if channel in done:
                    continue
                try:
                    send()
                except (TransportError, OSError) as exc:
                    log.warning("alert %s: %s notification failed, will retry: %s", alert.pk, channel, exc)
                    failed = True
                    continue
                done.append(channel)
                done_by_phase = {**done_by_phase, phase: done}
                Alert.objects.filter(pk=alert.pk).update(notified_channels=done_by_phase)
            if failed:
                Alert.objects.filter(pk=alert.pk).update(**{field: None})
            else:
                sent += 1
    return sent
