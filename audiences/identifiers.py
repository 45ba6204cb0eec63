"""Identifier policies: the join key a destination matches on, normalised the way ad platforms
expect (email trimmed and lower-cased, phone in E.164), optionally SHA-256 hashed."""

from __future__ import annotations

import hashlib
import re

import phonenumbers

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
COVERAGE_SAMPLE = 5000


def normalise_email(value) -> str | None:
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email if EMAIL.match(email) else None


def normalise_phone(value, default_region: str = "US") -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    try:
        number = phonenumbers.parse(str(value), default_region or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_e164(value) -> str:
    """What Person.phone_e164 keeps: the phone in E.164, local numbers read in
    PHONE_DEFAULT_REGION; "" when it is no valid number."""
    from django.conf import settings

    return (normalise_phone(value, settings.PHONE_DEFAULT_REGION) or "") if value else ""


def find_people(queryset, term: str):
    """People whose customer id, email (any case), phone (as written, or however it is typed
    when it reads as a number) or cio_id is `term`: exact matches on indexed columns only, as
    a substring search would scan a million rows. Phones in the query are read in
    PHONE_DEFAULT_REGION and in the regions of the phone identifier policies."""
    from django.conf import settings
    from django.db.models import Q
    from django.db.models.functions import Lower

    from .models import IdentifierPolicy

    match = Q(customer_id=term) | Q(email_lower=term.lower()) | Q(phone=term) | Q(cio_id=term)
    if sum(c.isdigit() for c in term) >= 6:
        regions = {settings.PHONE_DEFAULT_REGION} | set(
            IdentifierPolicy.objects.filter(field=IdentifierPolicy.PHONE).values_list("default_region", flat=True)
        )
        forms = {e164 for region in regions if (e164 := normalise_phone(term, region))}
        if forms:
            match |= Q(phone_e164__in=forms)
    return queryset.alias(email_lower=Lower("email")).filter(match)


def normalise_plain(value) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def raw_value(policy, person):
    field = policy.field
    if field == "attribute":
        return (person.attributes or {}).get(policy.attribute)
    return getattr(person, field)


def identifier_for(policy, person) -> str | None:
    """The value to send for this person under this policy; None when they have no valid one."""
    value = raw_value(policy, person)
    if policy.field == "email":
        normalised = normalise_email(value)
    elif policy.field == "phone":
        normalised = normalise_phone(value, policy.default_region)
    else:
        normalised = normalise_plain(value)
    if normalised is None:
        return None
    return sha256(normalised) if policy.hash_sha256 else normalised


def coverage(policy, people) -> tuple[int, int]:
    """(people with a valid identifier, people looked at), over at most COVERAGE_SAMPLE people."""
    looked = valid = 0
    for person in people[:COVERAGE_SAMPLE]:
        looked += 1
        valid += identifier_for(policy, person) is not None
    return valid, looked


def customer_id_policy():
    """The policy used when an audience or sync names none: the customer id, as is."""
    from .models import IdentifierPolicy

    return IdentifierPolicy(key="customer_id", name="Customer id", field=IdentifierPolicy.CUSTOMER_ID)
