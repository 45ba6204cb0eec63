"""LiveLike, through the Producer API its Segment integration uses.

Membership: POST {base}/applications/<client_id>/segment-audience-sync/ with a JSON array of
`{audience_id, audience_name, action, timestamp, user_id, email?, livelike_profile_id?}`.
Events: POST {base}/applications/<client_id>/segment-events/ with `{"events": [...]}`.
Errors follow Django REST framework: a 400 on a list is a list of per-row errors, and nothing
of that request was applied, so the rows without errors are sent again on their own.
"""

from __future__ import annotations

import json

from ...http import TransportError, refused, request
from ..base import OutRow, SendResult, iso

DEFAULT_BASE_URL = "https://cf-blast.livelikecdn.com/api/v1"
MAX_BATCH = 500


class Transport:
    max_batch = MAX_BATCH
    # membership adds and removes are idempotent at LiveLike: a slow one may be sent again
    # before it answers (events are reward actions and never are)
    hedge = True

    @staticmethod
    def mixes_syncs(sync) -> bool:
        """Every membership row names its audience, so one request may carry several syncs'."""
        return sync.mode != "events"

    def __init__(self, destination):
        settings = destination.settings or {}
        credentials = destination.credentials
        self.base_url = (settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.client_id = settings.get("client_id", "")
        self.token = credentials.get("producer_token", "")
        self.timeout = destination.timeout_s
        if not self.client_id or not self.token:
            raise TransportError("LiveLike needs a client id (settings) and a producer token (credentials)", permanent=True)

    def check(self) -> str:
        """The producer token opens this application: `GET /applications/<client_id>/validate-app/`."""
        request(
            "GET",
            self.url("validate-app"),
            timeout=self.timeout,
            who="LiveLike",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return f"LiveLike accepted the producer token for application {self.client_id}."

    def url(self, endpoint: str) -> str:
        return f"{self.base_url}/applications/{self.client_id}/{endpoint}/"

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        if sync.mode == "events":
            make, endpoint, wrap = self._event, "segment-events", lambda items: {"events": items}
        else:
            make, endpoint, wrap = self._membership_row, "segment-audience-sync", lambda items: items
        result = SendResult(requests=0)
        pending = list(rows)
        # at most twice: the whole batch, then the rows the destination did not object to
        for _ in range(2):
            body = json.dumps(wrap([make(row, row.sync or sync, batch_id) for row in pending])).encode()
            response = request(
                "POST",
                self.url(endpoint),
                data=body,
                timeout=timeout or self.timeout,
                who="LiveLike",
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Idempotency-Key": batch_id,
                    "Content-Type": "application/json",
                },
            )
            result.requests += 1
            result.status = response.status_code
            if response.status_code < 300:
                result.accepted += [row.delivery_id for row in pending]
                return result
            row_errors = _row_errors(response, len(pending), events=sync.mode == "events")
            if row_errors is None:
                raise refused(response)
            retry = []
            for row, errors in zip(pending, row_errors):
                if errors:
                    result.rejected[row.delivery_id] = _reason(errors)
                else:
                    retry.append(row)
            if not retry:
                return result
            pending = retry
        raise TransportError("the destination refused the rows it had accepted a moment before", status=result.status)

    @staticmethod
    def _membership_row(row: OutRow, sync, batch_id) -> dict:
        item = {
            "audience_id": sync.downstream_id,
            "audience_name": sync.audience.name,
            "action": row.is_enter,
            "timestamp": iso(row.changed_at),
            "user_id": row.identifier,
        }
        for optional in ("email", "livelike_profile_id"):
            if row.fields.get(optional):
                item[optional] = row.fields[optional]
        return item

    @staticmethod
    def _event(row: OutRow, sync, batch_id) -> dict:
        return {
            "type": "track",
            "event": "Audience Entered" if row.is_enter else "Audience Exited",
            "userId": row.identifier,
            "timestamp": iso(row.changed_at),
            "messageId": f"downstream-{row.delivery_id}",
            "properties": {"audience_id": sync.downstream_id, "audience_name": sync.audience.name, **row.fields},
        }


def _row_errors(response, count: int, *, events: bool):
    """DRF's per-item errors, or None when the 400 is not about rows."""
    if response.status_code != 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if events and isinstance(body, dict):
        body = body.get("events")
    if isinstance(body, list) and len(body) == count and all(isinstance(e, dict) for e in body):
        return body
    return None


def _reason(errors: dict) -> str:
    return "; ".join(
        f"{field}: {' '.join(map(str, messages)) if isinstance(messages, list) else messages}"
        for field, messages in errors.items()
    )
