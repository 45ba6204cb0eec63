"""TikTok, through the Business API's DMP custom audience endpoints (v1.3).

A batch goes as files of hashed identifiers, one per line, of the one type (`calculate_type`)
its audience was created with: additions first, then removals, each in two steps:

    POST {base}/open_api/v1.3/dmp/custom_audience/file/upload/   multipart: advertiser_id,
         calculate_type, file_signature (the file's MD5 hex), file          → data.file_path
    POST {base}/open_api/v1.3/dmp/custom_audience/update/        {advertiser_id,
         custom_audience_id, action: APPEND | REMOVE, file_paths: [file_path]}

and `read_back` asks `GET .../dmp/custom_audience/get/` for the audience's matched size
(`cover_num`). The connection test only reads: `GET /open_api/v1.3/advertiser/info/`
(advertiser_ids=["<id>"]: the token may operate the advertiser; its name and status), then
`GET .../dmp/custom_audience/list/` (one audience a page: the token may manage its audiences).

Every answer of TikTok's API is HTTP 200 with a `code` (0: done), a `message` and a
`request_id`; an error is a non-zero code inside that 200, so every body is read. The access
token travels in the `Access-Token` header.
"""

from __future__ import annotations

import hashlib
import json

from ...http import TransportError, refused, request
from ..base import OutRow, ReadBack, SendResult
from .identifiers import calculate_type_for

DEFAULT_BASE_URL = "https://business-api.tiktok.com"
API = "/open_api/v1.3/dmp/custom_audience/"
ADVERTISER_INFO = "/open_api/v1.3/advertiser/info/"
INFO_FIELDS = ("advertiser_id", "name", "status")
# the connection test blanks the token out of what it says; a shorter one would blank words
MASKED_TOKEN_MIN = 8
# A file may be up to 1 GB (some 15 million hashes); the outbox's largest batch is 5,000 rows.
MAX_BATCH = 5000
APPEND, REMOVE = "APPEND", "REMOVE"

# TikTok's return codes (API reference, Appendix - Return codes), by what to do about them.
RATE_LIMITED = {40016, 40100, 40133}  # the app's, or the advertiser's, requests per second on this path
# TikTok names no wait: its limits are per second, so try again after this long (the backoff
# grows from there with every attempt)
RATE_LIMIT_WAIT_S = 1.0
CREDENTIALS = {40001, 40102, 40104, 40105, 40106, 40113, 40119, 40125}  # no permission, token empty/expired/invalid
RETRYABLE = {40201, 40202, 60001}  # task not ready, write conflict, maintenance; and every 5xxxx


def tiktok_error(body: dict, *, what: str, may_have_arrived: bool = False) -> TransportError:
    """The error for a non-zero code, in TikTok's words with its request id."""
    code = body["code"]
    said = f"TikTok code {code} on {what}: {body.get('message') or 'no message'} (request_id {body.get('request_id') or '?'})"
    if code in RATE_LIMITED:
        return TransportError(f"rate limited: {said}", retry_after=RATE_LIMIT_WAIT_S, status=200)
    if code in RETRYABLE or 50000 <= code < 60000:
        return TransportError(said, status=200, may_have_arrived=may_have_arrived)
    if code in CREDENTIALS:
        return TransportError(f"TikTok refused the access token or its permissions: {said}", permanent=True, status=200)
    return TransportError(f"TikTok refused the request: {said}", permanent=True, status=200)


def read_answer(response, *, what: str, may_have_arrived: bool = False) -> dict:
    """The body of TikTok's answer when its code is 0; a TransportError otherwise. A status other
    than 200 comes from in front of the API (a wrong path or method): the request as sent."""
    if response.status_code != 200:
        raise refused(response, f"TikTok answered {what} with HTTP {response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or isinstance(body.get("code"), bool) or not isinstance(body.get("code"), int):
        raise TransportError(
            f"TikTok answered {what} without a return code: {response.text[:200]}", status=200, may_have_arrived=may_have_arrived
        )
    if body["code"] != 0:
        raise tiktok_error(body, what=what, may_have_arrived=may_have_arrived)
    return body


class Transport:
    max_batch = MAX_BATCH
    # TikTok applies a file to the audience asynchronously, so a second copy of a slow request
    # would bring nothing forward, and two updates of one audience at once risk the second being
    # refused while the first is processed
    hedge = False
    # a file upload, then the update that applies it (each counts against the rate limit)
    requests_per_batch = 2

    def __init__(self, destination):
        settings = destination.settings or {}
        self.base_url = (settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.advertiser_id = str(settings.get("advertiser_id") or "")
        self.token = destination.credentials.get("access_token", "")
        self.timeout = destination.timeout_s
        if not self.advertiser_id or not self.token:
            raise TransportError("TikTok needs an advertiser id (settings) and an access token (credentials)", permanent=True)

    def url(self, endpoint: str) -> str:
        return f"{self.base_url}{API}{endpoint}"

    def _post(self, endpoint: str, *, what: str, timeout: float, may_have_arrived: bool = False, **kwargs) -> dict:
        response = request(
            "POST", self.url(endpoint), timeout=timeout, who="TikTok", headers={"Access-Token": self.token}, **kwargs
        )
        return read_answer(response, what=what, may_have_arrived=may_have_arrived)

    def _get(self, path: str, *, what: str, params: dict) -> dict:
        response = request(
            "GET",
            f"{self.base_url}{path}",
            timeout=self.timeout,
            who="TikTok",
            headers={"Access-Token": self.token},
            params=params,
        )
        return read_answer(response, what=what)

    def check(self) -> str:
        """The token may operate the advertiser (advertiser/info: its name and status) and read
        its custom audiences (the DMP list, one a page): what a sync's upload and update need.
        Both read; nothing is uploaded."""
        try:
            info = self._get(
                ADVERTISER_INFO,
                what="the advertiser look-up",
                params={"advertiser_ids": json.dumps([self.advertiser_id]), "fields": json.dumps(list(INFO_FIELDS))},
            )
            data = info.get("data") if isinstance(info.get("data"), dict) else {}
            advertiser = next(
                (
                    item
                    for item in data.get("list") or []
                    if isinstance(item, dict) and str(item.get("advertiser_id")) == self.advertiser_id
                ),
                None,
            )
            if advertiser is None:
                raise TransportError(
                    f"TikTok's look-up of advertiser {self.advertiser_id} did not return it (request_id "
                    f"{info.get('request_id')}): check the advertiser id in the destination's settings",
                    permanent=True,
                    status=200,
                )
            listing = self._get(
                API + "list/",
                what="the custom audience list",
                params={"advertiser_id": self.advertiser_id, "page": 1, "page_size": 1},
            )
        except TransportError as exc:
            exc.args = (self._masked(str(exc)),)
            raise
        page_info = (listing.get("data") or {}).get("page_info") if isinstance(listing.get("data"), dict) else None
        total = page_info.get("total_number") if isinstance(page_info, dict) else None
        held = (
            f"it holds {total:,} custom audience{'' if total == 1 else 's'}"
            if isinstance(total, int) and not isinstance(total, bool)
            else "it may read its custom audiences"
        )
        status = advertiser.get("status")
        said = (
            f"TikTok accepted the access token for advertiser {advertiser.get('name') or self.advertiser_id} "
            f"({self.advertiser_id}{f', {status}' if status else ''}); {held}."
        )
        if status and status != "STATUS_ENABLE":
            said += f" TikTok marks the ad account {status}, not STATUS_ENABLE: its ads may not serve."
        return self._masked(said)

    def _masked(self, text: str) -> str:
        """The text with the access token blanked out, were TikTok ever to quote it back (a token
        too short to be a real one is left: blanking it would blank ordinary words)."""
        return text.replace(self.token, "••••") if len(self.token) >= MASKED_TOKEN_MIN else text

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        calculate_type = calculate_type_for(sync)
        audience_id = audience_id_of(sync)
        result = SendResult(requests=0, status=200, report={"request_ids": [], "file_paths": []})
        groups = {APPEND: [], REMOVE: []}
        for row in rows:
            if row.identifiers.get(calculate_type):
                groups[APPEND if row.is_enter else REMOVE].append(row)
            else:  # queued with another type's identifier (the type changed since): this file cannot carry it
                result.rejected[row.delivery_id] = (
                    f"no {calculate_type} identifier for this person: TikTok takes one identifier type per file"
                )
        # additions first: a batch's removals never take the audience under TikTok's minimum on the way
        for action, group in groups.items():
            if not group:
                continue
            try:
                self._apply(
                    action, group, calculate_type, audience_id, batch_id=batch_id, timeout=timeout or self.timeout, result=result
                )
            except TransportError as exc:
                if result.accepted:  # the additions went: the batch goes again whole (APPEND adds nobody twice)
                    exc.may_have_arrived = True
                raise
            result.accepted += [row.delivery_id for row in group]
        return result

    def _apply(
        self,
        action: str,
        rows: list[OutRow],
        calculate_type: str,
        audience_id: str,
        *,
        batch_id: str,
        timeout: float,
        result: SendResult,
    ) -> None:
        """Upload the rows' identifiers as one file, then APPEND or REMOVE it."""
        content = "".join(f"{line}\n" for line in dict.fromkeys(row.identifiers[calculate_type] for row in rows)).encode()
        upload = self._post(
            "file/upload/",
            what=f"the {action} file upload",
            timeout=timeout,
            data={
                "advertiser_id": self.advertiser_id,
                "calculate_type": calculate_type,
                "file_signature": hashlib.md5(content, usedforsecurity=False).hexdigest(),
            },
            files={"file": (f"downstream-{batch_id}-{action.lower()}.txt", content, "text/plain")},
        )
        result.requests += 1
        result.report["request_ids"].append(upload.get("request_id"))
        file_path = (upload.get("data") or {}).get("file_path") if isinstance(upload.get("data"), dict) else None
        if not isinstance(file_path, str) or not file_path:
            raise TransportError(
                f"TikTok's answer to the file upload carries no file_path (request_id {upload.get('request_id')})", status=200
            )
        result.report["file_paths"].append(file_path)
        update = self._post(
            "update/",
            what=f"the {action} update",
            timeout=timeout,
            may_have_arrived=True,
            json={
                "advertiser_id": self.advertiser_id,
                "custom_audience_id": audience_id,
                "action": action,
                "file_paths": [file_path],
            },
        )
        result.requests += 1
        result.report["request_ids"].append(update.get("request_id"))
        counted = "rows_appended" if action == APPEND else "rows_removed"
        result.report[counted] = result.report.get(counted, 0) + content.count(b"\n")

    def read_back(self, sync) -> ReadBack:
        """What TikTok says of the audience: its matched size (`cover_num`). TikTok tells no match
        rate, and its size counts the people it matched, a day or two after a file is applied."""
        audience_id = audience_id_of(sync)
        response = request(
            "GET",
            self.url("get/"),
            timeout=self.timeout,
            who="TikTok",
            headers={"Access-Token": self.token},
            params={"advertiser_id": self.advertiser_id, "custom_audience_ids": json.dumps([audience_id])},
        )
        body = read_answer(response, what="the audience look-up")
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        for item in data.get("list") or []:
            details = (item or {}).get("audience_details") if isinstance(item, dict) else None
            if isinstance(details, dict) and str(details.get("audience_id")) == audience_id:
                size = details.get("cover_num")
                size = size if isinstance(size, int) and not isinstance(size, bool) else None
                detail = (
                    f"TikTok audience {details.get('name') or audience_id}: {size:,} people matched"
                    if size is not None
                    else (f"TikTok audience {details.get('name') or audience_id}: no matched size yet")
                )
                if details.get("is_valid") is False:
                    detail += "; TikTok marks it not usable yet (still matching, or under 1,000 people matched)"
                return ReadBack(size=size, match_rate=None, detail=detail)
        raise TransportError(
            f"TikTok's look-up of custom audience {audience_id} did not return it (request_id {body.get('request_id')})",
            permanent=True,
            status=200,
        )


def audience_id_of(sync) -> str:
    """The sync's downstream audience id is TikTok's custom_audience_id, a number."""
    audience_id = sync.downstream_id
    if not (audience_id.isascii() and audience_id.isdigit()):
        raise TransportError(
            f"{audience_id!r} is not a TikTok custom_audience_id: set the sync's downstream audience id to the "
            "audience's id in TikTok Ads Manager (a number)",
            permanent=True,
        )
    return audience_id
