"""Validation of incoming messages, whole-request, before anything is written.

Two wire protocols arrive here: the Segment / Customer.io Data Pipelines spec (`identify`,
`track`, `page`, `screen`, singly or in a `batch`) and the Customer.io Track API v1. Both are
turned into `Message` objects; a request with any invalid part raises `Rejected` carrying
every problem found as `{"index", "field", "message"}`.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

MAX_ID_LENGTH = 150  # Customer.io's limit for a customer id
MAX_NAME_LENGTH = 255
MAX_MESSAGE_ID_LENGTH = 255
MAX_NESTING = 32
FUTURE_TOLERANCE = timedelta(hours=24)

SEGMENT_TYPES = ("identify", "track", "page", "screen")
EVENT_NAME_FOR_TYPE = {"page": "Page Viewed", "screen": "Screen Viewed"}


@dataclass(frozen=True)
class Problem:
    index: int | None
    field: str
    message: str
    too_large: bool = False

    def as_dict(self):
        return {"index": self.index, "field": self.field, "message": self.message}


class Rejected(Exception):
    """The request is refused as a whole; nothing has been written."""

    def __init__(self, status: int, problems: list[Problem]):
        super().__init__(problems[0].message if problems else "rejected")
        self.status = status
        self.problems = problems

    def as_json(self):
        first = self.problems[0]
        where = f"{first.field}: " if first.field else ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return {
            # `code` and `message` are what the Segment-family SDKs read from an error answer.
            "code": "payload_too_large" if self.status == 413 else "invalid_request",
            "message": f"{where}{first.message}{more}",
            "errors": [p.as_dict() for p in self.problems],
        }


@dataclass(frozen=True)
class Message:
    """One validated change to the person store."""

    kind: str  # "identify" or "event"
    customer_id: str
    message_id: str
    timestamp: datetime
    name: str = ""
    properties: dict = field(default_factory=dict)
    traits: dict = field(default_factory=dict)


# --- body decoding ----------------------------------------------------------------------------


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def decode_json_body(raw: bytes, *, content_encoding: str = "", max_bytes: int) -> object:
    """Bytes off the wire → a JSON value, refusing anything over `max_bytes` once inflated."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(raw, max_bytes + 1)
        except zlib.error:
            raise Rejected(400, [Problem(None, "", "the body is not valid gzip")])
        if len(raw) > max_bytes or inflater.unconsumed_tail:
            raise Rejected(413, [Problem(None, "", too_big("the inflated body", max_bytes), True)])
        if not inflater.eof:
            raise Rejected(400, [Problem(None, "", "the body is not valid gzip (it is truncated)")])
    elif encoding not in ("", "identity"):
        raise Rejected(
            400,
            [Problem(None, "", f"Content-Encoding {encoding!r} is not supported; send gzip or none")],
        )
    elif len(raw) > max_bytes:
        raise Rejected(413, [Problem(None, "", too_big("the body", max_bytes), True)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(400, [Problem(None, "", f"the body is not UTF-8 (byte {exc.start})")])
    if not text.strip():
        raise Rejected(400, [Problem(None, "", "the body is empty; send a JSON object")])
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise Rejected(400, [Problem(None, "", "the body is nested too deeply")])
    except ValueError as exc:
        raise Rejected(400, [Problem(None, "", f"the body is not valid JSON: {exc}")])


def too_big(what, limit):
    return f"{what} is over the {limit // 1024} KB limit"


# --- field checks ---------------------------------------------------------------------------


class _Checker:
    """Collects problems for one message so that all of them are reported at once. `storable`:
    the whole message is known to hold no NUL, no unpaired surrogate and no nesting too deep
    (`_measure`), so that no field need be walked for them."""

    def __init__(self, index: int | None, *, storable: bool = False):
        self.index = index
        self.problems: list[Problem] = []
        self.storable = storable

    def fail(self, field_name: str, message: str):
        self.problems.append(Problem(self.index, field_name, message))

    def customer_id(self, value, field_name: str) -> str:
        if value is None or value == "":
            self.fail(field_name, "is required: Downstream keys people by their customer id")
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(field_name, f"must be a string or a number, not {_json_type(value)}")
            return ""
        text = str(value).strip() if isinstance(value, str) else _number_text(value)
        if not text:
            self.fail(field_name, "is required: Downstream keys people by their customer id")
        elif len(text) > MAX_ID_LENGTH:
            self.fail(field_name, f"is longer than {MAX_ID_LENGTH} characters")
        elif not (self.storable or _clean_text(text)):
            self.fail(field_name, "contains a NUL character or an unpaired surrogate")
        return text

    def text(self, value, field_name: str, *, required: bool, max_length: int) -> str:
        if value is None or value == "":
            if required:
                self.fail(field_name, "is required")
            return ""
        if not isinstance(value, str):
            self.fail(field_name, f"must be a string, not {_json_type(value)}")
            return ""
        if len(value) > max_length:
            self.fail(field_name, f"is longer than {max_length} characters")
        elif not (self.storable or _clean_text(value)):
            self.fail(field_name, "contains a NUL character or an unpaired surrogate")
        return value.strip()

    def mapping(self, value, field_name: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field_name, f"must be an object, not {_json_type(value)}")
            return {}
        bad = None if self.storable else _first_unstorable(value, field_name, depth=0)
        if bad:
            self.fail(*bad)
            return {}
        return value

    def iso_timestamp(self, value, field_name: str, now: datetime) -> datetime | None:
        if value is None or value == "":
            return None
        parsed = None
        if isinstance(value, str) and (self.storable or _clean_text(value)):
            try:
                parsed = parse_datetime(value.strip())
            except ValueError:
                parsed = None
        if parsed is None:
            self.fail(
                field_name,
                f"{_preview(value)} is not an ISO 8601 date-time such as 2026-11-29T19:37:36Z",
            )
            return None
        if timezone.is_naive(parsed):
            parsed = parsed.replace(tzinfo=UTC)
        return self._not_in_future(parsed, field_name, now)

    def unix_timestamp(self, value, field_name: str, now: datetime) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field_name, f"must be a unix time in seconds, not {_json_type(value)}")
            return None
        try:
            parsed = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            self.fail(field_name, f"{_preview(value)} is not a unix time in seconds")
            return None
        return self._not_in_future(parsed, field_name, now)

    def _not_in_future(self, parsed: datetime, field_name: str, now: datetime):
        if parsed.year < 1970:
            self.fail(field_name, "is before 1970")
            return None
        if parsed > now + FUTURE_TOLERANCE:
            self.fail(field_name, "is more than 24 hours in the future; check the sender's clock")
            return None
        return parsed


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _number_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _preview(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clean_text(text: str) -> bool:
    """PostgreSQL can store neither NUL characters nor unpaired surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_unstorable(value, path: str, depth: int):
    if depth > MAX_NESTING:
        return (path, f"is nested more than {MAX_NESTING} levels deep")
    if isinstance(value, str):
        return None if _clean_text(value) else (path, "contains a NUL character or an unpaired surrogate")
    if isinstance(value, dict):
        for key, item in value.items():
            if not _clean_text(key):
                return (path, "has a key with a NUL character or an unpaired surrogate")
            bad = _first_unstorable(item, f"{path}.{key}", depth + 1)
            if bad:
                return bad
    elif isinstance(value, list):
        for position, item in enumerate(value):
            bad = _first_unstorable(item, f"{path}[{position}]", depth + 1)
            if bad:
                return bad
    return None


def _derived_message_id(raw: dict) -> str:
    """Senders that omit a message id still get de-duplication of exact repeats."""
    body = {k: v for k, v in raw.items() if k not in ("sentAt", "receivedAt")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"derived:{digest}"


def _measure(raw) -> tuple[int, bool]:
    """A message's size, compact in UTF-8, and whether it is certainly storable. One dump
    tells both: an unpaired surrogate does not encode, a NUL is dumped as an escape, and with
    no more brackets than MAX_NESTING nothing can be nested deeper. Otherwise (or on the
    rare false alarm, such as a text that reads backslash-u-0000) the fields are walked."""
    text = json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "replace")), False
    return size, "\\u0000" not in text and text.count("{") + text.count("[") <= MAX_NESTING


# --- Segment / Data Pipelines spec ----------------------------------------------------------


def parse_segment_message(raw, index: int | None, *, now: datetime, implied_type: str | None = None):
    """One spec message → (Message | None, problems)."""
    if not isinstance(raw, dict):
        return None, [Problem(index, "", f"a message must be an object, not {_json_type(raw)}")]
    size, storable = _measure(raw)
    if size > settings.INGEST_MAX_MESSAGE_BYTES:
        return None, [Problem(index, "", too_big("the message", settings.INGEST_MAX_MESSAGE_BYTES), too_large=True)]
    check = _Checker(index, storable=storable)

    kind = raw.get("type", implied_type)
    if implied_type and kind != implied_type:
        check.fail("type", f"must be {implied_type!r} on this endpoint, not {_preview(kind)}")
        return None, check.problems
    if kind is None or kind == "":
        check.fail("type", f"is required: one of {', '.join(SEGMENT_TYPES)}")
        return None, check.problems
    if kind not in SEGMENT_TYPES:
        check.fail("type", f"{_preview(kind)} is not supported; use one of {', '.join(SEGMENT_TYPES)}")
        return None, check.problems

    customer_id = check.customer_id(raw.get("userId"), "userId")
    message_id = check.text(raw.get("messageId"), "messageId", required=False, max_length=MAX_MESSAGE_ID_LENGTH)
    timestamp = check.iso_timestamp(raw.get("timestamp"), "timestamp", now)
    if timestamp is None and "timestamp" not in raw:
        timestamp = check.iso_timestamp(raw.get("originalTimestamp"), "originalTimestamp", now)

    name, properties, traits = "", {}, {}
    if kind == "identify":
        traits = check.mapping(raw.get("traits"), "traits")
        _check_profile_fields(check, traits, "traits")
    elif kind == "track":
        name = check.text(raw.get("event"), "event", required=True, max_length=MAX_NAME_LENGTH)
        properties = check.mapping(raw.get("properties"), "properties")
    else:
        name = EVENT_NAME_FOR_TYPE[kind]
        properties = dict(check.mapping(raw.get("properties"), "properties"))
        page_name = check.text(raw.get("name"), "name", required=False, max_length=MAX_NAME_LENGTH)
        if page_name:
            properties.setdefault("name", page_name)
        category = check.text(raw.get("category"), "category", required=False, max_length=MAX_NAME_LENGTH)
        if category:
            properties.setdefault("category", category)

    if check.problems:
        return None, check.problems
    return (
        Message(
            kind="identify" if kind == "identify" else "event",
            customer_id=customer_id,
            message_id=message_id or _derived_message_id(raw),
            timestamp=timestamp or now,
            name=name,
            properties=properties,
            traits=traits,
        ),
        [],
    )


def parse_segment_batch(body, *, now: datetime) -> list[Message]:
    if not isinstance(body, dict):
        raise Rejected(400, [Problem(None, "", f"the body must be a JSON object, not {_json_type(body)}")])
    if "batch" not in body:
        raise Rejected(400, [Problem(None, "batch", "is required: an array of messages")])
    batch = body["batch"]
    if not isinstance(batch, list):
        raise Rejected(400, [Problem(None, "batch", f"must be an array, not {_json_type(batch)}")])
    return _parse_all(batch, now=now)


def parse_segment_single(body, *, kind: str, now: datetime) -> list[Message]:
    message, problems = parse_segment_message(body, None, now=now, implied_type=kind)
    if problems:
        raise Rejected(_status_for(problems), problems)
    return [message]


def _parse_all(items, *, now: datetime) -> list[Message]:
    messages, problems = [], []
    for index, raw in enumerate(items):
        message, found = parse_segment_message(raw, index, now=now)
        problems.extend(found)
        if message:
            messages.append(message)
    if problems:
        raise Rejected(_status_for(problems), problems)
    return messages


def _status_for(problems: list[Problem]) -> int:
    return 413 if any(p.too_large for p in problems) else 400


def _check_profile_fields(check: _Checker, values: dict, prefix: str):
    for key in ("email", "phone", "cio_id"):
        value = values.get(key)
        if value is None or value == "":
            continue
        if key == "phone" and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, str):
            check.fail(f"{prefix}.{key}", f"must be a string, not {_json_type(value)}")
        elif len(value) > 254:
            check.fail(f"{prefix}.{key}", "is longer than 254 characters")


# --- Customer.io Track API v1 ---------------------------------------------------------------


def parse_track_customer_id(raw_id: str) -> str:
    check = _Checker(None)
    customer_id = check.customer_id(raw_id, "id")
    if check.problems:
        raise Rejected(400, check.problems)
    return customer_id


def parse_track_attributes(customer_id: str, body, *, now: datetime) -> Message:
    """`PUT /customers/<id>`: the body's keys are attributes, merged into the profile."""
    check = _Checker(None)
    if not isinstance(body, dict):
        raise Rejected(400, [Problem(None, "", f"the body must be a JSON object, not {_json_type(body)}")])
    attributes = {k: v for k, v in check.mapping(body, "").items() if k not in ("id", "_update")}
    for key, value in list(attributes.items()):
        # In the Track API an empty string removes an attribute.
        if value == "":
            attributes[key] = None
    _check_profile_fields(check, attributes, "")
    if check.problems:
        raise Rejected(400, [Problem(p.index, p.field.lstrip("."), p.message) for p in check.problems])
    return Message(
        kind="identify",
        customer_id=customer_id,
        message_id=_derived_message_id({"id": customer_id, "attributes": attributes}),
        timestamp=now,
        traits=attributes,
    )


def parse_track_event(customer_id: str, body, *, now: datetime) -> Message:
    """`POST /customers/<id>/events`: `name`, `data`, `timestamp` (unix seconds), `id`."""
    check = _Checker(None)
    if not isinstance(body, dict):
        raise Rejected(400, [Problem(None, "", f"the body must be a JSON object, not {_json_type(body)}")])
    kind = body.get("type", "event")
    if kind not in ("event", "page", "screen"):
        check.fail("type", f"{_preview(kind)} is not supported; use event, page or screen")
    name = check.text(body.get("name"), "name", required=True, max_length=MAX_NAME_LENGTH)
    data = dict(check.mapping(body.get("data"), "data"))
    timestamp = check.unix_timestamp(body.get("timestamp"), "timestamp", now)
    event_id = check.text(body.get("id"), "id", required=False, max_length=MAX_MESSAGE_ID_LENGTH)
    if check.problems:
        raise Rejected(400, check.problems)
    if kind in EVENT_NAME_FOR_TYPE:
        data.setdefault("name", name)
        name = EVENT_NAME_FOR_TYPE[kind]
    return Message(
        kind="event",
        customer_id=customer_id,
        message_id=event_id or _derived_message_id({"id": customer_id, **body}),
        timestamp=timestamp or now,
        name=name,
        properties=data,
    )
