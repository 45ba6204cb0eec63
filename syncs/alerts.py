"""Opening, resolving and acknowledging alerts. One open alert per key; opening an alert that
is already open updates its message instead of opening a second one."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Alert


def alert_open(*, key: str, kind: str, message: str, audience=None, sync=None, details: dict | None = None) -> Alert:
    existing = Alert.objects.open().filter(key=key).first()
    if existing:
        if existing.message != message or (details is not None and existing.details != details):
            existing.message = message
            existing.details = details if details is not None else existing.details
            existing.save(update_fields=["message", "details"])
        return existing
    try:
        with transaction.atomic():
            return Alert.objects.create(key=key, kind=kind, message=message, audience=audience, sync=sync, details=details or {})
    except IntegrityError:  # opened by a concurrent check a moment ago
        return Alert.objects.open().get(key=key)


def alert_resolve(*, key: str, resolution: str = "") -> Alert | None:
    """Resolve the open alert with this key; `resolution` says how it resolved ("Carts is back at
    5 members"), kept in its details for the notification and the alerts page."""
    alert = Alert.objects.open().filter(key=key).first()
    if alert:
        alert.resolved_at = timezone.now()
        fields = ["resolved_at"]
        if resolution:
            alert.details = {**(alert.details or {}), "resolution": resolution}
            fields.append("details")
        alert.save(update_fields=fields)
    return alert


def alert_resolution(alert: Alert) -> str:
    """How a resolved alert resolved, as a sentence; what it was about stays in `message`."""
    resolution = (alert.details or {}).get("resolution")
    if resolution:
        return resolution
    if alert.kind == Alert.MASS_REMOVAL:  # resolved by the hold's decision, which the sync page records
        return "The held removals were approved or discarded on the sync page."
    return "The condition has cleared."


def alert_acknowledge(*, alert: Alert, actor) -> Alert:
    if alert.acknowledged_at is None:
        alert.acknowledged_at = timezone.now()
        alert.acknowledged_by = actor
        alert.save(update_fields=["acknowledged_at", "acknowledged_by"])
    return alert
