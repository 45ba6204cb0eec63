"""Google Customer Match through the Data Manager API (datamanager.googleapis.com).

Entries: POST {base}/v1/audienceMembers:ingest, exits: POST {base}/v1/audienceMembers:remove,
at most 10,000 AudienceMembers a request, each `{"userData": {"userIdentifiers": [...]}}`
with SHA-256 hex identifiers (`encoding: HEX`), sent to one destination: the operating
account and the user list (`productDestinationId`, the sync's downstream audience id).
Ingest carries the destination's default consent and the Customer Match terms of service;
a person's own consent rides on their member. Auth is `Authorization: Bearer <OAuth access
token>`.

The API fails fast: a request with one bad member applies nothing, and its 400 names the
members (`fieldViolations[].field` = `audience_members.audience_members[3]...`), so those
rows are refused and the others sent again on their own. The answer's `requestId` is kept in
the run's details; requestStatus:retrieve tells later what Google made of it (status.py).
"""

from __future__ import annotations

import re

from ...http import TransportError, parse_retry_after, refused, request
from ..base import OutRow, ReadBack, SendResult
from .identifiers import user_identifiers

DEFAULT_BASE_URL = "https://datamanager.googleapis.com"
MAX_BATCH = 10_000
ACCOUNT_TYPES = ("GOOGLE_ADS", "DISPLAY_VIDEO_PARTNER", "DISPLAY_VIDEO_ADVERTISER", "DATA_PARTNER")
GRANTED, DENIED, UNSPECIFIED = "CONSENT_GRANTED", "CONSENT_DENIED", "CONSENT_STATUS_UNSPECIFIED"
CONSENT_CHOICES = (GRANTED, DENIED, UNSPECIFIED)
TERMS_CHOICES = ("ACCEPTED", "REJECTED")
DEFAULT_CONSENT_ATTRIBUTE = "consent"
# a daily quota spent without a Retry-After: no point in trying again within the hour
DAILY_QUOTA_WAIT_S = 3600.0
# a member's own problem, as the API names it (a JSON parse error says `audience_members[3]`:
# the request as built is wrong, not that member)
MEMBER = re.compile(r"^audience_members\.audience_members\[(\d+)\]")
ANSWERS_READ = (400, 401, 403, 404, 429)


def account_id(value) -> str:
    """A Google Ads customer id as typed (123-456-7890) or as Google wants it (1234567890)."""
    return str(value or "").replace("-", "").strip()


def consent_value(value) -> str | None:
    """One consent as a person attribute may hold it: granted / denied (any case, or Google's
    CONSENT_GRANTED / CONSENT_DENIED) or true / false. None: not said."""
    if isinstance(value, bool):
        return GRANTED if value else DENIED
    if isinstance(value, str):
        word = value.strip().upper()
        return {"GRANTED": GRANTED, GRANTED: GRANTED, "DENIED": DENIED, DENIED: DENIED}.get(word)
    return None


def person_consent(value) -> dict:
    """{"ad_user_data": ..., "ad_personalization": ...} or one value for both → the parts said."""
    if isinstance(value, dict):
        parts = {
            "adUserData": consent_value(value.get("ad_user_data")),
            "adPersonalization": consent_value(value.get("ad_personalization")),
        }
    else:
        one = consent_value(value)
        parts = {"adUserData": one, "adPersonalization": one}
    return {k: v for k, v in parts.items() if v}


class GoogleError:
    """Google's error body, `{"error": {"code", "message", "status", "details"}}`, read safely."""

    def __init__(self, response):
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.http_status = response.status_code
        self.status = str(error.get("status") or "")
        self.message = str(error.get("message") or response.text[:300])
        details = error.get("details") if isinstance(error.get("details"), list) else []
        self.reasons = [d.get("reason") for d in details if isinstance(d, dict) and "ErrorInfo" in str(d.get("@type"))]
        self.quota_limits = [
            str((d.get("metadata") or {}).get("quota_limit") or "")
            for d in details
            if isinstance(d, dict) and isinstance(d.get("metadata"), dict)
        ]
        self.violations = [
            v
            for d in details
            if isinstance(d, dict) and isinstance(d.get("fieldViolations"), list)
            for v in d["fieldViolations"]
            if isinstance(v, dict)
        ]

    def describe(self) -> str:
        parts = [f"{self.http_status} {self.status}: {self.message}".strip()]
        for violation in self.violations[:5]:
            parts.append(" ".join(str(violation.get(k)) for k in ("field", "reason", "description") if violation.get(k)))
        return "; ".join(parts)

    def member_reasons(self, count: int) -> dict[int, str] | None:
        """{member index: reason} when every violation names a member of the request, else None
        (the request as a whole is wrong: nothing to gain by sending the other members)."""
        if not self.violations:
            return None
        found: dict[int, list[str]] = {}
        for violation in self.violations:
            match = MEMBER.match(str(violation.get("field") or ""))
            if not match or int(match.group(1)) >= count:
                return None
            reason = " ".join(str(violation[k]) for k in ("reason", "description") if violation.get(k)) or "invalid member"
            found.setdefault(int(match.group(1)), []).append(reason)
        return {index: "Google refused this member: " + "; ".join(reasons) for index, reasons in found.items()}

    def transport_error(self, response) -> TransportError:
        status = self.http_status
        if status == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if wait is None and any("PerDay" in q for q in self.quota_limits):
                wait = DAILY_QUOTA_WAIT_S
            return TransportError(f"Google's quota is spent ({self.describe()})", retry_after=wait, status=429)
        if status == 401:
            return TransportError(f"the access token was refused: {self.message}", permanent=True, status=401)
        if status == 403:
            return TransportError(
                f"Google refused access to the operating account ({self.describe()}): check the account "
                "ids and that the token's Google account can reach them",
                permanent=True,
                status=403,
            )
        if "TERMS_AND_CONDITIONS_NOT_SIGNED" in self.reasons + [v.get("reason") for v in self.violations]:
            return TransportError(
                f"Google refused the upload: the Customer Match terms of service are not accepted "
                f"({self.describe()}); accept them for the operating account and set "
                "customer_match_terms to ACCEPTED",
                permanent=True,
                status=status,
            )
        return refused(response, f"Google refused the request ({self.describe()})")


class Transport:
    max_batch = MAX_BATCH
    # Each request goes to one user list, so syncs are never mixed; and no hedging: a second
    # copy of a slow request costs quota (300 requests a minute for the whole project).
    hedge = False

    def __init__(self, destination):
        settings = destination.settings or {}
        self.base_url = (settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.operating_account = {
            "accountType": settings.get("operating_account_type") or "GOOGLE_ADS",
            "accountId": account_id(settings.get("operating_account_id")),
        }
        self.login_account = None
        if settings.get("login_account_id"):
            self.login_account = {
                "accountType": settings.get("login_account_type") or "GOOGLE_ADS",
                "accountId": account_id(settings.get("login_account_id")),
            }
        self.consent = {
            part: value
            for part, value in (
                ("adUserData", settings.get("ad_user_data")),
                ("adPersonalization", settings.get("ad_personalization")),
            )
            if value in (GRANTED, DENIED)
        }
        self.consent_attribute = settings.get("consent_attribute", DEFAULT_CONSENT_ATTRIBUTE)
        self.terms = settings.get("customer_match_terms") or ""
        self.token = destination.credentials.get("access_token", "")
        self.timeout = destination.timeout_s
        if not self.operating_account["accountId"] or not self.token:
            raise TransportError(
                "Google needs an operating account id (settings) and an OAuth access token (credentials)", permanent=True
            )

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def destination(self, user_list_id: str) -> dict:
        destination = {"operatingAccount": self.operating_account, "productDestinationId": str(user_list_id)}
        if self.login_account:
            destination["loginAccount"] = self.login_account
        return destination

    def member(self, row: OutRow, identifiers: list[dict], *, ingest: bool) -> dict:
        member = {"userData": {"userIdentifiers": identifiers}}
        own = person_consent(row.fields.get(self.consent_attribute)) if ingest and self.consent_attribute else {}
        if own:
            member["consent"] = {**self.consent, **own}
        return member

    def body(self, members: list[dict], user_list_id: str, *, ingest: bool) -> dict:
        body = {
            "destinations": [self.destination(user_list_id)],
            "audienceMembers": members,
            "encoding": "HEX",
            "validateOnly": False,
        }
        if ingest:
            if self.consent:
                body["consent"] = self.consent
            if self.terms:
                body["termsOfService"] = {"customerMatchTermsOfServiceStatus": self.terms}
        return body

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        """Exits through :remove, entries through :ingest, 10,000 members a request at most."""
        result = SendResult(requests=0)
        request_ids: list[str] = []
        for ingest in (False, True):
            group = [row for row in rows if row.is_enter == ingest]
            for start in range(0, len(group), MAX_BATCH):
                self._send_members(
                    group[start : start + MAX_BATCH],
                    sync.downstream_id,
                    ingest=ingest,
                    timeout=timeout or self.timeout,
                    result=result,
                    request_ids=request_ids,
                )
        accepted = set(result.accepted)
        sent = [row for row in rows if row.delivery_id in accepted]
        # which identifiers went out, for a low match rate's first question
        result.report = {
            f"rows_with_{key}": sum(1 for row in sent if row.identifiers.get(key)) for key in ("email", "phone", "address")
        }
        if request_ids:
            result.report["request_ids"] = request_ids
        return result

    def _send_members(self, rows, user_list_id, *, ingest, timeout, result, request_ids) -> None:
        pending = []  # (row, its AudienceMember)
        for row in rows:
            if identifiers := user_identifiers(row.identifiers):
                pending.append((row, self.member(row, identifiers, ingest=ingest)))
            else:
                result.rejected[row.delivery_id] = "no identifier Google matches on (email, phone or address)"
        url = f"{self.base_url}/v1/audienceMembers:{'ingest' if ingest else 'remove'}"
        # at most twice: the whole chunk, then the members Google did not object to
        for _ in range(2):
            if not pending:
                return
            response = request(
                "POST",
                url,
                json=self.body([m for _, m in pending], user_list_id, ingest=ingest),
                timeout=timeout,
                passthrough=ANSWERS_READ,
                who="Google",
                headers=self.headers,
            )
            result.requests += 1
            result.status = response.status_code
            if response.status_code < 300:
                result.accepted += [row.delivery_id for row, _ in pending]
                if request_id := _json(response).get("requestId"):
                    request_ids.append(str(request_id))
                return
            error = GoogleError(response)
            reasons = error.member_reasons(len(pending)) if response.status_code == 400 else None
            if reasons is None:
                raise error.transport_error(response)
            for index, reason in reasons.items():
                result.rejected[pending[index][0].delivery_id] = reason
            pending = [entry for index, entry in enumerate(pending) if index not in reasons]
        if pending:
            raise TransportError("Google refused members it had not objected to a moment before", status=result.status)

    def _get(self, path: str, *, params=None, headers=None, timeout=None) -> dict:
        response = request(
            "GET",
            f"{self.base_url}{path}",
            params=params,
            timeout=timeout or self.timeout,
            passthrough=ANSWERS_READ,
            who="Google",
            headers={**self.headers, **(headers or {})},
        )
        if response.status_code >= 300:
            raise GoogleError(response).transport_error(response)
        return _json(response)

    def _account_path(self) -> str:
        account = self.operating_account
        return f"/v1/accountTypes/{account['accountType']}/accounts/{account['accountId']}"

    def _login_header(self) -> dict:
        if not self.login_account:
            return {}
        login = self.login_account
        return {"login-account": f"accountTypes/{login['accountType']}/accounts/{login['accountId']}"}

    def check(self) -> str:
        """The token reaches the operating account: userLists.list, one list at most."""
        answer = self._get(f"{self._account_path()}/userLists", params={"pageSize": 1}, headers=self._login_header())
        seen = "it holds user lists" if answer.get("userLists") else "it holds no user list yet"
        return (
            f"Google accepted the access token for {self.operating_account['accountType']} account "
            f"{self.operating_account['accountId']}; {seen}."
        )

    def request_status(self, request_id: str, *, timeout: float | None = None) -> dict:
        """What Google made of one request: GET {base}/v1/requestStatus:retrieve?requestId=..."""
        return self._get("/v1/requestStatus:retrieve", params={"requestId": request_id}, timeout=timeout)

    def read_back(self, sync) -> ReadBack:
        """The user list as Google has it (userLists.get): its estimated size on the Display and
        Search networks (the larger is the size) and its Customer Match match rate."""
        user_list = self._get(f"{self._account_path()}/userLists/{sync.downstream_id}", headers=self._login_header())
        size_info = user_list.get("sizeInfo") if isinstance(user_list.get("sizeInfo"), dict) else {}
        display, search = _count(size_info.get("displayNetworkMembersCount")), _count(size_info.get("searchNetworkMembersCount"))
        info = user_list.get("ingestedUserListInfo") if isinstance(user_list.get("ingestedUserListInfo"), dict) else {}
        contact = info.get("contactIdInfo") if isinstance(info.get("contactIdInfo"), dict) else {}
        percentage = _count(contact.get("matchRatePercentage"))
        sizes = [n for n in (display, search) if n is not None]
        detail = ", ".join(
            f"{label} {n:,}" for label, n in (("Display network", display), ("Search network", search)) if n is not None
        )
        if percentage is not None:
            detail += f"{'; ' if detail else ''}match rate {percentage} %"
        return ReadBack(
            size=max(sizes) if sizes else None, match_rate=percentage / 100 if percentage is not None else None, detail=detail
        )


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _count(value) -> int | None:
    """An int64 as proto3 JSON writes it (a text) or as a number."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
