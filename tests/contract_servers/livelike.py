"""LiveLike's Producer API, as LiveLike's Segment integration uses it.

    POST /api/v1/applications/<client_id>/segment-audience-sync/   JSON array of 1..500 rows
    POST /api/v1/applications/<client_id>/segment-events/          {"events": [1..500 events]}

Auth is `Authorization: Bearer <producer token>`. The server is Django REST framework, so
errors have DRF's shapes: `{"detail": ...}` for auth/404/405/parse errors, and for a list
serializer a JSON array as long as the request with `{}` for the valid items; if any item is
invalid nothing of the request is applied.

Checks, in DRF's order: unknown path 404, auth 401, method 405, unknown client id 404, JSON
parse 400, then validation 400.

Validation is strict where DRF would coerce: `action` must be a JSON boolean, the string
fields must be JSON strings. `email` and `livelike_profile_id` may be absent or null.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime

from .common import ContractServer, Request, Response, arg_parser, common_kwargs, serve_until_signalled

MAX_ITEMS = 500
PATH = re.compile(r"^/api/v1/applications/([^/]+)/(segment-audience-sync|segment-events|validate-app)/$")
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)

REQUIRED = "This field is required."
NOT_NULL = "This field may not be null."
NOT_BLANK = "This field may not be blank."
NOT_STRING = "Not a valid string."
NOT_BOOLEAN = "Must be a valid boolean."
BAD_DATETIME = "Datetime has wrong format."
BAD_EMAIL = "Enter a valid email address."
UNKNOWN_USER = "Unknown user."
_MISSING = object()


def _type_name(value) -> str:
    return type(value).__name__


def _check_string(item: dict, key: str, errors: dict, *, required: bool, nullable: bool = False):
    """DRF CharField-ish: returns the value (None when absent or null) and fills `errors`."""
    value = item.get(key, _MISSING)
    if value is _MISSING:
        if required:
            errors[key] = [REQUIRED]
        return None
    if value is None:
        if not nullable:
            errors[key] = [NOT_NULL]
        return None
    if type(value) is not str:
        errors[key] = [NOT_STRING]
        return None
    if not value.strip():
        errors[key] = [NOT_BLANK]
        return None
    return value


def _check_datetime(item: dict, key: str, errors: dict):
    value = item.get(key, _MISSING)
    if value is _MISSING:
        errors[key] = [REQUIRED]
        return None
    if value is None:
        errors[key] = [NOT_NULL]
        return None
    if type(value) is not str or not ISO_DATETIME.match(value):
        errors[key] = [BAD_DATETIME]
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        errors[key] = [BAD_DATETIME]
        return None
    return value


def _not_a_dict(item) -> dict:
    return {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {_type_name(item)}."]}


class LiveLikeServer(ContractServer):
    """The LiveLike Producer API for one application (`client_id`) and one producer token.

    `reject_user_ids`: rows with these user ids are refused with `{"user_id": ["Unknown
    user."]}` (a set; may be changed at run time). `keep_rows=False` keeps only counters and
    member sets (no row list, so no `rows()`, `first_ack()` or `rows_for()`), for very long runs.
    """

    name = "livelike"

    def __init__(
        self,
        token: str = "test-producer-token",
        client_id: str = "test-client-id",
        *,
        reject_user_ids=(),
        keep_rows: bool = True,
        **kwargs,
    ):
        self.token = token
        self.client_id = client_id
        self.reject_user_ids = set(reject_user_ids)
        self.keep_rows = keep_rows
        super().__init__(**kwargs)

    @property
    def api_url(self) -> str:
        """What Downstream's LiveLike base URL setting should be (`.../api/v1`)."""
        return self.url + "/api/v1"

    def reset_state(self) -> None:
        with self._lock:
            super().reset_state()
            self._reset_livelike_state()

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._reset_livelike_state()

    def _reset_livelike_state(self) -> None:
        self._rows: list[tuple] = []  # (seq, record, audience_id, name, user_id, action, ts, email, profile)
        self._seq = 0
        self._members: dict[str, set[str]] = {}
        self._ever_added: dict[str, set[str]] = {}
        self._audience_names: dict[str, str] = {}
        self._seen: set[tuple] = set()
        self._duplicates: list[tuple] = []
        self._exits_before_entry: list[dict] = []
        self._interned: dict[str, str] = {}
        self._events: list[dict] = []
        self._event_ids: set[str] = set()
        self._rows_received = 0
        self._rows_applied = 0
        self._rows_rejected = 0
        self._events_received = 0
        self._events_applied = 0
        self._duplicate_events = 0

    # -- HTTP ------------------------------------------------------------------------------

    def error_body(self, status: int, message: str):
        if status == 429:
            return {"detail": "Request was throttled."}
        return {"detail": "A server error occurred."}

    def handle(self, req: Request) -> Response:
        match = PATH.match(req.path)
        if match is None:
            return Response.json(404, {"detail": "Not found."})
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return Response.json(401, {"detail": "Invalid token."}, headers=[("WWW-Authenticate", "Bearer")])
        allowed = "GET" if match.group(2) == "validate-app" else "POST"
        if req.method != allowed:
            return Response.json(
                405, {"detail": f'Method "{req.method}" not allowed.'}, headers=[("Allow", f"{allowed}, OPTIONS")]
            )
        if match.group(1) != self.client_id:
            return Response.json(404, {"detail": "Not found."})
        if match.group(2) == "validate-app":
            # what a producer token and client id pair can reach: the application itself
            return Response.json(200, {"client_id": self.client_id, "name": "Test application", "valid": True})
        try:
            data = req.json()
        except ValueError as exc:
            return Response.json(400, {"detail": f"JSON parse error - {exc}"})
        if match.group(2) == "segment-audience-sync":
            return self._audience_sync(req, data)
        return self._segment_events(req, data)

    def _audience_sync(self, req: Request, data) -> Response:
        if not isinstance(data, list):
            req.set_rows(0)
            return Response.json(400, {"non_field_errors": [f'Expected a list of items but got type "{_type_name(data)}".']})
        req.set_rows(len(data))
        with self._lock:
            self._rows_received += len(data)
        if not 1 <= len(data) <= MAX_ITEMS:
            with self._lock:
                self._rows_rejected += len(data)
            return Response.json(400, {"detail": f"Expected between 1 and {MAX_ITEMS} items."})

        results = []
        valid = []
        any_error = False
        reject = self.reject_user_ids
        for item in data:
            if type(item) is not dict:
                results.append(_not_a_dict(item))
                any_error = True
                continue
            errors: dict = {}
            audience_id = _check_string(item, "audience_id", errors, required=True)
            audience_name = _check_string(item, "audience_name", errors, required=True)
            action = item.get("action", _MISSING)
            if action is _MISSING:
                errors["action"] = [REQUIRED]
            elif action is None:
                errors["action"] = [NOT_NULL]
            elif type(action) is not bool:
                errors["action"] = [NOT_BOOLEAN]
            timestamp = _check_datetime(item, "timestamp", errors)
            user_id = _check_string(item, "user_id", errors, required=True)
            email = _check_string(item, "email", errors, required=False, nullable=True)
            if email is not None and not EMAIL.match(email):
                errors["email"] = [BAD_EMAIL]
            profile_id = _check_string(item, "livelike_profile_id", errors, required=False, nullable=True)
            if user_id is not None and reject and user_id in reject:
                errors["user_id"] = [UNKNOWN_USER]
            if errors:
                any_error = True
            else:
                valid.append((audience_id, audience_name, user_id, action, timestamp, email, profile_id))
            results.append(errors)
        if any_error:
            with self._lock:
                self._rows_rejected += len(data)
            return Response.json(400, results)

        record = req.record
        with self._lock:
            interned = self._interned
            keep = self.keep_rows
            for audience_id, audience_name, user_id, action, timestamp, email, profile_id in valid:
                self._seq += 1
                seq = self._seq
                audience_id = interned.setdefault(audience_id, audience_id)
                audience_name = interned.setdefault(audience_name, audience_name)
                self._audience_names[audience_id] = audience_name
                key = (audience_id, user_id, action, timestamp)
                if key in self._seen:
                    self._duplicates.append((seq, record) + key)
                else:
                    self._seen.add(key)
                members = self._members.get(audience_id)
                if members is None:
                    members = self._members[audience_id] = set()
                    self._ever_added[audience_id] = set()
                ever = self._ever_added[audience_id]
                if action:
                    members.add(user_id)
                    ever.add(user_id)
                else:
                    if user_id not in ever:
                        self._exits_before_entry.append(
                            {"seq": seq, "audience_id": audience_id, "user_id": user_id, "timestamp": timestamp}
                        )
                    members.discard(user_id)
                if keep:
                    self._rows.append((seq, record, audience_id, audience_name, user_id, action, timestamp, email, profile_id))
            self._rows_applied += len(valid)
        return Response.json(200, {"received": len(valid)})

    def _segment_events(self, req: Request, data) -> Response:
        if not isinstance(data, dict):
            req.set_rows(0)
            return Response.json(400, _not_a_dict(data))
        events = data.get("events", _MISSING)
        if events is _MISSING:
            req.set_rows(0)
            return Response.json(400, {"events": [REQUIRED]})
        if not isinstance(events, list):
            req.set_rows(0)
            return Response.json(400, {"events": [f'Expected a list of items but got type "{_type_name(events)}".']})
        req.set_rows(len(events))
        with self._lock:
            self._events_received += len(events)
        if not events:
            return Response.json(400, {"events": ["This list may not be empty."]})
        if len(events) > MAX_ITEMS:
            return Response.json(400, {"events": [f"Ensure this field has no more than {MAX_ITEMS} elements."]})
        results = []
        any_error = False
        for event in events:
            if type(event) is not dict:
                results.append(_not_a_dict(event))
                any_error = True
                continue
            errors: dict = {}
            kind = event.get("type", _MISSING)
            if kind is _MISSING:
                errors["type"] = [REQUIRED]
            elif kind != "track":
                errors["type"] = [f'"{kind}" is not a valid choice.']
            _check_string(event, "event", errors, required=True)
            _check_string(event, "userId", errors, required=True)
            _check_datetime(event, "timestamp", errors)
            properties = event.get("properties", _MISSING)
            if properties is not _MISSING and properties is not None and not isinstance(properties, dict):
                errors["properties"] = [f'Expected a dictionary of items but got type "{_type_name(properties)}".']
            _check_string(event, "messageId", errors, required=False, nullable=True)
            if errors:
                any_error = True
            results.append(errors)
        if any_error:
            return Response.json(400, {"events": results})
        record = req.record
        with self._lock:
            for event in events:
                message_id = event.get("messageId")
                duplicate = message_id is not None and message_id in self._event_ids
                if duplicate:
                    self._duplicate_events += 1
                elif message_id is not None:
                    self._event_ids.add(message_id)
                self._seq += 1
                self._events.append({"seq": self._seq, "record": record, "event": event, "duplicate": duplicate})
            self._events_applied += len(events)
        return Response.json(200, {"received": len(events)})

    # -- what tests look at ----------------------------------------------------------------

    @staticmethod
    def _row_dict(row: tuple) -> dict:
        seq, record, audience_id, audience_name, user_id, action, timestamp, email, profile_id = row
        return {
            "seq": seq,
            "audience_id": audience_id,
            "audience_name": audience_name,
            "action": action,
            "timestamp": timestamp,
            "user_id": user_id,
            "email": email,
            "livelike_profile_id": profile_id,
            "received_at": record["received_at"],
            "acked_at": record["answered_at"],
            "request_seq": record["seq"],
        }

    def _require_rows(self) -> None:
        if not self.keep_rows:
            raise RuntimeError("this LiveLikeServer was started with keep_rows=False")

    def members(self, audience_id: str) -> set[str]:
        with self._lock:
            return set(self._members.get(audience_id, ()))

    def audiences(self) -> dict[str, dict]:
        """{audience_id: {"name": latest audience_name, "members": count}}"""
        with self._lock:
            return {a: {"name": self._audience_names.get(a), "members": len(m)} for a, m in self._members.items()}

    def rows(self) -> list[dict]:
        """Every applied row in arrival order, with seq, acked_at (time its 200 was sent, None
        while not yet sent) and request_seq (its request in `request_log()`)."""
        self._require_rows()
        with self._lock:
            return [self._row_dict(r) for r in self._rows]

    def rows_for(self, user_id: str) -> list[dict]:
        self._require_rows()
        with self._lock:
            return [self._row_dict(r) for r in self._rows if r[4] == user_id]

    def first_ack(self, audience_id: str, user_id: str, action: bool) -> float | None:
        """When a row (audience_id, user_id, action) was first acknowledged (earliest acked_at)."""
        self._require_rows()
        with self._lock:
            times = [
                r[1]["answered_at"]
                for r in self._rows
                if r[4] == user_id and r[2] == audience_id and r[5] == bool(action) and r[1]["answered_at"] is not None
            ]
        return min(times) if times else None

    def first_acks(self) -> dict[tuple[str, str, bool], float]:
        """first_ack for every (audience_id, user_id, action) in one pass."""
        self._require_rows()
        result: dict[tuple[str, str, bool], float] = {}
        with self._lock:
            for r in self._rows:
                acked = r[1]["answered_at"]
                if acked is None:
                    continue
                key = (r[2], r[4], r[5])
                if key not in result or acked < result[key]:
                    result[key] = acked
        return result

    def duplicates(self) -> list[dict]:
        """Rows identical in (audience_id, user_id, action, timestamp) to a row applied before."""
        with self._lock:
            return [
                {
                    "seq": d[0],
                    "request_seq": d[1]["seq"],
                    "audience_id": d[2],
                    "user_id": d[3],
                    "action": d[4],
                    "timestamp": d[5],
                }
                for d in self._duplicates
            ]

    def exits_before_entry(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._exits_before_entry]

    def events(self, user_id: str | None = None) -> list[dict]:
        """Accepted events in order: {seq, event (as sent), duplicate (messageId seen before),
        acked_at}."""
        with self._lock:
            return [
                {"seq": e["seq"], "event": e["event"], "duplicate": e["duplicate"], "acked_at": e["record"]["answered_at"]}
                for e in self._events
                if user_id is None or e["event"].get("userId") == user_id
            ]

    @property
    def rows_received(self) -> int:
        with self._lock:
            return self._rows_received

    @property
    def rows_applied(self) -> int:
        with self._lock:
            return self._rows_applied

    @property
    def duplicate_rows(self) -> int:
        with self._lock:
            return len(self._duplicates)

    @property
    def exit_before_entry(self) -> int:
        with self._lock:
            return len(self._exits_before_entry)

    def counters(self) -> dict:
        return {
            "rows_received": self._rows_received,
            "rows_applied": self._rows_applied,
            "rows_rejected": self._rows_rejected,
            "duplicate_rows": len(self._duplicates),
            "exit_before_entry": len(self._exits_before_entry),
            "events_received": self._events_received,
            "events_applied": self._events_applied,
            "duplicate_events": self._duplicate_events,
        }

    def extra_state(self, req: Request) -> dict:
        state = {
            "audiences": {a: {"name": self._audience_names.get(a), "members": len(m)} for a, m in self._members.items()},
            "exits_before_entry": [dict(e) for e in self._exits_before_entry[:1000]],
        }
        if req.param("members") in ("1", "true", "yes"):
            state["members"] = {a: sorted(m) for a, m in self._members.items()}
        if req.param("rows") in ("1", "true", "yes") and self.keep_rows:
            user_id = req.param("user_id")
            state["rows"] = [self._row_dict(r) for r in self._rows if user_id is None or r[4] == user_id]
        if req.param("duplicates") in ("1", "true", "yes"):
            state["duplicates"] = [
                {"seq": d[0], "request_seq": d[1]["seq"], "audience_id": d[2], "user_id": d[3], "action": d[4], "timestamp": d[5]}
                for d in self._duplicates
            ]
        if req.param("events") in ("1", "true", "yes"):
            state["events"] = [
                {"seq": e["seq"], "event": e["event"], "duplicate": e["duplicate"], "acked_at": e["record"]["answered_at"]}
                for e in self._events
            ]
        return state


def build(argv: list[str] | None = None) -> LiveLikeServer:
    parser = arg_parser("LiveLike Producer API contract server (loopback).")
    parser.add_argument("--token", default="test-producer-token", help="producer token (Bearer)")
    parser.add_argument("--client-id", default="test-client-id")
    parser.add_argument("--reject-user-id", action="append", default=[], help="answer 'Unknown user.' for it")
    parser.add_argument("--no-rows", action="store_true", help="keep counters and members only")
    args = parser.parse_args(argv)
    return LiveLikeServer(
        args.token,
        args.client_id,
        reject_user_ids=args.reject_user_id,
        keep_rows=not args.no_rows,
        **common_kwargs(args),
    )


def main(argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))


if __name__ == "__main__":
    sys.exit(main())
