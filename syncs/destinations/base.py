"""What every destination transport shares: the rows it sends, its answer, its one error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class OutRow:
    """One change as it leaves: the delivery it came from and what goes on the wire."""

    delivery_id: int
    action: str  # enter or exit
    identifier: str
    changed_at: datetime
    fields: dict = field(default_factory=dict)
    # the sync it belongs to, where one request carries the rows of several syncs
    sync: object = None
    # a platform's own match keys (name → value in its form, hashed where it hashes)
    identifiers: dict = field(default_factory=dict)

    @property
    def is_enter(self) -> bool:
        return self.action == "enter"


@dataclass
class SendResult:
    accepted: list[int] = field(default_factory=list)  # delivery ids
    rejected: dict[int, str] = field(default_factory=dict)  # delivery id → the destination's reason
    status: int | None = None
    requests: int = 1
    # what the platform said about the request as a whole, kept on the run (Meta's
    # num_received / num_invalid_entries, Google's requestId): merged into SyncRun.details
    report: dict = field(default_factory=dict)


@dataclass
class ReadBack:
    """What a platform says of an audience on its side, for a transport's `read_back(sync)`:
    its size (Meta's approximate_count) and the share of uploaded people it matched."""

    size: int | None = None
    match_rate: float | None = None  # 0..1
    detail: str = ""


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
