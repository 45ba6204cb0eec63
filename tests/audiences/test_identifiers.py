import hashlib

import pytest
from django.core.exceptions import ValidationError

from audiences import identifiers
from audiences.identifiers import (
    coverage,
    customer_id_policy,
    identifier_for,
    normalise_email,
    normalise_phone,
    sha256,
)
from audiences.models import IdentifierPolicy, Person
from audiences.services import identifier_policy_save

pytestmark = pytest.mark.django_db


def policy(field, **options):
    return IdentifierPolicy(key=f"p-{field}", name=field, field=field, **options)


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, email",
    [
        (" Ann@Example.COM ", "ann@example.com"),
        ("\tBOB@shop.co.uk\n", "bob@shop.co.uk"),
        ("a@b.c", "a@b.c"),
    ],
)
def test_email_is_trimmed_and_lower_cased(raw, email):
    assert normalise_email(raw) == email


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ann",
        "ann@",
        "@example.com",
        "ann@example",
        "ann@@example.com",
        "a b@example.com",
        "ann@example.",
        None,
        5,
        ["ann@example.com"],
    ],
)
def test_an_invalid_email_gives_none(raw):
    assert normalise_email(raw) is None


@pytest.mark.parametrize(
    "raw, region, e164",
    [
        ("(202) 456-1111", "US", "+12024561111"),
        ("202-456-1111", "US", "+12024561111"),
        ("+1 202 456 1111", "GB", "+12024561111"),
        (2024561111, "US", "+12024561111"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
    ],
)
def test_phone_is_written_in_e164(raw, region, e164):
    assert normalise_phone(raw, region) == e164


def test_phone_default_region_is_us():
    assert normalise_phone("202-456-1111") == "+12024561111"


@pytest.mark.parametrize(
    "raw, region",
    [
        ("020 7946 0958", "US"),  # a local UK number read as American is not valid
        ("202-456-1111", ""),  # no region: only numbers with a country code
        ("garbage", "US"),
        ("", "US"),
        ("555-1234", "US"),
        (True, "US"),
        (None, "US"),
        (2024561111.0, "US"),
        ({"number": "202-456-1111"}, "US"),
    ],
)
def test_a_phone_that_is_not_a_valid_number_gives_none(raw, region):
    assert normalise_phone(raw, region) is None


# --- policies --------------------------------------------------------------------------------


def test_customer_id_is_sent_as_is_only_trimmed():
    person = Person(customer_id=" u-42 ")
    assert identifier_for(policy("customer_id"), person) == "u-42"
    assert identifier_for(customer_id_policy(), Person(customer_id="u-42")) == "u-42"
    assert customer_id_policy().field == IdentifierPolicy.CUSTOMER_ID


def test_cio_id_policy_and_a_missing_cio_id():
    assert identifier_for(policy("cio_id"), Person(customer_id="u1", cio_id="a1b2")) == "a1b2"
    assert identifier_for(policy("cio_id"), Person(customer_id="u1", cio_id="")) is None


@pytest.mark.parametrize(
    "attributes, expected",
    [
        ({"loyalty_id": "L-9 "}, "L-9"),
        ({"loyalty_id": 12345}, "12345"),
        ({"loyalty_id": ""}, None),
        ({"loyalty_id": None}, None),
        ({"loyalty_id": {"id": 1}}, None),
        ({"loyalty_id": [1]}, None),
        ({"other": "x"}, None),
        ({}, None),
    ],
)
def test_attribute_policy_reads_the_named_attribute(attributes, expected):
    person = Person(customer_id="u1", attributes=attributes)
    assert identifier_for(policy("attribute", attribute="loyalty_id"), person) == expected


def test_email_and_phone_policies_normalise():
    person = Person(customer_id="u1", email=" Ann@Example.COM ", phone="020 7946 0958")
    assert identifier_for(policy("email"), person) == "ann@example.com"
    assert identifier_for(policy("phone", default_region="GB"), person) == "+442079460958"
    assert identifier_for(policy("phone", default_region="US"), person) is None
    assert policy("email").identifier_for(person) == "ann@example.com"


def test_sha256_is_of_the_normalised_value():
    person = Person(customer_id="u1", email=" Ann@Example.COM ", phone="(202) 456-1111")
    expected = hashlib.sha256(b"ann@example.com").hexdigest()
    assert identifier_for(policy("email", hash_sha256=True), person) == expected
    assert sha256("ann@example.com") == expected
    assert identifier_for(policy("phone", hash_sha256=True), person) == hashlib.sha256(b"+12024561111").hexdigest()
    assert (
        identifier_for(policy("customer_id", hash_sha256=True), Person(customer_id=" u1 ")) == hashlib.sha256(b"u1").hexdigest()
    )


def test_no_valid_identifier_is_never_hashed():
    person = Person(customer_id="u1", email="not an email", phone="")
    assert identifier_for(policy("email", hash_sha256=True), person) is None
    assert identifier_for(policy("phone", hash_sha256=True), person) is None


# --- coverage --------------------------------------------------------------------------------


def test_coverage_counts_people_with_a_valid_identifier():
    for number, email in enumerate(["a@example.com", " B@Example.com", "broken", "", "c@example.org"]):
        Person.objects.create(customer_id=f"u{number}", email=email)
    assert coverage(policy("email"), Person.objects.order_by("id")) == (3, 5)
    assert coverage(policy("phone"), Person.objects.all()) == (0, 5)
    assert coverage(policy("customer_id"), Person.objects.all()) == (5, 5)


def test_coverage_looks_at_no_more_than_the_sample(monkeypatch):
    monkeypatch.setattr(identifiers, "COVERAGE_SAMPLE", 4)
    people = [Person(customer_id=f"u{n}", email=f"u{n}@example.com" if n % 2 else "") for n in range(10)]
    assert coverage(policy("email"), people) == (2, 4)


def test_coverage_of_nobody():
    assert coverage(policy("email"), Person.objects.none()) == (0, 0)


# --- identifier_policy_save ------------------------------------------------------------------


def test_a_policy_is_saved_with_defaults():
    saved = identifier_policy_save(data={"key": "email_sha256", "field": "email", "hash_sha256": True})
    saved.refresh_from_db()
    assert (saved.name, saved.field, saved.attribute, saved.default_region, saved.hash_sha256) == (
        "email_sha256",
        "email",
        "",
        "US",
        True,
    )


@pytest.mark.parametrize(
    "data, errors",
    [
        ({"field": "mobile"}, {"field": ["'mobile' is not an identifier: use customer_id, email, phone, cio_id, attribute"]}),
        ({}, {"field": ["'' is not an identifier: use customer_id, email, phone, cio_id, attribute"]}),
        ({"field": "attribute"}, {"attribute": ["name the attribute that holds the identifier (letters, digits, _ and -)"]}),
        (
            {"field": "attribute", "attribute": "loyalty id"},
            {"attribute": ["name the attribute that holds the identifier (letters, digits, _ and -)"]},
        ),
        (
            {"field": "email", "attribute": "loyalty_id"},
            {"attribute": ["only an identifier of field 'attribute' names an attribute"]},
        ),
        ({"field": "phone", "default_region": "XX"}, {"default_region": ["'XX' is not a region code such as US, GB, DE"]}),
        ({"field": "phone", "default_region": "gb"}, {"default_region": ["'gb' is not a region code such as US, GB, DE"]}),
        ({"field": ["email"]}, {"field": ["['email'] is not an identifier: use customer_id, email, phone, cio_id, attribute"]}),
        (
            {"field": "attribute", "attribute": 5},
            {"attribute": ["name the attribute that holds the identifier (letters, digits, _ and -)"]},
        ),
        (
            {"field": "attribute", "attribute": "loyalty_id\n"},
            {"attribute": ["name the attribute that holds the identifier (letters, digits, _ and -)"]},
        ),
        ({"field": "phone", "default_region": ["GB"]}, {"default_region": ["['GB'] is not a region code such as US, GB, DE"]}),
        ({"field": "email", "hash_sha256": "yes"}, {"hash_sha256": ["must be true or false"]}),
        ({"field": "email", "salt": "x"}, {"salt": ["unknown field"]}),
        (
            {"key": "email\n", "field": "email"},
            {"key": ["'email\\n' is not a key: use lower-case letters, digits, - and _ (at most 64)"]},
        ),
        (
            {"key": "Email SHA", "field": "email"},
            {"key": ["'Email SHA' is not a key: use lower-case letters, digits, - and _ (at most 64)"]},
        ),
    ],
)
def test_identifier_policy_save_refuses_bad_data(data, errors):
    with pytest.raises(ValidationError) as failure:
        identifier_policy_save(data={"key": "p", **data})
    assert failure.value.message_dict == errors
    assert not IdentifierPolicy.objects.exists()


def test_identifier_policy_keys_are_unique_and_a_change_keeps_the_key():
    saved = identifier_policy_save(data={"key": "phone", "field": "phone"})
    with pytest.raises(ValidationError) as failure:
        identifier_policy_save(data={"key": "phone", "field": "phone"})
    assert failure.value.message_dict == {"key": ["an identifier policy with key 'phone' already exists"]}
    changed = identifier_policy_save(data={"default_region": "GB"}, instance=saved)
    assert (changed.key, changed.field, changed.default_region) == ("phone", "phone", "GB")
    assert IdentifierPolicy.objects.get().default_region == "GB"
