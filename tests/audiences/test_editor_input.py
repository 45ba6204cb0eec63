"""Whatever a browser (or anyone with a session) posts to the audience editor, the answer is a
page or a JSON answer: odd input is a 400 that says what was wrong, never a 500, and never the
database's own words."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, User
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.roles import RETENTION_MANAGER
from audiences.services import audience_save, identifier_policy_save, priority_group_save

PREVIEW = "/dashboard/audiences/editor/preview"
NEW = "/dashboard/audiences/new/"
EDIT = "/dashboard/audiences/cart/edit/"
INTERNALS = (
    "Traceback",
    "IntegrityError",
    "OperationalError",
    "DataError",
    "ProgrammingError",
    "sqlite",
    "psycopg",
    "SELECT ",
    "OverflowError",
    "UnicodeEncodeError",
    "KeyError",
    "TypeError",
    "AttributeError",
)
HYPOTHESIS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@pytest.fixture
def manager(db, client):
    from django.utils import timezone

    source, _ = source_create(name="web")
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("identify", "cus_1", "m1", now, traits={"email": "ann@example.com", "vip_tier": "gold", "ltv": 120}),
            Message("event", "cus_1", "m2", now, name="Added to Cart", properties={"category": "serum"}),
            Message("identify", "cus_2", "m3", now, traits={"email": "bob@example.com"}),
        ],
    )
    audience_save(
        data={"key": "buyers", "name": "buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    audience_save(data={"key": "cart", "name": "cart", "rule": {"event": "Added to Cart", "within": "2h"}})
    priority_group_save(data={"key": "carts", "name": "Carts"})
    identifier_policy_save(data={"key": "email", "name": "email", "field": "email"})
    user = User.objects.create_user("rita", password="pw-for-tests-1", is_staff=True)
    user.groups.add(Group.objects.get(name=RETENTION_MANAGER))
    client.force_login(user)
    return client


def no_internals(text: str, sent: str = "") -> None:
    for word in INTERNALS:
        if word.lower() not in sent.lower():  # an answer may show back what was typed
            assert word not in text, f"{word!r} in the answer: {text[:2000]}"


def check_json_answer(response, sent="") -> dict:
    assert response.status_code < 500, response.content[:2000]
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    no_internals(response.content.decode(), str(sent))
    if response.status_code >= 400:
        assert answer["errors"] and all(isinstance(m, str) and m.strip() for m in answer["errors"]), answer
    return answer


def check_form_answer(response, sent="") -> None:
    assert response.status_code < 500, response.content[:2000]
    text = response.content.decode()
    no_internals(text, str(sent))
    if response.status_code >= 400:
        assert response.status_code == 400
        if response["Content-Type"].startswith("text/plain"):  # refused before the form (config.middleware)
            assert "holds a NUL character" in text
            return
        errors = response.context["errors"]
        assert errors and all(m.strip() for messages in errors.values() for m in messages), errors
        assert "nothing was saved" in text
        assert "editor-state" in text  # the form comes back, filled in, to be fixed


# --- the known crashes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"rows": "notalist"},
        [1],
        {"rows": [1]},
        {"source": "yaml", "yaml": 5},
        "a string",
        7,
        None,
        {"match": ["all"], "rows": []},
        {"rows": [{"type": "did", "event": 5, "within": 7}]},
        {"rows": [{"type": ["did"]}]},
        {"source": "yaml", "yaml": "event: A\n", "exclusions": "buyers"},
        {"source": "yaml", "yaml": "event: A\n", "exclusions": [1, {"a": 2}]},
        {"source": "yaml", "yaml": "event: A\n", "key": ["x"]},
        {"source": "yaml", "yaml": "event: A\n", "identifier_policy": {"k": 1}},
        {"source": "yaml", "yaml": "event: A\n", "priority_group": 5},
    ],
)
def test_an_odd_preview_request_is_a_400_that_says_what_was_wrong(manager, body):
    response = manager.post(PREVIEW, json.dumps(body), content_type="application/json")
    answer = check_json_answer(response)
    assert response.status_code == 400
    assert answer["errors"]


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=BoUnDaRy", "text/plain", ""])
def test_a_preview_request_that_is_not_json_by_its_content_type_is_a_400(manager, content_type):
    body = b'--BoUnDaRy\r\nContent-Disposition: form-data; name="rows"\r\n\r\n1\r\n--BoUnDaRy--\r\n'
    response = manager.generic("POST", PREVIEW, body, content_type=content_type)
    assert response.status_code == 400
    assert check_json_answer(response)["errors"] == ["the preview takes a JSON body (Content-Type: application/json)"]


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b'{"rows": [' + b"[" * 5000])
def test_a_preview_request_that_is_not_json_is_a_400(manager, body):
    response = manager.generic("POST", PREVIEW, body, content_type="application/json")
    assert check_json_answer(response)["errors"] and response.status_code == 400


def test_a_preview_the_database_cannot_run_says_so_plainly_and_logs_why(manager, caplog):
    from django.db import connection

    from audiences.models import EventStat
    from dashboard.editor_views import PREVIEW_FAILED

    table = EventStat._meta.db_table
    with connection.cursor() as cursor:  # a real failure, undone with the test's transaction
        if connection.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred check may still need the table
        cursor.execute(f"DROP TABLE {connection.ops.quote_name(table)}")
    response = manager.post(
        PREVIEW, json.dumps({"source": "yaml", "yaml": "event: Added to Cart\nwithin: 2h\n"}), content_type="application/json"
    )
    answer = check_json_answer(response)
    assert answer["errors"] == [PREVIEW_FAILED] and "preview" not in answer
    assert table not in response.content.decode()
    failures = [record for record in caplog.records if record.name == "dashboard.editor_views"]
    assert len(failures) == 1 and failures[0].exc_info and table in str(failures[0].exc_info[1])


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("attribute: ltv\ngt: .inf\n", "gt: inf is not a number that can be compared"),
        ("attribute: ltv\ngt: 99999999999999999999999\n", "gt: 99999999999999999999999 is too large a number to compare"),
        ('event: "A\\0"\n', "event: text holds a NUL character"),
    ],
)
def test_values_no_database_can_compare_get_a_message_before_any_query(manager, yaml_text, message):
    response = manager.post(PREVIEW, json.dumps({"source": "yaml", "yaml": yaml_text}), content_type="application/json")
    answer = check_json_answer(response)
    assert answer["errors"] and answer["errors"][0].startswith(message), answer


@pytest.mark.parametrize("state_json", ["{broken", "[1, 2]", '"text"', "5", '{"rows": "notalist"}', '{"rows": [1], "match": 5}'])
def test_a_broken_form_state_is_a_400_with_the_form_back(manager, state_json):
    response = manager.post(
        NEW, {"key": "k1", "name": "n1", "rule_yaml": "event: A\n", "state_json": state_json, "priority_rank": "x"}
    )
    check_form_answer(response)
    assert response.status_code == 400


def test_a_broken_state_is_refused_and_the_form_comes_back_rebuilt_from_the_yaml(manager):
    from audiences.models import Audience

    response = manager.post(
        NEW,
        {
            "key": "k1",
            "name": "n1",
            "purpose": "activation",
            "cadence": "realtime",
            "rule_yaml": "event: A\nwithin: 2h\n",
            "state_json": "{broken",
        },
    )
    check_form_answer(response)
    assert response.status_code == 400
    assert response.context["errors"] == {
        "state_json": ["the editor's state (state_json) was not what the page sends; the form was rebuilt from the YAML"]
    }
    assert response.context["state"]["rows"] == [
        {"type": "did", "event": "A", "within": "2h", "min_count": 1, "where_key": "", "where_value": "", "not_followed_by": ""}
    ]
    assert "state_json: the editor&#x27;s state" in response.content.decode()
    assert not Audience.objects.filter(key="k1").exists()


def test_a_form_without_javascript_sends_no_state_and_saves(manager):
    response = manager.post(
        NEW, {"key": "k1", "name": "n1", "purpose": "activation", "cadence": "realtime", "rule_yaml": "event: A\nwithin: 2h\n"}
    )
    assert response.status_code == 302


@pytest.mark.parametrize("rank", ["²", "١", "99999999999999999999", "-1", "1.5"])
def test_an_odd_priority_rank_is_a_400_with_a_message(manager, rank):
    response = manager.post(
        NEW, {"key": "k1", "name": "n1", "rule_yaml": "event: A\n", "priority_group": "carts", "priority_rank": rank}
    )
    check_form_answer(response)
    assert response.status_code == 400
    assert response.context["errors"]["priority_rank"]


@pytest.mark.parametrize("field,value", [("name", "x" * 201), ("cadence", "9" * 120 + "m"), ("priority_rank", "4294967296")])
def test_overlong_fields_are_a_400_that_names_the_field(manager, field, value):
    form = {
        "key": "k1",
        "name": "n1",
        "rule_yaml": "event: A\n",
        "cadence": "realtime",
        "priority_group": "carts",
        "priority_rank": "1",
        field: value,
    }
    response = manager.post(NEW, form)
    check_form_answer(response)
    assert response.status_code == 400
    assert response.context["errors"].get(field), response.context["errors"]


@pytest.mark.parametrize(
    "field",
    [
        "name",
        "description",
        "key",
        "cadence",
        "exclusions",
        "identifier_policy",
        "priority_group",
        "priority_rank",
        "rule_yaml",
        "state_json",
    ],
)
def test_a_nul_character_in_any_field_is_a_400_that_names_the_field(manager, field):
    form = {"key": "k1", "name": "n1", "rule_yaml": "event: A\n", "cadence": "realtime"}
    form[field] = form.get(field, "x") + "\x00"
    response = manager.post(NEW, form)
    check_form_answer(response)
    assert response.status_code == 400
    assert f"The field {field!r} holds a NUL character" in response.content.decode()


# --- anything at all --------------------------------------------------------------------------

TEXT = (
    st.text(st.characters(codec="utf-8"), max_size=30)
    | st.text(max_size=30)
    | st.sampled_from(
        [
            "",
            "all",
            "any",
            "did",
            "attribute",
            "yaml",
            "form",
            "2h",
            "7d",
            "x" * 300,
            "\x00",
            "carts",
            "buyers",
            "email",
            "1",
            "0",
            "-1",
            "99999999999999999999999",
            "1e400",
            "NaN",
            "event: A\n",
            "{",
            "[1]",
        ]
    )
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
ROW_FIELDS = [
    "type",
    "event",
    "within",
    "min_count",
    "where_key",
    "where_value",
    "newer",
    "older",
    "not_followed_by",
    "attribute",
    "op",
    "value",
    "audience",
]
ROW = st.dictionaries(st.sampled_from(ROW_FIELDS), JSON | TEXT, max_size=8) | JSON
PREVIEW_BODY = (
    st.fixed_dictionaries(
        {},
        optional={
            "source": st.sampled_from(["yaml", "form"]) | JSON,
            "yaml": TEXT | JSON,
            "match": st.sampled_from(["all", "any"]) | JSON,
            "rows": st.lists(ROW, max_size=4) | JSON,
            "exclusions": st.lists(TEXT, max_size=3) | JSON,
            "priority_group": TEXT | JSON,
            "priority_rank": TEXT | JSON,
            "identifier_policy": TEXT | JSON,
            "key": TEXT | JSON,
        },
    )
    | JSON
)
RULE_YAML = (
    st.sampled_from(
        [
            "event: Added to Cart\nwithin: 2h\n",
            "attribute: vip_tier\nin: [gold]\n",
            "{all: [{event: A}, {in_audience: buyers}]}",
            "attribute: ltv\ngt: .inf\n",
            "attribute: ltv\ngt: 99999999999999999999999\n",
            'event: "\\0"\n',
            "- 1\n",
            "a: [",
            "not: {in_audience: cart}\n",
            "in_audience: k1\n",
        ]
    )
    | TEXT
)


@HYPOTHESIS
@given(body=PREVIEW_BODY)
@example(body={"rows": "notalist"})
@example(body={"source": "yaml", "yaml": "attribute: ltv\ngt: 99999999999999999999999\n"})
@example(body={"source": "yaml", "yaml": 'event: "\\0"\n'})
def test_the_preview_never_fails_on_any_json(manager, body):
    check_json_answer(manager.post(PREVIEW, json.dumps(body), content_type="application/json"), body)


@HYPOTHESIS
@given(body=st.binary(max_size=200))
def test_the_preview_never_fails_on_any_bytes(manager, body):
    check_json_answer(manager.generic("POST", PREVIEW, body, content_type="application/json"), body.decode(errors="replace"))


FORM = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["k1", "cart", "buyers", ""]) | TEXT,
        "name": st.sampled_from(["n1", "cart", ""]) | TEXT,
    },
    optional={
        "description": TEXT,
        "purpose": st.sampled_from(["activation", "suppression"]) | TEXT,
        "cadence": st.sampled_from(["realtime", "15m", "0 6 * * *"]) | TEXT,
        "identifier_policy": st.sampled_from(["email", ""]) | TEXT,
        "priority_group": st.sampled_from(["carts", ""]) | TEXT,
        "priority_rank": st.sampled_from(["1", "2", ""]) | TEXT,
        "rule_yaml": RULE_YAML,
        "state_json": st.builds(json.dumps, JSON) | TEXT,
        "enabled": st.sampled_from(["on", ""]) | TEXT,
        "exclusions": st.lists(st.sampled_from(["buyers", "cart", "k1"]) | TEXT, max_size=3),
    },
)


@HYPOTHESIS
@given(form=FORM, edit=st.booleans())
@example(form={"key": "k1", "name": "n1", "state_json": "{broken"}, edit=False)
@example(form={"key": "k1", "name": "n1", "priority_group": "carts", "priority_rank": "²"}, edit=False)
@example(form={"key": "k1", "name": "n\x00", "rule_yaml": "event: A\n"}, edit=False)
def test_the_audience_form_never_fails_on_any_form(manager, form, edit):
    check_form_answer(manager.post(EDIT if edit else NEW, form), form)
