"""LiveLike: its spec and its transport (the Producer API its Segment integration uses)."""

from ..spec import EVENTS, MEMBERSHIP, Credential, DestinationSpec, Setting, base_url
from .transport import DEFAULT_BASE_URL, MAX_BATCH, Transport

SPEC = DestinationSpec(
    kind="livelike",
    label="LiveLike",
    transport=Transport,
    settings=(
        base_url(DEFAULT_BASE_URL, "The Producer API's address; the credentials belong to it."),
        Setting("client_id", "client id", required=True, help="The LiveLike application's client id."),
    ),
    credentials=(Credential("producer_token", "LiveLike producer token", required=True),),
    modes=(MEMBERSHIP, EVENTS),
    # LiveLike does no matching of its own: its user_id is our customer id or a profile id
    identifiers=("customer_id", "attribute"),
    hashes=False,
    identifier_hint="use the customer id or a LiveLike profile id attribute",
    max_batch=MAX_BATCH,
)

__all__ = ["DEFAULT_BASE_URL", "SPEC", "Transport"]
