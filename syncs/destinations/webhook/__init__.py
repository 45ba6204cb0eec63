"""A signed webhook: its spec and its transport (JSON batches signed with HMAC-SHA256)."""

from ..spec import Credential, DestinationSpec, Setting
from .transport import MAX_BATCH, Transport, sign

SPEC = DestinationSpec(
    kind="webhook",
    label="Signed webhook",
    transport=Transport,
    settings=(
        Setting("url", "URL", type="url", required=True, endpoint=True, help="Where batches are POSTed."),
        Setting("headers", "header names", type="mapping", help="Extra headers that are not secret."),
    ),
    credentials=(
        Credential("signing_secret", "Webhook signing secret", required=True),
        Credential("headers", "Webhook secret headers (a JSON object)", type="mapping", keys="header names"),
    ),
    max_batch=MAX_BATCH,
)

__all__ = ["SPEC", "Transport", "sign"]
