"""The Google destination kind (Customer Match through the Data Manager API): Google's
normalisation and hashing, the transport against the contract server over a real socket
(shapes, the 10,000 split, every error mapping, request ids), the request status follow-up,
the read-back, and end to end from ingest to the user list Google holds."""

import hashlib
import json
import subprocess
import sys
from datetime import timedelta

import pytest
import requests
from django.core.exceptions import ValidationError
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Audience, Membership, Person
from audiences.services import audience_save
from syncs.delivery import deliver_destination
from syncs.destinations import OutRow, TransportError, registry, transport_for
from syncs.destinations.google import SPEC
from syncs.destinations.google.identifiers import normalise_address, normalise_email, normalise_phone_e164
from syncs.destinations.google.status import check_request_statuses, request_outcome
from syncs.models import Delivery, SyncRun
from syncs.services import destination_save, sync_save
from tests.contract_servers.common import FaultPlan
from tests.contract_servers.google import GoogleDataManagerServer

pytestmark = pytest.mark.django_db

TOKEN = "ya29.test-access-token"
LIST = "5550001"
MESSAGES = iter(range(10**9))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- Google's normalisation, with the examples Google publishes ----------------------------

# developers.google.com/data-manager/api/devguides/audiences/send-audience-members: the sample
# members as typed, and the hex SHA-256 Google shows for each after formatting
PUBLISHED_EMAILS = [
    ("dana@example.com", "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"),
    ("DanaM@example.com", "1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7"),
    ("ALEXF@example.com", "19de0a9906ebee29fe82087be5ec44f3c01e40730bc808b663c71f19dd6b12f2"),
    ("AlexF@cymbalgroup.com", "7d2d80e240594dcee2e57f57885ee286c4b232dd142234d7a0af6d31cc86679b"),
    ("alexF@altostrat.com", "063c45291827d4994f98357b72862b25885834fd53cf8f0e4af359916fc03c62"),
    ("quinn@CYMBALGROUP.com", "05bb62526f091b45d20e243d194766cca8869137421047dc53fa4876d111a6f0"),
    ("baklavainthebalkans@gmail.com", "f1fcde379f31f4d446b76ee8f34860eca2288adc6b6d6c0fdc56d9eee75a2fa5"),
    ("rosario@example.org", "83a834cc5327bc4dee7c5408988040dc5813c7662611cd93b707aff72bf7d33f"),
    ("cloudySanFrancisco@GMAIL.com", "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4"),
]
PUBLISHED_PHONES = [
    ("+1-800-555-0100", "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"),
    ("+1 800-555-0101", "61d6c2976b5d92b1ad63073a12fddd26040cd980067d03a93dd1cc50f1a3ac68"),
    ("+1 800-555-0102", "c5383c2eeada28210d27f011bc127d4f9562cf38ff0c9bba33dd45ae79b9fe7c"),
    ("+1-800-555-0110", "525c2390a4e2a9766fa8ddc341dd10414603baebefa401f5a5e29f55e176525d"),
]


@pytest.mark.parametrize(("typed", "published"), PUBLISHED_EMAILS)
def test_emails_hash_to_the_values_google_publishes(typed, published):
    assert SPEC.match_key("email").compile(Person(email=typed)) == published


@pytest.mark.parametrize(("typed", "published"), PUBLISHED_PHONES)
def test_phones_hash_to_the_values_google_publishes(typed, published):
    assert SPEC.match_key("phone").compile(Person(phone=typed)) == published


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        # the formatting guide's own examples
        ("cloudy.sanfrancisco+shopping@gmail.com", "cloudysanfrancisco@gmail.com"),
        ("user.name+NYC@Example.com", "user.name+nyc@example.com"),
        # whitespace anywhere goes; googlemail.com is Gmail too; other domains keep dots and plus
        ("  Dana M@Example.com\t", "danam@example.com"),
        ("First.Last+promo@GoogleMail.com", "firstlast@googlemail.com"),
        ("first.last+promo@gmail.co.uk", "first.last+promo@gmail.co.uk"),
        ("not-an-email", None),
        ("+promo@gmail.com", None),
        ("a@b", None),
        ("", None),
        (42, None),
    ],
)
def test_email_normalisation(typed, normalised):
    assert normalise_email(typed) == normalised


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("(800)555-0100", "+18005550100"),  # the guide's example, read in PHONE_DEFAULT_REGION (US)
        ("+44 20 7946 0958", "+442079460958"),
        ("800 555 0100 ", "+18005550100"),
        ("12", None),
        ("phone", None),
        (True, None),
    ],
)
def test_phone_normalisation_is_e164_with_the_plus(typed, normalised):
    assert normalise_phone_e164(typed) == normalised


def test_address_hashes_the_names_and_sends_region_and_postal_code_as_they_are():
    person = Person(attributes={"first_name": " John. ", "last_name": "O'Doe", "country": "us", "postal_code": " 94045 "})
    value = json.loads(SPEC.match_key("address").compile(person))
    assert value == {"givenName": sha("john"), "familyName": sha("odoe"), "regionCode": "US", "postalCode": "94045"}
    assert normalise_address({"first_name": "John", "last_name": "Doe", "country": "United States", "postal_code": "1"}) is None
    assert normalise_address({"first_name": "John", "last_name": "Doe", "country": "US"}) is None  # all four or none
    assert SPEC.match_key("address").compile(Person(attributes={"vip": True})) is None


def test_a_row_carries_every_key_the_sync_maps_or_the_ones_it_names():
    person = Person(
        email="Dana@Example.com",
        phone="+1-800-555-0100",
        attributes={"first_name": "Dana", "last_name": "M", "country": "US", "postal_code": "10001"},
    )

    class AllKeys:
        match_on = []

    class EmailOnly:
        match_on = ["email"]

    assert set(SPEC.identifiers_for(AllKeys, person)) == {"email", "phone", "address"}
    assert SPEC.identifiers_for(EmailOnly, person) == {"email": PUBLISHED_EMAILS[0][1]}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def google():
    server = GoogleDataManagerServer(
        TOKEN,
        account_id="1234567890",
        user_lists=(LIST, "5550002"),
        login_accounts={("GOOGLE_ADS", "9998887777")},
        rate_limit_per_s=None,
    )
    with server:
        yield server


def google_data(server, **settings) -> dict:
    return {
        "key": "google",
        "name": "Google Ads",
        "kind": "google",
        "settings": {
            "base_url": server.api_url,
            "operating_account_id": "123-456-7890",
            "customer_match_terms": "ACCEPTED",
            "ad_user_data": "CONSENT_GRANTED",
            "ad_personalization": "CONSENT_GRANTED",
            **settings,
        },
        "credentials": {"access_token": "env:GOOGLE_ACCESS_TOKEN"},
        "timeout_s": 2.0,
        "retry_base_s": 0.05,
        "retry_cap_s": 0.5,
        "rate_limit_per_s": 200,
    }


@pytest.fixture
def destination(google, monkeypatch):
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", TOKEN)
    return destination_save(data=google_data(google))


def flagged_sync(key="flagged-google", destination_key="google", **extra):
    if not Audience.objects.filter(key="flagged").exists():
        audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    return sync_save(
        data={"key": key, "audience": "flagged", "destination": destination_key, "downstream_audience_id": LIST, **extra}
    )


@pytest.fixture
def sync(destination):
    return flagged_sync()


def row(delivery_id, action="enter", *, email=None, sync=None, fields=None, **identifiers) -> OutRow:
    email = email or f"person{delivery_id}@example.com"
    return OutRow(delivery_id, action, email, timezone.now(), fields or {}, sync, {"email": sha(email), **identifiers})


def member_of(identifiers: dict) -> frozenset:
    """What the server holds for a row's identifiers."""
    found = set()
    if identifiers.get("email"):
        found.add(("emailAddress", identifiers["email"]))
    if identifiers.get("phone"):
        found.add(("phoneNumber", identifiers["phone"]))
    if identifiers.get("address"):
        a = json.loads(identifiers["address"])
        found.add(("address", (a["givenName"], a["familyName"], a["regionCode"], a["postalCode"])))
    return frozenset(found)


# --- the spec and its settings ----------------------------------------------------------------


def test_the_spec_declares_the_documented_limits():
    assert (SPEC.kind, SPEC.label, SPEC.max_batch, SPEC.default_rate_limit_per_s, SPEC.removes) == (
        "google",
        "Google (Data Manager API)",
        10_000,
        5.0,
        True,
    )
    assert SPEC.min_audience_size is None and SPEC.modes == ("membership",)
    assert SPEC.endpoint({}) == "https://datamanager.googleapis.com"
    assert [c.name for c in SPEC.credentials] == ["access_token"]


def test_destination_save_refuses_bad_google_settings_with_clear_messages(google, monkeypatch):
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", TOKEN)
    with pytest.raises(ValidationError) as failure:
        destination_save(
            data=google_data(
                google,
                operating_account_id="12ab",
                login_account_type="GOOGLE_ADS",
                ad_user_data="yes",
                customer_match_terms="maybe",
                consent_attribute="a b",
            )
        )
    problems = failure.value.message_dict["settings"]
    assert "ad_user_data: use CONSENT_GRANTED or CONSENT_DENIED or CONSENT_STATUS_UNSPECIFIED" in problems
    assert "customer_match_terms: use ACCEPTED or REJECTED" in problems
    assert "operating_account_id: digits only, such as a Google Ads customer id 1234567890 (dashes are dropped)" in problems
    assert "login_account_id: required with login_account_type" in problems
    assert "consent_attribute: the name of a person attribute, such as consent" in problems
    data = google_data(google)
    data["credentials"] = {}
    with pytest.raises(ValidationError) as failure:
        destination_save(data=data)
    assert failure.value.message_dict["credentials"] == ["access_token: required for google"]


def test_a_new_google_destination_starts_at_the_documented_rate_limit(google, monkeypatch):
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", TOKEN)
    data = google_data(google)
    del data["rate_limit_per_s"]
    saved = destination_save(data=data)
    assert saved.rate_limit_per_s == 5.0
    assert saved.credentials == {"access_token": TOKEN} and TOKEN not in json.dumps(saved.settings)


# --- the transport against the server ---------------------------------------------------------


def test_entries_and_exits_go_to_ingest_and_remove_in_the_documented_shape(google, destination, sync):
    transport = transport_for(destination)
    rows = [row(1, phone=sha("+18005550100")), row(2), row(3, "exit", email="person1@example.com")]
    result = transport.send(rows[:2], batch_id="b1", sync=sync)
    assert sorted(result.accepted) == [1, 2] and result.requests == 1 and not result.rejected
    assert google.members(LIST) == {member_of(rows[0].identifiers), member_of(rows[1].identifiers)}

    ingest = google.bodies()[0]
    assert ingest["action"] == "ingest"
    assert ingest["body"] == {
        "destinations": [
            {"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"}, "productDestinationId": LIST}
        ],
        "audienceMembers": [
            {
                "userData": {
                    "userIdentifiers": [{"emailAddress": sha("person1@example.com")}, {"phoneNumber": sha("+18005550100")}]
                }
            },
            {"userData": {"userIdentifiers": [{"emailAddress": sha("person2@example.com")}]}},
        ],
        "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
        "encoding": "HEX",
        "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
        "validateOnly": False,
    }
    assert result.report == {
        "request_ids": [google.request_ids()[0]],
        "rows_with_email": 2,
        "rows_with_phone": 1,
        "rows_with_address": 0,
    }

    removed = transport.send([rows[2]], batch_id="b2", sync=sync)
    assert removed.accepted == [3]
    assert google.members(LIST) == {member_of(rows[1].identifiers)}
    remove = google.bodies()[1]
    assert remove["action"] == "remove" and set(remove["body"]) == {"destinations", "audienceMembers", "encoding", "validateOnly"}
    assert [r["path"] for r in google.request_log()] == ["/v1/audienceMembers:ingest", "/v1/audienceMembers:remove"]
    assert google.request_log()[0]["client"]  # a real socket


def test_a_login_account_travels_with_the_destination(google, monkeypatch):
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", TOKEN)
    destination = destination_save(data=google_data(google, login_account_type="GOOGLE_ADS", login_account_id="999-888-7777"))
    result = transport_for(destination).send([row(1)], batch_id="b", sync=flagged_sync())
    assert result.accepted == [1]
    assert google.bodies()[0]["body"]["destinations"][0]["loginAccount"] == {
        "accountType": "GOOGLE_ADS",
        "accountId": "9998887777",
    }


def test_a_batch_goes_as_one_request_per_action_of_at_most_10000_members(google, destination, sync):
    exits = [row(i, "exit") for i in range(12_000)]
    entries = [row(i) for i in range(12_000, 25_000)]
    result = transport_for(destination).send(entries + exits, batch_id="big", sync=sync, timeout=60)
    log = google.request_log()
    assert [(r["path"].rsplit(":", 1)[1], r["rows"]) for r in log] == [
        ("remove", 10_000),
        ("remove", 2_000),
        ("ingest", 10_000),
        ("ingest", 3_000),
    ]
    assert result.requests == 4 and len(result.accepted) == 25_000
    assert result.report["request_ids"] == google.request_ids()
    assert google.size(LIST) == 13_000


def test_only_the_members_google_names_are_rejected_and_the_others_go_again(google, destination, sync):
    rows = [row(1), row(2), row(3), row(4, phone="not-hex")]
    rows[2].identifiers["email"] = "abcd" * 4  # hex, but no SHA-256
    result = transport_for(destination).send(rows, batch_id="b", sync=sync)
    assert sorted(result.accepted) == [1, 2]
    assert set(result.rejected) == {3, 4}
    assert result.rejected[3].startswith("Google refused this member: INVALID_SHA256_FORMAT")
    assert "INVALID_HEX_ENCODING Phone number is not hex encoded." in result.rejected[4]
    assert [r["status"] for r in google.request_log()] == [400, 200]
    assert google.members(LIST) == {member_of(rows[0].identifiers), member_of(rows[1].identifiers)}


def test_a_request_google_cannot_parse_is_refused_whole_not_member_by_member(google, destination, sync):
    bad = row(
        2,
        address=json.dumps(
            {"givenName": sha("a"), "familyName": sha("b"), "regionCode": "US", "postalCode": "1", "streetName": "x"}
        ),
    )
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send([row(1), bad], batch_id="b", sync=sync)
    assert failure.value.permanent and failure.value.status == 400
    assert 'Unknown name "streetName"' in str(failure.value)
    assert google.members(LIST) == set()


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"token": "expired"}, 401, "the access token was refused: Request had invalid authentication credentials"),
        ({"account": ("GOOGLE_ADS", "5555555555")}, 403, "Google refused access to the operating account (403 PERMISSION_DENIED"),
        ({"user_lists": set()}, 400, "destinations[0].product_destination_id INVALID_USER_LIST_ID User list is not valid."),
    ],
)
def test_refusals_of_the_request_as_a_whole_are_permanent_with_googles_message(google, destination, sync, change, status, words):
    for name, value in change.items():
        setattr(google, name, value)
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send([row(1)], batch_id="b", sync=sync)
    assert failure.value.permanent and failure.value.status == status
    assert words in str(failure.value)
    assert TOKEN not in str(failure.value) and "expired" not in str(failure.value)


def test_terms_of_service_not_accepted_is_refused_and_says_what_to_do(google, monkeypatch):
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", TOKEN)
    destination = destination_save(data=google_data(google, customer_match_terms="REJECTED"))
    sync = flagged_sync()
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send([row(1)], batch_id="b", sync=sync)
    assert failure.value.permanent and failure.value.status == 400
    assert "Customer Match terms of service are not accepted" in str(failure.value)
    assert "TERMS_AND_CONDITIONS_NOT_SIGNED" in str(failure.value)
    # removals carry no terms and still go
    assert transport_for(destination).send([row(2, "exit")], batch_id="c", sync=sync).accepted == [2]


def test_429_waits_for_retry_after_and_a_spent_daily_quota_for_an_hour(google, destination, sync):
    transport = transport_for(destination)
    google.set_rate_limit(1.0)
    transport.send([row(1)], batch_id="a", sync=sync)
    with pytest.raises(TransportError) as failure:
        transport.send([row(2)], batch_id="b", sync=sync)
    assert not failure.value.permanent and failure.value.status == 429 and failure.value.retry_after == 1
    assert "RESOURCE_EXHAUSTED" in str(failure.value)

    google.set_rate_limit(None)
    google.refuse_next("RESOURCE_EXHAUSTED", quota_limit="IngestionMutateRequestsPerDayPerProject")
    with pytest.raises(TransportError) as failure:
        transport.send([row(3)], batch_id="c", sync=sync)
    assert failure.value.retry_after == 3600 and not failure.value.permanent
    google.refuse_next("RESOURCE_EXHAUSTED", quota_limit="IngestionMutateRequestsPerMinutePerProject")
    with pytest.raises(TransportError) as failure:
        transport.send([row(3)], batch_id="c", sync=sync)
    assert failure.value.retry_after is None  # the sender's own backoff


@pytest.mark.parametrize("status", ["UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"])
def test_server_errors_are_retried(google, destination, sync, status):
    google.refuse_next(status)
    with pytest.raises(TransportError) as failure:
        transport_for(destination).send([row(1)], batch_id="b", sync=sync)
    assert not failure.value.permanent and failure.value.status >= 500
    assert transport_for(destination).send([row(1)], batch_id="b", sync=sync).accepted == [1]


def test_an_injected_500_reset_and_timeout_are_retryable(google, destination, sync):
    transport = transport_for(destination)
    for kind in ("500", "reset"):
        google.faults = FaultPlan(rate=1.0, kinds=(kind,))
        with pytest.raises(TransportError) as failure:
            transport.send([row(1)], batch_id="b", sync=sync)
        assert not failure.value.permanent
    google.faults = FaultPlan(rate=1.0, kinds=("timeout",), slow_seconds=1.0)
    with pytest.raises(TransportError) as failure:
        transport.send([row(1)], batch_id="b", sync=sync, timeout=0.3)
    assert failure.value.may_have_arrived and not failure.value.permanent


# --- the contract server itself -----------------------------------------------------------------


def post(server, path, body, token=TOKEN):
    return requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def ingest_body(members, **extra):
    return {
        "destinations": [
            {"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"}, "productDestinationId": LIST}
        ],
        "audienceMembers": members,
        "encoding": "HEX",
        "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"},
        **extra,
    }


def email_member(i):
    return {"userData": {"userIdentifiers": [{"emailAddress": sha(f"m{i}@example.com")}]}}


def violations(response):
    return [(v["field"], v.get("reason")) for d in response.json()["error"]["details"] for v in d.get("fieldViolations", [])]


def test_server_refuses_what_the_api_refuses_and_applies_nothing(google):
    response = post(google, "/v1/audienceMembers:ingest", ingest_body([email_member(i) for i in range(10_001)]))
    assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert violations(response) == [("audience_members", "TOO_MANY_AUDIENCE_MEMBERS")]

    response = post(google, "/v1/audienceMembers:ingest", {**ingest_body([email_member(1)]), "encoding": None})
    assert violations(response) == [("encoding", "REQUIRED_FIELD_MISSING")]

    # Google's own examples: a plain-text email, and one hex encoded but not hashed
    plain = {"userData": {"userIdentifiers": [{"emailAddress": "dana@example.com"}]}}
    unhashed = {"userData": {"userIdentifiers": [{"emailAddress": b"dana@example.com".hex()}]}}
    response = post(google, "/v1/audienceMembers:ingest", ingest_body([email_member(0), plain, unhashed]))
    assert violations(response) == [
        ("audience_members.audience_members[1].user_data.user_identifiers", "INVALID_HEX_ENCODING"),
        ("audience_members.audience_members[2]", "INVALID_SHA256_FORMAT"),
    ]

    response = post(google, "/v1/audienceMembers:ingest", ingest_body([{**email_member(1), "extra": 1}]))
    assert response.status_code == 400 and 'Unknown name "extra"' in response.json()["error"]["message"]
    response = post(google, "/v1/audienceMembers:ingest", ingest_body([email_member(1)], consent={"adUserData": "YES"}))
    assert response.status_code == 400 and "consent.ad_user_data" in response.json()["error"]["message"]
    response = post(google, "/v1/audienceMembers:remove", ingest_body([email_member(1)]))  # remove takes no terms
    assert response.status_code == 400 and 'Unknown name "termsOfService"' in response.json()["error"]["message"]
    response = post(
        google, "/v1/audienceMembers:ingest", {k: v for k, v in ingest_body([email_member(1)]).items() if k != "termsOfService"}
    )
    assert violations(response) == [("terms_of_service", "TERMS_AND_CONDITIONS_NOT_SIGNED")]
    assert google.members(LIST) == set() and google.request_ids() == []


def test_server_validate_only_answers_empty_and_applies_nothing(google):
    response = post(google, "/v1/audienceMembers:ingest", ingest_body([email_member(1)], validateOnly=True))
    assert (response.status_code, response.json()) == (200, {})
    assert google.members(LIST) == set()


def test_server_auth_is_a_bearer_token_and_errors_are_googles_json(google):
    response = post(google, "/v1/audienceMembers:ingest", ingest_body([email_member(1)]), token="wrong")
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert requests.get(google.url + "/v1/nothing", timeout=5).status_code == 404
    status = requests.get(
        google.url + "/v1/requestStatus:retrieve",
        params={"requestId": "nope"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert status.status_code == 400 and violations(status) == [("request_id", "INVALID_REQUEST_ID")]


def test_server_limits_requests_to_5_a_second_by_default():
    with GoogleDataManagerServer(TOKEN) as server:
        assert server.rate_limit_per_s == 5.0
        statuses = [post(server, "/v1/audienceMembers:ingest", ingest_body([email_member(i)])).status_code for i in range(7)]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
        limited = next(r for r in server.request_log() if r["fault"] == "rate_limit")
        assert limited["status"] == 429 and limited["retry_after"] >= 1
        server.set_rate_limit(0.01)  # one request, then none for 100 s
        post(server, "/v1/audienceMembers:ingest", ingest_body([email_member(8)]))
        answer = post(server, "/v1/audienceMembers:ingest", ingest_body([email_member(9)]))
        assert answer.status_code == 429 and answer.headers["Retry-After"]
        assert answer.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert answer.json()["error"]["details"][0]["metadata"]["quota_limit"] == "IngestionMutateRequestsPerMinutePerProject"


def test_server_runs_in_its_own_process_at_a_given_rate_limit():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.contract_servers.google", "--rate-limit", "2", "--token", TOKEN, "--user-list", LIST],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        state = requests.get(url + "/__state__", timeout=5).json()
        assert state["server"] == "google" and state["faults"]["rate_limit_per_s"] == 2.0
        answer = requests.post(
            url + "/v1/audienceMembers:ingest",
            json=ingest_body([email_member(1)]),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert answer.status_code == 200 and answer.json()["requestId"]
        assert requests.get(url + "/__state__?requests=0", timeout=5).json()["user_lists"] == {LIST: 1}
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


# --- end to end: ingest → evaluation → outbox → the sender → Google's user list ----------------


@pytest.fixture
def source(db):
    from audiences.ingest import source_create

    return source_create(name="shop")[0]


def identify_in(source, customer_id, **traits):
    ingest_messages(
        source=source, messages=[Message("identify", customer_id, f"identify-{next(MESSAGES)}", timezone.now(), traits=traits)]
    )


def downstream_members(sync) -> set[frozenset]:
    """Downstream's members of the sync's audience that Google can match, each as Google must
    hold them."""
    people = Person.objects.filter(memberships__audience=sync.audience, memberships__exited_at__isnull=True)
    return {member for person in people if (member := member_of(SPEC.identifiers_for(sync, person)))}


PEOPLE = {
    "p0": {"email": "dana@example.com"},
    "p1": {"email": " Cloudy.SanFrancisco+shopping@GMAIL.com ", "phone": "+1-800-555-0100"},
    "p2": {"phone": "(800) 555-0101"},
    "p3": {
        "email": "user.name+NYC@Example.com",
        "first_name": "Rosario",
        "last_name": "Díaz-López",
        "country": "es",
        "postal_code": "28001",
    },
    "p4": {"first_name": "Quinn", "last_name": "Lee", "country": "US", "postal_code": "94045"},
    "p5": {"email": "alexf@altostrat.com"},
}


def test_end_to_end_googles_user_list_equals_downstreams_members(source, google, destination):
    sync = flagged_sync()
    for customer_id, traits in PEOPLE.items():
        identify_in(source, customer_id, flag=True, **traits)
    identify_in(source, "nobody", flag=True)  # no identifier Google matches on: skipped, never sent
    evaluate_all()
    summary = deliver_destination(destination.pk)
    assert summary.sent == 6 and summary.skipped == 1
    assert google.members(LIST) == downstream_members(sync)
    # and that is Google's own hashing: the published values are there
    held = {value for member in google.members(LIST) for kind, value in member if kind != "address"}
    assert {PUBLISHED_EMAILS[0][1], PUBLISHED_EMAILS[8][1], PUBLISHED_PHONES[0][1], PUBLISHED_PHONES[1][1]} <= held
    assert sha("user.name+nyc@example.com") in held
    assert ("address", (sha("quinn"), sha("lee"), "US", "94045")) in set().union(*google.members(LIST))

    for customer_id in ("p1", "p4"):
        identify_in(source, customer_id, flag=False)
    identify_in(source, "p6", flag=True, email="new@example.com")
    evaluate_all()
    deliver_destination(destination.pk)
    assert len(google.members(LIST)) == 5
    assert google.members(LIST) == downstream_members(sync)
    assert {r["path"].rsplit(":", 1)[1] for r in google.request_log()} == {"ingest", "remove"}

    runs = SyncRun.objects.filter(sync=sync, kind=SyncRun.DELIVER).order_by("started_at")
    assert [run.status for run in runs] == ["succeeded", "succeeded"]
    assert sorted(rid for run in runs for rid in run.details["request_ids"]) == sorted(google.request_ids())
    assert Delivery.objects.get(customer_id="nobody").state == Delivery.SKIPPED


def test_end_to_end_only_the_identifiers_the_sync_maps_leave(source, google, destination):
    flagged_sync(match_on=["phone"])
    identify_in(source, "p1", flag=True, email="a@example.com", phone="+1-800-555-0100")
    identify_in(source, "p2", flag=True, email="b@example.com")
    evaluate_all()
    deliver_destination(destination.pk)
    assert google.members(LIST) == {frozenset({("phoneNumber", PUBLISHED_PHONES[0][1])})}
    assert "emailAddress" not in json.dumps(google.bodies())


def test_consent_comes_from_the_persons_attribute_when_mapped_else_the_default(source, google, destination):
    sync = flagged_sync(fields=["consent"])
    identify_in(source, "denies", flag=True, email="denies@example.com", consent={"ad_personalization": "denied"})
    identify_in(source, "grants", flag=True, email="grants@example.com", consent="granted")
    identify_in(source, "silent", flag=True, email="silent@example.com")
    evaluate_all()
    deliver_destination(destination.pk)

    sent = {r["identifiers"]: r for r in google.received()}
    denies, grants, silent = (
        sent[frozenset({("emailAddress", sha(f"{n}@example.com"))})] for n in ("denies", "grants", "silent")
    )
    assert denies["member_consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"}
    assert grants["member_consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
    assert silent["member_consent"] is None and silent["consent"]["adPersonalization"] == "CONSENT_GRANTED"  # the request's
    # Google keeps no one whose consent is denied
    assert google.members(LIST) == {
        frozenset({("emailAddress", sha("grants@example.com"))}),
        frozenset({("emailAddress", sha("silent@example.com"))}),
    }

    # what Google made of it, read later
    run = SyncRun.objects.get(sync=sync)
    check_request_statuses(now=run.finished_at + timedelta(minutes=31), sleep=lambda s: None)
    status = SyncRun.objects.get(pk=run.pk).details["request_status"]
    assert (status["partial"], status["records"], status["records_failed"]) == (1, 3, 1)
    assert status["errors"] == {"PROCESSING_ERROR_REASON_DENIED_CONSENT": 1} and status["done"]


def test_consent_attribute_not_in_the_syncs_fields_is_not_read(source, google, destination):
    flagged_sync()  # no fields
    identify_in(source, "denies", flag=True, email="denies@example.com", consent={"ad_user_data": "denied"})
    evaluate_all()
    deliver_destination(destination.pk)
    assert [r["member_consent"] for r in google.received()] == [None]
    assert len(google.members(LIST)) == 1


def test_a_default_of_denied_is_overridden_by_a_persons_grant(source, google, monkeypatch):
    monkeypatch.setenv("GOOGLE_ACCESS_TOKEN", TOKEN)
    destination = destination_save(data=google_data(google, ad_user_data="CONSENT_DENIED", consent_attribute="gdpr"))
    flagged_sync(fields=["gdpr"])
    identify_in(source, "yes", flag=True, email="yes@example.com", gdpr={"ad_user_data": True, "ad_personalization": True})
    identify_in(source, "no", flag=True, email="no@example.com")
    evaluate_all()
    deliver_destination(destination.pk)
    assert google.bodies()[0]["body"]["consent"] == {"adUserData": "CONSENT_DENIED", "adPersonalization": "CONSENT_GRANTED"}
    assert google.members(LIST) == {frozenset({("emailAddress", sha("yes@example.com"))})}


def test_a_member_google_refuses_is_rejected_with_its_reason_and_the_rest_delivered(source, google, destination):
    sync = flagged_sync()
    identify_in(source, "good", flag=True, email="good@example.com")
    identify_in(source, "bad", flag=True, email="bad@example.com")
    evaluate_all()
    bad = Delivery.objects.get(customer_id="bad")
    # a payload kept from before (as an erasure keeps one) that Google cannot read
    Delivery.objects.filter(pk=bad.pk).update(payload={"identifier": "x", "fields": {}, "identifiers": {"email": "zz"}})
    deliver_destination(destination.pk)
    bad.refresh_from_db()
    assert bad.state == Delivery.REJECTED and "INVALID_HEX_ENCODING" in bad.last_error
    assert Delivery.objects.get(customer_id="good").state == Delivery.SENT
    assert google.members(LIST) == {frozenset({("emailAddress", sha("good@example.com"))})}
    assert SyncRun.objects.get(sync=sync).status == "partial"


def test_a_refused_token_fails_the_run_with_googles_words(source, google, destination):
    sync = flagged_sync()
    google.token = "another-token"
    identify_in(source, "p", flag=True, email="p@example.com")
    evaluate_all()
    deliver_destination(destination.pk, max_seconds=1)
    run = SyncRun.objects.filter(sync=sync).first()
    assert run.status == "failed" and run.error.startswith("the access token was refused")
    assert TOKEN not in run.error


# --- request statuses, read later on a schedule ------------------------------------------------


def test_request_status_is_read_after_30_minutes_backing_off_until_final(source, google, destination):
    google.processing_polls = 1
    google.match_share = 0.5
    sync = flagged_sync()
    for i in range(40):
        identify_in(source, f"p{i}", flag=True, email=f"p{i}@example.com")
    evaluate_all()
    deliver_destination(destination.pk)
    run = SyncRun.objects.get(sync=sync)
    request_id = run.details["request_ids"][0]
    done = run.finished_at

    assert check_request_statuses(now=done + timedelta(minutes=29)) == {"runs": 0, "reads": 0, "done": 0}
    first = check_request_statuses(now=done + timedelta(minutes=31), sleep=lambda s: None)
    assert first == {"runs": 1, "reads": 1, "done": 0}
    status = SyncRun.objects.get(pk=run.pk).details["request_status"]
    assert status["processing"] == 1 and not status["done"] and status["requests"][request_id]["status"] == "PROCESSING"
    assert status["next_check_at"] == (done + timedelta(minutes=61)).isoformat()

    assert check_request_statuses(now=done + timedelta(minutes=45))["reads"] == 0  # not due yet
    check_request_statuses(now=done + timedelta(minutes=62), sleep=lambda s: None)
    status = SyncRun.objects.get(pk=run.pk).details["request_status"]
    assert status["done"] and status["succeeded"] == 1 and status["records"] == 40 and status["records_failed"] == 0
    # the server matches a hash whose first 8 hex digits, as a share of 2**32, are under 0.5
    matched = sum(1 for i in range(40) if int(sha(f"p{i}@example.com")[:8], 16) / 2**32 < 0.5)
    low, high = status["match_rate"]["low"], status["match_rate"]["high"]
    assert status["match_rate_range"] == f"MATCH_RATE_RANGE_{round(low * 100)}_TO_{round(high * 100)}"
    assert low <= matched / 40 < high + 0.01
    assert check_request_statuses(now=done + timedelta(hours=5))["runs"] == 0  # done: never read again


def test_request_statuses_give_up_after_48_hours(source, google, destination):
    google.processing_polls = 10**6
    sync = flagged_sync()
    identify_in(source, "p", flag=True, email="p@example.com")
    evaluate_all()
    deliver_destination(destination.pk)
    run = SyncRun.objects.get(sync=sync)
    check_request_statuses(now=run.finished_at + timedelta(hours=49), sleep=lambda s: None)
    status = SyncRun.objects.get(pk=run.pk).details["request_status"]
    assert status["done"] and status["gave_up"] and status["processing"] == 1


def test_removals_have_a_removal_status(google, destination, sync):
    transport = transport_for(destination)
    transport.send([row(1), row(2)], batch_id="a", sync=sync)
    removal = transport.send([row(1, "exit")], batch_id="b", sync=sync)
    outcome = request_outcome(transport.request_status(removal.report["request_ids"][0]))
    assert outcome == {"status": "SUCCESS", "kind": "remove", "records": 1, "identifiers": 1, "records_failed": 0, "errors": {}}


# --- the read-back ------------------------------------------------------------------------------


def test_read_back_gives_googles_size_and_match_rate_of_the_user_list(google, destination, sync):
    google.match_share = 0.5
    transport = transport_for(destination)
    rows = [row(i) for i in range(200)]
    transport.send(rows, batch_id="a", sync=sync)
    matched = sum(1 for r in rows if int(r.identifiers["email"][:8], 16) / 2**32 < 0.5)
    back = transport.read_back(sync)
    assert back.size == matched
    assert back.match_rate == round(100 * matched / 200) / 100
    assert f"Display network {matched:,}" in back.detail and "match rate" in back.detail

    google.user_lists.discard(LIST)
    with pytest.raises(TransportError) as failure:
        transport.read_back(sync)
    assert failure.value.permanent and failure.value.status == 404


def test_the_request_status_follow_up_is_a_worker_schedule():
    from django.utils.module_loading import import_string

    from audiences.management.commands.setup_schedules import declared_schedules

    entry = next(s for s in declared_schedules() if s["name"] == "google-request-status")
    assert import_string(entry["func"]) is check_request_statuses and entry["minutes"] == 5


def test_the_connection_test_lists_the_accounts_user_lists(google, destination):
    from syncs.wire import check_connection

    assert check_connection(destination) == (
        True,
        "Google accepted the access token for GOOGLE_ADS account 1234567890; it holds user lists.",
    )
    assert google.request_log()[-1]["query"] == "pageSize=1"
    google.token = "rotated"
    reached, said = check_connection(destination)
    assert not reached and said.startswith("the access token was refused")


def test_the_first_batch_preview_is_the_ingest_request_with_the_token_masked(source, google, destination):
    from syncs.wire import MASK, first_batch

    sync = flagged_sync()
    identify_in(source, "p0", flag=True, email="dana@example.com")
    evaluate_all()
    preview = first_batch(sync)
    assert (preview.method, preview.url) == ("POST", google.url + "/v1/audienceMembers:ingest")
    assert preview.headers["Authorization"] == f"Bearer {MASK}" and TOKEN not in json.dumps(preview.headers)
    body = json.loads(preview.body)
    assert body["audienceMembers"] == [{"userData": {"userIdentifiers": [{"emailAddress": PUBLISHED_EMAILS[0][1]}]}}]
    assert google.request_log() == []  # nothing went


def test_the_registry_knows_the_google_kind():
    assert registry.spec_for("google") is SPEC
    assert ("google", "Google (Data Manager API)") in registry.kind_choices()


def test_an_exit_google_never_had_is_not_sent(source, google, destination):
    sync = flagged_sync()
    identify_in(source, "p", flag=True)  # no identifier: its entry is skipped
    evaluate_all()
    deliver_destination(destination.pk)
    identify_in(source, "p", flag=False, email="p@example.com")
    evaluate_all()
    deliver_destination(destination.pk)
    assert google.request_log() == []
    assert [d.state for d in Delivery.objects.filter(sync=sync).order_by("id")] == [Delivery.SKIPPED, Delivery.SKIPPED]
    assert not Membership.objects.filter(person__customer_id="p", exited_at__isnull=True).exists()


# --- config as code ----------------------------------------------------------------------------

README_EXAMPLE = """\
audiences:
  - key: lapsed_60_90d
    name: Lapsed 60 to 90 days
    rule: {event: Order Completed, last_between: [60d, 90d]}
destinations:
  - key: google-ads
    name: Google Ads (Customer Match)
    kind: google
    settings:
      operating_account_id: "123-456-7890"
      login_account_type: GOOGLE_ADS
      login_account_id: "999-888-7777"
      customer_match_terms: ACCEPTED
      ad_user_data: CONSENT_GRANTED
      ad_personalization: CONSENT_GRANTED
      consent_attribute: consent
    credentials:
      access_token: env:GOOGLE_DATAMANAGER_ACCESS_TOKEN
syncs:
  - key: lapsed-google
    audience: lapsed_60_90d
    destination: google-ads
    downstream_audience_id: "5550001"
    match_on: [email, phone]
    fields: [consent]
"""


def test_the_readme_example_applies_and_exports_as_it_was(tmp_path, monkeypatch):
    from io import StringIO

    import yaml
    from django.core.management import call_command

    from syncs.models import Destination, Sync

    monkeypatch.setenv("GOOGLE_DATAMANAGER_ACCESS_TOKEN", TOKEN)
    path = tmp_path / "downstream.yaml"
    path.write_text(README_EXAMPLE)
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    destination = Destination.objects.get(key="google-ads")
    assert (destination.kind, destination.rate_limit_per_s, destination.credentials) == ("google", 5.0, {"access_token": TOKEN})
    sync = Sync.objects.get(key="lapsed-google")
    assert (sync.downstream_id, sync.match_on, sync.fields) == ("5550001", ["email", "phone"], ["consent"])

    out = StringIO()
    call_command("export_config", stdout=out)
    exported = yaml.safe_load(out.getvalue())
    assert TOKEN not in out.getvalue()
    item = next(d for d in exported["destinations"] if d["key"] == "google-ads")
    assert item["credentials"] == {"access_token": "env:GOOGLE_DATAMANAGER_ACCESS_TOKEN"}
    check = StringIO()
    call_command("apply_config", str(path), "--check", stdout=check, stderr=StringIO())
    assert "no changes: the database matches the file" in check.getvalue()


def test_a_google_destination_is_set_up_from_the_dashboard_and_tested(manager_client, google):
    page = manager_client.get("/dashboard/destinations/new/?kind=google").content.decode()
    for name in (
        "setting__operating_account_id",
        "setting__customer_match_terms",
        "setting__ad_user_data",
        "setting__consent_attribute",
        "credential__access_token",
    ):
        assert f'name="{name}"' in page
    response = manager_client.post(
        "/dashboard/destinations/new/",
        {
            "kind": "google",
            "name": "Google Ads",
            "key": "google-ads",
            "setting__base_url": google.api_url,
            "setting__operating_account_type": "GOOGLE_ADS",
            "setting__operating_account_id": "1234567890",
            "setting__customer_match_terms": "ACCEPTED",
            "setting__ad_user_data": "CONSENT_GRANTED",
            "setting__ad_personalization": "CONSENT_GRANTED",
            "setting__consent_attribute": "consent",
            "credential__access_token": TOKEN,
            "batch_size": 5000,
            "rate_limit_per_s": 5,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    page = manager_client.get("/dashboard/destinations/google-ads/").content.decode()
    assert TOKEN not in page
    answer = manager_client.post("/dashboard/destinations/google-ads/test", follow=True).content.decode()
    assert "Google accepted the access token for GOOGLE_ADS account 1234567890" in answer
