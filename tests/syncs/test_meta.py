"""Meta Custom Audiences: the match keys as Meta normalises them, the transport against the Meta
contract server (adds, removes, the 10,000-row split, every error code), the whole path from
ingest through the outbox and the sender to Meta's membership, the full replace that repairs
drift, and the read-back that stores Meta's count and opens and resolves its alerts."""

import hashlib
import itertools
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Membership, Person
from audiences.services import audience_save
from syncs.delivery import deliver_destination
from syncs.destinations import OutRow, TransportError, registry
from syncs.destinations import meta as meta_kind
from syncs.destinations.meta import identifiers
from syncs.destinations.meta.reconcile import ReconcileRefused, _lookahead, reconcile, reconcile_due
from syncs.destinations.meta.transport import Transport
from syncs.models import Alert, Delivery, DeliveryBatch, Destination, RemovalHold, Sync, SyncRun
from syncs.monitoring import check_alerts
from syncs.payload import payload_for
from syncs.readback import downstream_members, read_back_syncs
from syncs.services import destination_save, sync_save
from tests.contract_servers.meta import MetaServer

pytestmark = pytest.mark.django_db

TOKEN = "meta-system-user-token"
AUDIENCE_ID = "23850000000000001"
MESSAGE_IDS = itertools.count()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- match keys, normalised as Meta's Custom Audiences guide asks ------------------------------

NORMALISATION = [
    # (key, raw value, normalised)
    ("EMAIL", "  John_Smith@Gmail.COM ", "john_smith@gmail.com"),
    ("EMAIL", "not an email", None),
    ("PHONE", "+16505551212", "16505551212"),
    ("PHONE", "+44 20 7946 0958", "442079460958"),
    ("PHONE", "1(650)555-1212", "16505551212"),  # Meta's example: symbols and letters go, the country code stays
    ("PHONE", "0044 20 7946 0958", "442079460958"),  # leading zeros go
    ("PHONE", "+1 555", None),
    ("FN", "Mary", "mary"),
    ("FN", "Valéry", "valéry"),  # special characters stay, in UTF-8
    ("FN", "  Jean-Luc ", "jeanluc"),
    ("LN", "O'Brien", "obrien"),
    ("LN", 42, None),
    ("CT", "Menlo Park", "menlopark"),
    ("CT", "São Paulo", "saopaulo"),
    ("ST", "AZ", "az"),
    ("ST", "California", "ca"),
    ("ST", "New York", "ny"),
    ("ST", "Île-de-France", "iledefrance"),
    ("ZIP", "94025", "94025"),
    ("ZIP", "94025-1234", "94025"),  # US: the first 5 digits
    ("ZIP", "SW1A 1AA", "sw1a1aa"),  # UK: lower case, no white space
    ("ZIP", 2134, "02134"),
    ("COUNTRY", "US", "us"),
    ("COUNTRY", " gb ", "gb"),
    ("COUNTRY", "USA", None),
    ("COUNTRY", "xx", None),
    ("EXTERN_ID", " cus_00042 ", "cus_00042"),
]


@pytest.mark.parametrize("key, raw, expected", NORMALISATION)
def test_each_match_key_normalises_as_meta_documents(key, raw, expected):
    assert meta_kind.SPEC.match_key(key).normalize(raw) == expected


def test_hashed_keys_are_the_lower_case_sha256_hex_of_the_normalised_value_and_extern_id_is_plain():
    person = Person(
        customer_id="cus_1",
        email=" Ann@Example.com",
        phone_e164="+16505551212",
        attributes={"first_name": "ABC", "last_name": "Lee", "country": "US"},
    )
    sent = meta_kind.SPEC.identifiers_for(Sync(match_on=[]), person)
    # FIPS 180-2's test vector: SHA-256("abc")
    assert sent["FN"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sent == {
        "EMAIL": sha("ann@example.com"),
        "PHONE": sha("16505551212"),
        "FN": sent["FN"],
        "LN": sha("lee"),
        "COUNTRY": sha("us"),
        "EXTERN_ID": "cus_1",
    }
    assert list(sent) == ["EMAIL", "PHONE", "FN", "LN", "COUNTRY", "EXTERN_ID"]  # the kind's order
    assert meta_kind.SPEC.identifiers_for(Sync(match_on=["EMAIL"]), person) == {"EMAIL": sha("ann@example.com")}


def test_the_spec():
    spec = meta_kind.SPEC
    assert (spec.kind, spec.label, spec.max_batch, spec.min_audience_size, spec.modes, spec.removes) == (
        "meta",
        "Meta Custom Audiences",
        10_000,
        100,
        ("membership",),
        True,
    )
    assert spec.setting("base_url").default == "https://graph.facebook.com" and spec.setting("base_url").endpoint
    assert [c.name for c in spec.credentials] == ["access_token"]
    assert [k.name for k in spec.match_keys] == ["EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "EXTERN_ID"]
    assert [k.name for k in spec.match_keys if not k.hashed] == ["EXTERN_ID"]
    assert identifiers.MATCH_KEYS is spec.match_keys


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def meta_registered(monkeypatch):
    """The kind as the registry lists it (also before its line is in KINDS)."""
    monkeypatch.setitem(registry.KINDS, "meta", meta_kind.SPEC)


@pytest.fixture
def meta():
    with MetaServer(TOKEN, audiences=(AUDIENCE_ID,)) as server:
        yield server
        assert server.server_errors == []


@pytest.fixture
def meta_destination(meta, monkeypatch):
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    return destination_save(
        data={
            "key": "meta",
            "name": "Meta",
            "kind": "meta",
            "settings": {"base_url": meta.url, "api_version": "v21.0"},
            "credentials": {"access_token": "env:META_ACCESS_TOKEN"},
            "timeout_s": 2.0,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.2,
            "rate_limit_per_s": 200,
        }
    )


def identify_many(source, people: dict[str, dict]):
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("identify", customer_id, f"identify-{next(MESSAGE_IDS)}", now, traits=traits)
            for customer_id, traits in people.items()
        ],
    )


def person_traits(i: int, **extra) -> dict:
    return {
        "flag": True,
        "email": f"  Person{i}@Example.com ",
        "phone": f"+1 650 253 {1000 + i:04d}",
        "first_name": f"Ann{'é' if i % 2 else ''}",
        "last_name": "O'Neil",
        "city": "Menlo Park",
        "state": "CA",
        "zip": "94025-1234",
        "country": "US",
        **extra,
    }


@pytest.fixture
def flagged(meta_destination):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    return sync_save(
        data={"key": "flagged-meta", "audience": "flagged", "destination": "meta", "downstream_audience_id": AUDIENCE_ID}
    )


def key_tuples(sync, people) -> set[tuple]:
    """People as Meta should hold them: each one's sorted (key, value) pairs."""
    return {tuple(sorted(meta_kind.SPEC.identifiers_for(sync, p).items())) for p in people}


def expected_members(sync) -> set[tuple]:
    """Downstream's members of the sync, as Meta should hold them."""
    sync.refresh_from_db()
    return key_tuples(sync, Person.objects.filter(memberships__audience=sync.audience, memberships__exited_at__isnull=True))


def rows_of(sync, action="enter", customer_ids=None) -> list[OutRow]:
    people = Person.objects.order_by("pk")
    if customer_ids is not None:
        people = people.filter(customer_id__in=customer_ids)
    rows = []
    for number, person in enumerate(people):
        payload = payload_for(sync, person)
        rows.append(
            OutRow(number, action, payload["identifier"], timezone.now(), payload["fields"], sync, payload["identifiers"])
        )
    return rows


def set_destination(destination, **fields):
    Destination.objects.filter(pk=destination.pk).update(**fields)
    destination.refresh_from_db()


# --- the destination and the sync -------------------------------------------------------------


def test_destination_save_checks_the_api_version_and_wants_a_token():
    with pytest.raises(ValidationError) as failure:
        destination_save(data={"key": "m", "kind": "meta", "settings": {"api_version": "21"}})
    errors = failure.value.message_dict
    assert errors["settings"] == ["api_version: '21' is not a Graph API version such as v21.0"]
    assert errors["credentials"] == ["access_token: required for meta"]


def test_a_new_meta_destination_starts_from_the_kind_defaults(meta_destination):
    assert meta_destination.rate_limit_per_s == 200  # as given
    fresh = destination_save(data={"key": "meta2", "kind": "meta", "credentials": {"access_token": "env:META_ACCESS_TOKEN"}})
    assert (fresh.rate_limit_per_s, fresh.get_kind_display()) == (5.0, "Meta Custom Audiences")
    assert Transport(fresh).url("123", "users") == "https://graph.facebook.com/v21.0/123/users"


def test_match_on_names_only_meta_keys(flagged):
    sync_save(data={"match_on": ["EMAIL", "PHONE"]}, instance=flagged)
    with pytest.raises(ValidationError) as failure:
        sync_save(data={"match_on": ["email_sha256"]}, instance=flagged)
    assert failure.value.message_dict["match_on"] == [
        "match_on: 'email_sha256' is not an identifier Meta Custom Audiences takes; use EMAIL, PHONE, FN, LN, CT, ST, ZIP, "
        "COUNTRY, EXTERN_ID"
    ]


# --- the transport against the contract server -----------------------------------------------


def test_adds_and_removes_go_to_the_users_edge_with_the_keys_present_in_schema_order(source, meta, flagged):
    identify_many(source, {"p0": person_traits(0), "p1": {"flag": True, "email": "b@example.com"}})
    transport = Transport(flagged.destination)
    result = transport.send(rows_of(flagged), batch_id="b1", sync=flagged)

    assert (result.requests, result.status, sorted(result.accepted)) == (1, 200, [0, 1])
    assert [(r["method"], r["path"], r["rows"]) for r in meta.request_log()] == [("POST", f"/v21.0/{AUDIENCE_ID}/users", 2)]
    assert meta.members(AUDIENCE_ID) == key_tuples(flagged, Person.objects.all())
    assert (("EMAIL", sha("b@example.com")), ("EXTERN_ID", "p1")) in meta.members(AUDIENCE_ID)
    assert result.report["num_received"] == 2 and result.report["num_invalid_entries"] == 0
    assert (result.report["rows"], result.report["rows_with_email"], result.report["rows_with_phone"]) == (2, 2, 1)

    result = transport.send(rows_of(flagged, "exit", ["p0"]), batch_id="b2", sync=flagged)
    assert meta.request_log()[-1]["method"] == "DELETE"
    assert meta.members(AUDIENCE_ID) == {(("EMAIL", sha("b@example.com")), ("EXTERN_ID", "p1"))}


def test_a_batch_with_entries_and_exits_sends_removals_first_then_additions(source, meta, flagged):
    identify_many(source, {f"p{i}": person_traits(i) for i in range(4)})
    transport = Transport(flagged.destination)
    transport.send(rows_of(flagged, customer_ids=["p0", "p1"]), batch_id="b0", sync=flagged)
    mixed = rows_of(flagged, "exit", ["p0"]) + rows_of(flagged, "enter", ["p2", "p3"])
    result = transport.send(mixed, batch_id="b1", sync=flagged)
    assert [(r["method"], r["rows"]) for r in meta.request_log()[1:]] == [("DELETE", 1), ("POST", 2)]
    assert result.requests == 2 and result.report["num_received"] == 3 and result.report["rows"] == 3
    assert {dict(m)["EXTERN_ID"] for m in meta.members(AUDIENCE_ID)} == {"p1", "p2", "p3"}


def test_more_than_ten_thousand_rows_are_split_into_requests_of_at_most_ten_thousand(meta, flagged):
    now = timezone.now()
    rows = [
        OutRow(i, "enter", f"c{i}", now, {}, flagged, {"EMAIL": sha(f"p{i}@x.com"), "EXTERN_ID": f"c{i}"}) for i in range(20_001)
    ]
    result = Transport(flagged.destination).send(rows, batch_id="big", sync=flagged)
    assert [r["rows"] for r in meta.request_log()] == [10_000, 10_000, 1]
    assert result.requests == 3 and len(result.accepted) == 20_001 and result.report["num_received"] == 20_001
    assert len(meta.members(AUDIENCE_ID)) == 20_001


def test_the_token_travels_in_a_header_never_in_a_url(source, meta, flagged):
    identify_many(source, {"p0": person_traits(0)})
    transport = Transport(flagged.destination)
    transport.send(rows_of(flagged), batch_id="b", sync=flagged)
    transport.read_back(flagged)
    assert meta.request_log() and all(TOKEN not in (r["path"] + r["query"]) for r in meta.request_log())


# --- the connection test ---------------------------------------------------------------------


def test_the_connection_test_names_the_tokens_user_and_the_ad_accounts_it_reaches(meta, meta_destination):
    from syncs.wire import check_connection

    assert check_connection(meta_destination) == (
        True,
        (
            "Meta accepted the access token for Downstream Sync (id 61550000000000001); it reaches ad account act_1000 "
            "(Downstream Ads, active)."
        ),
    )
    assert [(r["method"], r["path"]) for r in meta.request_log()] == [("GET", "/v21.0/me"), ("GET", "/v21.0/me/adaccounts")]
    assert [r["query"] for r in meta.request_log()] == ["fields=id%2Cname", "fields=account_id%2Cname%2Caccount_status&limit=25"]
    assert all(TOKEN not in r["path"] + r["query"] for r in meta.request_log())  # a header, never the URL
    assert meta.counters()["rows_added"] == meta.counters()["rows_removed"] == 0  # it reads, writes nothing

    meta.ad_accounts.append(
        {"id": "act_2000", "account_id": "2000", "name": "Old brand", "account_status": 101, "currency": "EUR"}
    )
    reached, said = check_connection(meta_destination)
    assert reached and said.endswith("it reaches 2 ad accounts: act_1000 (Downstream Ads, active), act_2000 (Old brand, closed).")

    # more than one page: the first few are named and the count says there are more
    meta.ad_accounts = [
        {"id": f"act_{n}", "account_id": str(n), "name": f"Brand {n}", "account_status": 1, "currency": "USD"}
        for n in range(1, 31)
    ]
    reached, said = check_connection(meta_destination)
    assert reached and said.endswith(
        "it reaches 25+ ad accounts: act_1 (Brand 1, active), act_2 (Brand 2, active), "
        "act_3 (Brand 3, active), act_4 (Brand 4, active), act_5 (Brand 5, active), …."
    )


CONNECTION_FAILURES = [
    # (what the server does, our advice, Meta's words and code)
    (
        lambda m: setattr(m, "token", "another-token"),
        "Meta refused the access token",
        '"Invalid OAuth access token - Cannot parse access token" (code 190, fbtrace_id',
    ),
    (lambda m: m.revoked.add(TOKEN), "Create a new token", "The session has been invalidated"),
    (
        lambda m: setattr(m, "ads_permission", False),
        "Meta refused permission",
        '"(#200) Requires ads_management or ads_read permission to read the ad accounts" (code 200, fbtrace_id',
    ),
    (
        lambda m: setattr(m, "ad_accounts", []),
        "Meta accepted the access token for Downstream Sync (id 61550000000000001), "
        "but it reaches no ad account: give the token's system user access to the ad account",
        "Assign assets",
    ),
]


@pytest.mark.parametrize("arrange, ours, theirs", CONNECTION_FAILURES)
def test_a_failed_connection_test_says_what_meta_answered_and_never_the_token(meta, meta_destination, arrange, ours, theirs):
    from syncs.wire import check_connection

    arrange(meta)
    reached, said = check_connection(meta_destination)
    assert not reached
    assert ours in said and theirs in said
    assert TOKEN not in said and "meta-system-user" not in said


def test_the_connection_test_blanks_the_token_out_were_meta_to_quote_it(meta, meta_destination):
    from syncs.wire import check_connection

    meta.user["name"] = f"user of {TOKEN}"
    reached, said = check_connection(meta_destination)
    assert reached and TOKEN not in said and "for user of •••• (id 61550000000000001)" in said
    meta.ad_accounts = []
    reached, said = check_connection(meta_destination)
    assert not reached and TOKEN not in said and "for user of •••• (id" in said


def test_an_audience_id_that_is_not_a_number_is_refused_before_anything_leaves(source, meta, flagged):
    identify_many(source, {"p0": person_traits(0)})
    sync_save(data={"downstream_audience_id": ""}, instance=flagged)  # falls back to the audience key
    with pytest.raises(TransportError) as failure:
        Transport(flagged.destination).send(rows_of(flagged), batch_id="b", sync=flagged)
    assert failure.value.permanent
    assert str(failure.value).startswith("'flagged' is not a Meta custom audience id: set the sync's downstream audience id")
    assert meta.request_log() == []


def break_token(meta):
    meta.revoked.add(TOKEN)


ERRORS = [
    # (what the server or the sync does, permanent, retry_after, words in our message, Meta's words)
    (lambda m, s: break_token(m), True, None, "Meta refused the access token", "Error validating access token"),
    (lambda m, s: setattr(m, "token", "another-token"), True, None, "Create a new token", "Invalid OAuth access token"),
    (lambda m, s: m.forbidden.add(AUDIENCE_ID), True, None, "Meta refused permission for custom audience", "can not update"),
    (lambda m, s: m.fail_next(), False, None, "could not update custom audience", "Failed to update the custom audience"),
    (
        lambda m, s: m.fail_next(code=100, message="(#100) Invalid parameter"),
        True,
        None,
        "is a customer-list custom audience",
        "Invalid parameter",
    ),
    (
        lambda m, s: m.fail_next(code=2, message="Service temporarily unavailable", transient=True),
        False,
        None,
        "temporary failure",
        "Service temporarily unavailable",
    ),
    (
        lambda m, s: m.fail_next(code=31337, message="Something Meta never documented"),
        True,
        None,
        "Meta refused the request",
        "Something Meta never documented",
    ),
    (
        lambda m, s: sync_save(data={"downstream_audience_id": "999"}, instance=s),
        True,
        None,
        "downstream audience id (999)",
        "does not exist",
    ),
]


@pytest.mark.parametrize("arrange, permanent, retry_after, ours, theirs", ERRORS)
def test_each_meta_error_maps_to_what_an_on_call_engineer_should_do(
    source, meta, flagged, arrange, permanent, retry_after, ours, theirs
):
    identify_many(source, {"p0": person_traits(0)})
    arrange(meta, flagged)
    with pytest.raises(TransportError) as failure:
        Transport(flagged.destination).send(rows_of(flagged), batch_id="b", sync=flagged)
    error = failure.value
    assert (error.permanent, error.retry_after) == (permanent, retry_after)
    assert ours in str(error) and theirs in str(error) and "fbtrace_id" in str(error)
    assert error.status is not None
    assert meta.members(AUDIENCE_ID) == set()


@pytest.mark.parametrize("code", [80003, 17, 4, 32, 613])
def test_throttles_wait_the_minutes_meta_names(source, flagged, code):
    identify_many(source, {"p0": person_traits(0)})
    with MetaServer(TOKEN, audiences=(AUDIENCE_ID,), rate_limit_per_s=1, rate_limit_code=code) as server:
        set_destination(flagged.destination, settings={"base_url": server.url})
        transport = Transport(flagged.destination)
        transport.send(rows_of(flagged), batch_id="b1", sync=flagged)  # spends the bucket's one token
        with pytest.raises(TransportError) as failure:
            transport.send(rows_of(flagged, "exit"), batch_id="b2", sync=flagged)
    assert not failure.value.permanent
    assert failure.value.retry_after == 60.0  # estimated_time_to_regain_access: 1 minute
    assert f"code {code}" in str(failure.value) and "throttling" in str(failure.value)


def test_an_injected_server_error_and_a_proxy_429_are_retried(source, meta, flagged):
    identify_many(source, {"p0": person_traits(0)})
    transport = Transport(flagged.destination)
    meta.faults.update(rate=1.0, kinds=["500"])
    with pytest.raises(TransportError) as failure:
        transport.send(rows_of(flagged), batch_id="b", sync=flagged)
    assert not failure.value.permanent and "temporary failure" in str(failure.value)
    meta.faults.update(kinds=["429"], retry_after=3)
    with pytest.raises(TransportError) as failure:
        transport.send(rows_of(flagged), batch_id="b", sync=flagged)
    assert (failure.value.permanent, failure.value.retry_after) == (False, 3.0)


# --- end to end: ingest → evaluation → outbox → sender → Meta --------------------------------


FILLER = {f"f{i:03d}": {"flag": True, "email": f"f{i}@example.com"} for i in range(100)}  # over Meta's minimum of 100


def test_people_entering_and_leaving_end_up_at_meta_exactly_as_downstream_has_them(source, meta, flagged):
    identify_many(source, FILLER | {f"p{i}": person_traits(i) for i in range(6)} | {"bare": {"flag": True}})
    evaluate_all()
    summary = deliver_destination(flagged.destination_id)
    assert summary.sent == 107
    assert meta.members(AUDIENCE_ID) == expected_members(flagged)
    assert len(meta.members(AUDIENCE_ID)) == 107

    # two leave, one changes email, one comes in
    identify_many(source, {"p0": {"flag": False}, "p1": {"flag": False}, "p9": person_traits(9)})
    identify_many(source, {"p2": {"email": "new.address@example.com"}})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    members = meta.members(AUDIENCE_ID)
    assert {dict(m)["EXTERN_ID"] for m in members} - set(FILLER) == {"p2", "p3", "p4", "p5", "bare", "p9"}
    assert (("EXTERN_ID", "bare"),) in members  # a person with nothing but a customer id
    # p2's entry went with the old email: Meta has that one until the next full replace
    differ = members ^ expected_members(flagged)
    assert {dict(m)["EXTERN_ID"] for m in differ} == {"p2"}
    assert {dict(m)["EMAIL"] for m in differ & members} == {sha("person2@example.com")}

    # what Meta said is on the runs
    runs = SyncRun.objects.filter(sync=flagged).order_by("started_at")
    assert [r.status for r in runs] == [SyncRun.SUCCEEDED, SyncRun.SUCCEEDED]
    first, second = (r.details for r in runs)
    assert (first["num_received"], first["num_invalid_entries"], first["rows"], first["rows_with_email"]) == (107, 0, 107, 106)
    assert first["rows_with_extern_id"] == 107 and first["rows_with_fn"] == 6
    assert second["num_received"] == 3
    assert {r["method"] for r in meta.request_log()[1:]} == {"DELETE", "POST"}
    batch = DeliveryBatch.objects.filter(sync=flagged).order_by("-pk").first()
    assert batch.rows[0]["identifiers"]["EXTERN_ID"] in {"p0", "p1", "p9"}
    assert all(TOKEN not in json.dumps(b.rows) for b in DeliveryBatch.objects.all())

    reconcile(flagged)  # the weekly replace brings p2's new email to Meta
    assert meta.members(AUDIENCE_ID) == expected_members(flagged)


def test_batches_keep_to_the_destination_batch_size(source, meta, flagged):
    set_destination(flagged.destination, batch_size=3)
    identify_many(source, {f"p{i}": person_traits(i) for i in range(7)})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    assert sorted(r["rows"] for r in meta.request_log()) == [1, 3, 3]
    assert meta.members(AUDIENCE_ID) == expected_members(flagged)


def test_a_revoked_token_fails_the_run_with_metas_words_and_sends_nothing(source, meta, flagged):
    set_destination(flagged.destination, max_attempts=1)
    identify_many(source, {"p0": person_traits(0)})
    evaluate_all()
    break_token(meta)
    deliver_destination(flagged.destination_id)
    run = SyncRun.objects.get(sync=flagged)
    assert run.status == SyncRun.FAILED and "Error validating access token" in run.error
    delivery = Delivery.objects.get(sync=flagged)
    assert delivery.state == Delivery.DEAD and "Meta refused the access token" in delivery.last_error
    assert meta.members(AUDIENCE_ID) == set()


# --- the full replace ---------------------------------------------------------------------------


def synced(source, meta, flagged, n=5):
    identify_many(source, {f"p{i}": person_traits(i) for i in range(n)})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    assert meta.members(AUDIENCE_ID) == expected_members(flagged)


def test_usersreplace_repairs_planted_drift_in_one_session(source, meta, flagged):
    synced(source, meta, flagged, n=5)
    meta.plant(AUDIENCE_ID, {"EMAIL": sha("ghost@example.com")})  # someone Downstream never sent
    meta.plant(AUDIENCE_ID, {"EMAIL": sha("stale@example.com"), "EXTERN_ID": "p4"})  # p4 under an old email
    Transport(flagged.destination).send(rows_of(flagged, "exit", ["p3"]), batch_id="lost", sync=flagged)  # p3 lost at Meta
    assert meta.members(AUDIENCE_ID) != expected_members(flagged)

    run = reconcile(flagged, batch_size=2)

    assert meta.members(AUDIENCE_ID) == expected_members(flagged)
    (replace,) = meta.replaces()
    assert (replace["batches"], replace["received"], replace["removed"], replace["estimated_num_total"]) == (3, 5, 1, 5)
    assert [r["path"] for r in meta.request_log()][-3:] == [f"/v21.0/{AUDIENCE_ID}/usersreplace"] * 3
    run.refresh_from_db()
    assert (run.kind, run.status, run.planned, run.sent, run.requests, run.skipped) == (
        SyncRun.DELIVER,
        SyncRun.SUCCEEDED,
        5,
        5,
        3,
        0,
    )
    assert run.details["operation"] == "usersreplace" and run.details["batches"] == 3
    assert run.details["num_received"] == 5 and run.details["session_id"] == str(replace["session_id"])


def test_a_batch_that_fails_for_now_goes_again_with_the_same_batch_seq(source, meta, flagged):
    synced(source, meta, flagged, n=3)
    meta.fail_next(1)
    slept = []
    run = reconcile(flagged, batch_size=2, sleep=slept.append)
    assert run.status == SyncRun.SUCCEEDED and run.requests == 3 and run.retried == 2
    assert slept and meta.replaces()[0]["batches"] == 2
    assert meta.members(AUDIENCE_ID) == expected_members(flagged)


def test_a_permanent_failure_leaves_the_session_unfinished_and_removes_nobody(source, meta, flagged):
    synced(source, meta, flagged, n=3)
    meta.plant(AUDIENCE_ID, {"EMAIL": sha("ghost@example.com")})
    before = meta.members(AUDIENCE_ID)
    meta.fail_next(5, code=200, message="(#200) Permissions error")
    run = reconcile(flagged, batch_size=2)
    assert run.status == SyncRun.FAILED
    assert run.error.startswith("the replace stopped unfinished, so Meta removed nobody: Meta refused permission")
    assert meta.members(AUDIENCE_ID) == before and meta.replaces() == []


def test_the_sender_waits_while_a_replace_session_is_open(source, meta, flagged):
    set_destination(flagged.destination, max_attempts=50)
    synced(source, meta, flagged, n=2)
    meta.plant(AUDIENCE_ID, {"EMAIL": sha("ghost@example.com")})
    transport = Transport(flagged.destination)
    session = {"session_id": 9, "batch_seq": 1, "last_batch_flag": False, "estimated_num_total": 2}
    transport.upload("POST", AUDIENCE_ID, "usersreplace", rows_of(flagged), meta_kind.SPEC.keys_for(flagged), session=session)
    identify_many(source, {"p7": person_traits(7)})
    evaluate_all()
    deliver_destination(flagged.destination_id, max_seconds=0.3)
    entry = Delivery.objects.get(sync=flagged, customer_id="p7")
    assert entry.state == Delivery.PENDING and "a replace session is in progress" in entry.last_error
    transport.upload(
        "POST",
        AUDIENCE_ID,
        "usersreplace",
        rows_of(flagged, customer_ids=["p0", "p1"]),
        meta_kind.SPEC.keys_for(flagged),
        session={**session, "batch_seq": 2, "last_batch_flag": True},
    )
    Delivery.objects.filter(pk=entry.pk).update(next_attempt_at=timezone.now())
    deliver_destination(flagged.destination_id)
    assert meta.members(AUDIENCE_ID) == expected_members(flagged)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"additive_only": True}, "only adds people, and a replace removes everyone it does not name"),
        ({"dry_run": True}, "is a dry run"),
        ({"paused": True}, "is paused: resume it first"),
    ],
)
def test_a_replace_is_refused_where_it_would_do_harm(flagged, change, reason):
    sync_save(data=change, instance=flagged)
    with pytest.raises(ReconcileRefused, match=reason):
        reconcile(flagged)


def test_a_replace_is_refused_with_held_removals_or_nobody_to_name(source, meta, flagged):
    with pytest.raises(ReconcileRefused, match="has nobody Downstream sent: a replace would empty the Meta audience"):
        reconcile(flagged)
    synced(source, meta, flagged, n=1)
    RemovalHold.objects.create(sync=flagged, reason="a mass removal", removals=10, audience_size_before=20)
    with pytest.raises(ReconcileRefused, match=r"has 10 removals held \(a mass removal\), which a replace would apply"):
        reconcile(flagged)
    assert meta.replaces() == []


def test_people_the_sync_never_sent_are_not_named_in_the_replace(source, meta, flagged):
    sync_save(data={"match_on": ["EMAIL"]}, instance=flagged)
    identify_many(source, {"p0": person_traits(0), "no-email": {"flag": True, "phone": "+16505550000"}})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    assert Delivery.objects.get(customer_id="no-email").state == Delivery.SKIPPED
    assert set(downstream_members(flagged).values_list("person__customer_id", flat=True)) == {"p0"}
    run = reconcile(flagged)
    assert (run.planned, run.sent) == (1, 1)
    assert meta.members(AUDIENCE_ID) == {(("EMAIL", sha("person0@example.com")),)}


def test_lookahead_flags_only_the_last_batch():
    chunks = [([1, 2], 0), ([3, 4], 1), ([], 2)]
    assert list(_lookahead(iter(chunks))) == [([1, 2], 0, False), ([3, 4], 3, True)]
    assert list(_lookahead(iter([([], 4)]))) == []


def test_the_weekly_schedule_queues_a_replace_when_the_last_is_a_week_old(source, meta, flagged):
    synced(source, meta, flagged, n=2)
    assert reconcile_due(now=flagged.created_at + timedelta(days=6)) == []
    # the worker runs tasks in-process under the test settings, so the replace has happened
    assert reconcile_due(now=flagged.created_at + timedelta(days=7, minutes=1)) == [flagged.pk]
    last = SyncRun.objects.get(sync=flagged, details__operation="usersreplace")
    assert last.status == SyncRun.SUCCEEDED and len(meta.replaces()) == 1
    assert reconcile_due(now=last.started_at + timedelta(days=6)) == []


def test_meta_reconcile_command(source, meta, flagged):
    synced(source, meta, flagged, n=3)
    out = StringIO()
    call_command("meta_reconcile", "flagged-meta", stdout=out)
    assert out.getvalue().strip() == (
        "flagged-meta: succeeded: 3 of 3 people in 1 batch(es), 1 request(s), 0 without an identifier; Meta could not read 0"
    )
    with pytest.raises(CommandError, match="there is no sync 'nope'"):
        call_command("meta_reconcile", "nope")
    sync_save(data={"additive_only": True}, instance=flagged)
    with pytest.raises(CommandError, match="only adds people"):
        call_command("meta_reconcile", "flagged-meta")


# --- the read-back ------------------------------------------------------------------------------

LATER = timedelta(days=2)


@pytest.fixture
def crowd(source, meta, flagged):
    """120 people at Meta (over Meta's minimum of 100, under which nothing is judged)."""
    identify_many(source, {f"p{i}": person_traits(i) for i in range(120)})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    assert len(meta.members(AUDIENCE_ID)) == 120
    return flagged


def open_alerts(sync) -> dict[str, Alert]:
    return {a.kind: a for a in Alert.objects.filter(sync=sync, resolved_at__isnull=True)}


def test_read_back_stores_metas_count_beside_its_own_and_keeps_it_out_of_the_history(meta, crowd):
    versions = crowd.history.count()
    now = crowd.created_at + LATER
    summary = read_back_syncs(now=now)
    assert summary == {"read": 1, "failed": 0, "unavailable": 0, "alerts": []}
    crowd.refresh_from_db()
    assert (crowd.downstream_size, crowd.downstream_match_rate, crowd.downstream_read_at) == (120, 1.0, now)
    assert crowd.history.count() == versions
    assert open_alerts(crowd) == {}
    assert meta.request_log()[-1]["query"].startswith("fields=approximate_count_lower_bound")


def test_a_low_match_rate_opens_an_alert_and_resolves_when_meta_matches_again(meta, crowd):
    meta.match_share = 0.2
    read_back_syncs(now=crowd.created_at + LATER)
    alert = open_alerts(crowd)[Alert.LOW_MATCH_RATE]
    assert alert.message.startswith(
        "flagged-meta: Meta Custom Audiences matches only 20% of the 120 people Downstream "
        "sent (Meta counts 23–25 people in custom audience 23850000000000001)"
    )
    assert crowd.history.count() == Sync.objects.get(pk=crowd.pk).history.count()
    check_alerts()  # the minute check leaves the read-back's alerts alone
    assert Alert.LOW_MATCH_RATE in open_alerts(crowd)

    meta.match_share = 0.9
    read_back_syncs(now=crowd.created_at + LATER)
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert alert.details["resolution"] == "Meta Custom Audiences matches 90% of flagged-meta's 120 people (floor 30%)."


def test_drift_opens_when_meta_counts_more_than_downstream_has_and_the_replace_repairs_it(meta, crowd):
    for i in range(40):
        meta.plant(AUDIENCE_ID, {"EMAIL": sha(f"ghost{i}@example.com")})
    read_back_syncs(now=crowd.created_at + LATER)
    alert = open_alerts(crowd)[Alert.DOWNSTREAM_DRIFT]
    assert "counts 160 people where Downstream expects 120" in alert.message
    assert alert.message.endswith("Repair it with a full upload: python manage.py meta_reconcile flagged-meta.")
    assert Alert.LOW_MATCH_RATE not in open_alerts(crowd)

    reconcile(crowd)
    read_back_syncs(now=crowd.created_at + LATER)
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert Sync.objects.get(pk=crowd.pk).downstream_size == 120


def test_nothing_is_judged_before_the_sync_has_settled_or_under_metas_minimum(source, meta, flagged):
    identify_many(source, {f"p{i}": person_traits(i) for i in range(99)})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    meta.match_share = 0.1
    read_back_syncs(now=flagged.created_at + LATER)
    assert open_alerts(flagged) == {}  # 99 people: under Meta's 100
    identify_many(source, {"p99": person_traits(99)})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    read_back_syncs(now=flagged.created_at + timedelta(hours=2))
    assert open_alerts(flagged) == {}  # matching takes hours
    assert Sync.objects.get(pk=flagged.pk).downstream_match_rate == pytest.approx(0.1)
    read_back_syncs(now=flagged.created_at + LATER)
    assert set(open_alerts(flagged)) == {Alert.LOW_MATCH_RATE}


def test_a_revoked_token_opens_failing_sync_in_metas_words_and_the_minute_check_keeps_it(meta, crowd):
    break_token(meta)
    summary = read_back_syncs(now=crowd.created_at + LATER)
    assert summary["failed"] == 1
    alert = open_alerts(crowd)[Alert.FAILING_SYNC]
    assert alert.message.startswith(
        "flagged-meta: Meta Custom Audiences refused to tell the audience's size: Meta refused "
        'the access token: "Error validating access token'
    )
    assert "save it on the destination" in alert.message
    check_alerts()
    assert Alert.FAILING_SYNC in open_alerts(crowd)

    meta.revoked.clear()
    read_back_syncs(now=crowd.created_at + LATER)
    alert.refresh_from_db()
    assert alert.resolved_at is not None and "answers the read-back" in alert.details["resolution"]


def test_one_syncs_failure_never_stops_the_others_and_kinds_without_read_back_are_skipped(
    source, meta, crowd, webhook_receiver, monkeypatch
):
    monkeypatch.setenv("HOOK_SECRET", "hook-secret")
    destination_save(
        data={
            "key": "hook",
            "kind": "webhook",
            "settings": {"url": webhook_receiver.url + "/h"},
            "credentials": {"signing_secret": "env:HOOK_SECRET"},
        }
    )
    sync_save(data={"key": "flagged-hook", "audience": "flagged", "destination": "hook"})
    broken = sync_save(
        data={"key": "flagged-meta-2", "audience": "flagged", "destination": "meta", "downstream_audience_id": "777"}
    )  # Meta does not know it
    with MetaServer(TOKEN) as down:
        down.faults.update(rate=1.0, kinds=["500"])
        destination_save(
            data={
                "key": "meta-down",
                "kind": "meta",
                "settings": {"base_url": down.url},
                "credentials": {"access_token": "env:META_ACCESS_TOKEN"},
                "max_attempts": 1,
            }
        )
        sync_save(
            data={"key": "flagged-meta-down", "audience": "flagged", "destination": "meta-down", "downstream_audience_id": "1000"}
        )
        summary = read_back_syncs(now=crowd.created_at + LATER)
    assert (summary["read"], summary["failed"], summary["unavailable"]) == (1, 1, 1)
    assert Sync.objects.get(pk=crowd.pk).downstream_size == 120
    assert "does not exist" in open_alerts(broken)[Alert.FAILING_SYNC].message
    assert Sync.objects.get(key="flagged-hook").downstream_read_at is None
    assert Sync.objects.get(key="flagged-meta-down").downstream_read_at is None


def test_a_paused_sync_is_not_read_and_its_read_back_alerts_resolve(meta, crowd):
    meta.match_share = 0.1
    read_back_syncs(now=crowd.created_at + LATER)
    assert Alert.LOW_MATCH_RATE in open_alerts(crowd)
    sync_save(data={"paused": True}, instance=crowd)
    requests = len(meta.request_log())
    read_back_syncs(now=crowd.created_at + LATER)
    assert open_alerts(crowd) == {} and len(meta.request_log()) == requests


def test_the_schedules_are_declared():
    from audiences.management.commands.setup_schedules import declared_schedules

    schedules = {s["name"]: s for s in declared_schedules()}
    assert schedules["read-back"]["func"] == "syncs.readback.read_back_syncs"
    assert schedules["read-back"]["minutes"] == 15
    assert schedules["meta-reconcile-due"]["func"] == "syncs.destinations.meta.reconcile.reconcile_due"


def test_membership_count_ignores_people_who_left(source, meta, flagged):
    identify_many(source, {"p0": person_traits(0), "p1": person_traits(1)})
    evaluate_all()
    deliver_destination(flagged.destination_id)
    identify_many(source, {"p1": {"flag": False}})
    evaluate_all()
    assert Membership.objects.filter(audience=flagged.audience).count() == 2
    assert downstream_members(flagged).count() == 1


def test_people_whose_removal_is_held_still_count_as_at_meta(source, meta, crowd):
    identify_many(source, {f"p{i}": {"flag": False} for i in range(40)})  # a third leaves at once: held
    evaluate_all()
    deliver_destination(crowd.destination_id)
    assert Delivery.objects.filter(sync=crowd, action=Delivery.EXIT, state=Delivery.HELD).count() == 40
    assert downstream_members(crowd).count() == 80
    assert read_back_syncs(now=crowd.created_at + LATER)["alerts"] == []  # Meta's 120 are what Downstream expects
    with pytest.raises(ReconcileRefused, match="40 removals held"):
        reconcile(crowd)


def test_the_sync_page_shows_metas_count_beside_downstreams(meta, crowd, viewer_client):
    from django.urls import reverse

    url = reverse("dashboard:sync", args=[crowd.key])
    page = viewer_client.get(url).content.decode()
    assert "What Meta Custom Audiences counts" in page and "not read back yet" in page
    meta.match_share = 0.5
    read_back_syncs(now=crowd.created_at + LATER)
    page = viewer_client.get(url).content.decode()
    assert '<div class="value">120</div>' in page and '<div class="value">60</div>' in page
    assert '<div class="value">50 %</div>' in page
    assert TOKEN not in page


README_CONFIG = """
destinations:
  - key: meta-ads
    name: Meta (ad account 1000)
    kind: meta
    settings:
      api_version: v21.0                      # base_url defaults to https://graph.facebook.com
    credentials:
      access_token: env:META_ACCESS_TOKEN     # a system user's token with ads_management
    batch_size: 5000
    rate_limit_per_s: 5
syncs:
  - key: carts-to-meta
    audience: carts
    destination: meta-ads
    downstream_audience_id: "23850000000000001"   # the custom audience's id in Ads Manager
    match_on: [EMAIL, PHONE, FN, LN, COUNTRY, EXTERN_ID]   # leave out: every key Meta takes
  - key: buyers-to-meta
    audience: buyers
    destination: meta-ads
    downstream_audience_id: "23850000000000002"
"""


def test_the_readme_config_applies_exports_and_applies_again_as_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    audience_save(
        data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}, "exclusions": ["buyers"]}
    )
    path = tmp_path / "meta.yaml"
    path.write_text(README_CONFIG)
    call_command("apply_config", str(path), stdout=StringIO())
    destination = Destination.objects.get(key="meta-ads")
    assert (destination.kind, destination.credentials, destination.batch_size) == ("meta", {"access_token": TOKEN}, 5000)
    assert Sync.objects.get(key="carts-to-meta").match_on == ["EMAIL", "PHONE", "FN", "LN", "COUNTRY", "EXTERN_ID"]
    exported = StringIO()
    call_command("export_config", stdout=exported)
    assert TOKEN not in exported.getvalue() and "env:META_ACCESS_TOKEN" in exported.getvalue()
    (tmp_path / "exported.yaml").write_text(exported.getvalue())
    again = StringIO()
    call_command("apply_config", str(tmp_path / "exported.yaml"), stdout=again)
    assert again.getvalue().strip() == "no changes: the database matches the file"


def test_a_meta_destination_may_send_ten_thousand_rows_a_request_and_no_more(meta_destination):
    destination_save(data={"batch_size": 10_000}, instance=meta_destination)
    with pytest.raises(ValidationError) as failure:
        destination_save(data={"batch_size": 10_001}, instance=meta_destination)
    assert failure.value.message_dict["batch_size"] == ["must be a whole number from 1 to 10000"]
