"""The Meta contract server itself, driven over real sockets with `requests`: each documented
answer (errors included) is checked here, so the client tests built on it prove something."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.contract_servers.meta import MetaServer

REPO = Path(__file__).resolve().parents[2]
TOKEN = "meta-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def meta():
    with MetaServer(TOKEN, audiences=("123",)) as server:
        yield server
        assert server.server_errors == []


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def upload(
    http, server, rows, *, schema=("EMAIL", "EXTERN_ID"), method="POST", edge="users", audience="123", headers=AUTH, **extra
):
    form = {"payload": json.dumps({"schema": list(schema), "data": rows}), **extra}
    return http.request(method, f"{server.url}/v21.0/{audience}/{edge}", data=form, headers=headers, timeout=10)


def error(response) -> tuple:
    body = response.json()["error"]
    assert set(body) >= {"message", "type", "code", "fbtrace_id"}
    return response.status_code, body["code"], body.get("error_subcode")


def test_adds_and_removes_keep_people_by_their_key_tuple(meta, http):
    r = upload(http, meta, [[h("a@x.com"), "c1"], [h("b@x.com"), "c2"], ["", "c3"]])
    assert r.status_code == 200
    assert r.json() == {
        "audience_id": "123",
        "session_id": "1",
        "num_received": 3,
        "num_invalid_entries": 0,
        "invalid_entry_samples": {},
    }
    assert meta.members("123") == {
        (("EMAIL", h("a@x.com")), ("EXTERN_ID", "c1")),
        (("EMAIL", h("b@x.com")), ("EXTERN_ID", "c2")),
        (("EXTERN_ID", "c3"),),
    }
    # the same person with a new email (same customer id) replaces its member; a remove on any strong key drops it
    upload(http, meta, [[h("a2@x.com"), "c1"]])
    r = upload(http, meta, [["", "c2"]], method="DELETE")
    assert r.json()["num_received"] == 1
    assert meta.members("123") == {(("EMAIL", h("a2@x.com")), ("EXTERN_ID", "c1")), (("EXTERN_ID", "c3"),)}


def test_a_shared_weak_key_is_not_the_same_person(meta, http):
    upload(http, meta, [[h("a@x.com"), h("us")], [h("b@x.com"), h("us")]], schema=("EMAIL", "COUNTRY"))
    upload(http, meta, [[h("a@x.com"), h("us")]], schema=("EMAIL", "COUNTRY"), method="DELETE")
    assert meta.members("123") == {(("COUNTRY", h("us")), ("EMAIL", h("b@x.com")))}


def test_values_that_are_not_hashes_are_counted_invalid_with_samples(meta, http):
    r = upload(http, meta, [["a@x.com", ""], [h("b@x.com"), "c2"]])
    answer = r.json()
    assert (answer["num_received"], answer["num_invalid_entries"]) == (2, 1)
    assert answer["invalid_entry_samples"] == {"a@x.com": "EMAIL is not a SHA-256 hash in lower-case hex"}
    assert meta.members("123") == {(("EMAIL", h("b@x.com")), ("EXTERN_ID", "c2"))}


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, (400, 104, None)),
        ({"Authorization": "Bearer nope"}, (400, 190, None)),
        ({"Authorization": "OAuth meta-token"}, None),
    ],
)
def test_the_token_is_checked(meta, http, headers, expected):
    r = upload(http, meta, [[h("a@x.com"), "c1"]], headers=headers)
    if expected is None:
        assert r.status_code == 200
    else:
        assert error(r) == expected
        assert meta.members("123") == set()


def test_a_revoked_token_is_190_subcode_463_in_a_401(meta, http):
    meta.revoked.add(TOKEN)
    r = upload(http, meta, [[h("a@x.com"), "c1"]])
    assert error(r) == (401, 190, 463)
    assert "Error validating access token" in r.json()["error"]["message"]
    r = http.get(f"{meta.url}/v21.0/123", params={"access_token": TOKEN}, timeout=5)
    assert error(r) == (401, 190, 463)


def test_unknown_audience_and_forbidden_audience(meta, http):
    r = upload(http, meta, [[h("a@x.com"), "c1"]], audience="999")
    assert error(r) == (400, 100, 33)
    assert "Object with ID '999' does not exist" in r.json()["error"]["message"]
    meta.forbidden.add("123")
    assert error(upload(http, meta, [[h("a@x.com"), "c1"]])) == (403, 200, None)


@pytest.mark.parametrize(
    "form, message",
    [
        ({}, "The parameter payload is required"),
        ({"payload": "{not json"}, "must be a JSON object"),
        ({"payload": json.dumps({"schema": ["EMAIL", "NICKNAME"], "data": [["a", "b"]]})}, "Invalid schema field: NICKNAME"),
        ({"payload": json.dumps({"schema": ["EMAIL"], "data": []})}, "non-empty list"),
        (
            {"payload": json.dumps({"schema": ["EMAIL", "EXTERN_ID"], "data": [["only one"]]})},
            "payload[data][0] must be a list of 2",
        ),
        ({"payload": json.dumps({"schema": ["EMAIL"], "data": [[h(str(i))] for i in range(10_001)]})}, "at most 10,000"),
    ],
)
def test_payload_shape_errors_are_code_100_and_apply_nothing(meta, http, form, message):
    r = http.post(f"{meta.url}/v21.0/123/users", data=form, headers=AUTH, timeout=20)
    assert error(r) == (400, 100, None)
    assert message in r.json()["error"]["message"]
    assert meta.members("123") == set()


def test_ten_thousand_rows_are_accepted(meta, http):
    r = upload(http, meta, [[h(f"p{i}@x.com"), f"c{i}"] for i in range(10_000)])
    assert r.json()["num_received"] == 10_000
    assert len(meta.members("123")) == 10_000


def test_a_replace_session_removes_whom_it_did_not_name_when_its_last_batch_arrives(meta, http):
    upload(http, meta, [[h("old@x.com"), "old"], [h("keep@x.com"), "keep"]])
    session = {"session_id": 77, "batch_seq": 1, "last_batch_flag": False, "estimated_num_total": 2}
    r = upload(http, meta, [[h("keep@x.com"), "keep"]], edge="usersreplace", session=json.dumps(session))
    assert r.json()["session_id"] == "77"
    assert len(meta.members("123")) == 2  # nobody goes before the last batch
    # while the session is open, adds and removes wait (code 2650)
    assert error(upload(http, meta, [[h("x@x.com"), "x"]])) == (400, 2650, None)
    assert meta.open_session("123")["last_seq"] == 1
    # a batch_seq that skips one is refused; the same one again is taken
    r = upload(http, meta, [[h("new@x.com"), "new"]], edge="usersreplace", session=json.dumps({**session, "batch_seq": 3}))
    assert error(r) == (400, 100, None)
    r = upload(
        http,
        meta,
        [[h("new@x.com"), "new"]],
        edge="usersreplace",
        session=json.dumps({**session, "batch_seq": 2, "last_batch_flag": True}),
    )
    assert r.status_code == 200
    assert meta.members("123") == {
        (("EMAIL", h("keep@x.com")), ("EXTERN_ID", "keep")),
        (("EMAIL", h("new@x.com")), ("EXTERN_ID", "new")),
    }
    assert meta.replaces() == [
        {"audience_id": "123", "session_id": 77, "batches": 2, "received": 2, "removed": 1, "estimated_num_total": 2}
    ]
    assert meta.open_session("123") is None


@pytest.mark.parametrize(
    "session, message",
    [
        (None, "The parameter session is required"),
        ({"session_id": "abc", "batch_seq": 1}, "session_id"),
        ({"session_id": 5, "batch_seq": 2}, "first batch_seq must be 1"),
        ({"session_id": 5, "batch_seq": 1, "last_batch_flag": "yes"}, "last_batch_flag"),
    ],
)
def test_replace_session_errors(meta, http, session, message):
    extra = {} if session is None else {"session": json.dumps(session)}
    r = upload(http, meta, [[h("a@x.com"), "a"]], edge="usersreplace", **extra)
    assert error(r) == (400, 100, None)
    assert message in r.json()["error"]["message"]


def test_the_count_is_a_range_around_the_matched_share(meta, http):
    upload(http, meta, [[h(f"p{i}@x.com"), f"c{i}"] for i in range(200)])
    fields = "approximate_count_lower_bound,approximate_count_upper_bound,operation_status"
    r = http.get(f"{meta.url}/v21.0/123", params={"fields": fields}, headers=AUTH, timeout=5)
    assert r.json() == {
        "id": "123",
        "approximate_count_lower_bound": 190,
        "approximate_count_upper_bound": 210,
        "operation_status": {"code": 200, "description": "Normal"},
    }
    meta.match_share = 0.5
    r = http.get(f"{meta.url}/v21.0/123", params={"fields": fields}, headers=AUTH, timeout=5)
    assert (r.json()["approximate_count_lower_bound"], r.json()["approximate_count_upper_bound"]) == (95, 105)
    r = http.get(f"{meta.url}/v21.0/123", params={"fields": "approximate_count"}, headers=AUTH, timeout=5)
    assert error(r) == (400, 100, None)
    assert (
        r.json()["error"]["message"]
        == "(#100) Tried accessing nonexisting field (approximate_count) on node type (CustomAudience)"
    )


def test_me_is_the_tokens_user_and_its_ad_accounts_come_a_page_at_a_time(meta, http):
    r = http.get(f"{meta.url}/v21.0/me", params={"fields": "id,name"}, headers=AUTH, timeout=5)
    assert r.json() == {"id": "61550000000000001", "name": "Downstream Sync"}
    r = http.get(f"{meta.url}/v21.0/me", params={"fields": "id,email"}, headers=AUTH, timeout=5)
    assert error(r) == (400, 100, None)
    assert r.json()["error"]["message"] == "(#100) Tried accessing nonexisting field (email) on node type (User)"

    meta.ad_accounts.append({"id": "act_2000", "account_id": "2000", "name": "Old brand", "account_status": 2, "currency": "EUR"})
    fields = {"fields": "account_id,name,account_status"}
    r = http.get(f"{meta.url}/v21.0/me/adaccounts", params={**fields, "limit": 1}, headers=AUTH, timeout=5)
    page = r.json()
    assert page["data"] == [{"id": "act_1000", "account_id": "1000", "name": "Downstream Ads", "account_status": 1}]
    assert "next" in page["paging"]
    r = http.get(
        f"{meta.url}/v21.0/me/adaccounts",
        params={**fields, "limit": 1, "after": page["paging"]["cursors"]["after"]},
        headers=AUTH,
        timeout=5,
    )
    assert [a["id"] for a in r.json()["data"]] == ["act_2000"] and "next" not in r.json()["paging"]
    r = http.get(f"{meta.url}/v21.0/me/adaccounts", headers=AUTH, timeout=5)
    assert r.json()["data"] == [{"id": "act_1000", "account_id": "1000"}, {"id": "act_2000", "account_id": "2000"}]

    meta.ad_accounts = []
    assert http.get(f"{meta.url}/v21.0/me/adaccounts", headers=AUTH, timeout=5).json() == {"data": []}
    meta.ads_permission = False
    assert error(http.get(f"{meta.url}/v21.0/me/adaccounts", headers=AUTH, timeout=5)) == (403, 200, None)
    assert error(http.post(f"{meta.url}/v21.0/me", headers=AUTH, timeout=5)) == (400, 100, None)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, (400, 104, None)),
        ({"Authorization": "Bearer nope"}, (400, 190, None)),
    ],
)
def test_me_checks_the_token_as_every_path_does(meta, http, headers, expected):
    for path in ("me", "me/adaccounts"):
        assert error(http.get(f"{meta.url}/v21.0/{path}", headers=headers, timeout=5)) == expected
    meta.revoked.add(TOKEN)
    assert error(http.get(f"{meta.url}/v21.0/me", headers=AUTH, timeout=5)) == (401, 190, 463)


@pytest.mark.parametrize("code, subcode", [(80003, 2446079), (17, None)])
def test_the_rate_limit_answers_as_meta_throttles(http, code, subcode):
    with MetaServer(TOKEN, audiences=("123",), rate_limit_per_s=1, rate_limit_code=code) as meta:
        assert upload(http, meta, [[h("a@x.com"), "a"]]).status_code == 200
        r = upload(http, meta, [[h("b@x.com"), "b"]])
        assert error(r) == (400, code, subcode)
        usage = json.loads(r.headers["X-Business-Use-Case-Usage"])
        assert usage["1000"][0]["estimated_time_to_regain_access"] == 1
        assert "Retry-After" not in r.headers
        assert meta.members("123") == {(("EMAIL", h("a@x.com")), ("EXTERN_ID", "a"))}
        assert meta.state()["counters"]["rate_limited"] == 1


def test_fail_next_and_injected_faults_use_meta_error_shapes(meta, http):
    meta.fail_next()
    assert error(upload(http, meta, [[h("a@x.com"), "a"]])) == (400, 2650, None)
    assert upload(http, meta, [[h("a@x.com"), "a"]]).status_code == 200
    http.post(meta.url + "/__faults__", json={"rate": 1.0, "kinds": ["500"]}, timeout=5)
    r = upload(http, meta, [[h("b@x.com"), "b"]])
    assert error(r) == (500, 2, None) and r.json()["error"]["is_transient"] is True
    http.post(meta.url + "/__faults__", json={"rate": 1.0, "kinds": ["429"], "retry_after": 2}, timeout=5)
    r = upload(http, meta, [[h("b@x.com"), "b"]])
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert len(meta.members("123")) == 1


def test_state_lists_members_and_open_sessions(meta, http):
    upload(http, meta, [[h("a@x.com"), "a"]])
    state = http.get(meta.url + "/__state__", params={"members": "1", "requests": "0"}, timeout=5).json()
    assert state["members"] == {"123": [{"EMAIL": h("a@x.com"), "EXTERN_ID": "a"}]}
    assert state["counters"]["rows_added"] == 1 and state["open_sessions"] == {}
    assert "requests" not in state


def test_runs_standalone_until_sigterm(http):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.contract_servers.meta",
            "--port",
            "0",
            "--token",
            "T",
            "--auto-create",
            "--rate-limit",
            "50",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        url = proc.stdout.readline().strip().removeprefix("listening on ")
        assert url.startswith("http://127.0.0.1:")
        r = http.post(
            url + "/v21.0/555/users",
            data={"payload": json.dumps({"schema": ["EXTERN_ID"], "data": [["c1"]]})},
            headers={"Authorization": "Bearer T"},
            timeout=5,
        )
        assert r.json()["num_received"] == 1
        state = http.get(url + "/__state__", timeout=5).json()
        assert state["counters"]["members"] == {"555": 1} and state["faults"]["rate_limit_per_s"] == 50
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_module_has_a_help():
    out = subprocess.run(
        [sys.executable, "-m", "tests.contract_servers.meta", "--help"], cwd=REPO, capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert "--rate-limit-code" in out.stdout and "--fault-rate" in out.stdout


def test_multipart_fields_as_curl_f_sends_them(meta, http):
    payload = json.dumps({"schema": ["EMAIL"], "data": [[h("a@x.com")]]})
    r = http.post(f"{meta.url}/v21.0/123/users", files={"payload": (None, payload, "application/json")}, headers=AUTH, timeout=5)
    assert r.json()["num_received"] == 1
    assert meta.members("123") == {(("EMAIL", h("a@x.com")),)}
    r = http.post(
        f"{meta.url}/v21.0/123/users",
        data=b"--x\r\n\r\nno name\r\n--x--",
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"},
        timeout=5,
    )
    assert error(r) == (400, 100, None) and "has no name" in r.json()["error"]["message"]
