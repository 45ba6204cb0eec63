"""Shared machinery of the contract servers.

A contract server is a `ThreadingHTTPServer` on a loopback port. Every request that is not a
control request goes through the same steps, in this order:

1. it is logged (method, path, times, status, rows, fault) and counted in the 1-second window;
2. if it arrived while a Retry-After the server sent earlier was still running, it is recorded
   as a Retry-After violation (it is still served);
3. the `FaultPlan` draws its fate (deterministic for a given seed and arrival order);
4. the token bucket (if a rate limit is set) may answer 429 with Retry-After;
5. otherwise the fault, if any, is applied: `429`/`500` answer without processing, `reset`
   closes the connection with an RST without processing, `timeout` processes the request (its
   state is applied) and answers only after `slow_seconds`;
6. the subclass's `handle()` answers.

Control endpoints, never faulted, logged or rate-limited, and without auth:
`GET /__state__` (the observable state as JSON; `?requests=0` leaves the request log out, and
subclasses take more flags), `POST /__faults__` (change the fault plan or rate limit) and
`POST /__reset__` (forget all recorded state, keep the configuration).
"""

from __future__ import annotations

import argparse
import collections
import http
import http.server
import json
import math
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = ("429", "500", "timeout", "reset")
RETRY_AFTER_TOLERANCE = 0.05  # seconds a client may be early without it counting as a violation
CONTROL_PATHS = ("/__state__", "/__faults__", "/__reset__")


class FaultPlan:
    """Decides, request by request, whether to inject a fault and which one.

    Two numbers are drawn from `random.Random(seed)` for every request whatever the rate, so a
    given seed gives the same sequence of faults for the same sequence of requests. `rate` and
    the other attributes may be changed at any time (`plan.rate = 0` lets a test drain);
    `update()` does the same with validation.
    """

    FIELDS = ("rate", "kinds", "seed", "retry_after", "slow_seconds")

    def __init__(
        self,
        rate: float = 0.0,
        kinds: Iterable[str] = FAULT_KINDS,
        seed: int = 0,
        retry_after: float = 1.0,
        slow_seconds: float = 3.0,
    ):
        self._lock = threading.Lock()
        self.rate = 0.0
        self.kinds: tuple[str, ...] = FAULT_KINDS
        self.seed = seed
        self.retry_after = 1.0
        self.slow_seconds = 3.0
        self._rng = random.Random(seed)
        self.update(rate=rate, kinds=kinds, seed=seed, retry_after=retry_after, slow_seconds=slow_seconds)

    def update(self, **changes: Any) -> None:
        unknown = set(changes) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown fault plan fields: {sorted(unknown)}")
        rate = float(changes.get("rate", self.rate))
        kinds = tuple(str(k) for k in changes.get("kinds", self.kinds))
        retry_after = float(changes.get("retry_after", self.retry_after))
        slow_seconds = float(changes.get("slow_seconds", self.slow_seconds))
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        bad = [k for k in kinds if k not in FAULT_KINDS]
        if bad or (rate > 0 and not kinds):
            raise ValueError(f"kinds must be a non-empty subset of {list(FAULT_KINDS)}")
        if retry_after < 0 or slow_seconds < 0:
            raise ValueError("retry_after and slow_seconds must not be negative")
        with self._lock:
            self.rate, self.kinds = rate, kinds
            self.retry_after, self.slow_seconds = retry_after, slow_seconds
            if "seed" in changes:
                self.seed = int(changes["seed"])
                self._rng = random.Random(self.seed)

    def decide(self) -> str | None:
        """The fault for the next request, or None."""
        with self._lock:
            roll, pick = self._rng.random(), self._rng.random()
            if roll < self.rate and self.kinds:
                return self.kinds[int(pick * len(self.kinds))]
            return None

    @property
    def retry_after_header(self) -> int:
        return math.ceil(self.retry_after)

    def to_dict(self) -> dict:
        return {
            "rate": self.rate,
            "kinds": list(self.kinds),
            "seed": self.seed,
            "retry_after": self.retry_after,
            "slow_seconds": self.slow_seconds,
        }


class Request:
    """One request as a handler sees it. `record` is its entry in the request log."""

    __slots__ = ("method", "path", "query", "raw_query", "headers", "body", "received_at", "record", "client")

    def __init__(self, method, path, query, raw_query, headers, body, received_at, record=None, client=""):
        self.method = method
        self.path = path
        self.query = query  # dict[str, list[str]]
        self.raw_query = raw_query
        self.headers = headers  # email.message.Message: case-insensitive get()
        self.body = body
        self.received_at = received_at
        self.record = record
        self.client = client  # "host:port" of the client's end of the connection

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError (json.JSONDecodeError) when it is not."""
        return json.loads(self.body)

    def set_rows(self, n: int) -> None:
        if self.record is not None:
            self.record["rows"] = n


class Response:
    __slots__ = ("status", "body", "headers", "content_type")

    def __init__(self, status: int, body: bytes = b"", headers=(), content_type="application/json"):
        self.status = status
        self.body = body
        self.headers = list(headers)
        self.content_type = content_type

    @classmethod
    def json(cls, status: int, obj: Any, headers=()) -> Response:
        return cls(status, json.dumps(obj, separators=(",", ":")).encode(), headers)

    @classmethod
    def raw_json(cls, status: int, text: str, headers=()) -> Response:
        """For bodies a server built as JSON text itself (big pages)."""
        return cls(status, text.encode(), headers)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, contract: ContractServer):
        self.contract = contract
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self):
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self):
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):
            return  # the client went away, or we closed the socket ourselves (reset fault)
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "downstream-contract-server"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length < 0:
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self):
        contract: ContractServer = self.server.contract
        received_at = time.time()
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._write(Response.json(400, {"error": "bad Content-Length"}), None)
            return
        split = urlsplit(self.path)
        req = Request(
            self.command,
            split.path,
            parse_qs(split.query, keep_blank_values=True),
            split.query,
            self.headers,
            body,
            received_at,
            client="{}:{}".format(*self.client_address[:2]),
        )
        if split.path in CONTROL_PATHS:
            self._write(contract._control(req), None)
            return
        action, slow_seconds = contract._arrive(req)
        if action == "reset":
            self._reset()
            return
        if action in ("429", "500", "rate_limit"):
            response = contract._fault_response(action, req)
        else:
            response = contract._safe_handle(req)
            if action == "timeout":
                time.sleep(slow_seconds)
        self._write(response, req.record)

    def _write(self, response: Response, record: dict | None):
        try:
            phrase = http.HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        head = [
            f"HTTP/1.1 {response.status} {phrase}\r\n",
            f"Content-Type: {response.content_type}\r\n",
            f"Content-Length: {len(response.body)}\r\n",
        ]
        head.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + response.body
        if record is not None:
            self.server.contract._answered(record, response)
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _reset(self):
        """Close the connection abruptly: with SO_LINGER 0 the kernel sends an RST."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # rfile holds a reference to the socket; both must go for the real close() to happen.
        try:
            self.rfile.close()
        except OSError:
            pass
        sock.close()


class ContractServer:
    """Base of the contract servers. Subclasses implement `handle(req) -> Response`.

    `start()` returns the base URL (`http://127.0.0.1:PORT`); `stop()` shuts down; `with
    Server(...) as srv:` does both. All recorded state is guarded by `self._lock`.
    """

    name = "contract"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        rate_limit_per_s: float | None = None,
    ):
        self.host = host
        self.port = port
        self.faults = faults if faults is not None else FaultPlan()
        self._lock = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._set_rate_limit(rate_limit_per_s)
        self._reset_base_state()

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> str:
        if self._httpd is not None:
            return self.url
        self._httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-contract-server",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_all_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- what subclasses provide -----------------------------------------------------------

    def handle(self, req: Request) -> Response:
        raise NotImplementedError

    def family(self, path: str) -> str:
        """Requests in the same family share Retry-After windows. One family per server."""
        return "default"

    def error_body(self, status: int, message: str) -> Any:
        """The service's error body for an injected 429/500."""
        return {"error": message}

    def counters(self) -> dict:
        """Service-specific counters for `state()`; called with the lock held."""
        return {}

    def extra_state(self, req: Request) -> dict:
        """Service-specific parts of `/__state__`; called with the lock held."""
        return {}

    def reset_state(self) -> None:
        """Forget everything recorded; configuration (auth, faults, data served) is kept."""
        with self._lock:
            self._reset_base_state()

    # -- recorded state --------------------------------------------------------------------

    def _reset_base_state(self) -> None:
        self._log: list[dict] = []
        self._window: collections.deque[float] = collections.deque()
        self._max_in_window = 0
        self._not_before: dict[str, tuple[float, float, int]] = {}
        self._violations: list[dict] = []
        self._fault_counts = dict.fromkeys(FAULT_KINDS, 0)
        self._rate_limited = 0
        self._server_errors: list[dict] = []
        self._tokens = self._burst

    def _set_rate_limit(self, rate_limit_per_s: float | None) -> None:
        rate = float(rate_limit_per_s) if rate_limit_per_s else None
        if rate is not None and rate < 0:
            raise ValueError("rate_limit_per_s must be positive")
        self.rate_limit_per_s = rate
        self._burst = max(1.0, rate) if rate else 0.0
        self._tokens = self._burst
        self._bucket_at = time.monotonic()

    def set_rate_limit(self, rate_limit_per_s: float | None) -> None:
        with self._lock:
            self._set_rate_limit(rate_limit_per_s)

    def request_log(self) -> list[dict]:
        """Every non-control request: seq, method, path, query, status, received_at,
        answered_at, rows, fault (None, "429", "500", "timeout", "reset" or "rate_limit"),
        client ("127.0.0.1:<port>": the same port means the same keep-alive connection)."""
        with self._lock:
            return [dict(r) for r in self._log]

    @property
    def retry_after_violations(self) -> list[dict]:
        """Requests that arrived before a Retry-After this server sent had run out."""
        with self._lock:
            return [dict(v) for v in self._violations]

    @property
    def max_requests_in_any_1s_window(self) -> int:
        with self._lock:
            return self._max_in_window

    @property
    def server_errors(self) -> list[dict]:
        """Exceptions raised by this server's own code (a bug here, not in the client)."""
        with self._lock:
            return list(self._server_errors)

    def state(self, req: Request | None = None) -> dict:
        """What `GET /__state__` answers."""
        if req is None:
            req = Request("GET", "/__state__", {}, "", {}, b"", time.time())
        with self._lock:
            counters = {
                "requests": len(self._log),
                "faults": dict(self._fault_counts),
                "rate_limited": self._rate_limited,
                "retry_after_violations": len(self._violations),
                "max_requests_in_any_1s_window": self._max_in_window,
                "server_errors": len(self._server_errors),
            }
            counters.update(self.counters())
            state = {
                "server": self.name,
                "url": self.url,
                "faults": {**self.faults.to_dict(), "rate_limit_per_s": self.rate_limit_per_s},
                "counters": counters,
                "retry_after_violations": [dict(v) for v in self._violations],
                "server_errors": list(self._server_errors),
            }
            if req.param("requests", "1") not in ("0", "false", "no"):
                state["requests"] = [dict(r) for r in self._log]
            state.update(self.extra_state(req))
            return state

    # -- the request pipeline (called by _Handler) -----------------------------------------

    def _arrive(self, req: Request) -> tuple[str | None, float]:
        """Log the request, check Retry-After and the rate limit, draw the fault."""
        fault = self.faults.decide()
        slow_seconds = self.faults.slow_seconds
        t = req.received_at
        with self._lock:
            record = {
                "seq": len(self._log) + 1,
                "method": req.method,
                "path": req.path,
                "query": req.raw_query,
                "status": None,
                "received_at": t,
                "answered_at": None,
                "rows": None,
                "fault": None,
                "client": req.client,
            }
            self._log.append(record)
            req.record = record
            window = self._window
            window.append(t)
            while window[0] <= t - 1.0:
                window.popleft()
            self._max_in_window = max(self._max_in_window, len(window))
            family = self.family(req.path)
            pending = self._not_before.get(family)
            if pending is not None and t < pending[0] - RETRY_AFTER_TOLERANCE:
                self._violations.append(
                    {
                        "method": req.method,
                        "path": req.path,
                        "received_at": t,
                        "not_before": pending[0],
                        "early_by": round(pending[0] - t, 4),
                        "retry_after_sent_at": pending[1],
                        "retry_after": pending[2],
                    }
                )
            if self.rate_limit_per_s:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._bucket_at) * self.rate_limit_per_s)
                self._bucket_at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                else:
                    wait = (1.0 - self._tokens) / self.rate_limit_per_s
                    record["fault"] = "rate_limit"
                    record["retry_after"] = max(1, math.ceil(wait))
                    self._rate_limited += 1
                    return "rate_limit", 0.0
            if fault is not None:
                record["fault"] = fault
                self._fault_counts[fault] += 1
                if fault == "reset":
                    record["status"] = "reset"
                    record["answered_at"] = time.time()
        return fault, slow_seconds

    def _fault_response(self, action: str, req: Request) -> Response:
        if action == "500":
            return Response.json(500, self.error_body(500, "injected server error"))
        if action == "rate_limit":
            seconds = req.record.get("retry_after", 1)
        else:
            seconds = self.faults.retry_after_header
        return Response.json(429, self.error_body(429, "rate limit exceeded"), headers=[("Retry-After", str(seconds))])

    def _safe_handle(self, req: Request) -> Response:
        try:
            return self.handle(req)
        except Exception:
            with self._lock:
                self._server_errors.append({"method": req.method, "path": req.path, "traceback": traceback.format_exc()})
            return Response.json(500, self.error_body(500, "contract server bug"))

    def _answered(self, record: dict, response: Response) -> None:
        now = time.time()
        with self._lock:
            record["status"] = response.status
            record["answered_at"] = now
            if response.status == 429:
                for name, value in response.headers:
                    if name.lower() == "retry-after":
                        seconds = int(value)
                        family = self.family(record["path"])
                        current = self._not_before.get(family)
                        if current is None or now + seconds > current[0]:
                            self._not_before[family] = (now + seconds, now, seconds)

    def _control(self, req: Request) -> Response:
        if req.path == "/__state__":
            if req.method != "GET":
                return Response.json(405, {"error": "use GET"})
            return Response.json(200, self.state(req))
        if req.method != "POST":
            return Response.json(405, {"error": "use POST"})
        if req.path == "/__reset__":
            self.reset_state()
            return Response.json(200, {"reset": True})
        try:
            changes = req.json() if req.body else {}
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            changes = dict(changes)
            with self._lock:
                if "rate_limit_per_s" in changes:
                    self._set_rate_limit(changes.pop("rate_limit_per_s"))
                self.faults.update(**changes)
        except (ValueError, TypeError) as exc:
            return Response.json(400, {"error": str(exc)})
        return Response.json(200, {**self.faults.to_dict(), "rate_limit_per_s": self.rate_limit_per_s})


# -- running a server on its own ----------------------------------------------------------


def arg_parser(description: str, *, default_rate_limit: float | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted, 0..1")
    parser.add_argument("--fault-kinds", default=",".join(FAULT_KINDS), help="comma-separated subset of 429,500,timeout,reset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds sent in Retry-After (ceil)")
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="delay of a 'timeout' fault")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=default_rate_limit,
        help=f"requests per second (token bucket); 0 = none (default {default_rate_limit})",
    )
    return parser


def common_kwargs(args: argparse.Namespace) -> dict:
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    return {
        "host": args.host,
        "port": args.port,
        "faults": FaultPlan(
            rate=args.fault_rate,
            kinds=kinds,
            seed=args.seed,
            retry_after=args.retry_after,
            slow_seconds=args.slow_seconds,
        ),
        "rate_limit_per_s": args.rate_limit or None,
    }


def serve_until_signalled(server: ContractServer) -> int:
    """Start, print `listening on URL` as the first stdout line, run until SIGTERM/SIGINT."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = server.start()
    print(f"listening on {url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


def run_main(build: Callable[[list[str] | None], ContractServer], argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))
