"""Customer.io's App API, the parts Downstream reads segments from.

    GET  /v1/segments
    GET  /v1/segments/<id>/membership?start=<cursor>&limit=<1..30000, default 1000>
    POST /v1/customers/attributes   {"ids": [1..100 ids]}

Auth is `Authorization: Bearer <app key>`; the API allows 10 requests a second (a token bucket
here, burst 10) and answers 429 with Retry-After over it. Errors are `{"meta": {"error": ...}}`.
Checks in this order: rate limit 429, unknown path 404, auth 401, method 405, then the
endpoint's own 400/404.

Segments are configured on the server with `add_segment()`; big segments are generated lazily
from `(count, make_member)`. The membership cursor is opaque to clients (here: base64 of
"<segment id>:<offset>").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from collections.abc import Callable, Iterable

from .common import ContractServer, Request, Response, arg_parser, common_kwargs, serve_until_signalled

MAX_LIMIT = 30000
DEFAULT_LIMIT = 1000
MAX_ATTRIBUTE_IDS = 100
MEMBERSHIP = re.compile(r"^/v1/segments/(\d+)/membership$")
SYNTHETIC_ID = re.compile(r"^cust-(\d+)$")

Member = dict  # {"id": str ("" or absent when the person has none), "email": str|None, "cio_id": str}


def synthetic_member(i: int) -> dict:
    """Member i of a generated segment (what the standalone server serves)."""
    return {"id": f"cust-{i}", "email": f"cust-{i}@example.com", "cio_id": f"{i + 1:08x}"}


def synthetic_identifiers(customer_id: str) -> dict | None:
    match = SYNTHETIC_ID.match(customer_id)
    return synthetic_member(int(match.group(1))) if match else None


def synthetic_attributes(customer_id: str) -> dict | None:
    match = SYNTHETIC_ID.match(customer_id)
    if not match:
        return None
    i = int(match.group(1))
    return {
        "email": f"cust-{i}@example.com",
        "first_name": f"Customer {i}",
        "plan": ("free", "pro", "team")[i % 3],
        "country": ("US", "FR", "DE", "BR")[i % 4],
        "created_at": 1700000000 + i,
    }


def encode_cursor(segment_id: int, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{segment_id}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """Raises ValueError for anything this server did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("bad cursor") from exc
    segment, _, offset = raw.partition(":")
    if not (segment.isdigit() and offset.isdigit()):
        raise ValueError("bad cursor")
    return int(segment), int(offset)


def _identifiers_entry(member: dict) -> dict:
    cid = member.get("id")
    if cid:
        return {"id": str(cid), "email": member.get("email"), "cio_id": member.get("cio_id")}
    return {"email": member.get("email"), "cio_id": member.get("cio_id")}


def _error(status: int, message: str, headers=()) -> Response:
    return Response.json(status, {"meta": {"error": message}}, headers=headers)


class CustomerIoServer(ContractServer):
    """`app_key`: the Bearer key. `attributes_for(id) -> dict | None` and `identifiers_for(id)
    -> {"id", "email", "cio_id"} | None` answer for customers not configured explicitly (e.g.
    members of a lazy segment); `set_attributes()` and list segments take precedence."""

    name = "customerio"

    def __init__(
        self,
        app_key: str = "test-app-key",
        *,
        rate_limit_per_s: float | None = 10.0,
        attributes_for: Callable[[str], dict | None] | None = None,
        identifiers_for: Callable[[str], dict | None] | None = None,
        **kwargs,
    ):
        self.app_key = app_key
        self.attributes_for = attributes_for
        self.identifiers_for = identifiers_for
        self._segments: dict[int, dict] = {}
        self._attributes: dict[str, dict] = {}
        self._known: dict[str, dict] = {}  # id -> member dict, from list segments
        super().__init__(rate_limit_per_s=rate_limit_per_s, **kwargs)

    def reset_state(self) -> None:
        with self._lock:
            super().reset_state()
            self._reset_customerio_state()

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._reset_customerio_state()

    def _reset_customerio_state(self) -> None:
        self._membership_pages = 0
        self._identifiers_served = 0
        self._attribute_requests = 0
        self._attribute_ids_requested = 0

    # -- configuration ---------------------------------------------------------------------

    def add_segment(
        self,
        segment_id: int,
        name: str,
        members: Iterable[dict] | tuple[int, Callable[[int], dict]] = (),
        *,
        description: str = "",
        type: str = "dynamic",  # noqa: A002 - the API's field name
        state: str = "finished",
        tags: list[str] | None = None,
        updated_at: int = 1700000000,
    ) -> None:
        """`members`: a list of {"id", "email", "cio_id"} dicts, or `(count, make_member)`
        where `make_member(i)` returns member i (generated page by page, never all at once)."""
        segment = {
            "id": int(segment_id),
            "name": name,
            "description": description,
            "type": type,
            "state": state,
            "tags": tags,
            "updated_at": updated_at,
        }
        with self._lock:
            self._segments[int(segment_id)] = segment
            self._set_members(segment, members)

    def set_members(self, segment_id: int, members) -> None:
        with self._lock:
            self._set_members(self._segments[int(segment_id)], members)

    def _set_members(self, segment: dict, members) -> None:
        if isinstance(members, tuple) and len(members) == 2 and callable(members[1]):
            segment["count"], segment["make"], segment["members"] = int(members[0]), members[1], None
        else:
            listed = [dict(m) for m in members]
            segment["count"], segment["make"], segment["members"] = len(listed), None, listed
            for m in listed:
                if m.get("id"):
                    self._known[str(m["id"])] = m

    def remove_segment(self, segment_id: int) -> None:
        with self._lock:
            self._segments.pop(int(segment_id), None)

    def set_attributes(self, customer_id: str, attributes: dict) -> None:
        with self._lock:
            self._attributes[str(customer_id)] = dict(attributes)

    # -- HTTP ------------------------------------------------------------------------------

    def error_body(self, status: int, message: str):
        if status == 429:
            return {"meta": {"error": "Too many requests"}}
        return {"meta": {"error": "Internal server error"}}

    def handle(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        membership = MEMBERSHIP.match(path)
        if path not in ("/v1/segments", "/v1/customers/attributes") and membership is None:
            return _error(404, "not found")
        if req.headers.get("Authorization") != f"Bearer {self.app_key}":
            return _error(401, "Unauthorized request", headers=[("WWW-Authenticate", "Bearer")])
        if path == "/v1/customers/attributes":
            if req.method != "POST":
                return _error(405, "method not allowed", headers=[("Allow", "POST")])
            return self._attributes_endpoint(req)
        if req.method != "GET":
            return _error(405, "method not allowed", headers=[("Allow", "GET")])
        if membership is not None:
            return self._membership(req, int(membership.group(1)))
        return self._list_segments(req)

    def _list_segments(self, req: Request) -> Response:
        with self._lock:
            segments = [
                {
                    "id": s["id"],
                    "deduplicate_id": f"{s['id']}:{s['updated_at']}",
                    "name": s["name"],
                    "description": s["description"],
                    "state": s["state"],
                    "progress": None,
                    "type": s["type"],
                    "tags": s["tags"],
                }
                for s in self._segments.values()
            ]
        req.set_rows(len(segments))
        return Response.json(200, {"segments": segments})

    def _membership(self, req: Request, segment_id: int) -> Response:
        raw_limit = req.param("limit")
        if raw_limit in (None, ""):
            limit = DEFAULT_LIMIT
        else:
            try:
                limit = int(raw_limit)
            except ValueError:
                return _error(400, "limit must be an integer")
            if limit > MAX_LIMIT:
                return _error(400, f"limit must be less than or equal to {MAX_LIMIT}")
            if limit < 1:
                return _error(400, "limit must be greater than 0")
        with self._lock:
            segment = self._segments.get(segment_id)
            if segment is None:
                return _error(404, "segment not found")
            count, make, listed = segment["count"], segment["make"], segment["members"]
        start = req.param("start") or ""
        offset = 0
        if start:
            try:
                cursor_segment, offset = decode_cursor(start)
            except ValueError:
                return _error(400, "invalid start cursor")
            if cursor_segment != segment_id:
                return _error(400, "invalid start cursor")
        end = min(count, offset + limit)
        if listed is not None:
            page = listed[offset:end]
        else:
            page = [make(i) for i in range(offset, end)]
        identifiers = [_identifiers_entry(m) for m in page]
        ids = [str(m.get("id") or "") for m in page]
        next_cursor = encode_cursor(segment_id, end) if end < count else ""
        req.set_rows(len(page))
        with self._lock:
            self._membership_pages += 1
            self._identifiers_served += len(page)
        body = json.dumps({"identifiers": identifiers, "ids": ids, "next": next_cursor}, separators=(",", ":"))
        return Response.raw_json(200, body)

    def _customer(self, customer_id: str) -> dict | None:
        with self._lock:
            identifiers = self._known.get(customer_id)
            attributes = self._attributes.get(customer_id)
        if identifiers is None and self.identifiers_for is not None:
            identifiers = self.identifiers_for(customer_id)
        if attributes is None and self.attributes_for is not None:
            attributes = self.attributes_for(customer_id)
        if identifiers is None and attributes is None:
            return None
        attributes = dict(attributes or {})
        if identifiers is None:
            identifiers = {"id": customer_id, "email": attributes.get("email"), "cio_id": None}
        email = identifiers.get("email")
        merged = {"id": customer_id, **({"email": email} if email else {}), **attributes}
        return {
            "id": customer_id,
            "attributes": merged,
            "identifiers": {"id": customer_id, "email": email, "cio_id": identifiers.get("cio_id")},
            "devices": [],
            "timestamps": {},
            "unsubscribed": bool(attributes.get("unsubscribed", False)),
        }

    def _attributes_endpoint(self, req: Request) -> Response:
        try:
            body = req.json()
        except ValueError:
            return _error(400, "invalid JSON body")
        if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
            return _error(400, 'expected {"ids": [...]}')
        ids = body["ids"]
        req.set_rows(len(ids))
        if not ids:
            return _error(400, "ids must not be empty")
        if len(ids) > MAX_ATTRIBUTE_IDS:
            return _error(400, f"too many ids, maximum is {MAX_ATTRIBUTE_IDS}")
        if any(not isinstance(i, (str, int)) or isinstance(i, bool) for i in ids):
            return _error(400, "ids must be strings")
        customers = []
        seen = set()
        for raw in ids:
            customer_id = str(raw)
            if customer_id in seen:
                continue
            seen.add(customer_id)
            customer = self._customer(customer_id)
            if customer is not None:
                customers.append(customer)
        with self._lock:
            self._attribute_requests += 1
            self._attribute_ids_requested += len(ids)
        return Response.json(200, {"customers": customers})

    # -- what tests look at ----------------------------------------------------------------

    def counters(self) -> dict:
        return {
            "membership_pages": self._membership_pages,
            "identifiers_served": self._identifiers_served,
            "attribute_requests": self._attribute_requests,
            "attribute_ids_requested": self._attribute_ids_requested,
        }

    def extra_state(self, req: Request) -> dict:
        return {"segments": {str(s["id"]): {"name": s["name"], "members": s["count"]} for s in self._segments.values()}}


def _segment_arg(value: str) -> tuple[int, str, int]:
    try:
        segment_id, name, count = value.split(":", 2)
        return int(segment_id), name, int(count)
    except ValueError as exc:
        raise ValueError(f"--segment expects ID:NAME:COUNT, got {value!r}") from exc


def build(argv: list[str] | None = None) -> CustomerIoServer:
    parser = arg_parser("Customer.io App API contract server (loopback).", default_rate_limit=10.0)
    parser.add_argument("--app-key", default="test-app-key", help="App API key (Bearer)")
    parser.add_argument(
        "--segment",
        action="append",
        default=[],
        type=_segment_arg,
        metavar="ID:NAME:COUNT",
        help="a segment of COUNT generated members cust-0..cust-(COUNT-1); repeatable",
    )
    args = parser.parse_args(argv)
    server = CustomerIoServer(
        args.app_key,
        attributes_for=synthetic_attributes,
        identifiers_for=synthetic_identifiers,
        **common_kwargs(args),
    )
    for segment_id, name, count in args.segment:
        server.add_segment(segment_id, name, (count, synthetic_member))
    return server


def main(argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))


if __name__ == "__main__":
    sys.exit(main())
