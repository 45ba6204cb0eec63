"""Meta Custom Audiences, through the Marketing API's customer-list edges.

- add: `POST {base}/{version}/{audience_id}/users`, remove: `DELETE` on the same edge, each with
  the multipart form field `payload={"schema": [...], "data": [[...], ...]}`: the schema names the match
  keys present in the request, each data row holds one person's values in schema order ("" for
  a key that person lacks). At most 10,000 rows a request.
- full replace: `POST {base}/{version}/{audience_id}/usersreplace` with the same payload and a
  `session` (see reconcile.py).
- read-back: `GET {base}/{version}/{audience_id}?fields=approximate_count_lower_bound,...`.
- connection test: `GET {base}/{version}/me?fields=id,name` (whom the token belongs to), then
  `GET {base}/{version}/me/adaccounts?fields=account_id,name,account_status` (the ad accounts it
  reaches: a customer-list audience belongs to one of them). Both read; nothing is written.

The access token travels as `Authorization: Bearer`, never in a URL (URLs end up in logs).
Meta answers errors as `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`,
mostly with HTTP 400, so those statuses are read here rather than by syncs.http.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from urllib.parse import quote

from ...http import TransportError, parse_retry_after, refused, request
from ..base import OutRow, ReadBack, SendResult

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
API_VERSION = re.compile(r"^v\d{1,3}\.\d{1,2}$")
MAX_BATCH = 10_000
# statuses whose body is Meta's own error, read here (429 and other 5xx stay with syncs.http)
PASSTHROUGH = (400, 401, 403, 404, 500)
# Meta's throttling codes: app (4), user (17), page (32), call-type (613) and the custom
# audience budget of the ad account (80003, also told by subcode 2446079)
THROTTLE_CODES = frozenset({4, 17, 32, 613, 80003})
THROTTLE_SUBCODES = frozenset({2446079})
# Most throttles name no wait; Meta's budgets are counted over a rolling hour, so a minute lets
# the window move on before the next call
DEFAULT_THROTTLE_WAIT_S = 60.0
READ_FIELDS = ("approximate_count_lower_bound", "approximate_count_upper_bound", "operation_status", "time_content_updated")
# the connection test reads one page of the token's ad accounts and names the first few
CHECK_ACCOUNTS, SHOWN_ACCOUNTS = 25, 5
# the connection test blanks the token out of what it says; a shorter one would blank words
MASKED_TOKEN_MIN = 8
# AdAccount.account_status, as the Marketing API reference numbers them
ACCOUNT_STATUS = {
    1: "active",
    2: "disabled",
    3: "unsettled",
    7: "pending risk review",
    8: "pending settlement",
    9: "in grace period",
    100: "pending closure",
    101: "closed",
}


def chunks(rows: list, size: int = MAX_BATCH):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def payload(rows, keys) -> dict:
    """The schema (the match keys any row carries, in the kind's order) and one data row per
    person in that order, with "" where a person lacks a key."""
    present = {name for row in rows for name in row.identifiers}
    schema = [key.name for key in keys if key.name in present]
    return {"schema": schema, "data": [[row.identifiers.get(name, "") for name in schema] for row in rows]}


def coverage_report(rows) -> dict:
    """How many rows carried each key: the identifier coverage of what went out."""
    counts = Counter(name for row in rows for name in row.identifiers)
    return {"rows": len(rows), **{f"rows_with_{name.lower()}": count for name, count in counts.items()}}


def answer_report(answer: dict) -> dict:
    """What Meta says of one upload: rows received, rows it could not read, a few samples."""
    samples = answer.get("invalid_entry_samples") or {}
    if isinstance(samples, dict):
        samples = [f"{value}: {reason}" for value, reason in samples.items()]
    elif not isinstance(samples, list):
        samples = [str(samples)]
    report = {
        name: answer[name]
        for name in ("num_received", "num_invalid_entries")
        if isinstance(answer.get(name), int) and not isinstance(answer.get(name), bool)
    }
    if samples:
        report["invalid_entry_samples"] = [str(s)[:200] for s in samples]
    return report


def add_up(total: dict, part: dict) -> dict:
    for name, value in part.items():
        if isinstance(value, list):
            total[name] = total.get(name, []) + value
        else:
            total[name] = total.get(name, 0) + value
    return total


def _error_of(response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _account_words(account: dict) -> str:
    """One ad account as the connection test names it: act_<id> (its name, its status)."""
    node = account.get("id") or (f"act_{account['account_id']}" if account.get("account_id") else "act_?")
    status = account.get("account_status")
    status = ACCOUNT_STATUS.get(status, f"status {status}") if status is not None else None
    details = ", ".join(str(part) for part in (account.get("name"), status) if part)
    return f"{node} ({details})" if details else str(node)


def throttle_wait(response) -> float:
    """Seconds to wait after a throttle: Meta's `estimated_time_to_regain_access` (minutes, in
    X-Business-Use-Case-Usage), a Retry-After if something in between sent one, else a minute."""
    minutes = 0.0
    try:
        usage = json.loads(response.headers.get("X-Business-Use-Case-Usage") or "{}")
    except ValueError:
        usage = {}
    for entries in usage.values() if isinstance(usage, dict) else ():
        for entry in entries if isinstance(entries, list) else ():
            wait = entry.get("estimated_time_to_regain_access") if isinstance(entry, dict) else None
            if isinstance(wait, (int, float)) and not isinstance(wait, bool):
                minutes = max(minutes, float(wait))
    seconds = max(minutes * 60, parse_retry_after(response.headers.get("Retry-After")) or 0.0)
    return seconds or DEFAULT_THROTTLE_WAIT_S


def meta_error(response, *, audience_id: str | None) -> TransportError:
    """Meta's error answer as a TransportError whose message says what to do about it.
    `audience_id` is None for a call about the token rather than one audience (the connection
    test): the advice then names the token and its ad accounts."""
    status = response.status_code
    error = _error_of(response)
    if error is None:
        if status >= 500:
            return TransportError(f"Meta answered {status} without an error body; retrying", status=status)
        return refused(response)
    code, subcode = error.get("code"), error.get("error_subcode")
    said = str(error.get("message") or "no message").strip().rstrip(".")
    ids = (
        f"code {code}"
        + (f", subcode {subcode}" if subcode else "")
        + (f", fbtrace_id {error['fbtrace_id']}" if error.get("fbtrace_id") else "")
    )
    said = f'"{said}" ({ids})'
    if code in THROTTLE_CODES or subcode in THROTTLE_SUBCODES:
        wait = throttle_wait(response)
        return TransportError(
            f"Meta is throttling calls for this ad account: {said}; the next call waits {wait:g} s",
            retry_after=wait,
            status=status,
        )
    if code == 190:
        return TransportError(
            f"Meta refused the access token: {said}. Create a new token (a system user's, with ads_management on the "
            "ad account) and save it on the destination.",
            permanent=True,
            status=status,
        )
    if code == 10 or (isinstance(code, int) and 200 <= code <= 299):
        if audience_id is None:
            return TransportError(
                f"Meta refused permission: {said}. Give the token's system user the ads_management permission and "
                "access to the ad account that owns the custom audiences.",
                permanent=True,
                status=status,
            )
        return TransportError(
            f"Meta refused permission for custom audience {audience_id}: {said}. Give the token's system user access "
            "to the ad account that owns the audience (ads_management) and accept the Custom Audience terms.",
            permanent=True,
            status=status,
        )
    if code == 2650 and audience_id is not None:
        return TransportError(f"Meta could not update custom audience {audience_id} just now: {said}; retrying", status=status)
    if code == 100:
        if audience_id is None:
            return TransportError(
                f"Meta refused the request as invalid: {said}. Check the destination's base URL and Graph API version.",
                permanent=True,
                status=status,
            )
        return TransportError(
            f"Meta refused the request as invalid: {said}. Check that the sync's downstream audience id ({audience_id}) "
            "is a customer-list custom audience of the token's ad account.",
            permanent=True,
            status=status,
        )
    if error.get("is_transient") is True or code in (1, 2):
        return TransportError(f"Meta had a temporary failure: {said}; retrying", status=status)
    return TransportError(f"Meta refused the request: {said}", permanent=True, status=status)


class Transport:
    max_batch = MAX_BATCH
    # every call counts against the ad account's custom-audience budget: a hedged copy costs
    # as much as the original, and Meta applies changes within hours, not seconds
    hedge = False
    # what the read-back's drift alert tells an on-call engineer to run (reconcile.py)
    repair = "python manage.py meta_reconcile {key}"

    def __init__(self, destination):
        settings = destination.settings or {}
        self.base_url = (settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.version = settings.get("api_version") or DEFAULT_API_VERSION
        self.token = destination.credentials.get("access_token", "")
        self.timeout = destination.timeout_s
        if not self.token:
            raise TransportError("Meta needs an access token (credentials): enter one on the destination", permanent=True)

    @staticmethod
    def audience_id(sync) -> str:
        audience_id = sync.downstream_id
        if not (audience_id.isascii() and audience_id.isdigit()):
            raise TransportError(
                f"{audience_id!r} is not a Meta custom audience id: set the sync's downstream audience id to the "
                "audience's number (Ads Manager → Audiences)",
                permanent=True,
            )
        return audience_id

    def url(self, audience_id: str, edge: str = "") -> str:
        return f"{self.base_url}/{self.version}/{quote(audience_id, safe='')}" + (f"/{edge}" if edge else "")

    def call(
        self, method: str, audience_id: str, edge: str = "", *, timeout: float | None = None, audience: bool = True, **kwargs
    ) -> dict:
        """One request on a node (a custom audience, or `me` with `audience=False`); Meta's
        answer as a dict, or the TransportError its error means."""
        response = request(
            method,
            self.url(audience_id, edge),
            timeout=timeout or self.timeout,
            passthrough=PASSTHROUGH,
            who="Meta",
            headers={"Authorization": f"Bearer {self.token}"},
            **kwargs,
        )
        if response.status_code >= 300:
            raise meta_error(response, audience_id=audience_id if audience else None)
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def check(self) -> str:
        """Whom the token belongs to (`GET /me?fields=id,name`) and which ad accounts it reaches
        (`GET /me/adaccounts`, one page): a sync's custom audience belongs to one of them, so a
        token that reaches none can update no audience. Both calls read; nothing is written."""
        try:
            me = self.call("GET", "me", params={"fields": "id,name"}, audience=False)
            who = f"{me.get('name') or 'an unnamed user'} (id {me.get('id') or '?'})"
            answer = self.call(
                "GET",
                "me",
                "adaccounts",
                audience=False,
                params={"fields": "account_id,name,account_status", "limit": CHECK_ACCOUNTS},
            )
        except TransportError as exc:
            exc.args = (self._masked(str(exc)),)
            raise
        data = answer.get("data") if isinstance(answer.get("data"), list) else []
        accounts = [account for account in data if isinstance(account, dict)]
        if not accounts:
            raise TransportError(
                self._masked(
                    f"Meta accepted the access token for {who}, but it reaches no ad account: give the token's system user "
                    "access to the ad account that owns the custom audiences (Business Settings → System users → Assign "
                    "assets), then test again."
                ),
                permanent=True,
                status=200,
            )
        more = isinstance(answer.get("paging"), dict) and bool(answer["paging"].get("next"))
        count = f"{len(accounts)}{'+' if more else ''}"
        named = ", ".join(_account_words(account) for account in accounts[:SHOWN_ACCOUNTS])
        if len(accounts) > SHOWN_ACCOUNTS or more:
            named += ", …"
        reach = f"ad account {named}" if count == "1" else f"{count} ad accounts: {named}"
        return self._masked(f"Meta accepted the access token for {who}; it reaches {reach}.")

    def _masked(self, text: str) -> str:
        """The text with the access token blanked out, were Meta ever to quote it back (a token
        too short to be a real one is left: blanking it would blank ordinary words)."""
        return text.replace(self.token, "••••") if len(self.token) >= MASKED_TOKEN_MIN else text

    def upload(
        self, method: str, audience_id: str, edge: str, rows: list[OutRow], keys, *, timeout=None, session: dict | None = None
    ) -> dict:
        """One request of at most MAX_BATCH rows; the report of what Meta said and what went."""
        # multipart fields, as Meta's own examples send them (`curl -F payload=...`): a 10,000-row
        # payload is ~6 MB of JSON, which URL-encoding would take seconds to escape
        form = {"payload": (None, json.dumps(payload(rows, keys), separators=(",", ":")), "application/json")}
        if session is not None:
            form["session"] = (None, json.dumps(session, separators=(",", ":")), "application/json")
        answer = self.call(method, audience_id, edge, timeout=timeout, files=form)
        return {**answer_report(answer), **coverage_report(rows)}

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        """Removals first (one DELETE a 10,000 rows), then additions (one POST a 10,000). A
        failure raises and the batch is retried whole: adds and removes are idempotent."""
        from ..registry import spec_for

        audience_id = self.audience_id(sync)
        keys = spec_for(sync.destination.kind).keys_for(sync)
        result = SendResult(requests=0)
        for method, part in (("DELETE", [r for r in rows if not r.is_enter]), ("POST", [r for r in rows if r.is_enter])):
            for chunk in chunks(part):
                add_up(result.report, self.upload(method, audience_id, "users", chunk, keys, timeout=timeout))
                result.requests += 1
                result.status = 200
                result.accepted += [r.delivery_id for r in chunk]
        return result

    def read_back(self, sync) -> ReadBack:
        """Meta's approximate count of the people it matched (a range: it never tells the exact
        number). No match rate of its own: the read-back derives one from the count."""
        audience_id = self.audience_id(sync)
        answer = self.call("GET", audience_id, params={"fields": ",".join(READ_FIELDS)})
        lower, upper = answer.get("approximate_count_lower_bound"), answer.get("approximate_count_upper_bound")
        status = answer.get("operation_status") if isinstance(answer.get("operation_status"), dict) else {}
        said = f" (Meta: {status['description']})" if status.get("description") and status.get("code") != 200 else ""
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (lower, upper)):
            return ReadBack(detail=f"Meta gives no count for custom audience {audience_id} yet{said}")
        size = math.floor((lower + upper) / 2)
        return ReadBack(size=size, detail=f"Meta counts {lower:,}–{upper:,} people in custom audience {audience_id}{said}")
