"""Every bad input gets its status and a message that says what was wrong, and writes nothing."""

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.django_db

GOOD = {"type": "track", "userId": "u1", "event": "Added to Cart", "messageId": "ok-1"}


def assert_rejected(response, status, *, index=None, field=None, contains=""):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["errors"], body
    matches = [
        e
        for e in body["errors"]
        if (index is None or e["index"] == index) and (field is None or e["field"] == field) and contains in e["message"]
    ]
    assert matches, f"no error with index={index} field={field} containing {contains!r} in {body['errors']}"
    assert body["message"]
    return body


@pytest.mark.parametrize(
    "raw,contains",
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"batch": [NaN]}', "not valid JSON"),
        (b'{"batch": [1e999]}', "out of range"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_malformed_body_is_400(ingest, nothing_written, raw, contains):
    with nothing_written():
        response = ingest.post("/ingest/v1/batch", raw, raw=True)
    assert_rejected(response, 400, contains=contains)


@pytest.mark.parametrize(
    "body,field,contains",
    [
        ([GOOD], "", "must be a JSON object"),
        ({}, "batch", "is required"),
        ({"batch": {"a": 1}}, "batch", "must be an array"),
    ],
)
def test_batch_envelope_errors(ingest, nothing_written, body, field, contains):
    with nothing_written():
        response = ingest.post("/ingest/v1/batch", body)
    assert_rejected(response, 400, field=field, contains=contains)


@pytest.mark.parametrize(
    "message,field,contains",
    [
        ("just a string", "", "must be an object"),
        ({**GOOD, "type": "bogus"}, "type", "not supported"),
        ({**GOOD, "type": "group"}, "type", "not supported"),
        ({k: v for k, v in GOOD.items() if k != "type"}, "type", "is required"),
        ({k: v for k, v in GOOD.items() if k != "userId"}, "userId", "is required"),
        ({**GOOD, "userId": None, "anonymousId": "anon-1"}, "userId", "customer id"),
        ({**GOOD, "userId": "   "}, "userId", "is required"),
        ({**GOOD, "userId": True}, "userId", "not a boolean"),
        ({**GOOD, "userId": {"id": 1}}, "userId", "not an object"),
        ({**GOOD, "userId": "x" * 151}, "userId", "longer than 150"),
        ({**GOOD, "userId": "a\x00b"}, "userId", "NUL"),
        ({**GOOD, "event": ""}, "event", "is required"),
        ({**GOOD, "event": 12}, "event", "must be a string"),
        ({**GOOD, "event": "x" * 256}, "event", "longer than 255"),
        ({**GOOD, "properties": [1, 2]}, "properties", "must be an object"),
        ({**GOOD, "properties": {"note": "bad\x00byte"}}, "properties.note", "NUL"),
        ({**GOOD, "properties": {"s": "\ud800"}}, "properties.s", "surrogate"),
        ({**GOOD, "messageId": 5}, "messageId", "must be a string"),
        ({**GOOD, "timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({**GOOD, "timestamp": 1764000000}, "timestamp", "ISO 8601"),
        ({**GOOD, "timestamp": "2999-01-01T00:00:00Z"}, "timestamp", "in the future"),
        ({**GOOD, "timestamp": "1900-01-01T00:00:00Z"}, "timestamp", "before 1970"),
        ({"type": "identify", "userId": "u1", "traits": "gold"}, "traits", "must be an object"),
        ({"type": "identify", "userId": "u1", "traits": {"email": ["a@b.c"]}}, "traits.email", "must be a string"),
        ({"type": "page", "userId": "u1", "name": 7}, "name", "must be a string"),
    ],
)
def test_bad_message_is_400_with_index_and_field(ingest, nothing_written, message, field, contains):
    with nothing_written():
        response = ingest.batch([GOOD, message])
    assert_rejected(response, 400, index=1, field=field, contains=contains)


def test_deeply_nested_properties_are_refused(ingest, nothing_written):
    nested = current = {}
    for _ in range(40):
        current["k"] = {}
        current = current["k"]
    with nothing_written():
        response = ingest.batch([{**GOOD, "properties": nested}])
    assert_rejected(response, 400, index=0, contains="nested more than 32")


def test_every_bad_message_is_reported_not_only_the_first(ingest, nothing_written):
    with nothing_written():
        response = ingest.batch([{"type": "bogus"}, GOOD, {**GOOD, "userId": None}, {**GOOD, "event": None}])
    errors = response.json()["errors"]
    assert {e["index"] for e in errors} == {0, 2, 3}


def test_body_over_500_kb_is_413(ingest, nothing_written):
    messages = [{**GOOD, "messageId": f"m{n}", "properties": {"pad": "x" * 20000}} for n in range(30)]
    with nothing_written():
        response = ingest.batch(messages)
    assert_rejected(response, 413, contains="500 KB")


def test_gzip_body_inflating_over_500_kb_is_413(ingest, nothing_written):
    huge = json.dumps({"batch": [{**GOOD, "properties": {"pad": "x" * 600_000}}]}).encode()
    with nothing_written():
        response = ingest.post("/ingest/v1/batch", gzip.compress(huge), raw=True, headers={"Content-Encoding": "gzip"})
    assert_rejected(response, 413, contains="inflated body")


def test_message_over_32_kb_is_413(ingest, nothing_written):
    with nothing_written():
        response = ingest.batch([GOOD, {**GOOD, "messageId": "big", "properties": {"pad": "x" * 33 * 1024}}])
    assert_rejected(response, 413, index=1, contains="32 KB")


@pytest.mark.parametrize(
    "raw,contains",
    [
        (b"definitely not gzip", "not valid gzip"),
        (gzip.compress(b'{"batch": []}')[:-6], "truncated"),
    ],
)
def test_broken_gzip_is_400(ingest, nothing_written, raw, contains):
    with nothing_written():
        response = ingest.post("/ingest/v1/batch", raw, raw=True, headers={"Content-Encoding": "gzip"})
    assert_rejected(response, 400, contains=contains)


def test_unknown_content_encoding_is_400(ingest, nothing_written):
    with nothing_written():
        response = ingest.post("/ingest/v1/batch", {"batch": [GOOD]}, headers={"Content-Encoding": "br"})
    assert_rejected(response, 400, contains="not supported")


def test_single_endpoint_refuses_another_type(ingest, nothing_written):
    with nothing_written():
        response = ingest.post("/ingest/v1/identify", GOOD)
    assert_rejected(response, 400, field="type", contains="must be 'identify'")


@pytest.mark.parametrize(
    "path,body,field,contains",
    [
        ("customers/c1", [1], "", "must be a JSON object"),
        ("customers/c1", {"email": 5}, "email", "must be a string"),
        ("customers/c1", {"note": "a\x00"}, "note", "NUL"),
        ("customers/c1/events", {"data": {}}, "name", "is required"),
        ("customers/c1/events", {"name": "X", "timestamp": "2026-01-01"}, "timestamp", "unix time"),
        ("customers/c1/events", {"name": "X", "timestamp": 4102444800}, "timestamp", "future"),
        ("customers/c1/events", {"name": "X", "timestamp": 10**14}, "timestamp", "not a unix time"),
        ("customers/c1/events", {"name": "X", "data": "no"}, "data", "must be an object"),
        ("customers/c1/events", {"name": "X", "type": "purchase"}, "type", "not supported"),
        ("customers/" + "x" * 151, {"a": 1}, "id", "longer than 150"),
    ],
)
def test_track_api_bad_input_is_400(ingest, nothing_written, path, body, field, contains):
    method = "POST" if path.endswith("/events") else "PUT"
    with nothing_written():
        response = ingest.track_api(method, path, body)
    assert_rejected(response, 400, field=field, contains=contains)


def test_track_api_body_over_32_kb_is_413(ingest, nothing_written):
    with nothing_written():
        response = ingest.track_api("PUT", "customers/c1", {"pad": "x" * 40 * 1024})
    assert_rejected(response, 413, contains="32 KB")


# --- property-based: random JSON never produces a 5xx ----------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
field_values = st.sampled_from(["identify", "track", "page", "screen", "group", "", "u1", "2026-11-29T10:00:00Z"]) | json_values
messages = st.fixed_dictionaries(
    {},
    optional={
        "type": field_values,
        "userId": field_values,
        "anonymousId": field_values,
        "event": field_values,
        "messageId": field_values,
        "timestamp": field_values,
        "originalTimestamp": field_values,
        "properties": json_values,
        "traits": json_values,
        "name": field_values,
        "category": field_values,
        "context": json_values,
    },
)
bodies = (
    st.fixed_dictionaries({"batch": st.lists(messages | json_values, max_size=5)})
    | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    | json_values
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_random_json_never_gets_a_5xx(ingest, body):
    response = ingest.post("/ingest/v1/batch", body)
    assert response.status_code < 500, (body, response.content)
    assert response.status_code in (200, 400, 413)
    if response.status_code != 200:
        assert response.json()["errors"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_random_bytes_never_get_a_5xx(ingest, raw):
    for headers in ({}, {"Content-Encoding": "gzip"}):
        response = ingest.post("/ingest/v1/batch", raw, raw=True, headers=headers)
        assert response.status_code in (200, 400, 413), response.content
