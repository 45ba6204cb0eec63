"""Google's Data Manager API (datamanager.googleapis.com), the parts Customer Match uses.

    POST /v1/audienceMembers:ingest        IngestAudienceMembersRequest  → {"requestId"}
    POST /v1/audienceMembers:remove        RemoveAudienceMembersRequest  → {"requestId"}
    GET  /v1/requestStatus:retrieve?requestId=...                        → {"requestStatusPerDestination": [...]}
    GET  /v1/accountTypes/{type}/accounts/{id}/userLists/{list}          → UserList (sizeInfo, match rate)
    GET  /v1/accountTypes/{type}/accounts/{id}/userLists?pageSize=n      → {"userLists": [...]}

Auth is `Authorization: Bearer <OAuth access token>`. Errors are Google's
`{"error": {"code", "message", "status", "details"}}` with `google.rpc.ErrorInfo` and
`google.rpc.BadRequest` details, as the API documents them. Checks, in this order: unknown path
or method 404 NOT_FOUND, auth 401 UNAUTHENTICATED, a scripted refusal (`refuse_next`), JSON and
field names 400 (proto3 JSON: an unknown name or a bad enum refuses the request), then:

- destinations: 1..10 (TOO_MANY_DESTINATIONS); an operating account other than this server's
  one, or a login account it does not know, 403 PERMISSION_DENIED; a user list it does not
  hold, 400 INVALID_USER_LIST_ID;
- audienceMembers: 1..10,000 (TOO_MANY_AUDIENCE_MEMBERS); `encoding` required for UserData
  (REQUIRED_FIELD_MISSING); on ingest, `termsOfService.customerMatchTermsOfServiceStatus` must
  be ACCEPTED (TERMS_AND_CONDITIONS_NOT_SIGNED); remove takes no consent and no terms;
- each member: userData with 1..10 identifiers, each exactly one of emailAddress, phoneNumber,
  address; a hash that is not HEX (or BASE64, as the request says) is INVALID_HEX_ENCODING at
  `audience_members.audience_members[i].user_data.user_identifiers`, one that does not decode to
  32 bytes INVALID_SHA256_FORMAT at `audience_members.audience_members[i]`; an address needs its
  four parts (hashed names, a two-letter region code, a postal code).

Fast fail: a request with any violation applies nothing. `validateOnly: true` checks and
applies nothing and answers `{}`.

What is applied: a user list holds members, each the frozenset of its identifiers
(`("emailAddress", hex)`, `("phoneNumber", hex)`, `("address", (given, family, region,
postal))`, hashes as lower-case hex). Ingest adds the member (merged with any member that shares
an identifier: one person); remove drops every member sharing an identifier with it. A member's
consent is its own `consent`, else the request's, part by part; either part CONSENT_DENIED is
not added and counts as PROCESSING_ERROR_REASON_DENIED_CONSENT in the request's status, and
with `require_consent` an unspecified ad_user_data is PROCESSING_ERROR_REASON_UNKNOWN_CONSENT.

Request statuses are kept by requestId: PROCESSING for the first `processing_polls` retrievals,
then SUCCESS, PARTIAL_SUCCESS (some records failed) or FAILED (all did), with record and
identifier counts and, for uploads, the match rate range. A member "matches" a Google user when
one of its hashes, read as a number in [0, 1) from its first 8 hex digits, is under
`match_share` (1.0: every valid member matches). The user list's size is its matched members,
its match rate their share of its members.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import sys
import threading
import uuid

from .common import ContractServer, Request, Response, arg_parser, common_kwargs, serve_until_signalled

MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
DOMAIN = "datamanager.googleapis.com"
CODES = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
ACCOUNT_TYPES = ("GOOGLE_ADS", "DISPLAY_VIDEO_PARTNER", "DISPLAY_VIDEO_ADVERTISER", "DATA_PARTNER")
CONSENT_STATUSES = ("CONSENT_STATUS_UNSPECIFIED", "CONSENT_GRANTED", "CONSENT_DENIED")
ENCODINGS = ("ENCODING_UNSPECIFIED", "HEX", "BASE64")
TERMS = ("TERMS_OF_SERVICE_STATUS_UNSPECIFIED", "ACCEPTED", "REJECTED")
USER_LIST = re.compile(r"^/v1/accountTypes/([^/]+)/accounts/([^/]+)/userLists(?:/([^/]+))?$")
PER_MINUTE_QUOTA = "IngestionMutateRequestsPerMinutePerProject"
MATCH_RATE_RANGES = (
    (20, "MATCH_RATE_RANGE_LESS_THAN_20"),
    (31, "MATCH_RATE_RANGE_20_TO_30"),
    (41, "MATCH_RATE_RANGE_31_TO_40"),
    (51, "MATCH_RATE_RANGE_41_TO_50"),
    (61, "MATCH_RATE_RANGE_51_TO_60"),
    (71, "MATCH_RATE_RANGE_61_TO_70"),
    (81, "MATCH_RATE_RANGE_71_TO_80"),
    (91, "MATCH_RATE_RANGE_81_TO_90"),
    (101, "MATCH_RATE_RANGE_91_TO_100"),
)

# Each message: its fields in proto3 JSON (camelCase) and their kinds. A name not here is
# "Unknown name ... Cannot find field", as Google's JSON parser answers.
STRING, BOOL, MESSAGE, LIST = "string", "bool", "message", "list"
SCHEMA = {
    "ingest": {
        "destinations": (LIST, "Destination"),
        "audienceMembers": (LIST, "AudienceMember"),
        "consent": (MESSAGE, "Consent"),
        "validateOnly": (BOOL, None),
        "encoding": (ENCODINGS, None),
        "encryptionInfo": (MESSAGE, "EncryptionInfo"),
        "termsOfService": (MESSAGE, "TermsOfService"),
    },
    "remove": {
        "destinations": (LIST, "Destination"),
        "audienceMembers": (LIST, "AudienceMember"),
        "validateOnly": (BOOL, None),
        "encoding": (ENCODINGS, None),
        "encryptionInfo": (MESSAGE, "EncryptionInfo"),
    },
    "Destination": {
        "reference": (STRING, None),
        "loginAccount": (MESSAGE, "ProductAccount"),
        "linkedAccount": (MESSAGE, "ProductAccount"),
        "operatingAccount": (MESSAGE, "ProductAccount"),
        "productDestinationId": (STRING, None),
    },
    "ProductAccount": {"accountId": (STRING, None), "accountType": (("ACCOUNT_TYPE_UNSPECIFIED", *ACCOUNT_TYPES), None)},
    "AudienceMember": {
        "userData": (MESSAGE, "UserData"),
        "pairData": (MESSAGE, "Ids"),
        "mobileData": (MESSAGE, "Ids"),
        "consent": (MESSAGE, "Consent"),
    },
    "Ids": {"pairIds": (LIST, STRING), "mobileIds": (LIST, STRING)},
    "UserData": {"userIdentifiers": (LIST, "UserIdentifier")},
    "UserIdentifier": {"emailAddress": (STRING, None), "phoneNumber": (STRING, None), "address": (MESSAGE, "AddressInfo")},
    "AddressInfo": {
        "givenName": (STRING, None),
        "familyName": (STRING, None),
        "regionCode": (STRING, None),
        "postalCode": (STRING, None),
    },
    "Consent": {"adUserData": (CONSENT_STATUSES, None), "adPersonalization": (CONSENT_STATUSES, None)},
    "TermsOfService": {"customerMatchTermsOfServiceStatus": (TERMS, None)},
    "EncryptionInfo": {},
}


@functools.lru_cache(maxsize=256)
def snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


class Refusal(Exception):
    """An error answer: canonical status, message, optional details."""

    def __init__(self, status: str, message: str, *, violations=(), reason: str | None = None, metadata=None, headers=()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, list(headers)
        self.violations = list(violations)
        self.reason = reason or status
        self.metadata = metadata

    def response(self) -> Response:
        return Response.json(
            CODES[self.status],
            error_body(self.status, self.message, violations=self.violations, reason=self.reason, metadata=self.metadata),
            headers=self.headers,
        )


def error_body(status: str, message: str, *, violations=(), reason: str | None = None, metadata=None) -> dict:
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason or status, "domain": DOMAIN}
    if metadata:
        info["metadata"] = metadata
    details = [info]
    if violations:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": list(violations)})
    return {"error": {"code": CODES[status], "message": message, "status": status, "details": details}}


def invalid(violations, message: str = "There was a problem with the request.") -> Refusal:
    return Refusal("INVALID_ARGUMENT", message, violations=violations)


def violation(field: str, reason: str, description: str | None = None) -> dict:
    found = {"field": field, "reason": reason}
    if description:
        found["description"] = description
    return found


def check_json(value, message: str, path: str) -> None:
    """proto3 JSON parsing: unknown names, wrong types and unknown enum values refuse the request."""
    fields = SCHEMA[message]
    if not isinstance(value, dict):
        raise invalid(
            [{"field": path or "body", "description": f"Invalid JSON payload received. Expected an object at '{path}'."}],
            "Invalid JSON payload received.",
        )
    for name, item in value.items():
        spec = fields.get(name)
        if spec is None:
            text = f"Invalid JSON payload received. Unknown name \"{name}\" at '{path}': Cannot find field."
            raise invalid([{"field": path or "body", "description": text}], text)
        if item is None:
            continue
        kind, inner = spec
        if isinstance(kind, tuple):  # an enum, by name
            if not (isinstance(item, str) and item in kind):
                refuse_value(path, name, f'"{item}"')
        elif kind == STRING:
            if not isinstance(item, str):
                refuse_value(path, name, f"(TYPE_STRING), {json.dumps(item)}")
        elif kind == BOOL:
            if not isinstance(item, bool):
                refuse_value(path, name, f"(TYPE_BOOL), {json.dumps(item)}")
        elif kind == MESSAGE:
            check_json(item, inner, f"{path}.{snake(name)}" if path else snake(name))
        elif not isinstance(item, list):
            refuse_value(path, name, "(a list is expected)")
        else:
            where = f"{path}.{snake(name)}" if path else snake(name)
            for index, element in enumerate(item):
                if inner != STRING:
                    check_json(element, inner, f"{where}[{index}]")
                elif not isinstance(element, str):
                    refuse_value(where, str(index), f"(TYPE_STRING), {json.dumps(element)}")


def refuse_value(path: str, name: str, shown: str):
    where = f"{path}.{snake(name)}" if path else snake(name)
    text = f"Invalid value at '{where}' {shown}"
    raise invalid([{"field": where, "description": text}], f"Invalid JSON payload received. {text}")


HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def decode_hash(value: str, encoding: str) -> str | None:
    """The hash as lower-case hex, or None when it is not in the request's encoding."""
    if encoding == "HEX":
        return value.lower() if HEX.fullmatch(value or "") else None
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


def effective_consent(member: dict, request: dict) -> dict:
    """The member's own consent, part by part, else the request's."""
    unspecified = "CONSENT_STATUS_UNSPECIFIED"
    return {
        part: next((v for v in (member.get(part), request.get(part)) if v and v != unspecified), unspecified)
        for part in ("adUserData", "adPersonalization")
    }


def match_share_of(hex_hash: str) -> float:
    return int(hex_hash[:8], 16) / 2**32


class GoogleDataManagerServer(ContractServer):
    """The Data Manager API for one OAuth access token and one operating account.

    `user_lists`: the user list ids the account holds (a set; `add_user_list` adds one).
    `login_accounts`: (type, id) pairs of manager accounts that may sign in for it.
    `match_share`, `require_consent`, `processing_polls`: see the module's docstring.
    `keep_members=False` keeps counts only (no members, no bodies), for very long runs."""

    name = "google"

    def __init__(
        self,
        token: str = "test-access-token",
        *,
        account_id: str = "1234567890",
        account_type: str = "GOOGLE_ADS",
        user_lists=("5550001",),
        login_accounts=(),
        match_share: float = 1.0,
        require_consent: bool = False,
        processing_polls: int = 0,
        keep_members: bool = True,
        **kwargs,
    ):
        self.token = token
        self.account = (account_type, account_id)
        self.user_lists = set(user_lists)
        self.login_accounts = set(login_accounts)
        self.match_share = match_share
        self.require_consent = require_consent
        self.processing_polls = processing_polls
        self.keep_members = keep_members
        self._refusals: list[Refusal] = []
        self._refusals_lock = threading.Lock()
        kwargs.setdefault("rate_limit_per_s", 5.0)
        super().__init__(**kwargs)

    @property
    def api_url(self) -> str:
        """What Downstream's Google base URL setting should be."""
        return self.url

    def add_user_list(self, user_list_id: str) -> None:
        with self._lock:
            self.user_lists.add(user_list_id)

    def refuse_next(
        self,
        status: str,
        times: int = 1,
        *,
        message: str | None = None,
        retry_after: int | None = None,
        quota_limit: str | None = None,
    ) -> None:
        """Answer the next `times` API requests with Google's error for a canonical status
        (UNAVAILABLE, RESOURCE_EXHAUSTED, PERMISSION_DENIED, ...), whatever they carry."""
        headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
        metadata = {"quota_limit": quota_limit} if quota_limit else None
        with self._refusals_lock:
            self._refusals += [
                Refusal(status, message or f"scripted {status}", metadata=metadata, headers=headers, reason=status)
            ] * times

    # -- recorded state --------------------------------------------------------------------

    def reset_state(self) -> None:
        with self._lock:
            super().reset_state()
            self._reset_google_state()

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._reset_google_state()

    def _reset_google_state(self) -> None:
        self._members: dict[str, set[frozenset]] = {}
        self._index: dict[str, dict[tuple, frozenset]] = {}  # list → identifier → the member holding it
        self._sizes: dict[str, int] = {}
        self._statuses: dict[str, dict] = {}
        self._received: list[dict] = []
        self._bodies: list[dict] = []
        self._members_received = 0
        self._members_ingested = 0
        self._members_removed = 0
        self._consent_failures = 0

    def error_body(self, status: int, message: str):
        if status == 429:
            return error_body(
                "RESOURCE_EXHAUSTED",
                f"Quota exceeded for quota metric 'Ingestion mutate requests' and limit '{PER_MINUTE_QUOTA}'.",
                metadata={"quota_limit": PER_MINUTE_QUOTA},
            )
        return error_body("INTERNAL", "Internal error encountered.")

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        try:
            return self._handle(req)
        except Refusal as refusal:
            return refusal.response()

    def _handle(self, req: Request) -> Response:
        route = {
            ("POST", "/v1/audienceMembers:ingest"): "ingest",
            ("POST", "/v1/audienceMembers:remove"): "remove",
            ("GET", "/v1/requestStatus:retrieve"): "status",
        }.get((req.method, req.path))
        user_list = USER_LIST.match(req.path) if req.method == "GET" else None
        if route is None and user_list is None:
            raise Refusal("NOT_FOUND", f"The requested URL {req.path} was not found on this server.")
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            raise Refusal(
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                reason="ACCESS_TOKEN_TYPE_UNSUPPORTED",
                headers=[("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')],
            )
        with self._refusals_lock:
            scripted = self._refusals.pop(0) if self._refusals else None
        if scripted:
            raise scripted
        if user_list and user_list.group(3) is None:
            return self._user_lists(req, *user_list.groups()[:2])
        if user_list:
            return self._user_list(*user_list.groups())
        if route == "status":
            return self._status(req.param("requestId"))
        try:
            body = req.json()
        except ValueError as exc:
            raise invalid([], f"Invalid JSON payload received. {exc}") from None
        check_json(body, route, "")
        return self._members_request(req, body, ingest=route == "ingest")

    def _destinations(self, body) -> list[str]:
        destinations = body.get("destinations") or []
        if not destinations:
            raise invalid([violation("destinations", "REQUIRED_FIELD_MISSING", "Destinations are required.")])
        if len(destinations) > MAX_DESTINATIONS:
            raise invalid(
                [
                    violation(
                        "destinations",
                        "TOO_MANY_DESTINATIONS",
                        f"Maximum number of destinations allowed per request is {MAX_DESTINATIONS}.",
                    )
                ]
            )
        lists = []
        for index, destination in enumerate(destinations):
            operating = destination.get("operatingAccount") or {}
            if not operating.get("accountId") or operating.get("accountType") in (None, "ACCOUNT_TYPE_UNSPECIFIED"):
                raise invalid(
                    [
                        violation(
                            f"destinations[{index}].operating_account",
                            "REQUIRED_FIELD_MISSING",
                            "The operating account's type and id are required.",
                        )
                    ]
                )
            login = destination.get("loginAccount")
            allowed = (operating.get("accountType"), operating.get("accountId")) == self.account and (
                login is None or (login.get("accountType"), login.get("accountId")) in self.login_accounts | {self.account}
            )
            if not allowed:
                raise Refusal("PERMISSION_DENIED", "The caller does not have permission", reason="PERMISSION_DENIED")
            list_id = destination.get("productDestinationId")
            if not list_id:
                raise invalid([violation(f"destinations[{index}].product_destination_id", "REQUIRED_FIELD_MISSING")])
            if list_id not in self.user_lists:
                raise invalid(
                    [
                        violation(
                            f"destinations[{index}].product_destination_id", "INVALID_USER_LIST_ID", "User list is not valid."
                        )
                    ]
                )
            lists.append(list_id)
        return lists

    def _member_identifiers(self, index: int, member: dict, encoding: str, problems: list) -> frozenset | None:
        where = f"audience_members.audience_members[{index}]"
        data = [k for k in ("userData", "pairData", "mobileData") if member.get(k) is not None]
        if data != ["userData"]:
            problems.append(
                violation(
                    where,
                    "INVALID_AUDIENCE_MEMBER",
                    "This server takes UserData members only." if data else "The member has no data.",
                )
            )
            return None
        identifiers = member["userData"].get("userIdentifiers") or []
        if not identifiers:
            problems.append(violation(f"{where}.user_data.user_identifiers", "REQUIRED_FIELD_MISSING"))
            return None
        if len(identifiers) > MAX_IDENTIFIERS:
            problems.append(
                violation(
                    f"{where}.user_data.user_identifiers",
                    "TOO_MANY_USER_IDENTIFIERS",
                    f"Maximum number of user identifiers allowed per audience member is {MAX_IDENTIFIERS}.",
                )
            )
            return None
        found = set()
        for identifier in identifiers:
            present = [k for k, v in identifier.items() if v is not None]
            if len(present) != 1:
                problems.append(
                    violation(
                        f"{where}.user_data.user_identifiers",
                        "INVALID_FORMAT",
                        "Exactly one of email_address, phone_number, address must be set.",
                    )
                )
                return None
            kind = present[0]
            if kind == "address":
                address = identifier["address"]
                parts = []
                for name, label in (("givenName", "Given name"), ("familyName", "Family name")):
                    hashed = decode_hash(address.get(name) or "", encoding)
                    if not address.get(name):
                        problems.append(
                            violation(f"{where}.user_data.user_identifiers", "REQUIRED_FIELD_MISSING", f"{label} is required.")
                        )
                        return None
                    if hashed is None:
                        problems.append(
                            violation(
                                f"{where}.user_data.user_identifiers",
                                "INVALID_HEX_ENCODING" if encoding == "HEX" else "INVALID_BASE64_ENCODING",
                                f"{label} is not {encoding.lower()} encoded.",
                            )
                        )
                        return None
                    if len(hashed) != 64:
                        problems.append(violation(where, "INVALID_SHA256_FORMAT"))
                        return None
                    parts.append(hashed)
                region, postal = address.get("regionCode") or "", (address.get("postalCode") or "").strip()
                if not re.fullmatch(r"[A-Z]{2}", region):
                    problems.append(
                        violation(
                            f"{where}.user_data.user_identifiers",
                            "INVALID_FORMAT",
                            "Region code must be an ISO-3166-1 alpha-2 code.",
                        )
                    )
                    return None
                if not postal:
                    problems.append(
                        violation(f"{where}.user_data.user_identifiers", "INVALID_POSTAL_CODE", "Postal code is not valid.")
                    )
                    return None
                found.add(("address", (*parts, region, postal)))
                continue
            hashed = decode_hash(identifier[kind], encoding)
            label = "Email" if kind == "emailAddress" else "Phone number"
            if hashed is None:
                problems.append(
                    violation(
                        f"{where}.user_data.user_identifiers",
                        "INVALID_HEX_ENCODING" if encoding == "HEX" else "INVALID_BASE64_ENCODING",
                        f"{label} is not {encoding.lower()} encoded.",
                    )
                )
                return None
            if len(hashed) != 64:
                problems.append(violation(where, "INVALID_SHA256_FORMAT"))
                return None
            found.add((kind, hashed))
        return frozenset(found)

    def _members_request(self, req: Request, body: dict, *, ingest: bool) -> Response:
        members = body.get("audienceMembers") or []
        req.set_rows(len(members))
        with self._lock:
            self._members_received += len(members)
        lists = self._destinations(body)
        if not members:
            raise invalid([violation("audience_members", "REQUIRED_FIELD_MISSING", "Audience members are required.")])
        if len(members) > MAX_MEMBERS:
            raise invalid(
                [
                    violation(
                        "audience_members",
                        "TOO_MANY_AUDIENCE_MEMBERS",
                        f"Maximum number of audience members allowed per request is {MAX_MEMBERS:,}.",
                    )
                ]
            )
        encoding = body.get("encoding") or "ENCODING_UNSPECIFIED"
        if encoding == "ENCODING_UNSPECIFIED":
            raise invalid([violation("encoding", "REQUIRED_FIELD_MISSING", "Encoding is required for UserData uploads.")])
        if ingest and (body.get("termsOfService") or {}).get("customerMatchTermsOfServiceStatus") != "ACCEPTED":
            raise invalid(
                [
                    violation(
                        "terms_of_service", "TERMS_AND_CONDITIONS_NOT_SIGNED", "Required terms and conditions are not accepted."
                    )
                ]
            )
        problems: list[dict] = []
        keys = [self._member_identifiers(i, m, encoding, problems) for i, m in enumerate(members)]
        if problems:
            raise invalid(problems)
        if body.get("validateOnly"):
            return Response.json(200, {})
        request_consent = body.get("consent") or {}
        request_id = uuid.uuid4().hex
        failures: dict[str, int] = {}
        applied = []
        for member, key in zip(members, keys, strict=True):
            consent = effective_consent(member.get("consent") or {}, request_consent)
            failure = None
            if ingest and "CONSENT_DENIED" in consent.values():
                failure = "PROCESSING_ERROR_REASON_DENIED_CONSENT"
            elif ingest and self.require_consent and consent["adUserData"] == "CONSENT_STATUS_UNSPECIFIED":
                failure = "PROCESSING_ERROR_REASON_UNKNOWN_CONSENT"
            if failure:
                failures[failure] = failures.get(failure, 0) + 1
            applied.append((key, consent, member.get("consent"), failure))
        with self._lock:
            if self.keep_members:
                self._bodies.append({"request_id": request_id, "action": "ingest" if ingest else "remove", "body": body})
            for list_id in lists:
                for key, consent, own, failure in applied:
                    if self.keep_members:
                        self._received.append(
                            {
                                "request_id": request_id,
                                "action": "ingest" if ingest else "remove",
                                "user_list": list_id,
                                "identifiers": key,
                                "consent": consent,
                                "member_consent": own,
                                "failure": failure,
                            }
                        )
                    if failure is None:
                        (self._add if ingest else self._remove)(list_id, key)
            matched = sum(1 for key, _, _, failure in applied if failure is None and self._matches(key))
            self._members_ingested += len(members) if ingest else 0
            self._members_removed += 0 if ingest else len(members)
            self._consent_failures += sum(failures.values())
            self._statuses[request_id] = {
                "action": "ingest" if ingest else "remove",
                "destinations": body["destinations"],
                "records": len(members),
                "identifiers": sum(len(k) for k in keys),
                "failures": failures,
                "matched": matched,
                "polls": 0,
            }
        return Response.json(200, {"requestId": request_id})

    def _matches(self, key: frozenset) -> bool:
        for kind, value in key:
            hashed = value[0] if kind == "address" else value
            if match_share_of(hashed) < self.match_share:
                return True
        return False

    def _add(self, list_id: str, key: frozenset) -> None:
        members = self._members.setdefault(list_id, set())
        index = self._index.setdefault(list_id, {})
        sizes = self._sizes
        merged = set(key)
        for identifier in key:
            other = index.get(identifier)
            if other is not None and other in members:
                members.discard(other)
                merged |= other
        merged = frozenset(merged)
        if self.keep_members:
            members.add(merged)
            for identifier in merged:
                index[identifier] = merged
        else:
            sizes[list_id] = sizes.get(list_id, 0) + 1

    def _remove(self, list_id: str, key: frozenset) -> None:
        members = self._members.setdefault(list_id, set())
        index = self._index.setdefault(list_id, {})
        if not self.keep_members:
            self._sizes[list_id] = max(0, self._sizes.get(list_id, 0) - 1)
            return
        for identifier in key:
            other = index.pop(identifier, None)
            if other is not None:
                members.discard(other)
                for held in other:
                    if index.get(held) is other:
                        del index[held]

    def _status(self, request_id: str | None) -> Response:
        with self._lock:
            status = self._statuses.get(request_id or "")
            if status is None:
                raise invalid([violation("request_id", "INVALID_REQUEST_ID", "The request ID is not valid.")])
            status["polls"] += 1
            processing = status["polls"] <= self.processing_polls
        failed = sum(status["failures"].values())
        if processing:
            state = "PROCESSING"
        elif failed == 0:
            state = "SUCCESS"
        else:
            state = "FAILED" if failed >= status["records"] else "PARTIAL_SUCCESS"
        answers = []
        for destination in status["destinations"]:
            answer = {"destination": destination, "requestStatus": state}
            if status["action"] == "ingest":
                data = {"recordCount": str(status["records"]), "userIdentifierCount": str(status["identifiers"])}
                if not processing:
                    share = 100 * status["matched"] / status["records"]
                    data["uploadMatchRateRange"] = next(name for limit, name in MATCH_RATE_RANGES if share < limit)
                answer["audienceMembersIngestionStatus"] = {"userDataIngestionStatus": data}
            else:
                answer["audienceMembersRemovalStatus"] = {
                    "userDataRemovalStatus": {
                        "recordCount": str(status["records"]),
                        "userIdentifierCount": str(status["identifiers"]),
                    }
                }
            if failed and not processing:
                answer["errorInfo"] = {
                    "errorCounts": [{"recordCount": str(n), "reason": reason} for reason, n in sorted(status["failures"].items())]
                }
            answers.append(answer)
        return Response.json(200, {"requestStatusPerDestination": answers})

    def _user_lists(self, req: Request, account_type: str, account_id: str) -> Response:
        if (account_type, account_id) != self.account:
            raise Refusal("PERMISSION_DENIED", "The caller does not have permission", reason="PERMISSION_DENIED")
        try:
            size = min(1000, int(req.param("pageSize") or 50))
        except ValueError:
            raise invalid([violation("page_size", "INVALID_FORMAT")]) from None
        lists = [json.loads(self._user_list(account_type, account_id, i).body) for i in sorted(self.user_lists)[:size]]
        return Response.json(200, {"userLists": lists} if lists else {})

    def _user_list(self, account_type: str, account_id: str, list_id: str) -> Response:
        if (account_type, account_id) != self.account:
            raise Refusal("PERMISSION_DENIED", "The caller does not have permission", reason="PERMISSION_DENIED")
        with self._lock:
            if list_id not in self.user_lists:
                raise Refusal(
                    "NOT_FOUND", f"User list accountTypes/{account_type}/accounts/{account_id}/userLists/{list_id} was not found."
                )
            members = self._members.get(list_id, set())
            total = len(members) if self.keep_members else self._sizes.get(list_id, 0)
            matched = sum(1 for m in members if self._matches(m)) if self.keep_members else round(total * self.match_share)
        return Response.json(
            200,
            {
                "name": f"accountTypes/{account_type}/accounts/{account_id}/userLists/{list_id}",
                "id": list_id,
                "displayName": f"Customer list {list_id}",
                "membershipStatus": "OPEN",
                "sizeInfo": {"displayNetworkMembersCount": str(matched), "searchNetworkMembersCount": str(matched)},
                "ingestedUserListInfo": {
                    "uploadKeyTypes": ["CONTACT_ID"],
                    "contactIdInfo": {
                        "dataSourceType": "DATA_SOURCE_TYPE_FIRST_PARTY",
                        "matchRatePercentage": round(100 * matched / total) if total else 0,
                    },
                },
            },
        )

    # -- what tests look at ----------------------------------------------------------------

    def members(self, user_list_id: str) -> set[frozenset]:
        with self._lock:
            return set(self._members.get(user_list_id, ()))

    def size(self, user_list_id: str) -> int:
        with self._lock:
            return len(self._members.get(user_list_id, ())) if self.keep_members else self._sizes.get(user_list_id, 0)

    def received(self) -> list[dict]:
        """Every member of every applied request, in order: request_id, action, user_list,
        identifiers, consent (as it applied), member_consent (as sent), failure."""
        with self._lock:
            return [dict(r) for r in self._received]

    def bodies(self) -> list[dict]:
        """The JSON body of every applied request: {request_id, action, body}."""
        with self._lock:
            return [dict(b) for b in self._bodies]

    def request_ids(self) -> list[str]:
        with self._lock:
            return list(self._statuses)

    def counters(self) -> dict:
        return {
            "members_received": self._members_received,
            "members_ingested": self._members_ingested,
            "members_removed": self._members_removed,
            "consent_failures": self._consent_failures,
            "requests_applied": len(self._statuses),
        }

    def extra_state(self, req: Request) -> dict:
        sizes = {
            list_id: (len(self._members.get(list_id, ())) if self.keep_members else self._sizes.get(list_id, 0))
            for list_id in sorted(self.user_lists)
        }
        state = {"user_lists": sizes, "request_ids": list(self._statuses)[-1000:]}
        if req.param("members") in ("1", "true", "yes"):
            state["members"] = {
                list_id: sorted(sorted(map(str, m)) for m in members) for list_id, members in self._members.items()
            }
        return state


def build(argv: list[str] | None = None) -> GoogleDataManagerServer:
    parser = arg_parser("Google Data Manager API contract server (loopback).", default_rate_limit=5.0)
    parser.add_argument("--token", default="test-access-token", help="the OAuth access token (Bearer) it takes")
    parser.add_argument("--account-id", default="1234567890", help="the operating account id")
    parser.add_argument("--account-type", default="GOOGLE_ADS", choices=ACCOUNT_TYPES)
    parser.add_argument("--user-list", action="append", default=[], help="a user list id it holds (repeat; default 5550001)")
    parser.add_argument("--login-account", action="append", default=[], help="TYPE:ID of a manager account that may sign in")
    parser.add_argument("--match-share", type=float, default=1.0, help="share of valid members that match, 0..1")
    parser.add_argument("--require-consent", action="store_true", help="an unspecified ad_user_data fails the member")
    parser.add_argument("--processing-polls", type=int, default=0, help="retrievals that answer PROCESSING first")
    parser.add_argument("--no-members", action="store_true", help="keep counts only")
    args = parser.parse_args(argv)
    return GoogleDataManagerServer(
        args.token,
        account_id=args.account_id,
        account_type=args.account_type,
        user_lists=args.user_list or ["5550001"],
        login_accounts=[tuple(a.split(":", 1)) for a in args.login_account],
        match_share=args.match_share,
        require_consent=args.require_consent,
        processing_polls=args.processing_polls,
        keep_members=not args.no_members,
        **common_kwargs(args),
    )


def main(argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))


if __name__ == "__main__":
    sys.exit(main())
