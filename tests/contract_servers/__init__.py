"""Local stand-ins for the outside services Downstream talks to.

Each module runs a real HTTP server on a loopback port that speaks one service's documented
contract, its error answers included, and records what it received so a test can check what a
client really sent:

- `livelike.LiveLikeServer`: LiveLike's Producer API (audience sync and events).
- `webhook.WebhookReceiver`: a receiver for Downstream's signed webhook destination.
- `customerio.CustomerIoServer`: Customer.io's App API (segments, membership, attributes).

`common` holds the shared machinery: `FaultPlan` (injected 429/500/slow/reset answers),
Retry-After enforcement recording, a token-bucket rate limit, the request log and the
`/__state__` and `/__faults__` endpoints. Every module can also run on its own
(`python -m tests.contract_servers.livelike --help`) for benchmarks in another process.

This package imports nothing from Django and nothing outside the standard library.
"""
