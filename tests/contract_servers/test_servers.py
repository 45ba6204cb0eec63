"""The contract servers themselves, driven over real sockets with `requests`.

If these servers drift from the contracts they stand for, every client test built on them
proves nothing, so each documented answer (errors included) and each fault is checked here.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.contract_servers.common import FaultPlan
from tests.contract_servers.customerio import CustomerIoServer, decode_cursor, encode_cursor
from tests.contract_servers.livelike import LiveLikeServer
from tests.contract_servers.webhook import WebhookReceiver, sign

REPO = Path(__file__).resolve().parents[2]
TOKEN = "producer-token"
CLIENT = "client-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def row(user_id="u1", action=True, audience_id="aud-1", timestamp="2024-05-01T10:00:00Z", **extra):
    return {
        "audience_id": audience_id,
        "audience_name": "Churn risk",
        "action": action,
        "timestamp": timestamp,
        "user_id": user_id,
        **extra,
    }


@pytest.fixture
def livelike():
    with LiveLikeServer(TOKEN, CLIENT, reject_user_ids={"ghost"}) as server:
        yield server
        assert server.server_errors == []


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def sync_url(server, client_id=CLIENT):
    return f"{server.api_url}/applications/{client_id}/segment-audience-sync/"


def events_url(server, client_id=CLIENT):
    return f"{server.api_url}/applications/{client_id}/segment-events/"


def post_rows(http, server, rows, *, headers=AUTH, timeout=5, **kwargs):
    return http.post(sync_url(server), json=rows, headers=headers, timeout=timeout, **kwargs)


# -- LiveLike: refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}])
def test_livelike_refuses_a_missing_or_wrong_token(livelike, http, headers):
    r = post_rows(http, livelike, [row()], headers=headers)
    assert r.status_code == 401
    assert r.json() == {"detail": "Invalid token."}
    assert livelike.members("aud-1") == set()


def test_livelike_unknown_client_id_and_unknown_path_are_404(livelike, http):
    r = http.post(sync_url(livelike, "other-client"), json=[row()], headers=AUTH, timeout=5)
    assert (r.status_code, r.json()) == (404, {"detail": "Not found."})
    r = http.post(livelike.api_url + "/applications/client-1/nothing-here/", json=[row()], headers=AUTH, timeout=5)
    assert r.status_code == 404
    assert livelike.rows_applied == 0


def test_livelike_wrong_method_is_405_with_drf_message(livelike, http):
    r = http.get(sync_url(livelike), headers=AUTH, timeout=5)
    assert r.status_code == 405
    assert r.json() == {"detail": 'Method "GET" not allowed.'}


def test_livelike_body_that_is_not_json_is_a_parse_error(livelike, http):
    r = http.post(sync_url(livelike), data=b"[{not json", headers={**AUTH, "Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("JSON parse error - ")


def test_livelike_body_that_is_not_an_array(livelike, http):
    r = post_rows(http, livelike, {"rows": []})
    assert r.status_code == 400
    assert r.json() == {"non_field_errors": ['Expected a list of items but got type "dict".']}


@pytest.mark.parametrize("count", [0, 501])
def test_livelike_refuses_empty_and_over_500_item_batches(livelike, http, count):
    r = post_rows(http, livelike, [row(f"u{i}") for i in range(count)])
    assert r.status_code == 400
    assert r.json() == {"detail": "Expected between 1 and 500 items."}
    assert livelike.rows_applied == 0


def test_livelike_500_items_are_accepted(livelike, http):
    r = post_rows(http, livelike, [row(f"u{i}") for i in range(500)])
    assert (r.status_code, r.json()) == (200, {"received": 500})
    assert len(livelike.members("aud-1")) == 500


def test_livelike_one_invalid_item_refuses_the_whole_request_item_by_item(livelike, http):
    good = row("u-good", email="good@example.com")
    no_user = row()
    del no_user["user_id"]
    items = [
        good,
        no_user,
        row("u2", action="yes"),
        row("u3", email="not-an-email"),
        row("u4", timestamp="yesterday"),
        row("u5", timestamp="2024-13-01T00:00:00Z"),
        row(""),
        "just a string",
        row("u6", action=None, email=None, livelike_profile_id=None),
    ]
    r = post_rows(http, livelike, items)
    assert r.status_code == 400
    assert r.json() == [
        {},
        {"user_id": ["This field is required."]},
        {"action": ["Must be a valid boolean."]},
        {"email": ["Enter a valid email address."]},
        {"timestamp": ["Datetime has wrong format."]},
        {"timestamp": ["Datetime has wrong format."]},
        {"user_id": ["This field may not be blank."]},
        {"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]},
        {"action": ["This field may not be null."]},
    ]
    assert livelike.members("aud-1") == set()
    assert livelike.rows() == []
    assert livelike.rows_received == len(items)


def test_livelike_reject_user_ids_gives_row_level_rejections(livelike, http):
    r = post_rows(http, livelike, [row("u1"), row("ghost")])
    assert r.status_code == 400
    assert r.json() == [{}, {"user_id": ["Unknown user."]}]
    assert livelike.members("aud-1") == set()


# -- LiveLike: applying rows ------------------------------------------------------------------


def test_livelike_applies_rows_in_order_and_keeps_member_sets(livelike, http):
    before = time.time()
    r = post_rows(
        http,
        livelike,
        [row("u1", email="u1@example.com", livelike_profile_id="p-1"), row("u2"), row("u3", audience_id="aud-2")],
    )
    assert (r.status_code, r.json()) == (200, {"received": 3})
    r = post_rows(http, livelike, [row("u1", action=False, timestamp="2024-05-02T10:00:00+00:00")])
    assert r.status_code == 200

    assert livelike.members("aud-1") == {"u2"}
    assert livelike.members("aud-2") == {"u3"}
    rows = livelike.rows()
    assert [(x["seq"], x["user_id"], x["action"]) for x in rows] == [
        (1, "u1", True),
        (2, "u2", True),
        (3, "u3", True),
        (4, "u1", False),
    ]
    assert rows[0]["email"] == "u1@example.com" and rows[0]["livelike_profile_id"] == "p-1"
    assert all(before <= x["received_at"] <= x["acked_at"] <= time.time() for x in rows)
    assert [x["action"] for x in livelike.rows_for("u1")] == [True, False]
    enter_ack = livelike.first_ack("aud-1", "u1", True)
    exit_ack = livelike.first_ack("aud-1", "u1", False)
    assert enter_ack == rows[0]["acked_at"] and exit_ack == rows[3]["acked_at"] and enter_ack <= exit_ack
    assert livelike.first_ack("aud-1", "u9", True) is None
    assert livelike.first_acks()[("aud-2", "u3", True)] == rows[2]["acked_at"]
    assert livelike.audiences() == {"aud-1": {"name": "Churn risk", "members": 1}, "aud-2": {"name": "Churn risk", "members": 1}}
    log = livelike.request_log()
    assert [(x["method"], x["status"], x["rows"], x["fault"]) for x in log] == [("POST", 200, 3, None), ("POST", 200, 1, None)]
    assert log[0]["client"] == log[1]["client"]  # one keep-alive connection for the session


def test_livelike_counts_duplicates_and_exits_before_entries(livelike, http):
    post_rows(http, livelike, [row("u1"), row("u2", action=False)])
    post_rows(http, livelike, [row("u1"), row("u1", timestamp="2024-05-03T00:00:00Z")])
    assert livelike.duplicate_rows == 1
    assert [(d["user_id"], d["seq"]) for d in livelike.duplicates()] == [("u1", 3)]
    assert livelike.exit_before_entry == 1
    assert livelike.exits_before_entry()[0]["user_id"] == "u2"
    # a remove after an add is not an exit before entry, even once the user has left
    post_rows(http, livelike, [row("u1", action=False), row("u1", action=False, timestamp="2024-06-01T00:00:00Z")])
    assert livelike.exit_before_entry == 1
    assert livelike.members("aud-1") == set()

    livelike.reset_state()
    assert (livelike.rows_applied, livelike.duplicate_rows, livelike.request_log()) == (0, 0, [])


def test_livelike_events_endpoint(livelike, http):
    event = {
        "type": "track",
        "event": "Entered audience",
        "userId": "u1",
        "timestamp": "2024-05-01T10:00:00Z",
        "properties": {"audience": "aud-1"},
        "messageId": "m-1",
    }
    r = http.post(events_url(livelike), json={"events": [event, dict(event, messageId="m-2")]}, headers=AUTH, timeout=5)
    assert (r.status_code, r.json()) == (200, {"received": 2})
    assert [e["event"]["messageId"] for e in livelike.events("u1")] == ["m-1", "m-2"]

    no_user = dict(event)
    del no_user["userId"]
    r = http.post(
        events_url(livelike),
        json={"events": [event, no_user, dict(event, properties=[1]), dict(event, type="identify")]},
        headers=AUTH,
        timeout=5,
    )
    assert r.status_code == 400
    assert r.json() == {
        "events": [
            {},
            {"userId": ["This field is required."]},
            {"properties": ['Expected a dictionary of items but got type "list".']},
            {"type": ['"identify" is not a valid choice.']},
        ]
    }
    r = http.post(events_url(livelike), json={"events": [event] * 501}, headers=AUTH, timeout=5)
    assert r.status_code == 400
    r = http.post(events_url(livelike), json=[event], headers=AUTH, timeout=5)
    assert r.status_code == 400
    assert len(livelike.events()) == 2

    http.post(events_url(livelike), json={"events": [event]}, headers=AUTH, timeout=5)
    assert livelike.state()["counters"]["duplicate_events"] == 1


# -- faults -----------------------------------------------------------------------------------


def test_fault_plan_is_deterministic_for_a_seed_and_honours_its_rate():
    a = FaultPlan(rate=0.3, seed=42)
    b = FaultPlan(rate=0.3, seed=42)
    seq_a = [a.decide() for _ in range(2000)]
    assert seq_a == [b.decide() for _ in range(2000)]
    faults = [f for f in seq_a if f is not None]
    assert 450 < len(faults) < 750
    assert set(faults) == {"429", "500", "timeout", "reset"}
    a.rate = 0
    assert all(a.decide() is None for _ in range(100))
    with pytest.raises(ValueError):
        a.update(kinds=["teapot"])
    assert FaultPlan(rate=1.0, kinds=["500"]).decide() == "500"
    assert FaultPlan(retry_after=0.2).retry_after_header == 1


def test_injected_429_has_retry_after_applies_nothing_and_early_retries_are_recorded(livelike, http):
    livelike.faults.update(rate=1.0, kinds=["429"], retry_after=1.0)
    r = post_rows(http, livelike, [row("u1")])
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert livelike.members("aud-1") == set()

    livelike.faults.rate = 0
    r = post_rows(http, livelike, [row("u1")])  # immediately: too early
    assert r.status_code == 200
    violations = livelike.retry_after_violations
    assert len(violations) == 1
    assert violations[0]["received_at"] < violations[0]["not_before"] - 0.05
    assert violations[0]["early_by"] > 0.5

    first_429_answered = livelike.request_log()[0]["answered_at"]
    time.sleep(max(0.0, first_429_answered + 1.0 - time.time()))
    r = post_rows(http, livelike, [row("u2")])
    assert r.status_code == 200
    assert len(livelike.retry_after_violations) == 1
    assert livelike.state()["counters"]["retry_after_violations"] == 1


def test_injected_500_applies_nothing(livelike, http):
    livelike.faults.update(rate=1.0, kinds=["500"])
    r = post_rows(http, livelike, [row("u1")])
    assert r.status_code == 500
    assert livelike.members("aud-1") == set()
    assert livelike.request_log()[0]["fault"] == "500"
    assert livelike.state()["counters"]["faults"]["500"] == 1


def test_injected_timeout_applies_the_request_but_answers_too_late(livelike, http):
    livelike.faults.update(rate=1.0, kinds=["timeout"], slow_seconds=0.6)
    with pytest.raises(requests.ReadTimeout):
        post_rows(http, livelike, [row("u1")], timeout=0.2)
    assert livelike.members("aud-1") == {"u1"}
    assert livelike.first_ack("aud-1", "u1", True) is None  # not answered yet

    livelike.faults.rate = 0
    r = post_rows(http, livelike, [row("u1")])  # the client's retry: a duplicate for the server
    assert r.status_code == 200
    assert livelike.duplicate_rows == 1
    deadline = time.time() + 5
    while livelike.rows()[0]["acked_at"] is None and time.time() < deadline:
        time.sleep(0.05)
    late, retry = livelike.rows()
    assert late["acked_at"] - late["received_at"] >= 0.6
    assert livelike.first_ack("aud-1", "u1", True) == retry["acked_at"] < late["acked_at"]


def test_injected_reset_drops_the_connection_and_applies_nothing(livelike, http):
    livelike.faults.update(rate=1.0, kinds=["reset"])
    with pytest.raises(requests.ConnectionError) as raised:
        post_rows(http, livelike, [row("u1")])
    assert "ConnectionResetError" in str(raised.value)  # an RST, not an orderly close
    assert livelike.members("aud-1") == set()
    assert livelike.rows_received == 0
    assert livelike.request_log()[0]["fault"] == "reset"
    livelike.faults.rate = 0
    assert post_rows(http, livelike, [row("u1")]).status_code == 200  # the session recovers


def test_state_and_faults_control_endpoints(livelike, http):
    post_rows(http, livelike, [row("u1"), row("u2")])
    r = http.post(livelike.url + "/__faults__", json={"rate": 1.0, "kinds": ["500"], "seed": 3}, timeout=5)
    assert r.status_code == 200
    assert r.json()["rate"] == 1.0 and livelike.faults.kinds == ("500",)
    assert post_rows(http, livelike, [row("u3")]).status_code == 500
    assert http.post(livelike.url + "/__faults__", json={"rate": 7}, timeout=5).status_code == 400
    assert http.post(livelike.url + "/__faults__", json={"bogus": 1}, timeout=5).status_code == 400
    http.post(livelike.url + "/__faults__", json={"rate": 0}, timeout=5)

    state = http.get(livelike.url + "/__state__", params={"members": 1, "rows": 1}, timeout=5).json()
    assert state["server"] == "livelike"
    assert state["faults"]["rate"] == 0 and state["faults"]["kinds"] == ["500"]
    assert state["counters"]["rows_applied"] == 2
    assert state["counters"]["faults"]["500"] == 1
    assert state["audiences"] == {"aud-1": {"name": "Churn risk", "members": 2}}
    assert state["members"] == {"aud-1": ["u1", "u2"]}
    assert [x["user_id"] for x in state["rows"]] == ["u1", "u2"]
    assert [x["status"] for x in state["requests"]] == [200, 500]  # control requests are not logged
    assert "requests" not in http.get(livelike.url + "/__state__?requests=0", timeout=5).json()

    assert http.post(livelike.url + "/__reset__", timeout=5).json() == {"reset": True}
    assert livelike.members("aud-1") == set()


# -- Customer.io ------------------------------------------------------------------------------


@pytest.fixture
def cio():
    with CustomerIoServer("app-key", rate_limit_per_s=None) as server:
        yield server
        assert server.server_errors == []


CIO_AUTH = {"Authorization": "Bearer app-key"}


def test_customerio_refuses_a_wrong_app_key(cio, http):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = http.get(cio.url + "/v1/segments", headers=headers, timeout=5)
        assert (r.status_code, r.json()) == (401, {"meta": {"error": "Unauthorized request"}})


def test_customerio_rate_limit_answers_429_with_retry_after(http):
    with CustomerIoServer("app-key") as cio:  # the default: 10 requests a second, burst 10
        started = time.monotonic()
        statuses = []
        while 429 not in statuses and len(statuses) < 40:
            r = http.get(cio.url + "/v1/segments", headers=CIO_AUTH, timeout=5)
            statuses.append(r.status_code)
        elapsed = time.monotonic() - started
        assert statuses[-1] == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert statuses.count(200) <= 10 + elapsed * 10 + 1
        if elapsed < 0.5:  # the usual case: the 11th quick request is refused
            assert len(statuses) == 11
        assert cio.max_requests_in_any_1s_window >= min(len(statuses), 11)
        assert cio.state()["counters"]["rate_limited"] == 1

        r = http.get(cio.url + "/v1/segments", headers=CIO_AUTH, timeout=5)  # ignores Retry-After
        assert r.status_code == 429
        assert len(cio.retry_after_violations) == 1


def test_customerio_lists_segments(cio, http):
    cio.add_segment(7, "Churn risk", [{"id": "a", "email": "a@example.com", "cio_id": "c1"}])
    r = http.get(cio.url + "/v1/segments", headers=CIO_AUTH, timeout=5)
    assert r.json() == {
        "segments": [
            {
                "id": 7,
                "deduplicate_id": "7:1700000000",
                "name": "Churn risk",
                "description": "",
                "state": "finished",
                "progress": None,
                "type": "dynamic",
                "tags": None,
            }
        ]
    }


def test_customerio_pages_through_a_lazy_segment(cio, http):
    made = []

    def make_member(i):
        made.append(i)
        return {"id": f"p{i}", "email": f"p{i}@example.com", "cio_id": f"c{i}"}

    cio.add_segment(9, "Big", (70_000, make_member))
    assert made == []
    seen, pages, start = [], [], ""
    while True:
        r = http.get(cio.url + "/v1/segments/9/membership", params={"start": start, "limit": 30000}, headers=CIO_AUTH, timeout=10)
        assert r.status_code == 200
        page = r.json()
        assert page["ids"] == [x["id"] for x in page["identifiers"]]
        seen.extend(page["ids"])
        pages.append(len(page["ids"]))
        start = page["next"]
        if start == "":
            break
    assert pages == [30000, 30000, 10000]
    assert len(seen) == len(set(seen)) == 70_000
    assert set(seen) == {f"p{i}" for i in range(70_000)}
    assert len(made) == 70_000
    assert cio.state()["counters"]["membership_pages"] == 3


def test_customerio_membership_errors_and_default_limit(cio, http):
    cio.add_segment(3, "Mid", (2500, lambda i: {"id": f"m{i}", "email": None, "cio_id": f"c{i}"}))
    url = cio.url + "/v1/segments/3/membership"
    r = http.get(url, params={"limit": 30001}, headers=CIO_AUTH, timeout=5)
    assert (r.status_code, r.json()) == (400, {"meta": {"error": "limit must be less than or equal to 30000"}})
    r = http.get(cio.url + "/v1/segments/4/membership", headers=CIO_AUTH, timeout=5)
    assert (r.status_code, r.json()) == (404, {"meta": {"error": "segment not found"}})
    r = http.get(url, params={"start": "!!not-a-cursor"}, headers=CIO_AUTH, timeout=5)
    assert r.status_code == 400
    r = http.get(url, params={"start": encode_cursor(99, 10)}, headers=CIO_AUTH, timeout=5)
    assert r.status_code == 400
    r = http.get(url, headers=CIO_AUTH, timeout=5)
    page = r.json()
    assert len(page["ids"]) == 1000 and decode_cursor(page["next"]) == (3, 1000)
    assert http.post(url, headers=CIO_AUTH, timeout=5).status_code == 405


def test_customerio_person_without_id_has_only_email_and_cio_id(cio, http):
    cio.add_segment(
        5,
        "Mixed",
        [{"id": "a", "email": "a@example.com", "cio_id": "c1"}, {"id": "", "email": "anon@example.com", "cio_id": "c2"}],
    )
    page = http.get(cio.url + "/v1/segments/5/membership", headers=CIO_AUTH, timeout=5).json()
    assert page == {
        "identifiers": [
            {"id": "a", "email": "a@example.com", "cio_id": "c1"},
            {"email": "anon@example.com", "cio_id": "c2"},
        ],
        "ids": ["a", ""],
        "next": "",
    }


def test_customerio_attributes_for_up_to_100_ids(http):
    with CustomerIoServer(
        "app-key",
        rate_limit_per_s=None,
        attributes_for=lambda cid: {"plan": "pro"} if cid.startswith("lazy-") else None,
    ) as cio:
        cio.add_segment(1, "S", [{"id": "a", "email": "a@example.com", "cio_id": "c1"}])
        cio.set_attributes("a", {"first_name": "Ann"})
        url = cio.url + "/v1/customers/attributes"
        r = http.post(url, json={"ids": ["a", "missing", "lazy-1"]}, headers=CIO_AUTH, timeout=5)
        assert r.status_code == 200
        customers = r.json()["customers"]
        assert [c["id"] for c in customers] == ["a", "lazy-1"]
        assert customers[0] == {
            "id": "a",
            "attributes": {"id": "a", "email": "a@example.com", "first_name": "Ann"},
            "identifiers": {"id": "a", "email": "a@example.com", "cio_id": "c1"},
            "devices": [],
            "timestamps": {},
            "unsubscribed": False,
        }
        assert customers[1]["attributes"]["plan"] == "pro"
        assert http.post(url, json={"ids": [f"lazy-{i}" for i in range(100)]}, headers=CIO_AUTH, timeout=5).status_code == 200
        r = http.post(url, json={"ids": [f"lazy-{i}" for i in range(101)]}, headers=CIO_AUTH, timeout=5)
        assert (r.status_code, r.json()) == (400, {"meta": {"error": "too many ids, maximum is 100"}})
        assert http.post(url, json={"ids": []}, headers=CIO_AUTH, timeout=5).status_code == 400
        assert http.get(url, headers=CIO_AUTH, timeout=5).status_code == 405


def test_customerio_injected_faults_use_its_error_shape(cio, http):
    cio.faults.update(rate=1.0, kinds=["429"], retry_after=2.5)
    r = http.get(cio.url + "/v1/segments", headers=CIO_AUTH, timeout=5)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    assert "error" in r.json()["meta"]


# -- webhook ----------------------------------------------------------------------------------

SECRET = "whsec"


@pytest.fixture
def webhook():
    with WebhookReceiver(SECRET, reject_identifiers={"nobody"}) as server:
        yield server
        assert server.server_errors == []


def deliver(http, server, body, *, batch_id="b1", secret=SECRET, headers=None, path="/hooks/downstream"):
    raw = json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", "X-Downstream-Signature": sign(raw, secret)}
    if batch_id is not None:
        all_headers["X-Downstream-Batch-Id"] = batch_id
    all_headers.update(headers or {})
    return http.post(server.url + path, data=raw, headers=all_headers, timeout=5)


def test_webhook_checks_the_signature(webhook, http):
    body = {"changes": [{"action": "enter", "identifier": "u1"}]}
    assert deliver(http, webhook, body, secret="wrong").status_code == 401
    r = http.post(webhook.url + "/x", json=body, headers={"X-Downstream-Batch-Id": "b1"}, timeout=5)
    assert (r.status_code, r.json()) == (401, {"error": "bad signature"})
    assert deliver(http, webhook, body, batch_id=None).status_code == 400
    assert webhook.members() == set()
    r = deliver(http, webhook, body)
    assert (r.status_code, r.json()) == (200, {"accepted": 1, "rejected": []})
    assert webhook.members() == {"u1"}


def test_webhook_applies_a_batch_id_once(webhook, http):
    body = {"audience": {"key": "churn"}, "changes": [{"action": "enter", "identifier": "u1", "email": "u1@example.com"}]}
    assert deliver(http, webhook, body, batch_id="b-7", headers={"X-Team": "growth"}).status_code == 200
    r = deliver(http, webhook, body, batch_id="b-7")
    assert (r.status_code, r.json()) == (200, {"duplicate": True})
    assert webhook.duplicate_batches == 1
    assert [c["identifier"] for c in webhook.changes()] == ["u1"]
    assert webhook.changes_for("u1")[0]["change"]["email"] == "u1@example.com"
    assert webhook.members("churn") == {"u1"}
    assert webhook.headers_for("b-7")["x-team"] == "growth"
    assert [b["batch_id"] for b in webhook.batches()] == ["b-7"]
    assert webhook.first_ack("churn", "u1", "enter") == webhook.batches()[0]["acked_at"]


def test_webhook_rejections_exit_before_entry_and_bad_changes(webhook, http):
    body = {
        "changes": [
            {"action": "exit", "identifier": "u9"},
            {"action": "enter", "identifier": "nobody"},
            {"action": "enter", "identifier": "u1"},
        ]
    }
    r = deliver(http, webhook, body)
    assert r.json() == {"accepted": 2, "rejected": [{"index": 1, "reason": "unknown identifier"}]}
    assert webhook.members() == {"u1"}
    assert webhook.exit_before_entry == 1
    r = deliver(http, webhook, {"changes": [{"action": "leave", "identifier": "u1"}]}, batch_id="b2")
    assert r.status_code == 400
    assert deliver(http, webhook, {"nope": 1}, batch_id="b3").status_code == 400
    assert webhook.state()["counters"]["batches_applied"] == 1


def test_webhook_timeout_fault_makes_the_retry_a_duplicate(webhook, http):
    webhook.faults.update(rate=1.0, kinds=["timeout"], slow_seconds=0.5)
    body = {"changes": [{"action": "enter", "identifier": "u1"}]}
    with pytest.raises(requests.ReadTimeout):
        raw = json.dumps(body).encode()
        http.post(
            webhook.url + "/",
            data=raw,
            timeout=0.15,
            headers={"X-Downstream-Signature": sign(raw, SECRET), "X-Downstream-Batch-Id": "b1"},
        )
    webhook.faults.rate = 0
    assert deliver(http, webhook, body).json() == {"duplicate": True}
    assert webhook.members() == {"u1"}


# -- running a server on its own --------------------------------------------------------------


def test_livelike_runs_standalone_until_sigterm(http):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.contract_servers.livelike",
            "--port",
            "0",
            "--token",
            "T",
            "--client-id",
            "C",
            "--fault-rate",
            "0",
            "--seed",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("listening on http://127.0.0.1:")
        url = first.removeprefix("listening on ")
        r = http.post(
            url + "/api/v1/applications/C/segment-audience-sync/",
            json=[row("u1")],
            headers={"Authorization": "Bearer T"},
            timeout=5,
        )
        assert r.json() == {"received": 1}
        state = http.get(url + "/__state__", timeout=5).json()
        assert state["counters"]["rows_applied"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("module", ["livelike", "webhook", "customerio"])
def test_every_server_module_has_a_help(module):
    out = subprocess.run(
        [sys.executable, "-m", f"tests.contract_servers.{module}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert "--fault-rate" in out.stdout


def test_livelike_under_concurrent_clients_and_faults_loses_and_doubles_nothing():
    from concurrent.futures import ThreadPoolExecutor

    faults = FaultPlan(rate=0.3, kinds=("429", "500", "reset"), seed=5, retry_after=0)
    with LiveLikeServer(TOKEN, CLIENT, faults=faults) as server:

        def push(batch_no):
            rows = [row(f"u{batch_no}-{i}") for i in range(50)]
            with requests.Session() as session:
                for _ in range(50):
                    try:
                        r = post_rows(session, server, rows)
                    except requests.ConnectionError:
                        continue
                    if r.status_code == 200:
                        return
                raise AssertionError("never accepted")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(push, range(40)))
        counters = server.state()["counters"]
        assert server.members("aud-1") == {f"u{b}-{i}" for b in range(40) for i in range(50)}
        assert counters["rows_applied"] == 2000 and counters["duplicate_rows"] == 0
        assert sum(counters["faults"].values()) > 0
        assert counters["requests"] == 40 + sum(counters["faults"].values())
        assert [r["seq"] for r in server.rows()] == list(range(1, 2001))
        assert server.server_errors == []
