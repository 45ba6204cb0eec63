"""A receiver for Downstream's signed webhook destination.

    POST <any path>
    X-Downstream-Signature: sha256=<hex HMAC-SHA256 of the raw body, shared secret>
    X-Downstream-Batch-Id: <id, unique per batch; a retry sends the same id>
    {"audience": {"key": "..."}, "changes": [{"action": "enter"|"exit", "identifier": "..."}, ...]}

Checks in this order: method 405, signature 401, batch id 400, already-applied batch id 200
`{"duplicate": true}` (nothing re-applied), JSON 400, shape 400 (nothing applied), then 200
`{"accepted": n, "rejected": [{"index": i, "reason": "unknown identifier"}, ...]}`.

A change may carry its own `audience` (a key string or `{"key": ...}`); otherwise the body's
`audience.key` is used, otherwise "default".
"""

from __future__ import annotations

import hashlib
import hmac
import sys

from .common import ContractServer, Request, Response, arg_parser, common_kwargs, serve_until_signalled

SIGNATURE_HEADER = "X-Downstream-Signature"
BATCH_ID_HEADER = "X-Downstream-Batch-Id"
ACTIONS = ("enter", "exit")


def sign(body: bytes, secret: str | bytes) -> str:
    """The header value Downstream must send for `body`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _audience_key(value) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("key"), str) and value["key"]:
        return value["key"]
    return None


class WebhookReceiver(ContractServer):
    """`secret`: the shared HMAC secret. `reject_identifiers`: changes for these identifiers
    are answered as rejected ("unknown identifier") and not applied (a set; mutable)."""

    name = "webhook"

    def __init__(self, secret: str | bytes = "test-webhook-secret", *, reject_identifiers=(), **kwargs):
        self.secret = secret
        self.reject_identifiers = set(reject_identifiers)
        super().__init__(**kwargs)

    def reset_state(self) -> None:
        with self._lock:
            super().reset_state()
            self._reset_webhook_state()

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._reset_webhook_state()

    def _reset_webhook_state(self) -> None:
        self._deliveries: list[dict] = []  # every POST that reached the handler
        self._batches: dict[str, dict] = {}  # applied, by batch id (insertion = arrival order)
        self._changes: list[dict] = []  # applied changes in order
        self._members: dict[str, set[str]] = {}
        self._ever_entered: dict[str, set[str]] = {}
        self._exits_before_entry: list[dict] = []
        self._duplicate_batches = 0
        self._batch_id_conflicts = 0
        self._bad_signatures = 0
        self._changes_received = 0
        self._changes_rejected = 0
        self._seq = 0

    def error_body(self, status: int, message: str):
        return {"error": message}

    def handle(self, req: Request) -> Response:
        headers = {name.lower(): value for name, value in req.headers.items()}
        delivery = {
            "request_seq": req.record["seq"],
            "path": req.path,
            "batch_id": headers.get(BATCH_ID_HEADER.lower()),
            "headers": headers,
            "received_at": req.received_at,
            "outcome": None,
        }
        response = self._handle(req, headers, delivery)
        delivery["status"] = response.status
        with self._lock:
            self._deliveries.append(delivery)
        return response

    def _handle(self, req: Request, headers: dict, delivery: dict) -> Response:
        if req.method != "POST":
            delivery["outcome"] = "method not allowed"
            return Response.json(405, {"error": "method not allowed"}, headers=[("Allow", "POST")])
        given = headers.get(SIGNATURE_HEADER.lower(), "")
        if not hmac.compare_digest(given.encode(), sign(req.body, self.secret).encode()):
            delivery["outcome"] = "bad signature"
            with self._lock:
                self._bad_signatures += 1
            return Response.json(401, {"error": "bad signature"})
        batch_id = delivery["batch_id"]
        if not batch_id:
            delivery["outcome"] = "no batch id"
            return Response.json(400, {"error": f"missing {BATCH_ID_HEADER}"})
        body_digest = hashlib.sha256(req.body).hexdigest()
        with self._lock:
            applied = self._batches.get(batch_id)
            if applied is not None:
                self._duplicate_batches += 1
                if applied["body_sha256"] != body_digest:
                    self._batch_id_conflicts += 1
                delivery["outcome"] = "duplicate"
                return Response.json(200, {"duplicate": True})
        try:
            body = req.json()
        except ValueError as exc:
            delivery["outcome"] = "invalid"
            return Response.json(400, {"error": f"invalid JSON: {exc}"})
        if not isinstance(body, dict) or not isinstance(body.get("changes"), list):
            delivery["outcome"] = "invalid"
            return Response.json(400, {"error": 'expected a JSON object with a "changes" array'})
        changes = body["changes"]
        req.set_rows(len(changes))
        errors = []
        for index, change in enumerate(changes):
            if not isinstance(change, dict):
                errors.append({"index": index, "error": "a change must be an object"})
            elif change.get("action") not in ACTIONS:
                errors.append({"index": index, "error": 'action must be "enter" or "exit"'})
            elif not isinstance(change.get("identifier"), str) or not change["identifier"]:
                errors.append({"index": index, "error": "identifier must be a non-empty string"})
        with self._lock:
            self._changes_received += len(changes)
        if errors:
            delivery["outcome"] = "invalid"
            return Response.json(400, {"error": "invalid changes", "errors": errors})

        default_audience = _audience_key(body.get("audience")) or "default"
        rejected = []
        record = req.record
        with self._lock:
            if batch_id in self._batches:  # a concurrent retry got there first
                self._duplicate_batches += 1
                delivery["outcome"] = "duplicate"
                return Response.json(200, {"duplicate": True})
            self._batches[batch_id] = {
                "batch_id": batch_id,
                "request_seq": record["seq"],
                "record": record,
                "path": req.path,
                "headers": headers,
                "body": body,
                "body_sha256": body_digest,
                "received_at": req.received_at,
            }
            for index, change in enumerate(changes):
                identifier = change["identifier"]
                if identifier in self.reject_identifiers:
                    rejected.append({"index": index, "reason": "unknown identifier"})
                    continue
                audience = _audience_key(change.get("audience")) or default_audience
                self._seq += 1
                members = self._members.setdefault(audience, set())
                ever = self._ever_entered.setdefault(audience, set())
                if change["action"] == "enter":
                    members.add(identifier)
                    ever.add(identifier)
                else:
                    if identifier not in ever:
                        self._exits_before_entry.append(
                            {"seq": self._seq, "audience": audience, "identifier": identifier, "batch_id": batch_id}
                        )
                    members.discard(identifier)
                self._changes.append(
                    {"seq": self._seq, "batch_id": batch_id, "audience": audience, "change": change, "record": record}
                )
            self._changes_rejected += len(rejected)
        delivery["outcome"] = "applied"
        return Response.json(200, {"accepted": len(changes) - len(rejected), "rejected": rejected})

    # -- what tests look at ----------------------------------------------------------------

    def members(self, audience: str = "default") -> set[str]:
        with self._lock:
            return set(self._members.get(audience, ()))

    def audiences(self) -> dict[str, int]:
        with self._lock:
            return {a: len(m) for a, m in self._members.items()}

    @staticmethod
    def _batch_dict(b: dict) -> dict:
        return {
            "batch_id": b["batch_id"],
            "request_seq": b["request_seq"],
            "path": b["path"],
            "headers": b["headers"],
            "body": b["body"],
            "received_at": b["received_at"],
            "acked_at": b["record"]["answered_at"],
        }

    def batches(self) -> list[dict]:
        """Applied batches in order: batch_id, path, headers (lower-cased names), body (parsed),
        received_at, acked_at."""
        with self._lock:
            return [self._batch_dict(b) for b in self._batches.values()]

    def headers_for(self, batch_id: str) -> dict | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            return dict(batch["headers"]) if batch else None

    def deliveries(self) -> list[dict]:
        """Every POST that got past fault injection, whatever its outcome ("applied",
        "duplicate", "bad signature", "no batch id", "invalid", "method not allowed")."""
        with self._lock:
            return [dict(d) for d in self._deliveries]

    @staticmethod
    def _change_dict(c: dict) -> dict:
        return {
            "seq": c["seq"],
            "batch_id": c["batch_id"],
            "audience": c["audience"],
            "action": c["change"]["action"],
            "identifier": c["change"]["identifier"],
            "change": c["change"],
            "acked_at": c["record"]["answered_at"],
        }

    def changes(self, identifier: str | None = None) -> list[dict]:
        """Applied changes in order: seq, batch_id, audience, action, identifier, change (the
        object as sent), acked_at."""
        with self._lock:
            return [self._change_dict(c) for c in self._changes if identifier is None or c["change"]["identifier"] == identifier]

    def changes_for(self, identifier: str) -> list[dict]:
        return self.changes(identifier)

    def first_ack(self, audience: str, identifier: str, action: str) -> float | None:
        with self._lock:
            times = [
                c["record"]["answered_at"]
                for c in self._changes
                if c["audience"] == audience
                and c["change"]["identifier"] == identifier
                and c["change"]["action"] == action
                and c["record"]["answered_at"] is not None
            ]
        return min(times) if times else None

    def exits_before_entry(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._exits_before_entry]

    @property
    def duplicate_batches(self) -> int:
        with self._lock:
            return self._duplicate_batches

    @property
    def exit_before_entry(self) -> int:
        with self._lock:
            return len(self._exits_before_entry)

    def counters(self) -> dict:
        return {
            "deliveries": len(self._deliveries),
            "batches_applied": len(self._batches),
            "duplicate_batches": self._duplicate_batches,
            "batch_id_conflicts": self._batch_id_conflicts,
            "bad_signatures": self._bad_signatures,
            "changes_received": self._changes_received,
            "changes_applied": len(self._changes),
            "changes_rejected": self._changes_rejected,
            "exit_before_entry": len(self._exits_before_entry),
        }

    def extra_state(self, req: Request) -> dict:
        state = {
            "audiences": {a: len(m) for a, m in self._members.items()},
            "exits_before_entry": [dict(e) for e in self._exits_before_entry[:1000]],
        }
        if req.param("members") in ("1", "true", "yes"):
            state["members"] = {a: sorted(m) for a, m in self._members.items()}
        if req.param("batches") in ("1", "true", "yes"):
            state["batches"] = [self._batch_dict(b) for b in self._batches.values()]
        if req.param("changes") in ("1", "true", "yes"):
            state["changes"] = [self._change_dict(c) for c in self._changes]
        return state


def build(argv: list[str] | None = None) -> WebhookReceiver:
    parser = arg_parser("Webhook receiver contract server (loopback).")
    parser.add_argument("--secret", default="test-webhook-secret", help="shared HMAC secret")
    parser.add_argument("--reject-identifier", action="append", default=[])
    args = parser.parse_args(argv)
    return WebhookReceiver(args.secret, reject_identifiers=args.reject_identifier, **common_kwargs(args))


def main(argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))


if __name__ == "__main__":
    sys.exit(main())
