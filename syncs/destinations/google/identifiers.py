"""Google's user identifiers, normalised the way the Data Manager API's formatting guide says
(developers.google.com/data-manager/api/devguides/concepts/formatting), as match keys.

- email: all whitespace removed, lower-cased; for gmail.com and googlemail.com only, the dots
  and any `+suffix` of the part before the @ removed; SHA-256, hex.
- phone: E.164 with the `+` (a number without a country code is read in
  PHONE_DEFAULT_REGION, as Person.phone_e164 is); SHA-256, hex.
- address: the person attributes `first_name`, `last_name`, `country` (ISO 3166-1 alpha-2)
  and `postal_code`; the names lower-cased, stripped of punctuation and hashed, the region
  and postal code sent as they are. All four or no address.
"""

from __future__ import annotations

import json
import re
import unicodedata

from audiences.identifiers import normalise_phone, sha256

from ..spec import MatchKey

GOOGLE_DOMAINS = ("gmail.com", "googlemail.com")
EMAIL = re.compile(r"^[^@]+@[^@]+\.[^@.]+$")
REGION = re.compile(r"^[A-Z]{2}$")
ADDRESS_ATTRIBUTES = ("first_name", "last_name", "country", "postal_code")


def normalise_email(value) -> str | None:
    if not isinstance(value, str):
        return None
    email = "".join(value.split()).lower()
    if not EMAIL.match(email):
        return None
    local, domain = email.split("@")
    if domain in GOOGLE_DOMAINS:
        local = local.split("+", 1)[0].replace(".", "")
        if not local:
            return None
    return f"{local}@{domain}"


def normalise_phone_e164(value) -> str | None:
    from django.conf import settings

    return normalise_phone(value, settings.PHONE_DEFAULT_REGION)


def _name(value) -> str | None:
    if not isinstance(value, str):
        return None
    text = "".join(c for c in value if not unicodedata.category(c).startswith("P")).strip().lower()
    return text or None


def normalise_address(parts) -> str | None:
    """{first_name, last_name, country, postal_code} → the AddressInfo Google takes, as JSON
    text (a match key's value is a text): names hashed, region and postal code as they are."""
    if not isinstance(parts, dict):
        return None
    given, family = _name(parts.get("first_name")), _name(parts.get("last_name"))
    region = parts.get("country").strip().upper() if isinstance(parts.get("country"), str) else None
    postal = parts.get("postal_code")
    postal = str(postal).strip() if isinstance(postal, (str, int)) and not isinstance(postal, bool) else ""
    if not (given and family and region and REGION.match(region) and postal):
        return None
    return json.dumps(
        {"givenName": sha256(given), "familyName": sha256(family), "regionCode": region, "postalCode": postal},
        sort_keys=True,
        separators=(",", ":"),
    )


class AddressKey(MatchKey):
    """An address is four person attributes, not one column: `raw` gathers them."""

    def raw(self, person):
        attributes = person.attributes or {}
        parts = {name: attributes.get(name) for name in ADDRESS_ATTRIBUTES}
        return parts if any(v not in (None, "") for v in parts.values()) else None


EMAIL_KEY = MatchKey("email", "email (SHA-256)", "email", normalise_email)
PHONE_KEY = MatchKey("phone", "phone in E.164 (SHA-256)", "phone", normalise_phone_e164)
ADDRESS_KEY = AddressKey(
    "address",
    "name and address (first_name, last_name, country, postal_code attributes)",
    "attributes",
    normalise_address,
    hashed=False,
)
MATCH_KEYS = (EMAIL_KEY, PHONE_KEY, ADDRESS_KEY)


def user_identifiers(identifiers: dict) -> list[dict]:
    """A row's match keys as the UserIdentifier objects of one AudienceMember."""
    found = []
    if identifiers.get("email"):
        found.append({"emailAddress": identifiers["email"]})
    if identifiers.get("phone"):
        found.append({"phoneNumber": identifiers["phone"]})
    if identifiers.get("address"):
        try:
            address = json.loads(identifiers["address"])
        except ValueError:
            address = None
        if isinstance(address, dict):
            found.append({"address": address})
    return found
