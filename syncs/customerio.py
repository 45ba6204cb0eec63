"""Customer.io App API client: segments and their members, customer attributes.

    GET  /v1/segments
    GET  /v1/segments/<id>/membership?start=<cursor>&limit=<≤30000>
    POST /v1/customers/attributes  {"ids": [≤100]}

Bearer app key; 10 requests a second (a client-side limiter keeps under it, and a 429 is
waited out for its Retry-After); US and EU hosts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .http import RateLimiter, TransportError, refused, request

HOSTS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
PAGE_LIMIT = 30000
ATTRIBUTE_IDS_PER_CALL = 100
MAX_TRIES = 6


class AppApiClient:
    def __init__(self, workspace, *, sleep=time.sleep):
        self.base_url = (workspace.base_url or HOSTS[workspace.region]).rstrip("/")
        self.app_key = workspace.credentials.get("app_key", "")
        self.timeout = workspace.timeout_s
        self.limiter = RateLimiter(workspace.rate_limit_per_s, sleep=sleep)
        self.requests = 0
        self.throttled = 0
        if not self.app_key:
            raise TransportError("the Customer.io workspace has no app key", permanent=True)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {self.app_key}", "Accept": "application/json"}
        last = "no attempt"
        for attempt in range(1, MAX_TRIES + 1):
            self.limiter.wait()
            self.requests += 1
            try:
                response = request(
                    method, url, headers=headers, timeout=self.timeout, who="Customer.io", passthrough=(404,), **kwargs
                )
            except TransportError as exc:
                if exc.permanent:
                    raise
                if exc.status == 429:
                    self.throttled += 1
                    self.limiter.hold(exc.retry_after or 1.0)
                    last = str(exc)
                    continue
                last = str(exc)
            else:
                if response.status_code >= 400:
                    raise refused(response, _error(response))
                try:
                    return response.json()
                except ValueError:
                    last = "the answer was not JSON"
            self.limiter.hold(min(30.0, 0.5 * 2**attempt))
        raise TransportError(f"Customer.io {method} {path}: {last} after {MAX_TRIES} tries")

    def list_segments(self) -> list[dict]:
        return self._call("GET", "/v1/segments").get("segments", [])

    def membership_pages(self, segment_id: int, *, limit: int = PAGE_LIMIT) -> Iterator[list[dict]]:
        """Pages of `{"id", "email", "cio_id"}`, following the cursor to the end."""
        cursor = None
        while True:
            params = {"limit": limit}
            if cursor:
                params["start"] = cursor
            page = self._call("GET", f"/v1/segments/{int(segment_id)}/membership", params=params)
            identifiers = page.get("identifiers")
            if identifiers is None:
                identifiers = [{"id": i} for i in page.get("ids", [])]
            yield identifiers
            cursor = page.get("next")
            if not cursor or not identifiers:
                return

    def customer_attributes(self, customer_ids: list[str]) -> dict[str, dict]:
        found = {}
        for start in range(0, len(customer_ids), ATTRIBUTE_IDS_PER_CALL):
            chunk = customer_ids[start : start + ATTRIBUTE_IDS_PER_CALL]
            answer = self._call("POST", "/v1/customers/attributes", json={"ids": chunk})
            for customer in answer.get("customers", []):
                if isinstance(customer, dict) and customer.get("id"):
                    found[str(customer["id"])] = customer.get("attributes") or {}
        return found


def _error(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        meta = body.get("meta") or {}
        if isinstance(meta, dict) and meta.get("error"):
            return str(meta["error"])
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e.get("detail", e)) if isinstance(e, dict) else str(e) for e in errors)
    return response.text[:200]
