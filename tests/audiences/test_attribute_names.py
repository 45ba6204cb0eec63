"""Attribute and event property names that mean something to Django (`in`, `exact`, `contains`,
`gt`, `isnull`, `year`, `has_key`, ...) or to a lookup path (`__`, a trailing `_`) are names like
any other: a rule on one saves, previews and evaluates to what the rule says, on SQLite and on
PostgreSQL. A name no rule can hold (a space, a dot, a quote, a letter outside ASCII, a leading
digit) is refused when the audience is saved, with a message that says why; nothing crashes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db.models import DateTimeField, JSONField
from django.db.models.fields.json import KeyTransform
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audiences.compiler import compile_rule
from audiences.evaluation import evaluate_audience
from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.models import Audience, Event, EventStat, Membership, Person, Source
from audiences.rules import KEY_NAME
from audiences.services import audience_save
from tests.audiences.reference import Reference

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
# every lookup and transform name Django knows for a JSON column, its keys and dates, and the
# names of issue 12's report
DJANGO_NAMES = sorted(
    set(JSONField.get_class_lookups())
    | set(KeyTransform.get_class_lookups())
    | set(DateTimeField.get_class_lookups())
    | {
        "in",
        "exact",
        "contains",
        "gt",
        "isnull",
        "year",
        "has_key",
        "keys",
        "values",
        "len",
        "pk",
        "id",
        "unaccent",
        "search",
        "trigram_similar",
    }
)
# names a lookup path would split or merge: `tier_` + `__gt` reads as the key `tier`, then `_gt`
PATH_NAMES = ["a__b", "__", "_", "tier_", "_tier", "in__x", "x__in", "attributes", "properties", "a-b", "a-", "A" * 64]
NAMES = DJANGO_NAMES + PATH_NAMES
# what the person store holds under the name, and under other names beside it
VALUES = [
    "x",
    "y",
    2,
    2.5,
    True,
    False,
    ["x", "y"],
    {"in": "x", "exact": 2},
    None,
    int((NOW - timedelta(days=90)).timestamp()),
    int((NOW - timedelta(days=10)).timestamp()),
]
RULES = [
    ("eq", "x"),
    ("eq", 2),
    ("eq", True),
    ("ne", "x"),
    ("in", ["x", 2, True]),
    ("gt", 2),
    ("gte", 2),
    ("lt", 3),
    ("lte", 2),
    ("exists", True),
    ("exists", False),
    ("contains", "x"),
    ("older_than", "60d"),
    ("newer_than", "60d"),
]


def load(name: str) -> None:
    """One person per value under `name`, one with the value under another name, one with none
    at all, each with a `Seen` event carrying the value as a property of that name."""
    Membership.objects.all().delete()
    Audience.objects.all().delete()
    Event.objects.all().delete()
    EventStat.objects.all().delete()
    Person.objects.all().delete()
    source = Source.objects.filter(name="names").first() or source_create(name="names")[0]
    messages = []
    for n, value in enumerate(VALUES):
        messages.append(Message("identify", f"p{n}", f"i{n}", NOW, traits={name: value, "other": "x"}))
        messages.append(Message("event", f"p{n}", f"e{n}", NOW - timedelta(hours=1), name="Seen", properties={name: value}))
    messages.append(Message("identify", "elsewhere", "i-else", NOW, traits={f"{name}x": "x", "in": "x", "exact": "x"}))
    messages.append(Message("event", "elsewhere", "e-else", NOW, name="Seen", properties={f"{name}x": "x", "in": "x"}))
    messages.append(Message("identify", "nothing", "i-none", NOW, traits={"plain": 1}))
    ingest_messages(source=source, messages=messages, received_at=NOW)
    # a trait of null removes the attribute: store the JSON null itself, which the rule must
    # tell from a missing key
    Person.objects.filter(customer_id=f"p{VALUES.index(None)}").update(attributes={name: None, "other": "x"})


def reference() -> Reference:
    events = {}
    for event in Event.objects.all():
        events.setdefault(event.person_id, []).append((event.name, event.occurred_at, event.properties))
    return Reference(attributes={p.pk: p.attributes for p in Person.objects.all()}, events=events, memberships={}, now=NOW)


def compiled(rule) -> set[int]:
    return set(Person.objects.filter(compile_rule(rule, NOW)).values_list("pk", flat=True))


def customer_ids(pks) -> set[str]:
    return set(Person.objects.filter(pk__in=pks).values_list("customer_id", flat=True))


def members(key: str) -> set[str]:
    return set(Membership.objects.filter(audience__key=key, exited_at__isnull=True).values_list("person__customer_id", flat=True))


def test_a_rule_on_an_attribute_named_in_saves_and_evaluates():
    """Issue 12's report. The compiler filtered on `attributes__in="x"`: Django's `in` lookup on
    the whole column, not the key, so the rule matched no one (`isnull` failed the evaluation
    outright, `contains` on SQLite too; the editor's preview with them)."""
    load("in")
    audience = audience_save(data={"key": "odd", "name": "Odd", "rule": {"attribute": "in", "eq": "x"}})
    evaluation = evaluate_audience(audience, now=NOW)
    assert members("odd") == {"p0", "elsewhere"} and evaluation.size == 2  # `elsewhere` has an `in` of "x" too
    audience = audience_save(data={"rule": {"event": "Seen", "within": "2h", "where": {"in": "x"}}}, instance=audience)
    evaluate_audience(audience, now=NOW)
    assert members("odd") == {"p0", "elsewhere"}
    audience = audience_save(data={"rule": {"attribute": "in", "in": ["y", 2]}}, instance=audience)
    evaluate_audience(audience, now=NOW)
    assert members("odd") == {"p1", "p2"}


@pytest.mark.parametrize("name", NAMES)
def test_every_operator_on_a_name_django_reads_as_syntax_means_what_the_rule_says(name):
    load(name)
    truth = reference()
    for operator, value in RULES:
        rule = {"attribute": name, operator: value}
        assert compiled(rule) == truth.members(rule), rule
    # the values are told apart at all (a rule matching no one would agree with a broken compile)
    assert customer_ids(compiled({"attribute": name, "eq": "x"})) == {"p0"} | (
        {"elsewhere"} if name in ("in", "exact") else set()
    )
    assert customer_ids(compiled({"attribute": name, "gt": 2})) == {"p3", "p9", "p10"}


@pytest.mark.parametrize("name", NAMES)
def test_an_event_property_of_such_a_name_means_what_the_rule_says(name):
    load(name)
    truth = reference()
    for value in ("x", 2, True, 2.5):
        for extra in (
            {},
            {"within": "2h"},
            {"within": "2h", "min_count": 2},
            {"last_between": ["30m", "1d"]},
            {"within": "2h", "not_followed_by": "Bought"},
        ):
            rule = {"event": "Seen", "where": {name: value}, **extra}
            assert compiled(rule) == truth.members(rule), rule
    assert customer_ids(compiled({"event": "Seen", "where": {name: "x"}})) == {"p0"} | ({"elsewhere"} if name == "in" else set())


@pytest.mark.parametrize("name", ["in", "tier_", "a__b", "has_key"])
def test_the_editor_previews_and_saves_a_rule_on_such_a_name(manager_client, name):
    load(name)
    rule_yaml = f"attribute: {json.dumps(name)}\neq: x\n"
    expected = reference().members({"attribute": name, "eq": "x"})
    response = manager_client.post(
        "/dashboard/audiences/editor/preview", json.dumps({"source": "yaml", "yaml": rule_yaml}), content_type="application/json"
    )
    answer = response.json()
    assert response.status_code == 200 and answer["errors"] == [] and answer["preview"]["size"] == len(expected), answer
    response = manager_client.post(
        "/dashboard/audiences/new/",
        {"key": "odd", "name": "odd", "rule_yaml": rule_yaml, "purpose": "activation", "cadence": "realtime"},
    )
    assert response.status_code == 302, response.context["errors"]
    assert Audience.objects.get(key="odd").rule == {"attribute": name, "eq": "x"}
    assert manager_client.get("/dashboard/audiences/odd/").status_code == 200


REFUSED = [
    ("vip tier", '"vip tier" is not an attribute name (letters, digits, _ and -)'),
    ("vip.tier", '"vip.tier" is not an attribute name (letters, digits, _ and -)'),
    ('vip"tier', '"vip\\"tier" is not an attribute name (letters, digits, _ and -)'),
    ("vip'tier", '"vip\'tier" is not an attribute name (letters, digits, _ and -)'),
    ("vip$", '"vip$" is not an attribute name (letters, digits, _ and -)'),
    ("", '"" is not an attribute name (letters, digits, _ and -)'),
    ("名前", "\"名前\" is not an attribute name (letters, digits, _ and -): '名' is not an ASCII letter"),
    ("café", "\"café\" is not an attribute name (letters, digits, _ and -): 'é' is not an ASCII letter"),
    ("2nd_order", '"2nd_order" is not an attribute name (letters, digits, _ and -): it must start with a letter or _'),
    ("0", '"0" is not an attribute name (letters, digits, _ and -): it must start with a letter or _'),
    ("-1", '"-1" is not an attribute name (letters, digits, _ and -): it must start with a letter or _'),
    ("a" * 65, "is not an attribute name: it is 65 characters long, and a name takes at most 64"),
]


@pytest.mark.parametrize("name, message", REFUSED)
def test_a_name_no_rule_can_hold_is_refused_when_saved_with_why(name, message):
    with pytest.raises(ValidationError) as refused:
        audience_save(data={"key": "odd", "name": "Odd", "rule": {"all": [{"attribute": name, "eq": "x"}]}})
    assert refused.value.message_dict == {"rule": [f"all[0].attribute: {message}"]}
    property_message = message.removeprefix(json.dumps(name, ensure_ascii=False) + " ").replace("an attribute", "a property")
    with pytest.raises(ValidationError) as refused:
        audience_save(data={"key": "odd", "name": "Odd", "rule": {"event": "Seen", "where": {name: "x"}}})
    assert refused.value.message_dict == {"rule": [f"where.{name}: {property_message}"]}
    assert not Audience.objects.exists()


NAME_TEXT = st.one_of(
    st.sampled_from(NAMES),
    st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_\-]{0,63}\Z"),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=70),
    st.builds(lambda a, b: f"{a}__{b}", st.sampled_from(DJANGO_NAMES), st.sampled_from(DJANGO_NAMES)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=NAME_TEXT, operator=st.sampled_from(RULES), in_event=st.booleans())
@example(name="in", operator=("eq", "x"), in_event=False)
@example(name="in", operator=("eq", "x"), in_event=True)
@example(name="isnull", operator=("ne", "x"), in_event=False)
@example(name='a"b', operator=("eq", "x"), in_event=False)
def test_any_name_either_evaluates_to_the_rule_or_is_refused_with_a_message(name, operator, in_event):
    load(name if KEY_NAME.match(name) else "plain")
    op, value = operator
    rule = (
        {"event": "Seen", "where": {name: value if op in ("eq", "ne") else "x"}} if in_event else {"attribute": name, op: value}
    )
    try:
        audience = audience_save(data={"key": "odd", "name": "Odd", "rule": rule})
    except ValidationError as refused:
        (message,) = refused.message_dict["rule"]
        assert ("is not a property name" if in_event else "is not an attribute name") in message, message
        assert not KEY_NAME.match(name)
        return
    assert KEY_NAME.match(name)
    evaluate_audience(audience, now=NOW)
    assert members("odd") == customer_ids(reference().members(rule)), rule
