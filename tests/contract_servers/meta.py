"""Meta's Marketing API for customer-list Custom Audiences, as Downstream uses it.

    POST   /<version>/<audience_id>/users          add:     payload={"schema": [...], "data": [[...]]}
    DELETE /<version>/<audience_id>/users          remove:  the same payload
    POST   /<version>/<audience_id>/usersreplace   replace: the payload and session={"session_id",
                                                   "batch_seq", "last_batch_flag", "estimated_num_total"}
    GET    /<version>/<audience_id>?fields=...     approximate_count_lower_bound / _upper_bound,
                                                   operation_status, time_content_updated, name
    GET    /<version>/me?fields=id,name            the token's user (a system user's id and name)
    GET    /<version>/me/adaccounts?fields=...     the ad accounts the token reaches: {"data": [{id
                                                   (act_...), account_id, name, account_status,
                                                   currency}], "paging"}, `limit` a page (default
                                                   25) and the `after` cursor

Parameters come as multipart form fields (`curl -F`, as Meta's examples send them), form-encoded,
or as a JSON body; `payload` and `session` are JSON texts. The
access token is `Authorization: Bearer <token>` (or `OAuth <token>`) or an `access_token`
parameter, as the Graph API takes it.

Errors have the Graph API's shape, `{"error": {"message", "type", "code", "error_subcode"?,
"is_transient", "fbtrace_id"}}`, with HTTP 400 unless said otherwise:

- no token: code 104; an unknown token: code 190; a revoked one: code 190, subcode 463, HTTP 401;
- an audience that does not exist (or is not the token's): code 100, subcode 33;
- a payload that is missing, not JSON, has an unknown schema key, rows that do not match the
  schema, no rows, or more than 10,000 rows: code 100;
- `forbidden` audiences: code 200 (permission), HTTP 403;
- a field a node does not have (`?fields=`): code 100, "Tried accessing nonexisting field";
- `ads_permission = False` (a token without ads_read / ads_management): `me/adaccounts`
  answers code 200 (a permission error), HTTP 403; the wording is this server's;
- `fail_next(n, code=...)`: the next n updates answer that error (by default code 2650, "Failed
  to update the custom audience");
- while a replace session is open on an audience, `/users` on it answers code 2650 too (the
  code is this server's choice: Meta documents that adds and removes wait for the replace);
- the token bucket (`rate_limit_per_s`) answers code 80003 / subcode 2446079 (the ad account's
  custom-audience budget) or `rate_limit_code` 17, 4, 32, 613, with `X-Business-Use-Case-Usage`
  giving `estimated_time_to_regain_access` in minutes, as Meta does (no Retry-After);
- the fault plan's `429` is a plain HTTP 429 with Retry-After (a proxy in front), `500` is
  code 2 (is_transient).

Matching: each person is held by the tuple of their (key, value) pairs. A row is the same
person as a member when they share a strong key (EMAIL, PHONE, EXTERN_ID, MADID) or, without
one, the whole tuple; an add replaces that member with the row's keys, a remove drops it. A
hashed key must be 64 lower-case hex characters and EXTERN_ID a non-empty text; a row with no
valid key is counted in `num_invalid_entries` and sampled in `invalid_entry_samples`.

A replace session adds its rows as they come and, when `last_batch_flag` arrives, removes every
member no batch of the session named. A newer session on the same audience supersedes an open
one. The approximate count is the members times `match_share` (Meta counts only the people it
matched), ±5 %.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
import time
from urllib.parse import parse_qs

from .common import ContractServer, Request, Response, arg_parser, common_kwargs, serve_until_signalled

MAX_ROWS = 10_000
PATH = re.compile(r"^/(v\d{1,3}\.\d{1,2})/([^/]+)(?:/(users|usersreplace))?/?$")
ME_PATH = re.compile(r"^/(v\d{1,3}\.\d{1,2})/me(?:/(adaccounts))?/?$")
USER_FIELDS = ("id", "name")
AD_ACCOUNT_FIELDS = ("id", "account_id", "name", "account_status", "currency")
HASHED_KEYS = ("EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST", "ZIP", "COUNTRY")
PLAIN_KEYS = ("EXTERN_ID", "MADID")
KEYS = HASHED_KEYS + PLAIN_KEYS
STRONG_KEYS = frozenset({"EMAIL", "PHONE", "EXTERN_ID", "MADID"})
SHA256 = re.compile(r"^[0-9a-f]{64}$")
READABLE_FIELDS = (
    "id",
    "name",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "operation_status",
    "time_content_updated",
    "subtype",
)
THROTTLES = {
    80003: (2446079, "There have been too many calls from this ad-account. Wait a bit and try again."),
    17: (None, "User request limit reached"),
    4: (None, "Application request limit reached"),
    613: (None, "Calls to this api have exceeded the rate limit."),
    32: (None, "Page request limit reached"),
}


def _multipart(body: bytes, content_type: str) -> dict[str, str]:
    """The fields of a multipart/form-data body (what `curl -F` and requests' `files=` send)."""
    boundary = next(
        (part.split("=", 1)[1].strip('"') for part in content_type.split(";")[1:] if part.strip().startswith("boundary=")), None
    )
    if not boundary:
        raise GraphError(100, "(#100) A multipart body needs its boundary")
    fields = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name is None:
            raise GraphError(100, "(#100) A multipart part has no name")
        try:
            fields[name.group(1).decode()] = value.removesuffix(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            raise GraphError(100, f"(#100) Param {name.group(1).decode()} is not UTF-8") from None
    return fields


def _cursor(position: int) -> str:
    """A paging cursor: opaque to the client, as Meta's are (here the position, base64)."""
    return base64.b64encode(str(position).encode()).decode()


class GraphError(Exception):
    def __init__(
        self,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        status: int = 400,
        kind: str = "OAuthException",
        transient: bool = False,
    ):
        super().__init__(message)
        self.code, self.message, self.subcode, self.status, self.kind, self.transient = (
            code,
            message,
            subcode,
            status,
            kind,
            transient,
        )


class MetaServer(ContractServer):
    """Meta's Graph API for the custom audiences in `audiences` (ids), one ad account and one
    access token. `auto_create`: any numeric audience id exists (for benchmarks)."""

    name = "meta"

    def __init__(
        self,
        token: str = "test-meta-token",
        *,
        audiences=("1000",),
        ad_account_id: str = "act_1000",
        auto_create: bool = False,
        match_share: float = 1.0,
        rate_limit_code: int = 80003,
        user_id: str = "61550000000000001",
        user_name: str = "Downstream Sync",
        ad_account_name: str = "Downstream Ads",
        **kwargs,
    ):
        if rate_limit_code not in THROTTLES:
            raise ValueError(f"rate_limit_code must be one of {sorted(THROTTLES)}")
        self.token = token
        self.revoked: set[str] = set()
        self.ad_account_id = ad_account_id
        # whom the token belongs to, and the ad accounts it reaches (a test may change either)
        self.user = {"id": user_id, "name": user_name}
        self.ad_accounts: list[dict] = [
            {
                "id": ad_account_id,
                "account_id": ad_account_id.removeprefix("act_"),
                "name": ad_account_name,
                "account_status": 1,
                "currency": "USD",
            }
        ]
        self.ads_permission = True
        self.auto_create = auto_create
        self.match_share = match_share
        self.rate_limit_code = rate_limit_code
        self.forbidden: set[str] = set()
        self._known = {str(a) for a in audiences}
        super().__init__(**kwargs)

    def reset_state(self) -> None:
        with self._lock:
            super().reset_state()
            self._reset_meta_state()

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._reset_meta_state()

    def _reset_meta_state(self) -> None:
        self._members: dict[str, dict[tuple, None]] = {a: {} for a in getattr(self, "_known", ())}
        self._index: dict[str, dict[tuple, tuple]] = {a: {} for a in self._members}
        self._sessions: dict[str, dict] = {}  # audience → the open replace session
        self._replaces: list[dict] = []  # finished replace sessions
        self._fail_next: tuple[int, GraphError | None] = (0, None)
        self._trace = 0
        self._uploads = 0
        self._rows_added = self._rows_removed = self._invalid = 0

    # -- configuration a test changes --------------------------------------------------------

    def add_audience(self, audience_id: str) -> None:
        with self._lock:
            self._known.add(str(audience_id))
            self._members.setdefault(str(audience_id), {})
            self._index.setdefault(str(audience_id), {})

    def fail_next(
        self,
        times: int = 1,
        *,
        code: int = 2650,
        message: str = "Failed to update the custom audience",
        subcode: int | None = None,
        status: int = 400,
        transient: bool = False,
    ) -> None:
        """The next `times` adds, removes or replace batches answer this error (by default 2650,
        "Failed to update the custom audience") and apply nothing."""
        with self._lock:
            self._fail_next = (times, GraphError(code, message, subcode=subcode, status=status, transient=transient))

    def plant(self, audience_id: str, identifiers: dict) -> None:
        """Put a person in an audience behind Downstream's back (drift)."""
        with self._lock:
            self._add(str(audience_id), tuple(sorted(identifiers.items())))

    # -- HTTP --------------------------------------------------------------------------------

    def error_body(self, status: int, message: str):
        if status == 429:
            return self._error_json(GraphError(4, "Application request limit reached", status=429))
        return self._error_json(GraphError(2, "Service temporarily unavailable", status=500, transient=True))

    def _fault_response(self, action: str, req: Request) -> Response:
        if action != "rate_limit":
            return super()._fault_response(action, req)
        subcode, message = THROTTLES[self.rate_limit_code]
        error = GraphError(self.rate_limit_code, message, subcode=subcode)
        minutes = max(1, math.ceil(req.record.get("retry_after", 1) / 60))
        usage = {
            self.ad_account_id.removeprefix("act_"): [
                {
                    "type": "custom_audience",
                    "call_count": 100,
                    "total_cputime": 25,
                    "total_time": 25,
                    "estimated_time_to_regain_access": minutes,
                }
            ]
        }
        return Response.json(400, self._error_json(error), headers=[("X-Business-Use-Case-Usage", json.dumps(usage))])

    def _error_json(self, error: GraphError) -> dict:
        with self._lock:
            self._trace += 1
            trace = f"A{self._trace:08d}Zmeta"
        body = {
            "message": error.message,
            "type": error.kind,
            "code": error.code,
            "is_transient": error.transient,
            "fbtrace_id": trace,
        }
        if error.subcode is not None:
            body["error_subcode"] = error.subcode
        return {"error": body}

    def handle(self, req: Request) -> Response:
        try:
            return Response.json(200, self._handle(req))
        except GraphError as error:
            return Response.json(error.status, self._error_json(error))

    def _params(self, req: Request) -> dict[str, str]:
        params = {name: values[-1] for name, values in req.query.items()}
        if not req.body:
            return params
        content_type = req.headers.get("Content-Type") or ""
        if content_type.startswith("multipart/form-data"):
            params.update(_multipart(req.body, content_type))
        elif content_type.startswith("application/json"):
            try:
                body = req.json()
            except ValueError as exc:
                raise GraphError(100, f"(#100) The request body is not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise GraphError(100, "(#100) The request body must be a JSON object")
            params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()})
        else:
            try:
                form = parse_qs(req.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise GraphError(100, "(#100) The request body is not UTF-8") from None
            params.update({name: values[-1] for name, values in form.items()})
        return params

    def _check_token(self, req: Request, params: dict) -> None:
        given = params.get("access_token")
        header = req.headers.get("Authorization") or ""
        for scheme in ("Bearer ", "OAuth "):
            if header.startswith(scheme):
                given = header[len(scheme) :].strip()
        if not given:
            raise GraphError(104, "An access token is required to request this resource.")
        if given in self.revoked:
            raise GraphError(
                190,
                "Error validating access token: The session has been invalidated because the user "
                "changed their password or Facebook has changed the session for security reasons.",
                subcode=463,
                status=401,
            )
        if given != self.token:
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")

    def _handle(self, req: Request) -> dict:
        me = ME_PATH.match(req.path)
        match = PATH.match(req.path)
        if match is None and me is None:
            raise GraphError(2500, f"Unknown path components: {req.path}")
        params = self._params(req)
        self._check_token(req, params)
        verb = {"GET": "get", "POST": "post", "DELETE": "delete"}.get(req.method, req.method.lower())
        if me is not None:
            return self._me(req, me.group(2), params, verb)
        _, audience_id, edge = match.groups()
        with self._lock:
            known = audience_id in self._known or (self.auto_create and audience_id.isdigit())
            if known and audience_id not in self._members:
                self._members[audience_id], self._index[audience_id] = {}, {}
        if not known:
            raise GraphError(
                100,
                f"Unsupported {verb} request. Object with ID '{audience_id}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation. Please read "
                "the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                subcode=33,
                kind="GraphMethodException",
            )
        if audience_id in self.forbidden:
            raise GraphError(200, f"(#200) The current user can not update audience {audience_id}", status=403)
        if edge is None:
            if req.method != "GET":
                raise GraphError(100, f"Unsupported {verb} request on a custom audience node.")
            return self._read(audience_id, params)
        if edge == "users" and req.method not in ("POST", "DELETE"):
            raise GraphError(100, f"Unsupported {verb} request on the users edge.")
        if edge == "usersreplace" and req.method != "POST":
            raise GraphError(100, f"Unsupported {verb} request on the usersreplace edge.")
        schema, rows = self._payload(params)
        req.set_rows(len(rows))
        with self._lock:
            times, failure = self._fail_next
            if times > 0:
                self._fail_next = (times - 1, failure)
                raise failure
            if edge == "usersreplace":
                return self._replace(audience_id, params, schema, rows)
            if audience_id in self._sessions:
                raise GraphError(2650, "Failed to update the custom audience: a replace session is in progress on it")
            valid, invalid, samples = self._valid(schema, rows)
            for person in valid:
                (self._add if req.method == "POST" else self._remove)(audience_id, person)
            if req.method == "POST":
                self._rows_added += len(valid)
            else:
                self._rows_removed += len(valid)
            self._uploads += 1
            return self._answer(audience_id, len(rows), invalid, samples, session_id=self._uploads)

    # -- payloads ----------------------------------------------------------------------------

    def _payload(self, params: dict) -> tuple[list[str], list[list]]:
        if "payload" not in params:
            raise GraphError(100, "(#100) The parameter payload is required")
        try:
            payload = json.loads(params["payload"])
        except ValueError:
            raise GraphError(100, "(#100) Param payload must be a JSON object with schema and data") from None
        if not isinstance(payload, dict):
            raise GraphError(100, "(#100) Param payload must be a JSON object with schema and data")
        schema = payload.get("schema")
        if isinstance(schema, str):
            schema = [schema]
        if not isinstance(schema, list) or not schema or not all(isinstance(k, str) for k in schema):
            raise GraphError(100, "(#100) Param payload[schema] must be a non-empty list of keys")
        unknown = [k for k in schema if k not in KEYS]
        if unknown:
            raise GraphError(100, f"(#100) Invalid schema field: {unknown[0]}. Use {', '.join(KEYS)}")
        if len(set(schema)) != len(schema):
            raise GraphError(100, "(#100) Param payload[schema] names a key twice")
        data = payload.get("data")
        if not isinstance(data, list) or not data:
            raise GraphError(100, "(#100) Param payload[data] must be a non-empty list")
        if len(data) > MAX_ROWS:
            raise GraphError(100, f"(#100) Too many users in one request: {len(data):,}; at most {MAX_ROWS:,}")
        for index, row in enumerate(data):
            if not isinstance(row, list) or len(row) != len(schema) or not all(isinstance(v, str) for v in row):
                raise GraphError(100, f"(#100) payload[data][{index}] must be a list of {len(schema)} texts, one per schema key")
        return schema, data

    @staticmethod
    def _valid(schema, rows) -> tuple[list[tuple], int, dict]:
        """(people, rows with no valid key, a few samples of what was wrong)."""
        people, invalid, samples = [], 0, {}
        for row in rows:
            pairs = []
            for key, value in zip(schema, row, strict=True):
                if value == "":
                    continue
                if key in HASHED_KEYS and not SHA256.match(value):
                    if len(samples) < 10:
                        samples[value[:64]] = f"{key} is not a SHA-256 hash in lower-case hex"
                    continue
                pairs.append((key, value))
            if pairs:
                people.append(tuple(sorted(pairs)))
            else:
                invalid += 1
        return people, invalid, samples

    def _answer(self, audience_id: str, received: int, invalid: int, samples: dict, *, session_id: int) -> dict:
        self._invalid += invalid
        return {
            "audience_id": audience_id,
            "session_id": str(session_id),
            "num_received": received,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": samples,
        }

    # -- membership --------------------------------------------------------------------------

    @staticmethod
    def _identity(person: tuple) -> list[tuple]:
        strong = [pair for pair in person if pair[0] in STRONG_KEYS]
        return strong or [("*", person)]

    def _matches(self, audience_id: str, person: tuple) -> set[tuple]:
        index = self._index[audience_id]
        return {index[pair] for pair in self._identity(person) if pair in index}

    def _drop(self, audience_id: str, member: tuple) -> None:
        self._members[audience_id].pop(member, None)
        for pair in self._identity(member):
            if self._index[audience_id].get(pair) == member:
                del self._index[audience_id][pair]

    def _add(self, audience_id: str, person: tuple) -> None:
        for member in self._matches(audience_id, person):
            self._drop(audience_id, member)
        self._members[audience_id][person] = None
        for pair in self._identity(person):
            self._index[audience_id][pair] = person

    def _remove(self, audience_id: str, person: tuple) -> None:
        for member in self._matches(audience_id, person):
            self._drop(audience_id, member)

    # -- replace sessions --------------------------------------------------------------------

    def _replace(self, audience_id: str, params: dict, schema, rows) -> dict:
        if "session" not in params:
            raise GraphError(100, "(#100) The parameter session is required")
        try:
            session = json.loads(params["session"])
        except ValueError:
            raise GraphError(100, "(#100) Param session must be a JSON object") from None
        if not isinstance(session, dict):
            raise GraphError(100, "(#100) Param session must be a JSON object")
        session_id, seq = session.get("session_id"), session.get("batch_seq")
        last, total = session.get("last_batch_flag", False), session.get("estimated_num_total")
        if not isinstance(session_id, int) or isinstance(session_id, bool) or not 0 < session_id < 2**63:
            raise GraphError(100, "(#100) Param session[session_id] must be a positive 64-bit integer")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise GraphError(100, "(#100) Param session[batch_seq] must be an integer from 1")
        if not isinstance(last, bool):
            raise GraphError(100, "(#100) Param session[last_batch_flag] must be true or false")
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
            raise GraphError(100, "(#100) Param session[estimated_num_total] must be a whole number")
        open_session = self._sessions.get(audience_id)
        if open_session is None or open_session["session_id"] != session_id:
            if seq != 1:
                raise GraphError(100, f"(#100) Replace session {session_id} is not open: its first batch_seq must be 1")
            open_session = self._sessions[audience_id] = {
                "session_id": session_id,
                "batches": 0,
                "last_seq": 0,
                "named": set(),
                "received": 0,
                "estimated_num_total": total,
                "started_at": time.time(),
            }
        if seq not in (open_session["last_seq"], open_session["last_seq"] + 1):
            raise GraphError(100, f"(#100) batch_seq {seq} is out of order: the session is at {open_session['last_seq']}")
        valid, invalid, samples = self._valid(schema, rows)
        for person in valid:
            self._add(audience_id, person)
            open_session["named"].add(person)
        self._rows_added += len(valid)
        open_session["last_seq"] = seq
        open_session["batches"] += 1
        open_session["received"] += len(rows)
        if last:
            kept = {member for person in open_session["named"] for member in self._matches(audience_id, person)}
            removed = [m for m in self._members[audience_id] if m not in kept]
            for member in removed:
                self._drop(audience_id, member)
            self._rows_removed += len(removed)
            del self._sessions[audience_id]
            self._replaces.append(
                {
                    "audience_id": audience_id,
                    "session_id": session_id,
                    "batches": open_session["batches"],
                    "received": open_session["received"],
                    "removed": len(removed),
                    "estimated_num_total": open_session["estimated_num_total"],
                }
            )
        return self._answer(audience_id, len(rows), invalid, samples, session_id=session_id)

    # -- reading -----------------------------------------------------------------------------

    def approximate_count(self, audience_id: str) -> tuple[int, int]:
        with self._lock:
            matched = math.floor(len(self._members.get(audience_id, {})) * self.match_share)
        return matched - matched // 20, matched + matched // 20

    def _read(self, audience_id: str, params: dict) -> dict:
        fields = [f.strip() for f in (params.get("fields") or "id").split(",") if f.strip()]
        unknown = [f for f in fields if f not in READABLE_FIELDS]
        if unknown:
            raise GraphError(100, f"(#100) Tried accessing nonexisting field ({unknown[0]}) on node type (CustomAudience)")
        lower, upper = self.approximate_count(audience_id)
        with self._lock:
            replacing = audience_id in self._sessions
        values = {
            "id": audience_id,
            "name": f"Audience {audience_id}",
            "subtype": "CUSTOM",
            "approximate_count_lower_bound": lower,
            "approximate_count_upper_bound": upper,
            "operation_status": {"code": 200, "description": "Replace in progress" if replacing else "Normal"},
            "time_content_updated": int(time.time()),
        }
        return {"id": audience_id, **{f: values[f] for f in fields}}

    @staticmethod
    def _fields(params: dict, known: tuple[str, ...], default: str, node_type: str) -> list[str]:
        fields = [f.strip() for f in (params.get("fields") or default).split(",") if f.strip()]
        unknown = [f for f in fields if f not in known]
        if unknown:
            raise GraphError(100, f"(#100) Tried accessing nonexisting field ({unknown[0]}) on node type ({node_type})")
        return fields

    def _me(self, req: Request, edge: str | None, params: dict, verb: str) -> dict:
        """The token's user, or (`adaccounts`) the ad accounts it reaches, a page at a time."""
        if req.method != "GET":
            raise GraphError(100, f"Unsupported {verb} request on the {'adaccounts edge' if edge else 'user node'}.")
        if edge is None:
            fields = self._fields(params, USER_FIELDS, "id,name", "User")
            with self._lock:
                user = dict(self.user)
            return {"id": user["id"], **{f: user[f] for f in fields}}
        if not self.ads_permission:
            raise GraphError(200, "(#200) Requires ads_management or ads_read permission to read the ad accounts", status=403)
        fields = self._fields(params, AD_ACCOUNT_FIELDS, "id,account_id", "AdAccount")
        try:
            limit = int(params.get("limit") or 25)
            start = int(base64.b64decode(params["after"]).decode()) if params.get("after") else 0
        except (ValueError, UnicodeDecodeError):
            raise GraphError(100, "(#100) limit must be a whole number and after a cursor this edge gave") from None
        if limit < 1:
            raise GraphError(100, "(#100) limit must be a positive number")
        with self._lock:
            accounts = [dict(a) for a in self.ad_accounts]
        page = accounts[start : start + limit]
        answer = {"data": [{"id": a["id"], **{f: a[f] for f in fields}} for a in page]}
        if page:
            after = _cursor(start + len(page))
            answer["paging"] = {"cursors": {"before": _cursor(start), "after": after}}
            if start + len(page) < len(accounts):
                answer["paging"]["next"] = f"{self.url}{req.path}?fields={','.join(fields)}&limit={limit}&after={after}"
        return answer

    # -- what tests look at ------------------------------------------------------------------

    def members(self, audience_id: str) -> set[tuple]:
        """The people in an audience, each as its sorted ((key, value), ...) tuple."""
        with self._lock:
            return set(self._members.get(str(audience_id), {}))

    def replaces(self) -> list[dict]:
        """Finished replace sessions: audience_id, session_id, batches, received, removed."""
        with self._lock:
            return [dict(r) for r in self._replaces]

    def open_session(self, audience_id: str) -> dict | None:
        with self._lock:
            session = self._sessions.get(str(audience_id))
            return {k: v for k, v in session.items() if k != "named"} if session else None

    def counters(self) -> dict:
        return {
            "rows_added": self._rows_added,
            "rows_removed": self._rows_removed,
            "invalid_entries": self._invalid,
            "replaces": len(self._replaces),
            "members": {a: len(m) for a, m in self._members.items()},
        }

    def extra_state(self, req: Request) -> dict:
        state = {"open_sessions": {a: s["session_id"] for a, s in self._sessions.items()}}
        if req.param("members") in ("1", "true", "yes"):
            state["members"] = {a: [dict(p) for p in sorted(m)] for a, m in self._members.items()}
        return state


def build(argv: list[str] | None = None) -> MetaServer:
    parser = arg_parser("Meta Marketing API (custom audiences) contract server (loopback).")
    parser.add_argument("--token", default="test-meta-token", help="the access token (Bearer) it accepts")
    parser.add_argument("--audience", action="append", default=[], help="a custom audience id it knows (repeat)")
    parser.add_argument("--auto-create", action="store_true", help="know every numeric audience id")
    parser.add_argument("--match-share", type=float, default=1.0, help="share of members Meta 'matched', for the counts")
    parser.add_argument(
        "--rate-limit-code",
        type=int,
        default=80003,
        choices=sorted(THROTTLES),
        help="the error code the token bucket answers with (default 80003)",
    )
    args = parser.parse_args(argv)
    audiences = args.audience or (() if args.auto_create else ("1000",))
    return MetaServer(
        args.token,
        audiences=audiences,
        auto_create=args.auto_create,
        match_share=args.match_share,
        rate_limit_code=args.rate_limit_code,
        **common_kwargs(args),
    )


def main(argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))


if __name__ == "__main__":
    sys.exit(main())
