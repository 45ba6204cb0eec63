import pytest
from django.core.exceptions import ValidationError

from audiences.models import Audience, NamingConvention
from audiences.naming import nonconforming_audiences, parse_name, template_tokens, validate_convention
from audiences.services import audience_save, naming_convention_save

pytestmark = pytest.mark.django_db

TEMPLATE = "{channel}_{intent}_{window}_{exclusions}"
TOKENS = {
    "channel": {"values": ["paid", "onsite", "email"]},
    "intent": {"values": ["cart", "winback"]},
    "window": {"pattern": "[0-9]+[mhdw]|[0-9]+-[0-9]+[mhdw]|any"},
    "exclusions": {"values": ["nopurch", "none"]},
}
EXPECTED = "expected {channel}_{intent}_{window}_{exclusions}, e.g. paid_cart_0-2h_nopurch"
CART_RULE = {"event": "Added to Cart", "within": "2h"}


@pytest.fixture
def convention():
    convention, broken = naming_convention_save(
        data={"key": "retention", "template": TEMPLATE, "tokens": TOKENS, "example": "paid_cart_0-2h_nopurch"}
    )
    assert broken == []
    return convention


def refused(**data) -> dict:
    base = {"key": "retention", "template": TEMPLATE, "tokens": TOKENS}
    with pytest.raises(ValidationError) as failure:
        naming_convention_save(data={**base, **data})
    assert not NamingConvention.objects.exists()
    return failure.value.message_dict


# --- names under a convention ----------------------------------------------------------------


def test_a_good_name_parses_into_its_tokens(convention):
    assert template_tokens(TEMPLATE) == ["channel", "intent", "window", "exclusions"]
    assert parse_name(convention, "paid_cart_0-2h_nopurch") == {
        "channel": "paid",
        "intent": "cart",
        "window": "0-2h",
        "exclusions": "nopurch",
    }
    assert convention.parse("email_winback_any_none")["window"] == "any"


def test_audience_save_stores_the_name_tokens(convention):
    audience = audience_save(data={"key": "cart", "name": "  onsite_cart_15m_none ", "rule": CART_RULE})
    audience.refresh_from_db()
    assert audience.name == "onsite_cart_15m_none"
    assert audience.name_tokens == {"channel": "onsite", "intent": "cart", "window": "15m", "exclusions": "none"}


def test_without_a_convention_any_name_goes_and_has_no_tokens():
    audience = audience_save(data={"key": "cart", "name": "Cart abandoners", "rule": CART_RULE})
    assert audience.name_tokens == {}


def test_a_wrong_value_names_the_token_its_allowed_values_and_the_form(convention):
    with pytest.raises(ValidationError) as failure:
        parse_name(convention, "tiktok_cart_2h_nopurch")
    assert failure.value.messages == [
        f"'tiktok_cart_2h_nopurch': {{channel}} is 'tiktok' but must be one of paid, onsite, email ({EXPECTED})"
    ]


def test_a_value_that_misses_the_pattern_shows_the_pattern(convention):
    with pytest.raises(ValidationError) as failure:
        parse_name(convention, "paid_cart_soon_nopurch")
    assert failure.value.messages == [
        "'paid_cart_soon_nopurch': {window} is 'soon' but must be text matching "
        f"[0-9]+[mhdw]|[0-9]+-[0-9]+[mhdw]|any ({EXPECTED})"
    ]


def test_values_must_match_whole_not_as_a_prefix(convention):
    with pytest.raises(ValidationError, match=r"\{channel\} is 'paidx'"):
        parse_name(convention, "paidx_cart_2h_none")


def test_the_wrong_number_of_parts_gets_the_form_message(convention):
    with pytest.raises(ValidationError) as failure:
        parse_name(convention, "paid_cart_2h")
    assert failure.value.messages == [
        f"'paid_cart_2h' does not have the form of the naming convention: {EXPECTED} (4 parts separated by '_')"
    ]


def test_audience_save_refuses_a_name_that_breaks_the_convention(convention):
    with pytest.raises(ValidationError) as failure:
        audience_save(data={"key": "cart", "name": "paid_carts_2h_none", "rule": CART_RULE})
    assert failure.value.message_dict == {
        "name": [f"'paid_carts_2h_none': {{intent}} is 'carts' but must be one of cart, winback ({EXPECTED})"]
    }
    assert not Audience.objects.exists()


# --- conventions themselves ------------------------------------------------------------------


def test_a_template_without_tokens_is_refused():
    assert refused(template="paid audience", tokens={}) == {"template": ["needs at least one token such as {channel}"]}


def test_a_duplicate_token_is_refused():
    errors = refused(template="{channel}_{channel}", tokens={"channel": TOKENS["channel"]})
    assert errors == {"template": ["a token appears twice"]}


def test_adjacent_tokens_need_a_separator():
    errors = refused(template="{channel}{intent}_{window}_{exclusions}")
    assert errors == {"template": ["{channel} and {intent} need a separator between them"]}


@pytest.mark.parametrize(
    "spec",
    [
        {"values": ["paid"], "pattern": "[a-z]+"},
        {},
        {"description": "where it runs"},
        "paid|onsite",
    ],
)
def test_a_token_needs_values_or_a_pattern_not_both_nor_neither(spec):
    errors = refused(tokens={**TOKENS, "channel": spec})
    assert errors == {"tokens": ["channel: give either values: [...] or pattern: '...'"]}


@pytest.mark.parametrize("values", [[], "paid", ["paid", ""], ["paid", 3]])
def test_token_values_must_be_a_non_empty_list_of_texts(values):
    errors = refused(tokens={**TOKENS, "channel": {"values": values}})
    assert errors == {"tokens": ["channel.values: must be a non-empty list of texts"]}


def test_a_bad_regular_expression_is_refused_with_the_reason():
    errors = refused(tokens={**TOKENS, "window": {"pattern": "[0-9+"}})
    assert len(errors["tokens"]) == 1
    assert errors["tokens"][0].startswith("window.pattern: not a regular expression (unterminated character set")


def test_a_token_not_in_the_template_is_refused():
    errors = refused(tokens={**TOKENS, "region": {"values": ["us"]}})
    assert errors == {"tokens": ["region: not in the template"]}


def test_a_token_of_the_template_without_a_spec_is_refused():
    tokens = {k: v for k, v in TOKENS.items() if k != "window"}
    assert refused(tokens=tokens) == {"tokens": ["window: give either values: [...] or pattern: '...'"]}


def test_an_example_that_does_not_parse_is_refused():
    errors = refused(example="tiktok_cart_2h_nopurch")
    assert errors == {
        "example": [
            "'tiktok_cart_2h_nopurch': {channel} is 'tiktok' but must be one of paid, onsite, email "
            "(expected {channel}_{intent}_{window}_{exclusions}, e.g. tiktok_cart_2h_nopurch)"
        ]
    }


def test_validate_convention_reports_every_problem():
    problems = validate_convention("{a}{b}_{a}", {"b": {"values": ["x"], "pattern": "y"}, "c": {"values": ["z"]}})
    assert set(problems) == {
        "template: a token appears twice",
        "template: {a} and {b} need a separator between them",
        "tokens.a: give either values: [...] or pattern: '...'",
        "tokens.b: give either values: [...] or pattern: '...'",
        "tokens.c: not in the template",
    }


# --- changing a convention -------------------------------------------------------------------


def test_a_changed_convention_reports_broken_names_and_leaves_those_audiences_alone(convention):
    kept = audience_save(data={"key": "cart", "name": "paid_cart_0-2h_nopurch", "rule": CART_RULE})
    broken_before = audience_save(data={"key": "winback", "name": "email_winback_60-90d_none", "rule": CART_RULE})
    old_tokens = dict(broken_before.name_tokens)

    renamed_template = "{channel}_{intent}_{window}_{suppress}"
    tokens = {**{k: v for k, v in TOKENS.items() if k != "exclusions"}, "suppress": TOKENS["exclusions"]}
    tokens["channel"] = {"values": ["paid", "onsite"]}
    convention, broken = naming_convention_save(data={"template": renamed_template, "tokens": tokens}, instance=convention)

    assert [(a.key, why) for a, why in broken] == [
        (
            "winback",
            "'email_winback_60-90d_none': {channel} is 'email' but must be one of paid, onsite "
            "(expected {channel}_{intent}_{window}_{suppress}, e.g. paid_cart_0-2h_nopurch)",
        )
    ]
    assert [a.key for a, _ in nonconforming_audiences(convention)] == ["winback"]
    broken_after = Audience.objects.get(key="winback")
    assert broken_after.enabled is True
    assert broken_after.name == "email_winback_60-90d_none"
    assert broken_after.name_tokens == old_tokens
    kept.refresh_from_db()
    assert kept.name_tokens == {"channel": "paid", "intent": "cart", "window": "0-2h", "suppress": "nopurch"}


def test_a_refused_change_keeps_the_old_convention(convention):
    with pytest.raises(ValidationError):
        naming_convention_save(data={"template": "{channel}{intent}"}, instance=convention)
    convention.refresh_from_db()
    assert convention.template == TEMPLATE


def test_only_one_convention_is_the_default(convention):
    assert convention.is_default is True  # a new convention is the default unless told otherwise
    other, _ = naming_convention_save(
        data={
            "key": "teams",
            "template": "{team}-{topic}",
            "tokens": {"team": {"values": ["crm"]}, "topic": {"pattern": "[a-z]+"}},
        }
    )
    convention.refresh_from_db()
    assert other.is_default is True and convention.is_default is False
    assert list(NamingConvention.objects.filter(is_default=True)) == [other]
    # names are now checked against the new default
    assert audience_save(data={"key": "cart", "name": "crm-carts", "rule": CART_RULE}).name_tokens == {
        "team": "crm",
        "topic": "carts",
    }


def test_a_non_default_convention_does_not_touch_audiences(convention):
    audience_save(data={"key": "cart", "name": "paid_cart_0-2h_nopurch", "rule": CART_RULE})
    other, broken = naming_convention_save(
        data={
            "key": "teams",
            "template": "{team}-{topic}",
            "tokens": {"team": {"values": ["crm"]}, "topic": {"pattern": "[a-z]+"}},
            "is_default": False,
        }
    )
    convention.refresh_from_db()
    assert broken == [] and convention.is_default is True and other.is_default is False
    assert Audience.objects.get(key="cart").name_tokens["channel"] == "paid"
