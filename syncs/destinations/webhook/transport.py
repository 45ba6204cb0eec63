"""Any HTTP endpoint: JSON batches signed with HMAC-SHA256 over the body.

Headers: `X-Downstream-Signature: sha256=<hex>`, `X-Downstream-Batch-Id: <uuid>` (the same id
and, unless the person's mapped fields changed meanwhile, the same body when a batch is
retried, so the receiver can ignore a repeat), `X-Downstream-Sent-At`, plus custom headers. A receiver
may answer 200 with `{"rejected": [{"index": i, "reason": "..."}]}` to refuse single rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from django.utils import timezone

from ...http import TransportError, refused, request
from ..base import OutRow, SendResult, iso

MAX_BATCH = 1000


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Transport:
    max_batch = MAX_BATCH

    def __init__(self, destination):
        settings = destination.settings or {}
        credentials = destination.credentials
        self.url = settings.get("url", "")
        self.secret = credentials.get("signing_secret", "")
        self.headers = {**(settings.get("headers") or {}), **(credentials.get("headers") or {})}
        self.timeout = destination.timeout_s
        if not self.url or not self.secret:
            raise TransportError("a webhook needs a URL (settings) and a signing secret (credentials)", permanent=True)

    def check(self) -> str:
        """A signed ping (`{"type": "ping"}`, no changes): the receiver answers it like a batch."""
        body = json.dumps({"type": "ping", "batch_id": None, "changes": []}).encode()
        response = request(
            "POST",
            self.url,
            data=body,
            timeout=self.timeout,
            who="the webhook",
            headers={
                **self.headers,
                "Content-Type": "application/json",
                "X-Downstream-Signature": sign(body, self.secret),
                "X-Downstream-Sent-At": iso(timezone.now()),
            },
        )
        if response.status_code >= 300:
            raise refused(response)
        return f"The webhook answered the signed ping with {response.status_code}."

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        policy = sync.policy()
        body = json.dumps(
            {
                "batch_id": batch_id,
                "sync": sync.key,
                "audience": {"key": sync.audience.key, "name": sync.audience.name, "downstream_id": sync.downstream_id},
                "identifier_type": policy.key,
                "changes": [
                    {"action": row.action, "identifier": row.identifier, "changed_at": iso(row.changed_at), "fields": row.fields}
                    for row in rows
                ],
            }
        ).encode()
        response = request(
            "POST",
            self.url,
            data=body,
            timeout=timeout or self.timeout,
            who="the webhook",
            # the attempt's time travels in a header, so that a retried batch is the same body
            headers={
                **self.headers,
                "Content-Type": "application/json",
                "X-Downstream-Signature": sign(body, self.secret),
                "X-Downstream-Batch-Id": batch_id,
                "X-Downstream-Sent-At": iso(timezone.now()),
            },
        )
        if response.status_code >= 300:
            raise refused(response)
        rejected = {}
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        for item in (answer.get("rejected") or []) if isinstance(answer, dict) else []:
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, int) and 0 <= index < len(rows):
                rejected[rows[index].delivery_id] = str(item.get("reason") or "rejected by the receiver")
        return SendResult(
            accepted=[r.delivery_id for r in rows if r.delivery_id not in rejected],
            rejected=rejected,
            status=response.status_code,
        )
