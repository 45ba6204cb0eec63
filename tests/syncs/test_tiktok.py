"""TikTok: its identifiers as TikTok's customer file guide normalises them, its transport
against the contract server (file upload, then APPEND or REMOVE; TikTok's errors, which come
as a code inside an HTTP 200), and a TikTok sync end to end through the services and the
sender, with TikTok's minimum of 1,000 people holding removals that would go under it."""

import hashlib
import itertools
from datetime import UTC, datetime
from io import StringIO
from urllib.parse import parse_qs

import pytest
import requests
import yaml
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone as django_timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Membership, Person
from audiences.services import audience_save
from syncs.delivery import deliver_destination
from syncs.destinations import OutRow, registry
from syncs.destinations.base import ReadBack
from syncs.destinations.tiktok import SPEC, Transport
from syncs.destinations.tiktok.identifiers import MATCH_KEYS, calculate_type_for, tiktok_email, tiktok_phone
from syncs.http import TransportError
from syncs.models import Alert, Delivery, Destination, RemovalHold, Sync
from syncs.removals import ADDITIVE_ONLY, CAME_BACK
from syncs.services import destination_save, hold_decide, sync_save
from tests.contract_servers.tiktok import TikTokServer

pytestmark = pytest.mark.django_db

TOKEN, ADVERTISER, AUDIENCE, PHONES = "tt-token-1", "7012345678901234567", "1800000000000001", "1800000000000002"
MESSAGE_IDS = itertools.count()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def identify_all(source, traits_by_customer: dict[str, dict]) -> None:
    """Many identifies in one request, as a batch through the ingest API would write them."""
    now = django_timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("identify", customer_id, f"identify-{next(MESSAGE_IDS)}", now, traits=traits)
            for customer_id, traits in traits_by_customer.items()
        ],
    )


def store(prefix: str, n: int) -> None:
    """People in the audience's rule straight into the store: a thousand identifies through ingest
    take most of a test's time, and ingest is not what these tests are about."""
    Person.objects.bulk_create(
        [Person(customer_id=f"{prefix}{i}", email=f"{prefix}{i}@example.com", attributes={"flag": True}) for i in range(n)]
    )


def people(prefix: str, n: int, *, start: int = 0) -> dict[str, dict]:
    return {f"{prefix}{i}": {"flag": True, "email": f"{prefix}{i}@example.com"} for i in range(start, start + n)}


def leave(source, customer_ids) -> None:
    identify_all(source, {customer_id: {"flag": False} for customer_id in customer_ids})


def downstream_hashes(audience_key: str) -> set[str]:
    """The audience's members as TikTok should hold them: the SHA-256 of each normalised email."""
    emails = Membership.objects.filter(audience__key=audience_key, exited_at__isnull=True).values_list("person__email", flat=True)
    return {sha(email.strip().lower()) for email in emails}


@pytest.fixture
def tiktok():
    with TikTokServer(TOKEN, ADVERTISER, audiences={AUDIENCE: "EMAIL_SHA256", PHONES: "PHONE_SHA256"}) as server:
        yield server


@pytest.fixture
def tiktok_kind(monkeypatch):
    """TikTok in the registry, as its one line in KINDS puts it there."""
    monkeypatch.setitem(registry.KINDS, "tiktok", SPEC)


@pytest.fixture
def destination(tiktok, tiktok_kind, monkeypatch):
    monkeypatch.setenv("TIKTOK_ACCESS_TOKEN", TOKEN)
    return destination_save(
        data={
            "key": "tiktok",
            "name": "TikTok",
            "kind": "tiktok",
            "settings": {"base_url": tiktok.api_url, "advertiser_id": ADVERTISER},
            "credentials": {"access_token": "env:TIKTOK_ACCESS_TOKEN"},
            "batch_size": 5000,
            "timeout_s": 2.0,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.5,
            "rate_limit_per_s": 200,
        }
    )


def flagged_sync(**extra):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    return sync_save(
        data={
            "key": "flagged-tiktok",
            "audience": "flagged",
            "destination": "tiktok",
            "downstream_audience_id": AUDIENCE,
            **extra,
        }
    )


def deliver(destination):
    return deliver_destination(destination.pk)


# --- identifiers ----------------------------------------------------------------------------

# TikTok's examples ("How to create a Custom Audience with a customer file", "List of supported
# IDs and formats for a customer file"), then the values that must not reach a file at all
EMAILS = [
    ("janedoe@gmail.com", "janedoe@gmail.com", "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"),
    ("  JaneDoe@Gmail.COM ", "janedoe@gmail.com", "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"),
    ("firstname-lastname@gmail.com", "firstname-lastname@gmail.com", sha("firstname-lastname@gmail.com")),
    ("not an email", None, None),
    ("", None, None),
    (42, None, None),
]
PHONES_TABLE = [
    ("+442071838750", "+442071838750"),  # TikTok's E.164 example, kept as it is
    ("+44 20 7183 8750", "+442071838750"),
    ("(657)777-0000", "+16577770000"),  # TikTok's US example: the country code added, even in the US
    ("+374-93-828222", "+37493828222"),  # TikTok's international example
    ("16577770000", "+16577770000"),
    ("555", None),
    ("not a phone", None),
]


@pytest.mark.parametrize(("raw", "normalised", "hashed"), EMAILS)
def test_emails_are_trimmed_and_lower_cased_then_hashed_as_tiktok_shows(raw, normalised, hashed):
    assert tiktok_email(raw) == normalised
    person = Person(customer_id="c1", email=raw if isinstance(raw, str) else "")
    key = MATCH_KEYS[0]
    assert (key.name, key.compile(person)) == ("EMAIL_SHA256", hashed if isinstance(raw, str) else None)


@pytest.mark.parametrize(("raw", "normalised"), PHONES_TABLE)
def test_phones_are_e164_with_the_plus_then_hashed(raw, normalised, settings):
    settings.PHONE_DEFAULT_REGION = "US"
    assert tiktok_phone(raw) == normalised
    key = MATCH_KEYS[1]
    assert (key.name, key.compile(Person(customer_id="c1", phone=raw))) == (
        "PHONE_SHA256",
        sha(normalised) if normalised else None,
    )


def test_a_person_carries_only_the_identifier_type_the_sync_uploads(tiktok, destination):
    sync = flagged_sync()
    person = Person(customer_id="c1", email="Ann@Example.com", phone="+442071838750", phone_e164="+442071838750")
    assert calculate_type_for(sync) == "EMAIL_SHA256"
    assert SPEC.identifiers_for(sync, person) == {"EMAIL_SHA256": sha("ann@example.com")}
    sync.match_on = ["PHONE_SHA256"]
    assert SPEC.identifiers_for(sync, person) == {"PHONE_SHA256": sha("+442071838750")}
    sync.destination.settings = {**destination.settings, "calculate_type": "PHONE_SHA256"}
    sync.match_on = []
    assert SPEC.identifiers_for(sync, person) == {"PHONE_SHA256": sha("+442071838750")}


# --- the spec, through the services ---------------------------------------------------------


def test_a_tiktok_destination_takes_its_settings_and_refuses_bad_ones(tiktok, destination, monkeypatch):
    assert (destination.kind, destination.get_kind_display()) == ("tiktok", "TikTok")
    assert destination.credentials == {"access_token": TOKEN}
    fresh = destination_save(
        data={
            "key": "tiktok-2",
            "kind": "tiktok",
            "settings": {"advertiser_id": ADVERTISER},
            "credentials": {"access_token": "env:TIKTOK_ACCESS_TOKEN"},
        }
    )
    assert (fresh.rate_limit_per_s, fresh.batch_size) == (2.0, 500)
    with pytest.raises(ValidationError) as failure:
        destination_save(
            data={
                "key": "tiktok-3",
                "kind": "tiktok",
                "settings": {"advertiser_id": "acme", "calculate_type": "IDFA_SHA256"},
                "credentials": {},
            }
        )
    errors = failure.value.message_dict
    assert errors["settings"] == [
        "calculate_type: use EMAIL_SHA256 or PHONE_SHA256",
        "advertiser_id: a TikTok advertiser id is a number, as TikTok Ads Manager shows it",
    ]
    assert errors["credentials"] == ["access_token: required for tiktok"]


def test_a_sync_names_one_identifier_type_at_most(tiktok, destination):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    with pytest.raises(ValidationError) as failure:
        sync_save(
            data={
                "key": "s1",
                "audience": "flagged",
                "destination": "tiktok",
                "downstream_audience_id": AUDIENCE,
                "match_on": ["EMAIL_SHA256", "PHONE_SHA256"],
            }
        )
    assert failure.value.message_dict["match_on"] == [
        "match_on: TikTok takes one identifier type per audience (the one it was created with): "
        "name one of EMAIL_SHA256, PHONE_SHA256"
    ]
    with pytest.raises(ValidationError) as failure:
        sync_save(data={"key": "s1", "audience": "flagged", "destination": "tiktok", "match_on": ["IDFA_SHA256"]})
    assert failure.value.message_dict["match_on"] == [
        "match_on: 'IDFA_SHA256' is not an identifier TikTok takes; use EMAIL_SHA256, PHONE_SHA256"
    ]


# --- the transport against the contract server ----------------------------------------------


def out_rows(sync, action: str, emails, *, start: int = 1) -> list[OutRow]:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    return [OutRow(start + i, action, sha(e), at, {}, sync, {"EMAIL_SHA256": sha(e)}) for i, e in enumerate(emails)]


def emails(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i}@example.com" for i in range(n)]


def test_a_batch_uploads_a_signed_file_then_appends_it_and_the_report_keeps_the_ids(tiktok, destination):
    sync = flagged_sync()
    rows = out_rows(sync, "enter", emails(1000))
    result = Transport(destination).send(rows, batch_id="b-1", sync=sync)

    assert sorted(result.accepted) == [r.delivery_id for r in rows] and result.rejected == {}
    assert result.requests == 2 and result.status == 200
    assert tiktok.members(AUDIENCE) == {sha(e) for e in emails(1000)}
    (upload,) = tiktok.uploads()
    assert (upload["calculate_type"], upload["rows"], upload["name"]) == ("EMAIL_SHA256", 1000, "downstream-b-1-append.txt")
    (update,) = tiktok.updates(AUDIENCE)
    assert (update["action"], update["file_paths"], update["size_after"]) == ("APPEND", [upload["file_path"]], 1000)
    assert result.report["file_paths"] == [upload["file_path"]]
    assert len(result.report["request_ids"]) == 2 and all(result.report["request_ids"])
    assert result.report["rows_appended"] == 1000
    assert [r["path"] for r in tiktok.request_log()] == [
        "/open_api/v1.3/dmp/custom_audience/file/upload/",
        "/open_api/v1.3/dmp/custom_audience/update/",
    ]


def test_a_mixed_batch_appends_before_it_removes(tiktok, destination):
    sync = flagged_sync()
    tiktok.create_audience(AUDIENCE, members={sha(e) for e in emails(1000)})
    leaving = out_rows(sync, "exit", emails(3), start=1)
    coming = out_rows(sync, "enter", emails(3, prefix="q"), start=10)
    result = Transport(destination).send(leaving + coming, batch_id="b-2", sync=sync)

    # removing first would have taken the audience to 997, which TikTok refuses
    assert [u["action"] for u in tiktok.updates(AUDIENCE)] == ["APPEND", "REMOVE"]
    assert tiktok.members(AUDIENCE) == {sha(e) for e in emails(1000)[3:] + emails(3, prefix="q")}
    assert sorted(result.accepted) == [1, 2, 3, 10, 11, 12] and result.requests == 4
    assert (result.report["rows_appended"], result.report["rows_removed"]) == (3, 3)


def test_the_upload_is_refused_in_a_200_when_its_md5_is_not_the_file_signature(tiktok):
    content = f"{sha('a@example.com')}\n".encode()
    answer = requests.post(
        tiktok.url + "/open_api/v1.3/dmp/custom_audience/file/upload/",
        headers={"Access-Token": TOKEN},
        data={
            "advertiser_id": ADVERTISER,
            "calculate_type": "EMAIL_SHA256",
            "file_signature": hashlib.md5(content + b"x").hexdigest(),
        },
        files={"file": ("a.txt", content, "text/plain")},
        timeout=5,
    )
    assert answer.status_code == 200
    assert answer.json()["code"] == 40900 and "signature" in answer.json()["message"]
    assert tiktok.uploads() == []
    good = requests.post(
        tiktok.url + "/open_api/v1.3/dmp/custom_audience/file/upload/",
        headers={"Access-Token": TOKEN},
        data={"advertiser_id": ADVERTISER, "calculate_type": "EMAIL_SHA256", "file_signature": hashlib.md5(content).hexdigest()},
        files={"file": ("a.txt", content, "text/plain")},
        timeout=5,
    ).json()
    assert good["code"] == 0 and good["data"]["file_path"] == tiktok.uploads()[0]["file_path"]


def failure_of(destination, sync, rows=None) -> TransportError:
    with pytest.raises(TransportError) as failure:
        Transport(destination).send(rows or out_rows(sync, "enter", emails(1000)), batch_id="b-x", sync=sync)
    return failure.value


def test_a_wrong_token_is_a_permanent_error_in_tiktoks_words(tiktok, destination):
    sync = flagged_sync()
    destination.set_credentials({"access_token": "stale-token"})
    error = failure_of(destination, sync)
    assert error.permanent and error.retry_after is None and error.status == 200
    assert (
        "TikTok refused the access token or its permissions: TikTok code 40105 on the APPEND file upload: "
        "Access token is incorrect or has been revoked. (request_id 2025" in str(error)
    )
    assert "stale-token" not in str(error)
    assert tiktok.refused() == {40105: 1} and tiktok.members(AUDIENCE) == set()


@pytest.mark.parametrize(
    ("code", "permanent", "retry_after"),
    [
        (40100, False, 1.0),
        (40133, False, 1.0),
        (40016, False, 1.0),  # rate limits: wait
        (40001, True, None),
        (40102, True, None),
        (40104, True, None),  # the token, its permissions
        (40002, True, None),
        (40006, True, None),  # the request as sent
        (50000, False, None),
        (50002, False, None),  # TikTok's side: retry
    ],
)
def test_each_class_of_code_inside_a_200_is_read(tiktok, destination, code, permanent, retry_after):
    sync = flagged_sync()
    tiktok.answer_codes([code])
    error = failure_of(destination, sync)
    assert (error.permanent, error.retry_after, error.status) == (permanent, retry_after, 200)
    assert f"TikTok code {code} on the APPEND file upload: planned answer {code}" in str(error)
    assert tiktok.members(AUDIENCE) == set()


def test_the_rate_limit_answers_as_tiktok_does_and_is_waited_out(destination, tiktok):
    sync = flagged_sync()
    tiktok.set_rate_limit(1)  # one request, then the bucket is empty for a second
    error = failure_of(destination, sync)
    assert (error.permanent, error.retry_after) == (False, 1.0)
    assert "rate limited: TikTok code 40100 on the APPEND update" in str(error)
    assert [r["fault"] for r in tiktok.request_log()] == [None, "rate_limit"]
    assert [r["status"] for r in tiktok.request_log()] == [200, 200]


# --- the connection test ---------------------------------------------------------------------


def test_the_connection_test_names_the_advertiser_and_counts_its_audiences(tiktok, destination):
    from syncs.wire import check_connection

    assert check_connection(destination) == (
        True,
        (
            f"TikTok accepted the access token for advertiser Downstream Test Advertiser ({ADVERTISER}, STATUS_ENABLE); "
            "it holds 2 custom audiences."
        ),
    )
    log = tiktok.request_log()
    assert [(r["method"], r["path"]) for r in log] == [
        ("GET", "/open_api/v1.3/advertiser/info/"),
        ("GET", "/open_api/v1.3/dmp/custom_audience/list/"),
    ]
    assert parse_qs(log[0]["query"]) == {
        "advertiser_ids": [f'["{ADVERTISER}"]'],
        "fields": ['["advertiser_id", "name", "status"]'],
    }
    assert log[1]["query"] == f"advertiser_id={ADVERTISER}&page=1&page_size=1"
    assert all(TOKEN not in r["path"] + r["query"] for r in log)  # the Access-Token header, never the URL
    assert tiktok.uploads() == [] and tiktok.updates() == []  # it reads, uploads nothing

    tiktok.advertiser_status = "STATUS_DISABLE"
    reached, said = check_connection(destination)
    assert reached and said.endswith(
        f"({ADVERTISER}, STATUS_DISABLE); it holds 2 custom audiences. TikTok marks the ad account STATUS_DISABLE, "
        "not STATUS_ENABLE: its ads may not serve."
    )


@pytest.mark.parametrize(
    ("arrange", "expected"),
    [
        (
            lambda t, d: d.set_credentials({"access_token": "stale-token"}),
            "TikTok refused the access token or its permissions: TikTok code 40105 on the advertiser look-up: "
            "Access token is incorrect or has been revoked. (request_id 2025",
        ),
        (
            lambda t, d: setattr(t, "advertiser_id", "7099999999999999999"),
            f"TikTok refused the access token or its permissions: TikTok code 40001 on the advertiser look-up: "
            f"No permission to operate advertiser {ADVERTISER}. (request_id 2025",
        ),
        (
            lambda t, d: t.answer_codes([0, 40001]),  # the advertiser is the token's, its audiences are not
            "TikTok refused the access token or its permissions: TikTok code 40001 on the custom audience list: "
            "planned answer 40001 (request_id 2025",
        ),
    ],
)
def test_a_failed_connection_test_says_what_tiktok_answered_and_never_the_token(tiktok, destination, arrange, expected):
    from syncs.wire import check_connection

    arrange(tiktok, destination)
    reached, said = check_connection(destination)
    assert not reached and said.startswith(expected)
    assert TOKEN not in said and "stale-token" not in said
    assert all(r["status"] == 200 for r in tiktok.request_log())  # TikTok's errors come inside a 200


def test_the_connection_test_blanks_the_token_out_were_tiktok_to_quote_it(tiktok, destination):
    from syncs.wire import check_connection

    tiktok.advertiser_name = f"Shop {TOKEN}"
    reached, said = check_connection(destination)
    assert reached and TOKEN not in said and "advertiser Shop •••• (" in said


def test_an_unknown_audience_and_an_audience_left_under_the_minimum_are_refused(tiktok, destination):
    sync = flagged_sync()
    sync.downstream_audience_id = "1899999999999999"
    error = failure_of(destination, sync)
    assert error.permanent
    assert "TikTok code 40007 on the APPEND update: The custom audience 1899999999999999 does not exist" in str(error)

    sync.downstream_audience_id = AUDIENCE
    error = failure_of(destination, sync, out_rows(sync, "enter", emails(999)))
    assert error.permanent and "TikTok code 40002 on the APPEND update: The audience size will be less than 1000" in str(error)
    assert tiktok.members(AUDIENCE) == set()


def test_a_sync_whose_audience_id_is_no_tiktok_id_fails_before_sending(tiktok, destination):
    sync = flagged_sync(downstream_audience_id="")  # defaults to the audience key, "flagged"
    error = failure_of(destination, sync)
    assert error.permanent and "'flagged' is not a TikTok custom_audience_id" in str(error)
    assert tiktok.request_log() == []


def test_a_removal_refused_after_the_additions_went_says_they_may_have_arrived(tiktok, destination):
    sync = flagged_sync()
    tiktok.create_audience(AUDIENCE, members={sha(e) for e in emails(1000)})
    rows = out_rows(sync, "enter", emails(2, prefix="q"), start=10) + out_rows(sync, "exit", emails(5), start=1)
    # 1,000 + 2 - 5 is under TikTok's minimum: the removal is refused once the additions went
    error = failure_of(destination, sync, rows)
    assert error.permanent and error.may_have_arrived
    assert "TikTok code 40002 on the REMOVE update" in str(error)
    assert [u["action"] for u in tiktok.updates(AUDIENCE)] == ["APPEND"]
    assert len(tiktok.members(AUDIENCE)) == 1002

    tiktok.answer_codes([0, 0, 50002])  # the APPEND goes again (it adds nobody twice); TikTok fails the next upload
    error = failure_of(destination, sync, rows[:2] + rows[2:4])
    assert not error.permanent and error.may_have_arrived and "TikTok code 50002 on the REMOVE file upload" in str(error)
    assert len(tiktok.members(AUDIENCE)) == 1002


def test_read_back_is_tiktoks_matched_size(tiktok, destination):
    sync = flagged_sync()
    tiktok.create_audience(AUDIENCE, name="Flagged", members={sha(e) for e in emails(1200)})
    tiktok.known = {sha(e) for e in emails(1100)}
    back = Transport(destination).read_back(sync)
    assert back == ReadBack(size=1100, match_rate=None, detail="TikTok audience Flagged: 1,100 people matched")
    tiktok.known = {sha(e) for e in emails(10)}
    assert Transport(destination).read_back(sync).detail == (
        "TikTok audience Flagged: 10 people matched; TikTok marks it not usable yet (still matching, or under 1,000 "
        "people matched)"
    )
    sync.downstream_audience_id = "1899999999999999"
    with pytest.raises(TransportError, match="TikTok code 40007 on the audience look-up"):
        Transport(destination).read_back(sync)


# --- end to end: services, outbox, sender, TikTok ---------------------------------------------


def a_thousand_and_three_in(source, tiktok, destination, **extra):
    sync = flagged_sync(**extra)
    store("p", 1003)
    evaluate_all()
    deliver(destination)
    assert tiktok.members(AUDIENCE) == downstream_hashes("flagged") and len(tiktok.members(AUDIENCE)) == 1003
    return sync


def test_people_enter_and_leave_and_tiktok_ends_with_downstreams_members(source, tiktok, destination):
    sync = a_thousand_and_three_in(source, tiktok, destination)
    (upload,) = tiktok.uploads()
    assert upload["rows"] == 1003  # one file of the whole first batch
    assert set(Delivery.objects.filter(sync=sync).values_list("state", flat=True)) == {Delivery.SENT}

    identify_all(source, people("q", 10))
    leave(source, ["p0", "p1", "p2"])
    evaluate_all()
    deliver(destination)
    assert tiktok.members(AUDIENCE) == downstream_hashes("flagged")
    assert len(tiktok.members(AUDIENCE)) == 1010
    run = sync.runs.order_by("-started_at").first()
    assert run.details["rows_removed"] == 3 and run.details["rows_appended"] == 10
    assert len(run.details["file_paths"]) == 2 and len(run.details["request_ids"]) == 4
    assert not RemovalHold.objects.exists() and not Alert.objects.exists()


def test_the_upload_and_its_update_each_count_against_the_destinations_rate_limit(source, tiktok, destination):
    """A batch is two requests to TikTok: the sender's gate paces the second as well, so that a
    destination set to 4 requests/s never sends its update right on the heels of its upload."""
    Destination.objects.filter(pk=destination.pk).update(rate_limit_per_s=4.0)
    tiktok.minimum = 0
    flagged_sync()
    store("r", 5)
    evaluate_all()
    deliver(destination)
    log = tiktok.request_log()
    assert [r["path"].rsplit("/", 2)[-2] for r in log] == ["upload", "update"]
    # one interval between the two tickets; the upload's larger body may take longer on its way
    # than the update's, so its arrival is later by that much (unpaced, they came 12 ms apart)
    assert log[1]["received_at"] - log[0]["received_at"] >= 0.15
    assert len(tiktok.members(AUDIENCE)) == 5


def test_a_person_without_the_uploaded_identifier_is_skipped_with_the_reason(source, destination, tiktok):
    tiktok.minimum = 0
    sync = flagged_sync()
    identify_all(source, {"p0": {"flag": True, "email": "P0@Example.com"}, "p1": {"flag": True, "phone": "+442071838750"}})
    evaluate_all()
    deliver(destination)
    assert tiktok.members(AUDIENCE) == {sha("p0@example.com")}
    skipped = Delivery.objects.get(sync=sync, customer_id="p1")
    assert skipped.state == Delivery.SKIPPED
    assert skipped.last_error == "none of the identifiers TikTok matches on (email (EMAIL_SHA256)) is valid for this person"


def test_a_phone_sync_uploads_phone_hashes_to_a_phone_audience(source, destination, tiktok):
    tiktok.minimum = 0
    flagged_sync(downstream_audience_id=PHONES, match_on=["PHONE_SHA256"])
    identify_all(
        source,
        {
            "p0": {"flag": True, "phone": "+44 20 7183 8750", "email": "p0@example.com"},
            "p1": {"flag": True, "phone": "(657) 777-0000"},
        },
    )
    evaluate_all()
    deliver(destination)
    assert tiktok.members(PHONES) == {sha("+442071838750"), sha("+16577770000")}
    assert [u["calculate_type"] for u in tiktok.uploads()] == ["PHONE_SHA256"]


def test_removals_that_would_go_under_1000_are_held_and_alerted_then_go_when_it_grows_back(source, tiktok, destination):
    sync = a_thousand_and_three_in(source, tiktok, destination)
    leave(source, ["p0", "p1", "p2", "p3", "p4"])
    evaluate_all()
    # three may go (1,003 → 1,000); the two after them would take TikTok's audience under 1,000
    hold = RemovalHold.objects.get(sync=sync)
    assert (hold.decision, hold.removals) == (RemovalHold.PENDING, 2)
    assert hold.reason.startswith("under the platform's minimum: TikTok needs at least 1,000 people in an audience")
    assert sorted(Delivery.objects.filter(sync=sync, state=Delivery.HELD, hold=hold).values_list("customer_id", flat=True)) == [
        "p3",
        "p4",
    ]
    alert = Alert.objects.get(kind=Alert.UNDER_MINIMUM)
    assert (
        alert.is_open
        and alert.sync == sync
        and alert.details == {"hold": hold.pk, "removals": 2, "minimum": 1000, "downstream": 1000}
    )
    assert alert.message == (
        "flagged-tiktok: 2 removals held, as TikTok needs at least 1,000 people in an audience and sending them would "
        "leave fewer in Flagged's (about 1,000 there by Downstream's count). They go by themselves once it is back over "
        "1,000; discard them on the sync page to keep those people downstream."
    )
    deliver(destination)
    assert len(tiktok.members(AUDIENCE)) == 1000 and tiktok.refused() == {}
    assert sha("p3@example.com") in tiktok.members(AUDIENCE)

    identify_all(source, people("q", 4))
    evaluate_all()
    # the four entries have not gone yet: the removals wait for them
    assert Delivery.objects.filter(sync=sync, state=Delivery.HELD).count() == 2
    deliver(destination)
    # once TikTok acknowledged them, the held removals went in the same run
    assert tiktok.members(AUDIENCE) == downstream_hashes("flagged") and len(tiktok.members(AUDIENCE)) == 1002
    assert [u["action"] for u in tiktok.updates(AUDIENCE)][-2:] == ["APPEND", "REMOVE"]
    assert (
        Delivery.objects.filter(sync=sync, customer_id__in=["p3", "p4"], action=Delivery.EXIT, state=Delivery.SENT).count() == 2
    )
    alert.refresh_from_db()
    hold.refresh_from_db()
    assert alert.resolved_at is not None and hold.decision == RemovalHold.APPROVED
    assert alert.details["resolution"] == "Flagged is back over TikTok's minimum of 1,000: the 2 removals still held went out."
    assert tiktok.refused() == {}


def test_someone_back_before_their_held_removal_went_is_neither_removed_nor_added_again(source, tiktok, destination):
    sync = a_thousand_and_three_in(source, tiktok, destination)
    leave(source, ["p0", "p1", "p2", "p3", "p4"])
    evaluate_all()
    deliver(destination)
    identify_all(source, {"p3": {"flag": True}, "p4": {"flag": True}})
    evaluate_all()

    assert [(d.action, d.state, d.last_error) for d in Delivery.objects.filter(sync=sync, customer_id="p4").order_by("id")] == [
        ("enter", Delivery.SENT, ""),
        ("exit", Delivery.CANCELLED, CAME_BACK),
    ]
    alert = Alert.objects.get(kind=Alert.UNDER_MINIMUM)
    assert alert.resolved_at is not None
    assert alert.details["resolution"] == "Everyone whose removal was held came back into Flagged: nothing is left to remove."
    requests_before = len(tiktok.request_log())
    deliver(destination)
    assert len(tiktok.request_log()) == requests_before
    assert tiktok.members(AUDIENCE) == downstream_hashes("flagged")


def test_held_removals_discarded_on_the_sync_page_never_go(source, tiktok, destination):
    sync = a_thousand_and_three_in(source, tiktok, destination)
    leave(source, ["p0", "p1", "p2", "p3", "p4"])
    evaluate_all()
    hold = RemovalHold.objects.get(sync=sync)
    assert hold_decide(hold=hold, approve=False) == 2
    identify_all(source, people("q", 10))
    evaluate_all()
    deliver(destination)
    # the three that could go went; the two discarded stay at TikTok
    assert tiktok.members(AUDIENCE) == downstream_hashes("flagged") | {sha("p3@example.com"), sha("p4@example.com")}
    assert len(tiktok.members(AUDIENCE)) == 1010
    alert = Alert.objects.get(kind=Alert.UNDER_MINIMUM)
    assert alert.details["resolution"] == "A person discarded the held removals on the sync page."


def test_an_additive_only_sync_never_removes_anyone_from_tiktok(source, tiktok, destination):
    sync = a_thousand_and_three_in(source, tiktok, destination, additive_only=True)
    # 40 % leave: no mass removal to hold either, as nothing will be removed
    Person.objects.filter(customer_id__in=[f"p{i}" for i in range(400)]).update(attributes={"flag": False})
    evaluate_all()
    deliver(destination)
    assert len(tiktok.members(AUDIENCE)) == 1003
    assert [u["action"] for u in tiktok.updates(AUDIENCE)] == ["APPEND"]
    exits = Delivery.objects.filter(sync=sync, action=Delivery.EXIT)
    assert exits.count() == 400 and set(exits.values_list("state", "last_error")) == {(Delivery.SKIPPED, ADDITIVE_ONLY)}
    assert not RemovalHold.objects.exists() and not Alert.objects.exists()


README_EXAMPLE = """\
destinations:
  - key: tiktok
    name: TikTok
    kind: tiktok
    settings: {advertiser_id: "7012345678901234567", calculate_type: EMAIL_SHA256}
    credentials: {access_token: env:TIKTOK_ACCESS_TOKEN}
syncs:
  - key: carts-to-tiktok
    audience: flagged
    destination: tiktok
    downstream_audience_id: "1800000000000001"   # the custom_audience_id in TikTok Ads Manager
  - key: buyers-seed-to-tiktok
    audience: flagged
    destination: tiktok
    downstream_audience_id: "1800000000000002"   # a PHONE_SHA256 audience
    match_on: [PHONE_SHA256]
    additive_only: true                          # a lookalike seed: never remove anyone
"""


def test_the_readme_config_example_applies_and_exports_unchanged(tiktok_kind, monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOK_ACCESS_TOKEN", TOKEN)
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    path = tmp_path / "tiktok.yaml"
    path.write_text(README_EXAMPLE)
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    destination = Destination.objects.get(key="tiktok")
    assert (destination.kind, destination.rate_limit_per_s, destination.batch_size) == ("tiktok", 2.0, 500)
    assert destination.credentials == {"access_token": TOKEN}
    seed = Sync.objects.get(key="buyers-seed-to-tiktok")
    assert (seed.match_on, seed.additive_only, calculate_type_for(seed)) == (["PHONE_SHA256"], True, "PHONE_SHA256")
    assert calculate_type_for(Sync.objects.get(key="carts-to-tiktok")) == "EMAIL_SHA256"

    out = StringIO()
    call_command("export_config", stdout=out)
    exported = yaml.safe_load(out.getvalue())
    (item,) = [d for d in exported["destinations"] if d["key"] == "tiktok"]
    assert item["credentials"] == {"access_token": "env:TIKTOK_ACCESS_TOKEN"} and TOKEN not in out.getvalue()
    again = tmp_path / "again.yaml"
    again.write_text(out.getvalue())
    plan = StringIO()
    call_command("apply_config", str(again), "--check", stdout=plan, stderr=StringIO())
    assert "tiktok" not in plan.getvalue()
