"""The one outbound HTTP layer: every destination, the Customer.io client and the alert
webhook send through `request`. One keep-alive session per thread that checks every address
(and every redirect) against syncs.addresses before anything leaves, any method and body
(JSON, bytes, multipart), and one reading of answers into `TransportError`."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter

USER_AGENT = "Downstream/0.1 (+audience sync)"


class TransportError(Exception):
    """A request that did not go through. `permanent` means retrying the same request will not
    help (bad credentials, a refused payload); `retry_after` is the destination's own wish;
    `may_have_arrived` means the request went out and no answer came (a timeout, a connection
    dropped mid-way), so the destination may have applied it."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        may_have_arrived: bool = False,
    ):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.status = status
        self.may_have_arrived = may_have_arrived


class RateLimiter:
    """At most `per_second` calls a second from this process: `wait()` before each call."""

    def __init__(self, per_second: float, sleep=time.sleep):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_at = 0.0
        self.sleep = sleep

    def wait(self):
        now = time.monotonic()
        if now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval

    def hold(self, seconds: float) -> None:
        """No call for `seconds` from now (a 429's Retry-After, a backoff)."""
        self.next_at = max(self.next_at, time.monotonic() + seconds)


_local = threading.local()


class CheckedSession(requests.Session):
    """Sends a request, and each redirect it follows, only where syncs.addresses allows: a
    permanent TransportError otherwise, before anything leaves."""

    def send(self, request, **kwargs):
        from .addresses import check_url

        check_url(request.url)
        return super().send(request, **kwargs)


def session() -> requests.Session:
    """One keep-alive session per thread (requests' Session is not thread-safe)."""
    if not hasattr(_local, "session"):
        s = CheckedSession()
        s.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _local.session = s
    return _local.session


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Captured(BaseException):
    """Raised by `request` inside `capturing()`: the request it would have sent, unsent. A
    BaseException, so that no transport's own error handling catches it."""

    def __init__(self, prepared: requests.PreparedRequest):
        super().__init__(prepared.method, prepared.url)
        self.prepared = prepared


_capture = threading.local()
_pacing = threading.local()


@contextmanager
def paced(before_next):
    """Within this block every request after the first calls `before_next()` before it goes: a
    destination's gate admits a transport's call once, and paces each further request the call
    makes (TikTok's update after its upload) against the same rate limit."""
    _pacing.before_next, _pacing.sent = before_next, 0
    try:
        yield
    finally:
        _pacing.before_next = None


@contextmanager
def capturing():
    """Within this block `request` sends nothing: it raises `Captured` with the request exactly
    as it would have gone on the wire (the editor's first-batch preview)."""
    _capture.on = True
    try:
        yield
    finally:
        _capture.on = False


def request(
    method: str, url: str, *, timeout: float, passthrough: tuple[int, ...] = (), who: str = "the destination", **kwargs
) -> requests.Response:
    """Send one request (requests' keyword arguments: json, data, files, params, headers) and
    turn every way of not getting a usable answer into a TransportError:

    - no connection: retryable, nothing arrived; no answer in time or a connection dropped
      after sending: retryable, `may_have_arrived`;
    - 429: retryable after its Retry-After; 5xx: retryable;
    - 401/403: permanent (the credentials); 404: permanent (the address or an id).

    Statuses in `passthrough` are returned for the caller to read (an API whose errors carry
    their own codes in the body); other answers, 2xx to 4xx, are returned as they are."""
    if getattr(_capture, "on", False):
        fields = {k: v for k, v in kwargs.items() if k in ("headers", "files", "data", "params", "json")}
        raise Captured(session().prepare_request(requests.Request(method, url, **fields)))
    before_next = getattr(_pacing, "before_next", None)
    if before_next is not None:
        if _pacing.sent:
            before_next()
        _pacing.sent += 1
    try:
        response = session().request(method, url, timeout=timeout, **kwargs)
    except TransportError:
        raise
    except requests.ConnectTimeout:
        raise TransportError(f"could not connect within {timeout:g} s")
    except requests.Timeout:
        raise TransportError(f"no answer within {timeout:g} s", may_have_arrived=True)
    except requests.ConnectionError as exc:
        # refused before anything was sent, or dropped after the request went out
        refused = "NewConnectionError" in repr(exc)
        raise TransportError(f"connection failed: {exc.__class__.__name__}", may_have_arrived=not refused)
    except requests.RequestException as exc:
        raise TransportError(f"request failed: {exc}")
    status = response.status_code
    if status in passthrough:
        return response
    if status == 429:
        raise TransportError("rate limited (429)", retry_after=parse_retry_after(response.headers.get("Retry-After")), status=429)
    if status >= 500:
        raise TransportError(f"server error {status}: {response.text[:200]}", status=status)
    if status in (401, 403):
        raise TransportError(f"{status}: {who} refused the credentials ({response.text[:200]})", permanent=True, status=status)
    if status == 404:
        raise TransportError(f"404: not found at {url} (check the base URL and ids)", permanent=True, status=404)
    return response


def refused(response: requests.Response, detail: str | None = None) -> TransportError:
    """The permanent error for an answer that refuses the request as sent (a 4xx the caller
    does not read further)."""
    return TransportError(f"{response.status_code}: {detail or response.text[:300]}", permanent=True, status=response.status_code)
