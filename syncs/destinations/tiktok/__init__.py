"""TikTok: its spec and its transport (the Business API's DMP custom audience file upload and
update). A sync's downstream audience id is the TikTok custom_audience_id."""

from ..spec import MEMBERSHIP, Credential, DestinationSpec, Setting, base_url
from .identifiers import CALCULATE_TYPES, EMAIL_SHA256, MATCH_KEYS, calculate_type_for
from .transport import DEFAULT_BASE_URL, MAX_BATCH, Transport

# TikTok refuses any APPEND, REMOVE or REPLACE that would leave an audience under 1,000 people
MIN_AUDIENCE_SIZE = 1000


class TikTokSpec(DestinationSpec):
    """TikTok takes one identifier type per file, the one the audience was created with: a sync
    sends exactly one of its match keys, the one its `match_on` names, else its destination's."""

    def keys_for(self, sync):
        chosen = calculate_type_for(sync)
        return tuple(key for key in self.match_keys if key.name == chosen)

    def match_on_problems(self, names) -> list[str]:
        problems = super().match_on_problems(names)
        if not problems and len(names) > 1:
            problems.append(
                f"match_on: TikTok takes one identifier type per audience (the one it was created with): "
                f"name one of {', '.join(names)}"
            )
        return problems


def advertiser_problems(options: dict, key: str) -> list[str]:
    advertiser_id = options.get("advertiser_id")
    if isinstance(advertiser_id, str) and advertiser_id and not (advertiser_id.isascii() and advertiser_id.isdigit()):
        return ["advertiser_id: a TikTok advertiser id is a number, as TikTok Ads Manager shows it"]
    return []


SPEC = TikTokSpec(
    kind="tiktok",
    label="TikTok",
    transport=Transport,
    settings=(
        base_url(DEFAULT_BASE_URL, "The Business API's address; the access token belongs to it."),
        Setting("advertiser_id", "advertiser id", required=True, help="The TikTok ad account the audiences belong to."),
        Setting(
            "calculate_type",
            "identifier type",
            type="choice",
            choices=CALCULATE_TYPES,
            default=EMAIL_SHA256,
            help="What each uploaded line is: the SHA-256 of the email or of the phone in E.164. It must be the type "
            "the TikTok audience was created with; a sync's match_on may name the other.",
        ),
    ),
    credentials=(Credential("access_token", "TikTok access token", required=True),),
    modes=(MEMBERSHIP,),
    match_keys=MATCH_KEYS,
    max_batch=MAX_BATCH,
    # a batch is two requests (the upload and the update) per action; TikTok limits each path
    # per app and per advertiser (40100, 40133), and publishes no figure for these paths
    default_rate_limit_per_s=2.0,
    min_audience_size=MIN_AUDIENCE_SIZE,
    paid_media=True,
    check=advertiser_problems,
)

__all__ = ["DEFAULT_BASE_URL", "MIN_AUDIENCE_SIZE", "SPEC", "Transport"]
