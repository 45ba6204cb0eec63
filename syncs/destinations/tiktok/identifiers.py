"""TikTok's identifiers. An uploaded file holds one type of identifier (its `calculate_type`,
the type its audience was created with), one SHA-256 hex per line, of the value normalised as
TikTok's customer file guide recommends:

- EMAIL_SHA256: spaces removed, lower-cased (`" JaneDoe@Gmail.com "` → `janedoe@gmail.com`);
- PHONE_SHA256: E.164, "+", country code and number, no spaces (`+442071838750`). TikTok also
  matches the form without "+", but recommends this one, which is the one we keep.

The mobile advertising ids TikTok also takes (IDFA, GAID, MAID) are not ours to send."""

from __future__ import annotations

from audiences.identifiers import normalise_email, normalise_phone

from ..spec import MatchKey

EMAIL_SHA256, PHONE_SHA256 = "EMAIL_SHA256", "PHONE_SHA256"
CALCULATE_TYPES = (EMAIL_SHA256, PHONE_SHA256)


def tiktok_email(value) -> str | None:
    return normalise_email(value)


def tiktok_phone(value) -> str | None:
    """A phone already in E.164 stays as it is; one without a country code is read in
    PHONE_DEFAULT_REGION, as the person store reads it."""
    from django.conf import settings

    return normalise_phone(value, settings.PHONE_DEFAULT_REGION)


MATCH_KEYS = (
    MatchKey(EMAIL_SHA256, "email (EMAIL_SHA256)", "email", tiktok_email),
    MatchKey(PHONE_SHA256, "phone in E.164 (PHONE_SHA256)", "phone", tiktok_phone),
)


def calculate_type_for(sync) -> str:
    """The identifier type a sync uploads: the one its `match_on` names, else its destination's."""
    named = [name for name in (sync.match_on or []) if name in CALCULATE_TYPES]
    if named:
        return named[0]
    return (sync.destination.settings or {}).get("calculate_type") or EMAIL_SHA256
