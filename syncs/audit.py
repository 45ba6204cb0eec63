"""The audit trail: one person's timeline, and who changed which setting when."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from audiences.models import Audience, Event, IdentifierPolicy, Membership, NamingConvention, PriorityGroup

from .models import CustomerIoWorkspace, Delivery, DeliveryBatch, Destination, GlobalHoldout, Sync

TIMELINE_LIMIT = 300
HIDDEN_FIELDS = {"credentials_encrypted", "credential_refs", "history_change_reason"}


@dataclass
class Moment:
    at: datetime
    kind: str  # event, entered, exited, delivery
    title: str
    detail: str = ""
    status: str = ""
    data: dict = field(default_factory=dict)


def person_timeline(person, *, limit: int = TIMELINE_LIMIT) -> list[Moment]:
    """Events, audience entries and exits, and deliveries (what was sent where, and what the
    destination answered), newest first."""
    moments = []
    for event in Event.objects.filter(person=person).order_by("-occurred_at")[:limit]:
        moments.append(Moment(event.occurred_at, "event", event.name, data=event.properties or {}))
    for m in Membership.objects.filter(person=person).select_related("audience").order_by("-entered_at")[:limit]:
        held = " (held out of every sync: sent nowhere, a control for the lift)" if m.held_out else ""
        moments.append(Moment(m.entered_at, "entered", f"entered {m.audience.name}{held}"))
        if m.exited_at:
            moments.append(Moment(m.exited_at, "exited", f"left {m.audience.name}"))
    deliveries = list(
        Delivery.objects.filter(person=person).select_related("sync__destination", "sync__audience").order_by("-id")[:limit]
    )
    batch_ids = {d.batch_id for d in deliveries if d.batch_id}
    sent_rows = {}
    for batch in DeliveryBatch.objects.filter(batch_id__in=batch_ids).order_by("attempt"):
        for row in batch.rows:
            sent_rows[row.get("delivery")] = row
    for d in deliveries:
        verb = "add to" if d.action == Delivery.ENTER else "remove from"
        answer = d.get_state_display()
        if d.response_status:
            answer += f" (HTTP {d.response_status})"
        if d.last_error:
            answer += f": {d.last_error}"
        sent = d.payload or sent_rows.get(d.pk) or {}
        moments.append(
            Moment(
                d.acknowledged_at or d.created_at,
                "delivery",
                f"{verb} {d.sync.audience.name} at {d.sync.destination.name}",
                detail=f"identifier {sent.get('identifier', '—')}"
                + (f", fields {_as_pairs(sent['fields'])}" if sent.get("fields") else ""),
                status=d.state,
                data={"answer": answer, "attempts": d.attempts, "batch": str(d.batch_id or ""), "held_out": d.held_out},
            )
        )
    moments.sort(key=lambda m: m.at, reverse=True)
    return moments[:limit]


def _as_pairs(fields) -> str:
    """Sent fields as the timeline shows event properties (email=ann@example.com), not a dict."""
    if not isinstance(fields, dict):
        return str(fields)
    return ", ".join(f"{name}={value}" for name, value in fields.items())


def _shown(model, name: str, value):
    """A changed value as a person reads it: a related row by its name, not its id."""
    field = model._meta.get_field(name)
    if not field.is_relation or value in (None, "", []):
        return value
    if field.many_to_many:
        target = field.m2m_reverse_field_name()
        ids = [row.get(target) for row in value if isinstance(row, dict)]
    else:
        ids = [value]
    names = {obj.pk: str(obj) for obj in field.related_model._default_manager.filter(pk__in=ids)}
    return ", ".join(names.get(pk, f"#{pk} (deleted)") for pk in ids)


TRACKED = {
    "audience": Audience,
    "naming convention": NamingConvention,
    "identifier policy": IdentifierPolicy,
    "priority group": PriorityGroup,
    "destination": Destination,
    "sync": Sync,
    "Customer.io workspace": CustomerIoWorkspace,
    "global holdout": GlobalHoldout,
}


@dataclass
class SettingChange:
    at: datetime
    who: str
    what: str  # kind
    key: str
    action: str  # created, changed, deleted
    changes: list = field(default_factory=list)  # (field, old, new)
    reason: str = ""


def setting_changes(*, kind: str = "", key: str = "", limit: int = 100) -> list[SettingChange]:
    found = []
    for label, model in TRACKED.items():
        if kind and kind != label:
            continue
        records = model.history.select_related("history_user").order_by("-history_date")
        if key:
            records = records.filter(key=key)
        for record in records[:limit]:
            action = {"+": "created", "~": "changed", "-": "deleted"}[record.history_type]
            changes = []
            if record.history_type == "~":
                previous = record.prev_record
                if previous is not None:
                    delta = record.diff_against(previous)
                    changes = [
                        (c.field, _shown(model, c.field, c.old), _shown(model, c.field, c.new))
                        for c in delta.changes
                        if c.field not in HIDDEN_FIELDS
                    ]
                    if (
                        model in (Destination, CustomerIoWorkspace)
                        and record.credentials_changed_at != previous.credentials_changed_at
                    ):
                        changes.append(("credentials", "…", "replaced (not shown)"))
                if not changes:
                    continue
            found.append(
                SettingChange(
                    at=record.history_date,
                    who=record.history_user.username if record.history_user else "system / config file",
                    what=label,
                    key=record.key,
                    action=action,
                    changes=changes,
                    reason=record.history_change_reason or "",
                )
            )
    found.sort(key=lambda c: c.at, reverse=True)
    return found[:limit]
