"""Google (Customer Match through the Data Manager API): its spec, its transport, its match keys.

The Google Ads API takes no new Customer Match integrations since April 2026; the Data Manager
API (datamanager.googleapis.com) is the way in. A sync's `downstream_audience_id` is the user
list id (the request's `productDestinationId`); its people go as email, phone and address
identifiers (identifiers.py), all of them or the sync's `match_on`.

Credentials: an OAuth 2.0 access token with the `https://www.googleapis.com/auth/datamanager`
scope, for a Google account that can reach the operating account (or its manager, the login
account). Downstream sends it as it is and never refreshes it: the refresh-token and service
account flows call Google's token endpoint, which this build does not. An access token lasts
about an hour, so rotate it from outside (an env:NAME the config file names, applied again).

Consent: `ad_user_data` and `ad_personalization` are the defaults for everyone the sync sends
(the request's consent; unspecified leaves them out, and Google then goes by the account's
settings). A person attribute, `consent` unless `consent_attribute` names another, overrides
them for that person when the sync lists it in `fields`: `{"ad_user_data": "granted",
"ad_personalization": "denied"}` (granted / denied, CONSENT_GRANTED / CONSENT_DENIED, true /
false), or one such value for both; a part it leaves out keeps the default.

Terms: Google takes Customer Match uploads only when the request says the Customer Match terms
of service were accepted; set `customer_match_terms` to ACCEPTED once they are.
"""

import re

from ..spec import MEMBERSHIP, Credential, DestinationSpec, Setting, base_url
from .identifiers import MATCH_KEYS
from .transport import (
    ACCOUNT_TYPES,
    CONSENT_CHOICES,
    DEFAULT_BASE_URL,
    DEFAULT_CONSENT_ATTRIBUTE,
    MAX_BATCH,
    TERMS_CHOICES,
    Transport,
    account_id,
)

DIGITS = re.compile(r"^\d{1,20}$")


def check(settings: dict, key: str) -> list[str]:
    problems = []
    for name in ("operating_account_id", "login_account_id"):
        value = settings.get(name)
        if value not in (None, "") and not (isinstance(value, str) and DIGITS.match(account_id(value))):
            problems.append(f"{name}: digits only, such as a Google Ads customer id 1234567890 (dashes are dropped)")
    if bool(settings.get("login_account_type")) and not settings.get("login_account_id"):
        problems.append("login_account_id: required with login_account_type")
    attribute = settings.get("consent_attribute")
    if attribute not in (None, "") and not (isinstance(attribute, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", attribute)):
        problems.append("consent_attribute: the name of a person attribute, such as consent")
    return problems


SPEC = DestinationSpec(
    kind="google",
    label="Google (Data Manager API)",
    transport=Transport,
    settings=(
        base_url(DEFAULT_BASE_URL, "The Data Manager API's address; the access token belongs to it."),
        Setting(
            "operating_account_type",
            "operating account type",
            type="choice",
            choices=ACCOUNT_TYPES,
            default="GOOGLE_ADS",
            help="The product of the account that holds the user lists.",
        ),
        Setting(
            "operating_account_id",
            "operating account id",
            required=True,
            help="The account that holds the user lists, such as a Google Ads customer id (1234567890).",
        ),
        Setting(
            "login_account_type",
            "login account type",
            type="choice",
            choices=ACCOUNT_TYPES,
            help="The manager account the token's Google account signs in with, if not the operating account.",
        ),
        Setting("login_account_id", "login account id", help="The manager account's id, with its type."),
        Setting(
            "ad_user_data",
            "default consent to ad user data",
            type="choice",
            choices=CONSENT_CHOICES,
            default="CONSENT_STATUS_UNSPECIFIED",
            help="For everyone the sync sends, unless their own consent says otherwise.",
        ),
        Setting(
            "ad_personalization",
            "default consent to ad personalization",
            type="choice",
            choices=CONSENT_CHOICES,
            default="CONSENT_STATUS_UNSPECIFIED",
            help="For everyone the sync sends, unless their own consent says otherwise.",
        ),
        Setting(
            "consent_attribute",
            "consent attribute",
            default=DEFAULT_CONSENT_ATTRIBUTE,
            help='The person attribute with their own consent, {"ad_user_data": "granted", "ad_personalization": '
            '"denied"}; read when the sync lists it in its fields.',
        ),
        Setting(
            "customer_match_terms",
            "Customer Match terms of service",
            type="choice",
            choices=TERMS_CHOICES,
            help="ACCEPTED once the operating account accepted them: Google refuses Customer Match uploads otherwise.",
        ),
    ),
    credentials=(Credential("access_token", "Google OAuth access token (datamanager scope)", required=True),),
    modes=(MEMBERSHIP,),
    match_keys=MATCH_KEYS,
    max_batch=MAX_BATCH,
    # the Data Manager API allows 300 requests a minute for the whole Google Cloud project
    default_rate_limit_per_s=5.0,
    removes=True,
    paid_media=True,
    check=check,
)

__all__ = ["DEFAULT_BASE_URL", "SPEC", "Transport"]
