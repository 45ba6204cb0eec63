"""Meta Custom Audiences: its spec, its match keys and its transport (customer-list uploads of
hashed identifiers, a weekly full replace, and a read-back of Meta's approximate count)."""

from ..spec import MEMBERSHIP, Credential, DestinationSpec, Setting, base_url
from .identifiers import MATCH_KEYS
from .transport import API_VERSION, DEFAULT_API_VERSION, DEFAULT_BASE_URL, MAX_BATCH, Transport


def version_problems(options: dict, key: str) -> list[str]:
    version = options.get("api_version")
    if version not in (None, "") and not (isinstance(version, str) and API_VERSION.match(version)):
        return [f"api_version: {version!r} is not a Graph API version such as {DEFAULT_API_VERSION}"]
    return []


SPEC = DestinationSpec(
    kind="meta",
    label="Meta Custom Audiences",
    transport=Transport,
    settings=(
        base_url(DEFAULT_BASE_URL, "The Graph API's address; the access token belongs to it."),
        Setting(
            "api_version",
            "Graph API version",
            default=DEFAULT_API_VERSION,
            help=f"Such as {DEFAULT_API_VERSION}; Meta retires a version about two years after its release.",
        ),
    ),
    credentials=(Credential("access_token", "Meta access token (a system user's, with ads_management)", required=True),),
    modes=(MEMBERSHIP,),
    match_keys=MATCH_KEYS,
    max_batch=MAX_BATCH,
    # each call counts against the ad account's custom-audience budget, shared with every
    # other tool on that account
    default_rate_limit_per_s=5.0,
    removes=True,
    # Meta delivers no ads to a customer list of fewer than 100 matched people
    min_audience_size=100,
    paid_media=True,
    check=version_problems,
)

__all__ = ["DEFAULT_BASE_URL", "SPEC", "Transport"]
