"""The TikTok contract server itself, over a real socket with `requests`: each documented
answer, errors included (a code inside an HTTP 200), and the server run in its own process."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.contract_servers.common import FaultPlan
from tests.contract_servers.tiktok import TikTokServer

REPO = Path(__file__).resolve().parents[2]
TOKEN, ADVERTISER, AUDIENCE = "tt-token", "7000000000000000001", "1800000000000001"
AUTH = {"Access-Token": TOKEN}
UPLOAD = "/open_api/v1.3/dmp/custom_audience/file/upload/"
UPDATE = "/open_api/v1.3/dmp/custom_audience/update/"
GET = "/open_api/v1.3/dmp/custom_audience/get/"
LIST = "/open_api/v1.3/dmp/custom_audience/list/"
INFO = "/open_api/v1.3/advertiser/info/"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hashes(n: int, prefix: str = "p") -> list[str]:
    return [sha(f"{prefix}{i}@example.com") for i in range(n)]


@pytest.fixture
def tiktok():
    with TikTokServer(TOKEN, ADVERTISER, audiences={AUDIENCE: "EMAIL_SHA256"}, minimum=3) as server:
        yield server
        assert server.server_errors == []


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def upload(
    http, server, lines, *, name="f.txt", calculate_type="EMAIL_SHA256", signature=None, headers=AUTH, advertiser=ADVERTISER
):
    content = "".join(f"{line}\n" for line in lines).encode()
    return http.post(
        server.url + UPLOAD,
        headers=headers,
        timeout=5,
        files={"file": (name, content, "text/plain")},
        data={
            "advertiser_id": advertiser,
            "calculate_type": calculate_type,
            "file_signature": signature or hashlib.md5(content).hexdigest(),
        },
    ).json()


def update(http, server, action, file_paths, *, audience=AUDIENCE, headers=AUTH):
    return http.post(
        server.url + UPDATE,
        headers=headers,
        timeout=5,
        json={"advertiser_id": ADVERTISER, "custom_audience_id": audience, "action": action, "file_paths": file_paths},
    ).json()


def path_of(http, server, lines, **kwargs) -> str:
    answer = upload(http, server, lines, **kwargs)
    assert answer["code"] == 0, answer
    return answer["data"]["file_path"]


def test_every_answer_is_a_200_with_a_code_a_message_and_a_request_id(tiktok, http):
    ok = upload(http, tiktok, hashes(3))
    assert set(ok) == {"code", "message", "request_id", "data"} and ok["code"] == 0 and ok["message"] == "OK"
    missing = http.post(tiktok.url + UPLOAD, timeout=5, files={"file": ("f.txt", b"x\n")})
    wrong = http.post(tiktok.url + UPLOAD, headers={"Access-Token": "nope"}, timeout=5, files={"file": ("f.txt", b"x\n")})
    assert (missing.status_code, missing.json()["code"]) == (200, 40104)
    assert (wrong.status_code, wrong.json()["code"]) == (200, 40105)
    assert len({ok["request_id"], missing.json()["request_id"], wrong.json()["request_id"]}) == 3
    assert http.get(tiktok.url + "/open_api/v1.3/nowhere/", headers=AUTH, timeout=5).status_code == 404
    assert http.get(tiktok.url + UPLOAD, headers=AUTH, timeout=5).status_code == 405


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"signature": "0" * 32}, 40900),
        ({"name": "f.xlsx"}, 40908),
        ({"calculate_type": "EMAIL_MD5"}, 40909),
        ({"advertiser": "7999999999999999999"}, 40001),
    ],
)
def test_an_upload_refused_is_a_code_and_keeps_no_file(tiktok, http, change, code):
    assert upload(http, tiktok, hashes(3), **change)["code"] == code
    assert tiktok.uploads() == []


def test_an_upload_of_nothing_or_of_values_that_are_no_hashes_is_refused(tiktok, http):
    assert upload(http, tiktok, [])["code"] == 40906
    answer = upload(http, tiktok, [*hashes(2), "p2@example.com"])
    assert answer["code"] == 40915 and answer["message"].startswith("Line 3 of the file")
    assert upload(http, tiktok, [hashes(1)[0].upper()])["code"] == 40915


def test_append_remove_and_replace_apply_the_files_to_the_audience(tiktok, http):
    first = path_of(http, tiktok, hashes(5))
    assert update(http, tiktok, "APPEND", [first])["code"] == 0
    assert tiktok.members(AUDIENCE) == set(hashes(5))
    assert update(http, tiktok, "APPEND", [first])["code"] == 0  # the same people again: nobody twice
    assert len(tiktok.members(AUDIENCE)) == 5
    assert update(http, tiktok, "REMOVE", [path_of(http, tiktok, hashes(2) + hashes(1, "q"))])["code"] == 0
    assert tiktok.members(AUDIENCE) == set(hashes(5)[2:])
    assert update(http, tiktok, "REPLACE", [path_of(http, tiktok, hashes(4, "r"))])["code"] == 0
    assert tiktok.members(AUDIENCE) == set(hashes(4, "r"))
    assert [(u["action"], u["size_after"]) for u in tiktok.updates(AUDIENCE)] == [
        ("APPEND", 5),
        ("APPEND", 5),
        ("REMOVE", 3),
        ("REPLACE", 4),
    ]


def test_an_update_that_would_leave_the_audience_under_the_minimum_is_refused_whole(tiktok, http):
    assert update(http, tiktok, "APPEND", [path_of(http, tiktok, hashes(2))])["code"] == 40002  # 2 < 3
    assert tiktok.members(AUDIENCE) == set()
    assert update(http, tiktok, "APPEND", [path_of(http, tiktok, hashes(4))])["code"] == 0
    answer = update(http, tiktok, "REMOVE", [path_of(http, tiktok, hashes(2))])
    assert answer["code"] == 40002 and "less than 3 after the operation" in answer["message"]
    assert tiktok.members(AUDIENCE) == set(hashes(4))


def test_an_update_names_a_known_audience_a_known_file_of_its_type_and_an_action(tiktok, http):
    tiktok.create_audience("1800000000000009", "PHONE_SHA256")
    path = path_of(http, tiktok, hashes(3))
    assert update(http, tiktok, "APPEND", [path], audience="1800000000000002")["code"] == 40007
    assert update(http, tiktok, "APPEND", ["dmp/nope.txt"])["code"] == 40905
    assert update(http, tiktok, "APPEND", [path], audience="1800000000000009")["code"] == 40002
    assert update(http, tiktok, "MERGE", [path])["code"] == 40002
    assert update(http, tiktok, "APPEND", [path], audience="aud-1")["code"] == 40002
    assert update(http, tiktok, "APPEND", [path], headers={"Access-Token": "nope"})["code"] == 40105
    assert tiktok.updates() == [] and tiktok.refused() == {40007: 1, 40905: 1, 40002: 3, 40105: 1}


def test_get_answers_the_matched_size(tiktok, http):
    tiktok.create_audience(AUDIENCE, name="Carts", members=hashes(5))
    tiktok.known = set(hashes(4))
    answer = http.get(
        tiktok.url + GET,
        headers=AUTH,
        timeout=5,
        params={"advertiser_id": ADVERTISER, "custom_audience_ids": json.dumps([AUDIENCE])},
    ).json()
    (item,) = answer["data"]["list"]
    details = item["audience_details"]
    assert (details["audience_id"], details["name"], details["cover_num"], details["is_valid"]) == (AUDIENCE, "Carts", 4, True)
    unknown = http.get(
        tiktok.url + GET, headers=AUTH, timeout=5, params={"advertiser_id": ADVERTISER, "custom_audience_ids": json.dumps(["1"])}
    ).json()
    assert unknown["code"] == 40007
    malformed = http.get(
        tiktok.url + GET, headers=AUTH, timeout=5, params={"advertiser_id": ADVERTISER, "custom_audience_ids": AUDIENCE}
    ).json()
    assert malformed["code"] == 40002


def test_the_audience_list_pages_through_the_advertisers_audiences(tiktok, http):
    tiktok.create_audience("1800000000000002", "PHONE_SHA256", name="Phones", members=hashes(4))
    answer = http.get(
        tiktok.url + LIST, headers=AUTH, timeout=5, params={"advertiser_id": ADVERTISER, "page": 2, "page_size": 1}
    ).json()
    assert answer["code"] == 0
    assert answer["data"]["page_info"] == {"page": 2, "page_size": 1, "total_number": 2, "total_page": 2}
    (item,) = answer["data"]["list"]
    assert (item["audience_id"], item["name"], item["cover_num"], item["is_valid"]) == ("1800000000000002", "Phones", 4, True)
    first = http.get(tiktok.url + LIST, headers=AUTH, timeout=5, params={"advertiser_id": ADVERTISER}).json()
    assert [a["audience_id"] for a in first["data"]["list"]] == [AUDIENCE, "1800000000000002"]  # 10 a page by default
    for params, code in [
        ({"advertiser_id": "1"}, 40001),
        ({}, 40002),
        ({"advertiser_id": ADVERTISER, "page_size": 101}, 40002),
        ({"advertiser_id": ADVERTISER, "page": 0}, 40002),
    ]:
        assert http.get(tiktok.url + LIST, headers=AUTH, timeout=5, params=params).json()["code"] == code
    assert (
        http.get(tiktok.url + LIST, headers={"Access-Token": "nope"}, timeout=5, params={"advertiser_id": ADVERTISER}).json()[
            "code"
        ]
        == 40105
    )


def test_advertiser_info_describes_the_tokens_advertiser_only(tiktok, http):
    def info(ids, fields=None, headers=AUTH):
        params = {"advertiser_ids": json.dumps(ids), **({"fields": json.dumps(fields)} if fields is not None else {})}
        return http.get(tiktok.url + INFO, headers=headers, timeout=5, params=params).json()

    answer = info([ADVERTISER], ["advertiser_id", "name", "status"])
    assert (answer["code"], answer["data"]) == (
        0,
        {"list": [{"advertiser_id": ADVERTISER, "name": "Downstream Test Advertiser", "status": "STATUS_ENABLE"}]},
    )
    assert {"currency", "timezone", "company"} <= set(info([ADVERTISER])["data"]["list"][0])  # every field by default
    tiktok.advertiser_status = "STATUS_LIMIT"
    assert info([ADVERTISER], ["status"])["data"]["list"] == [{"status": "STATUS_LIMIT"}]
    refused = info([ADVERTISER, "7000000000000000009"])
    assert (refused["code"], refused["message"]) == (40001, "No permission to operate advertiser 7000000000000000009.")
    assert info([ADVERTISER], ["balance_secret"])["code"] == 40002
    assert info([])["code"] == 40002
    assert info([ADVERTISER], headers={})["code"] == 40104
    assert info([ADVERTISER], headers={"Access-Token": "nope"})["code"] == 40105
    assert http.post(tiktok.url + INFO, headers=AUTH, timeout=5).status_code == 405


def test_the_rate_limit_is_a_40100_in_a_200_and_gateway_faults_use_http(http):
    with TikTokServer(TOKEN, ADVERTISER, rate_limit_per_s=1, faults=FaultPlan(rate=0)) as server:
        assert upload(http, server, hashes(1))["code"] == 0
        throttled = http.post(server.url + UPLOAD, headers=AUTH, timeout=5, files={"file": ("f.txt", b"x\n")})
        assert (throttled.status_code, throttled.json()["code"]) == (200, 40100)
        assert "Retry-After" not in throttled.headers
        assert server.state()["counters"]["rate_limited"] == 1
        server.set_rate_limit(None)
        server.faults.update(rate=1.0, kinds=("500",))
        failed = http.post(server.url + UPLOAD, headers=AUTH, timeout=5, files={"file": ("f.txt", b"x\n")})
        assert failed.status_code == 500 and failed.json()["code"] == 50000
        assert len(server.uploads()) == 1  # neither the throttled nor the failed upload kept a file


def test_a_server_that_forgets_applied_files_still_keeps_the_members(http):
    with TikTokServer(TOKEN, ADVERTISER, audiences={AUDIENCE: "EMAIL_SHA256"}, minimum=0, keep_files=False) as server:
        path = path_of(http, server, hashes(3))
        assert update(http, server, "APPEND", [path])["code"] == 0
        assert server.members(AUDIENCE) == set(hashes(3))
        assert update(http, server, "APPEND", [path])["code"] == 40905


def test_planned_codes_answer_in_turn_and_a_zero_lets_one_through(tiktok, http):
    tiktok.answer_codes([0, 50002])
    assert upload(http, tiktok, hashes(3))["code"] == 0
    assert upload(http, tiktok, hashes(3))["code"] == 50002
    assert upload(http, tiktok, hashes(3))["code"] == 0
    assert len(tiktok.uploads()) == 2


def test_tiktok_runs_standalone_at_a_rate_limit_until_sigterm(http):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.contract_servers.tiktok",
            "--port",
            "0",
            "--token",
            "T",
            "--advertiser-id",
            "42",
            "--audience",
            "1800000000000001:EMAIL_SHA256",
            "--minimum",
            "0",
            "--rate-limit",
            "5",
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
        content = f"{sha('a@example.com')}\n".encode()
        uploaded = http.post(
            url + UPLOAD,
            headers={"Access-Token": "T"},
            timeout=5,
            files={"file": ("f.txt", content)},
            data={"advertiser_id": "42", "calculate_type": "EMAIL_SHA256", "file_signature": hashlib.md5(content).hexdigest()},
        ).json()
        applied = http.post(
            url + UPDATE,
            headers={"Access-Token": "T"},
            timeout=5,
            json={
                "advertiser_id": "42",
                "custom_audience_id": "1800000000000001",
                "action": "APPEND",
                "file_paths": [uploaded["data"]["file_path"]],
            },
        ).json()
        assert applied["code"] == 0
        state = http.get(url + "/__state__?requests=0&members=1", timeout=5).json()
        assert state["faults"]["rate_limit_per_s"] == 5.0
        assert state["counters"]["rows_appended"] == 1
        assert state["members"] == {"1800000000000001": [sha("a@example.com")]}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_module_has_a_help():
    out = subprocess.run(
        [sys.executable, "-m", "tests.contract_servers.tiktok", "--help"], cwd=REPO, capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert "--rate-limit" in out.stdout and "--audience" in out.stdout and "--minimum" in out.stdout
    assert "--forget-applied-files" in out.stdout
