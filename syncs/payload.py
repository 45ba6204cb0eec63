"""What a delivery carries: the identifier under the sync's policy and the allow-listed fields."""

from __future__ import annotations

from audiences.identifiers import normalise_email, normalise_phone

# Person columns a sync may map by these names; anything else is read from the attributes.
PERSON_COLUMNS = {
    "customer_id": lambda p: p.customer_id,
    "email": lambda p: normalise_email(p.email),
    "phone": lambda p: normalise_phone(p.phone),
    "cio_id": lambda p: p.cio_id or None,
}


def mapped_fields(sync, person) -> dict:
    fields = {}
    for name in sync.fields:
        value = PERSON_COLUMNS[name](person) if name in PERSON_COLUMNS else (person.attributes or {}).get(name)
        if value is not None and value != "":
            fields[name] = value
    return fields


def payload_for(sync, person, *, policy=None) -> dict | None:
    """{"identifier", "fields"} and, for a kind that matches on its own keys (an ad platform),
    "identifiers": every key the sync maps, in the platform's form, the first of them as the
    identifier. None when the person has no valid identifier."""
    from .destinations.registry import spec_for

    spec = spec_for(sync.destination.kind)
    if spec.match_keys:
        identifiers = spec.identifiers_for(sync, person)
        if not identifiers:
            return None
        return {"identifier": next(iter(identifiers.values())), "fields": mapped_fields(sync, person), "identifiers": identifiers}
    identifier = (policy or sync.policy()).identifier_for(person)
    if identifier is None:
        return None
    return {"identifier": identifier, "fields": mapped_fields(sync, person)}


def no_identifier_reason(sync, policy=None) -> str:
    from .destinations.registry import spec_for

    spec = spec_for(sync.destination.kind)
    if spec.match_keys:
        keys = ", ".join(k.label for k in spec.keys_for(sync))
        return f"none of the identifiers {spec.label} matches on ({keys}) is valid for this person"
    policy = policy or sync.policy()
    return f"no valid {policy.get_field_display().split(' (')[0].lower()} under identifier policy {policy.key!r}"
