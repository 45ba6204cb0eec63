"""Meta's match keys, normalised as its Custom Audiences guide asks before hashing
(developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences, "Hashing and
normalizing data"): a value normalised any other way hashes to something Meta never matches.

- EMAIL: trimmed, lower case.
- PHONE: digits only, no `+`, no leading zeros, country code kept (from the E.164 form).
- FN / LN: lower case, no punctuation, other letters kept in UTF-8 ("Valéry" → "valéry").
- CT: lower case letters only: no punctuation, digits, white space or accents.
- ST: the two-letter ANSI code for a US state, lower case; elsewhere as CT.
- ZIP: lower case, no white space; a US ZIP+4 keeps its first 5 digits.
- COUNTRY: the ISO 3166-1 alpha-2 code, lower case.
- EXTERN_ID: our customer id as it is, never hashed.
Every key but EXTERN_ID is sent as the lower-case SHA-256 hex of that form.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from audiences.identifiers import normalise_email, normalise_plain

from ..spec import MatchKey

US_STATES = {
    "alabama": "al",
    "alaska": "ak",
    "arizona": "az",
    "arkansas": "ar",
    "california": "ca",
    "colorado": "co",
    "connecticut": "ct",
    "delaware": "de",
    "districtofcolumbia": "dc",
    "florida": "fl",
    "georgia": "ga",
    "hawaii": "hi",
    "idaho": "id",
    "illinois": "il",
    "indiana": "in",
    "iowa": "ia",
    "kansas": "ks",
    "kentucky": "ky",
    "louisiana": "la",
    "maine": "me",
    "maryland": "md",
    "massachusetts": "ma",
    "michigan": "mi",
    "minnesota": "mn",
    "mississippi": "ms",
    "missouri": "mo",
    "montana": "mt",
    "nebraska": "ne",
    "nevada": "nv",
    "newhampshire": "nh",
    "newjersey": "nj",
    "newmexico": "nm",
    "newyork": "ny",
    "northcarolina": "nc",
    "northdakota": "nd",
    "ohio": "oh",
    "oklahoma": "ok",
    "oregon": "or",
    "pennsylvania": "pa",
    "rhodeisland": "ri",
    "southcarolina": "sc",
    "southdakota": "sd",
    "tennessee": "tn",
    "texas": "tx",
    "utah": "ut",
    "vermont": "vt",
    "virginia": "va",
    "washington": "wa",
    "westvirginia": "wv",
    "wisconsin": "wi",
    "wyoming": "wy",
    "puertorico": "pr",
}
US_ZIP = re.compile(r"^(\d{5})(-?\d{4})?$")
# E.164 allows at most 15 digits; the shortest numbers with their country code have 7 or more
PHONE_DIGITS = re.compile(r"^\d{7,15}$")


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def email(value) -> str | None:
    return normalise_email(value)


def phone(value) -> str | None:
    """The E.164 form (`+4915112345678`) as Meta hashes it: `4915112345678`. A number without
    its country code cannot be read here (that is what Person.phone_e164 is for)."""
    text = _text(value)
    if text is None:
        return None
    if text.startswith("+"):
        try:
            number = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(number):
            return None
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    digits = re.sub(r"\D", "", text).lstrip("0")
    return digits if PHONE_DIGITS.match(digits) else None


def name(value) -> str | None:
    """Lower case without punctuation, symbols, digits or spaces; accented letters stay (UTF-8)."""
    text = _text(value)
    if text is None:
        return None
    kept = "".join(c for c in unicodedata.normalize("NFC", text.lower()) if c.isalpha())
    return kept or None


def _letters_only(text: str) -> str:
    """a-z only: accents folded (São → sao), everything but letters dropped."""
    folded = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in folded if "a" <= c <= "z")


def city(value) -> str | None:
    text = _text(value)
    return (_letters_only(text) or None) if text else None


def state(value) -> str | None:
    text = _text(value)
    if text is None:
        return None
    letters = _letters_only(text)
    return US_STATES.get(letters, letters) or None


def zip_code(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:05d}"
    text = _text(value)
    if text is None:
        return None
    compact = re.sub(r"\s", "", text.lower())
    if match := US_ZIP.match(compact):
        return match.group(1)
    compact = re.sub(r"[^0-9a-z]", "", compact)
    return compact or None


def country(value) -> str | None:
    text = _text(value)
    if text is None:
        return None
    code = re.sub(r"[^a-z]", "", text.lower())
    return code if len(code) == 2 and code.upper() in phonenumbers.SUPPORTED_REGIONS else None


MATCH_KEYS = (
    MatchKey("EMAIL", "email", "email", email),
    MatchKey("PHONE", "phone", "phone_e164", phone),
    MatchKey("FN", "first name", "attribute:first_name", name),
    MatchKey("LN", "last name", "attribute:last_name", name),
    MatchKey("CT", "city", "attribute:city", city),
    MatchKey("ST", "state", "attribute:state", state),
    MatchKey("ZIP", "postal code", "attribute:zip", zip_code),
    MatchKey("COUNTRY", "country", "attribute:country", country),
    # Meta keeps it as the advertiser's own id; it links a person across uploads and removals
    MatchKey("EXTERN_ID", "customer id", "customer_id", normalise_plain, hashed=False),
)
