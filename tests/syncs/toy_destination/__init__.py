"""A toy destination kind, shaped like syncs/destinations/<kind>/: a SPEC and a transport.
tests/syncs/test_registry.py registers it and finds it everywhere kinds are read."""

from syncs.destinations.spec import MEMBERSHIP, Credential, DestinationSpec, Setting

from .transport import SENT, Transport

SPEC = DestinationSpec(
    kind="toy",
    label="Toy board",
    transport=Transport,
    settings=(
        Setting("board", "board", required=True, help="The board the toy pins members to."),
        Setting("colour", "colour", type="choice", choices=("red", "blue"), default="red"),
    ),
    credentials=(Credential("toy_api_key", "Toy API key", required=True),),
    modes=(MEMBERSHIP,),
    identifiers=("customer_id",),
    hashes=False,
    identifier_hint="use the customer id",
    max_batch=50,
    default_rate_limit_per_s=2.0,
)

__all__ = ["SENT", "SPEC", "Transport"]
