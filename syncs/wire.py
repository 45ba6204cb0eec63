"""What a destination will receive, before it does: the first batch of a sync exactly as its
transport would put it on the wire (secrets masked), and a destination's connection test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.utils import timezone

from .destinations.base import OutRow
from .destinations.registry import transport_for
from .http import Captured, TransportError, capturing
from .models import Destination, Sync
from .payload import no_identifier_reason, payload_for

PREVIEW_ROWS = 20
MASK = "•••• (stored credential)"


@dataclass
class WirePreview:
    method: str = ""
    url: str = ""
    headers: dict = field(default_factory=dict)
    body: str = ""
    rows: int = 0  # how many rows the previewed request carries
    members: int = 0  # the audience's current members (the whole first sync)
    without_identifier: int = 0  # of the sampled members, how many have no identifier the sync can send
    reason: str = ""
    problem: str = ""  # why there is nothing to show


def _secrets(destination: Destination) -> list[str]:
    found = []
    for value in destination.credentials.values():
        found += [v for v in (value.values() if isinstance(value, dict) else [value]) if isinstance(v, str) and len(v) >= 4]
    return sorted(found, key=len, reverse=True)


def _masked(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _body_text(body) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def first_batch(sync: Sync, *, limit: int = PREVIEW_ROWS) -> WirePreview:
    """The first request the sync's first run would send: entries for its audience's current
    members in person order (as the outbox queues them), at most `limit` rows of it."""
    preview = WirePreview()
    current = sync.audience.memberships.current()
    preview.members = current.count()
    size = min(limit, sync.destination.batch_size)
    now = timezone.now()
    rows = []
    for membership in current.select_related("person").order_by("person_id")[: size * 3]:
        payload = payload_for(sync, membership.person)
        if payload is None:
            preview.without_identifier += 1
            continue
        rows.append(
            OutRow(
                membership.pk,
                "enter",
                payload["identifier"],
                membership.entered_at or now,
                payload["fields"],
                sync,
                payload.get("identifiers") or {},
            )
        )
        if len(rows) == size:
            break
    if preview.without_identifier:
        preview.reason = no_identifier_reason(sync)
    if not rows:
        preview.problem = "The audience has nobody the sync could send yet." if not preview.members else preview.reason
        return preview
    preview.rows = len(rows)
    try:
        transport = transport_for(sync.destination)
        if hasattr(transport, "render"):
            shown = transport.render(rows, sync=sync)
        else:
            with capturing():
                transport.send(rows, batch_id="00000000-0000-0000-0000-000000000000", sync=sync)
            preview.problem = "The transport sent nothing for these rows."
            return preview
    except Captured as captured:
        request = captured.prepared
        shown = {"method": request.method, "url": request.url, "headers": dict(request.headers), "body": request.body}
    except TransportError as exc:
        preview.problem = f"The destination's settings do not make a request yet: {exc}"
        return preview
    secrets = _secrets(sync.destination)
    preview.method = shown["method"]
    preview.url = _masked(shown["url"], secrets)
    preview.headers = {name: _masked(str(value), secrets) for name, value in shown["headers"].items()}
    preview.body = _masked(_body_text(shown["body"]), secrets)
    return preview


def check_connection(destination: Destination) -> tuple[bool, str]:
    """(reached, what happened): the kind's own check (LiveLike's validate-app, a signed ping,
    a file written in the export folder), in words an engineer can act on."""
    try:
        transport = transport_for(destination)
        check = getattr(transport, "check", None)
        if check is None:
            return False, f"{destination.get_kind_display()} has no connection test; run a sync in dry run instead."
        return True, check()
    except TransportError as exc:
        return False, str(exc)
