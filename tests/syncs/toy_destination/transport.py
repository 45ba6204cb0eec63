"""The toy's transport: keeps what it was sent in SENT instead of calling out."""

from __future__ import annotations

from syncs.destinations.base import OutRow, SendResult
from syncs.http import TransportError

SENT: list[dict] = []


class Transport:
    max_batch = 50

    def __init__(self, destination):
        self.board = (destination.settings or {}).get("board", "")
        self.key = destination.credentials.get("toy_api_key", "")
        if not self.board or not self.key:
            raise TransportError("the toy needs a board and an API key", permanent=True)

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        SENT.extend({"board": self.board, "action": r.action, "identifier": r.identifier, "batch_id": batch_id} for r in rows)
        return SendResult(accepted=[r.delivery_id for r in rows])
