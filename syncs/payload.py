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
    """{"identifier", "fields"}; None when the person has no valid identifier under the policy."""
    identifier = (policy or sync.policy()).identifier_for(person)
    if identifier is None:
        return None
    return {"identifier": identifier, "fields": mapped_fields(sync, person)}


def no_identifier_reason(sync, policy=None) -> str:
    policy = policy or sync.policy()
    return f"no valid {policy.get_field_display().split(' (')[0].lower()} under identifier policy {policy.key!r}"
