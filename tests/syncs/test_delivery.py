"""The sender against the contract servers: what goes on the wire, retries, ordering, holds,
dry runs, test cohorts, pauses, erasure, the lease and the run counts.

Every test drives the real flow: ingest → evaluate → outbox → `deliver_destination` → a real
HTTP server on a loopback port, and asserts on what that server recorded.
"""

import csv
import hashlib
import itertools
import json
import time
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages, person_erase, person_mark_test
from audiences.messages import Message
from audiences.models import Membership, Person
from audiences.services import audience_save, identifier_policy_save
from syncs.delivery import acquire_lease, deliver_destination, next_due
from syncs.destinations import OutRow, transport_for
from syncs.destinations.livelike import Transport as LiveLikeTransport
from syncs.models import Alert, Delivery, DeliveryBatch, Destination, RemovalHold, SyncRun
from syncs.payload import payload_for
from syncs.services import destination_save, hold_decide, sync_save, sync_send_test_cohort, sync_set_paused
from syncs.tasks import _due_now
from tests.contract_servers.common import FaultPlan
from tests.contract_servers.webhook import WebhookReceiver

pytestmark = pytest.mark.django_db

MESSAGE_IDS = itertools.count()


# --- helpers --------------------------------------------------------------------------------


class FailFirst(FaultPlan):
    """A fault plan that injects `kind` into the first `times` requests and none after, so a
    test knows exactly which attempt fails whatever the sender's timing."""

    def __init__(self, kind: str, times: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.left = times

    def decide(self):
        with self._lock:
            if self.left > 0:
                self.left -= 1
                return self.kind
            return None


def identify(source, customer_id, **traits):
    ingest_messages(
        source=source,
        messages=[Message("identify", customer_id, f"identify-{next(MESSAGE_IDS)}", timezone.now(), traits=traits)],
    )


def flag(source, customer_ids, value: bool, **traits):
    for customer_id in customer_ids:
        identify(source, customer_id, flag=value, **traits)


def flagged_audience(key="flagged", name="Flagged"):
    return audience_save(data={"key": key, "name": name, "rule": {"attribute": "flag", "eq": True}})


def flagged_sync(destination="livelike", **extra):
    flagged_audience()
    return sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": destination, **extra})


def deliver(destination, **kwargs):
    return deliver_destination(destination.pk, **kwargs)


def states(sync, customer_id=None) -> list[tuple[str, str]]:
    rows = Delivery.objects.filter(sync=sync).order_by("id")
    if customer_id:
        rows = rows.filter(customer_id=customer_id)
    return [(d.action, d.state) for d in rows]


def db_members(audience_key) -> set[str]:
    return set(
        Membership.objects.filter(audience__key=audience_key, exited_at__isnull=True).values_list(
            "person__customer_id", flat=True
        )
    )


def actions(server, user_id) -> list[bool]:
    return [row["action"] for row in server.rows_for(user_id)]


def set_destination(destination, **fields):
    Destination.objects.filter(pk=destination.pk).update(**fields)
    destination.refresh_from_db()


def people(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture
def webhook_destination(webhook_receiver, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "hook-secret")
    return destination_save(
        data={
            "key": "hook",
            "name": "Hook",
            "kind": "webhook",
            "settings": {"url": webhook_receiver.url + "/hooks/downstream", "headers": {"X-Team": "growth"}},
            "credentials": {"signing_secret": "env:HOOK_SECRET"},
            "timeout_s": 1.0,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.5,
            "rate_limit_per_s": 200,
        }
    )


# --- what goes on the wire ------------------------------------------------------------------


def test_livelike_membership_rows_have_exactly_the_documented_shape(source, livelike, livelike_destination):
    sync = flagged_sync(fields=["email"], downstream_audience_id="ll-aud-42")
    identify(source, "p0", flag=True, email="  P0@Example.COM ")
    identify(source, "p1", flag=True)  # no email: the row carries none
    evaluate_all()
    deliver(livelike_destination)

    entered = {m.person.customer_id: m.entered_at for m in Membership.objects.select_related("person")}
    rows = {row["user_id"]: row for row in livelike.rows()}
    assert set(rows) == {"p0", "p1"}
    for user_id, row in rows.items():
        assert row["audience_id"] == "ll-aud-42"  # sync.downstream_id, not the audience key
        assert row["audience_name"] == "Flagged"
        assert row["action"] is True
        assert row["timestamp"].endswith("Z")
        assert datetime.fromisoformat(row["timestamp"]) == entered[user_id]
    assert rows["p0"]["email"] == "p0@example.com"  # normalised
    assert rows["p1"]["email"] is None

    # the exact keys each row carries on the wire
    delivery = Delivery.objects.get(customer_id="p0")
    out = OutRow(delivery.pk, "enter", "p0", delivery.changed_at, {"email": "p0@example.com"})
    assert set(LiveLikeTransport._membership_row(out, sync, "b")) == {
        "audience_id",
        "audience_name",
        "action",
        "timestamp",
        "user_id",
        "email",
    }
    out.fields = {}
    assert set(LiveLikeTransport._membership_row(out, sync, "b")) == {
        "audience_id",
        "audience_name",
        "action",
        "timestamp",
        "user_id",
    }

    flag(source, ["p0"], False)
    evaluate_all()
    deliver(livelike_destination)
    assert actions(livelike, "p0") == [True, False]
    assert livelike.members("ll-aud-42") == {"p1"}
    exit_row = livelike.rows_for("p0")[-1]
    exited_at = Membership.objects.get(person__customer_id="p0").exited_at
    assert datetime.fromisoformat(exit_row["timestamp"]) == exited_at


def test_email_is_sent_only_when_the_sync_maps_it(source, livelike, livelike_destination):
    flagged_sync()  # no fields
    identify(source, "p0", flag=True, email="p0@example.com")
    evaluate_all()
    deliver(livelike_destination)
    assert [(r["user_id"], r["email"]) for r in livelike.rows()] == [("p0", None)]


def test_events_mode_posts_audience_entered_and_exited_to_segment_events(source, livelike, livelike_destination):
    flagged_sync(mode="events")
    identify(source, "p0", flag=True)
    evaluate_all()
    deliver(livelike_destination)
    flag(source, ["p0"], False)
    evaluate_all()
    deliver(livelike_destination)

    assert [r["path"] for r in livelike.request_log()] == ["/api/v1/applications/client-1/segment-events/"] * 2
    assert livelike.rows() == []  # nothing went to the membership endpoint
    events = [e["event"] for e in livelike.events("p0")]
    assert [e["event"] for e in events] == ["Audience Entered", "Audience Exited"]
    for event in events:
        assert event["type"] == "track"
        assert event["properties"]["audience_id"] == "flagged"
        assert event["properties"]["audience_name"] == "Flagged"
    assert len({e["messageId"] for e in events}) == 2


def test_batches_never_exceed_the_destination_batch_size(source, livelike, livelike_destination):
    set_destination(livelike_destination, batch_size=3)
    flagged_sync()
    flag(source, people("p", 10), True)
    evaluate_all()
    summary = deliver(livelike_destination)

    sizes = [r["rows"] for r in livelike.request_log()]
    assert sizes and max(sizes) <= 3
    assert sum(sizes) == 10 and len(sizes) == 4
    assert summary.sent == 10 and summary.batches == 4
    assert livelike.members("flagged") == set(people("p", 10))


# --- identifier policies --------------------------------------------------------------------


def test_email_sha256_policy_sends_the_hash_of_the_normalised_email(source, webhook_receiver, webhook_destination):
    identifier_policy_save(data={"key": "email_sha256", "name": "Hashed email", "field": "email", "hash_sha256": True})
    sync = flagged_sync(destination="hook", identifier_policy="email_sha256")
    identify(source, "p0", flag=True, email="  Ann.Lee@Example.COM ")
    identify(source, "p1", flag=True)  # no email at all
    identify(source, "p2", flag=True, email="not-an-email")
    evaluate_all()
    summary = deliver(webhook_destination)

    expected = hashlib.sha256(b"ann.lee@example.com").hexdigest()
    assert webhook_receiver.members("flagged") == {expected}
    assert summary.sent == 1 and summary.skipped == 2
    for customer_id in ("p1", "p2"):
        delivery = Delivery.objects.get(sync=sync, customer_id=customer_id)
        assert delivery.state == Delivery.SKIPPED
        assert delivery.last_error == "no valid email under identifier policy 'email_sha256'"
        assert delivery.acknowledged_at is None
    assert Delivery.objects.get(customer_id="p0").state == Delivery.SENT


def test_a_livelike_sync_with_a_hashed_policy_is_refused_with_what_to_use(livelike_destination):
    identifier_policy_save(data={"key": "email_sha256", "name": "Hashed email", "field": "email", "hash_sha256": True})
    with pytest.raises(ValidationError) as failure:
        flagged_sync(identifier_policy="email_sha256")
    assert failure.value.message_dict["identifier_policy"] == [
        "LiveLike matches no hashes: use the customer id or a LiveLike profile id attribute"
    ]


def test_livelike_sends_the_customer_id_when_its_audience_hashes_and_email_as_its_own_field(
    source, livelike, livelike_destination
):
    identifier_policy_save(data={"key": "email_sha256", "name": "Hashed email", "field": "email", "hash_sha256": True})
    audience_save(
        data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}, "identifier_policy": "email_sha256"}
    )
    sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": "livelike", "fields": ["email"]})
    identify(source, "p0", flag=True, email="  Ann.Lee@Example.COM ")
    evaluate_all()
    deliver(livelike_destination)

    assert [(r["user_id"], r.get("email")) for r in livelike.rows()] == [("p0", "ann.lee@example.com")]


# --- rows refused by the destination --------------------------------------------------------


def test_a_row_livelike_rejects_is_rejected_with_its_reason_and_the_rest_is_sent(source, livelike, livelike_destination):
    livelike.reject_user_ids = {"p1"}
    sync = flagged_sync()
    flag(source, people("p", 3), True)
    evaluate_all()
    summary = deliver(livelike_destination)

    rejected = Delivery.objects.get(sync=sync, customer_id="p1")
    assert (rejected.state, rejected.last_error, rejected.response_status) == (Delivery.REJECTED, "user_id: Unknown user.", 400)
    assert rejected.acknowledged_at is not None
    assert {d.customer_id: d.state for d in Delivery.objects.filter(state=Delivery.SENT)} == {"p0": "sent", "p2": "sent"}
    assert livelike.members("flagged") == {"p0", "p2"}
    assert (summary.sent, summary.rejected) == (2, 1)
    # the whole batch was refused once, then the valid rows went again on their own
    assert [(r["status"], r["rows"]) for r in livelike.request_log()] == [(400, 3), (200, 2)]
    run = SyncRun.objects.get(sync=sync)
    assert (run.sent, run.rejected, run.requests, run.status) == (2, 1, 2, SyncRun.PARTIAL)
    batch = DeliveryBatch.objects.get(sync=sync)
    assert f"row {rejected.pk}: user_id: Unknown user." in batch.error


def test_a_change_the_webhook_receiver_rejects_is_rejected_and_the_rest_is_sent(source, webhook_receiver, webhook_destination):
    webhook_receiver.reject_identifiers = {"p1"}
    sync = flagged_sync(destination="hook")
    flag(source, people("p", 3), True)
    evaluate_all()
    deliver(webhook_destination)

    rejected = Delivery.objects.get(sync=sync, customer_id="p1")
    assert (rejected.state, rejected.last_error) == (Delivery.REJECTED, "unknown identifier")
    assert sorted(Delivery.objects.filter(state=Delivery.SENT).values_list("customer_id", flat=True)) == ["p0", "p2"]
    assert webhook_receiver.members("flagged") == {"p0", "p2"}


# --- webhook --------------------------------------------------------------------------------


def test_webhook_batches_are_signed_carry_a_batch_id_and_custom_headers(source, webhook_receiver, webhook_destination):
    sync = flagged_sync(destination="hook")
    flag(source, people("p", 3), True)
    evaluate_all()
    deliver(webhook_destination)

    # the receiver checks the HMAC over the raw body with its secret and answers 401 otherwise
    assert [d["outcome"] for d in webhook_receiver.deliveries()] == ["applied"]
    assert webhook_receiver.counters()["bad_signatures"] == 0
    (batch,) = webhook_receiver.batches()
    assert batch["path"] == "/hooks/downstream"
    batch_ids = set(Delivery.objects.filter(sync=sync).values_list("batch_id", flat=True))
    assert {str(b) for b in batch_ids} == {batch["batch_id"]}
    headers = webhook_receiver.headers_for(batch["batch_id"])
    assert headers["x-downstream-batch-id"] == batch["batch_id"]
    assert headers["x-downstream-signature"].startswith("sha256=")
    assert headers["x-team"] == "growth"
    body = batch["body"]
    assert body["audience"] == {"key": "flagged", "name": "Flagged", "downstream_id": "flagged"}
    assert [(c["action"], c["identifier"]) for c in body["changes"]] == [("enter", "p0"), ("enter", "p1"), ("enter", "p2")]
    assert webhook_receiver.members("flagged") == {"p0", "p1", "p2"}


def test_webhook_signed_with_another_secret_is_refused_and_never_marked_sent(source, webhook_destination):
    with WebhookReceiver(secret="the-receivers-own-secret") as receiver:
        set_destination(webhook_destination, settings={"url": receiver.url + "/hook"}, max_attempts=2)
        sync = flagged_sync(destination="hook")
        flag(source, ["p0"], True)
        evaluate_all()
        deliver(webhook_destination)
        assert [d["outcome"] for d in receiver.deliveries()] == ["bad signature"] * 2
        assert receiver.members("flagged") == set()
    assert states(sync) == [("enter", Delivery.DEAD)]
    assert Delivery.objects.get(sync=sync).response_status == 401


def test_a_webhook_batch_that_timed_out_is_retried_with_the_same_batch_id(source, webhook_receiver, webhook_destination):
    # the receiver applies the batch, then answers after the sender has given up
    webhook_receiver.faults = FailFirst("timeout", slow_seconds=1.0)
    set_destination(webhook_destination, timeout_s=0.3)
    sync = flagged_sync(destination="hook")
    flag(source, people("p", 2), True)
    evaluate_all()
    deliver(webhook_destination)

    posts = webhook_receiver.deliveries()
    assert [p["outcome"] for p in posts] == ["applied", "duplicate"]
    assert posts[0]["batch_id"] == posts[1]["batch_id"]
    assert webhook_receiver.duplicate_batches == 1
    assert len(webhook_receiver.changes()) == 2  # applied once
    assert states(sync) == [("enter", Delivery.SENT)] * 2
    attempts = DeliveryBatch.objects.filter(sync=sync).order_by("attempt")
    assert [(str(b.batch_id), b.attempt) for b in attempts] == [(posts[0]["batch_id"], 1), (posts[0]["batch_id"], 2)]
    assert "no answer within 0.3 s" in attempts[0].error
    assert Delivery.objects.filter(sync=sync, attempts=2).count() == 2


# --- file export ----------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["csv", "jsonl"])
def test_file_destination_writes_the_changes_to_a_delta_file(source, tmp_path, file_format):
    destination = destination_save(
        data={
            "key": "files",
            "name": "Files",
            "kind": "file",
            "settings": {"directory": str(tmp_path), "format": file_format},
        }
    )
    sync = flagged_sync(destination="files", fields=["email", "tier"])
    identify(source, "p0", flag=True, email="P0@example.com", tier="gold")
    identify(source, "p1", flag=True)
    evaluate_all()
    deliver(destination)
    flag(source, ["p1"], False)
    evaluate_all()
    deliver(destination)

    (path,) = (tmp_path / "flagged").iterdir()
    assert path.name.startswith("flagged-sync-delta-") and path.suffix == f".{file_format}"
    text = path.read_text()
    if file_format == "csv":
        records = list(csv.DictReader(text.splitlines()))
        assert text.splitlines()[0] == "action,identifier,changed_at,email,tier"
    else:
        records = [json.loads(line) for line in text.splitlines()]
    assert [(r["action"], r["identifier"]) for r in records] == [("enter", "p0"), ("enter", "p1"), ("exit", "p1")]
    assert records[0]["email"] == "p0@example.com" and records[0]["tier"] == "gold"
    exited_at = Membership.objects.get(person__customer_id="p1").exited_at
    assert datetime.fromisoformat(records[2]["changed_at"]) == exited_at
    assert set(Delivery.objects.filter(sync=sync).values_list("state", flat=True)) == {Delivery.SENT}


def test_file_snapshot_holds_the_current_members(source, tmp_path):
    destination = destination_save(
        data={
            "key": "files",
            "name": "Files",
            "kind": "file",
            "settings": {"directory": str(tmp_path), "format": "csv"},
        }
    )
    sync = flagged_sync(destination="files", fields=["email"])
    for customer_id in people("p", 3):
        identify(source, customer_id, flag=True, email=f"{customer_id}@example.com")
    evaluate_all()
    flag(source, ["p1"], False)
    evaluate_all()

    members = Membership.objects.filter(audience=sync.audience, exited_at__isnull=True).select_related("person")
    rows = [
        OutRow(0, "enter", payload_for(sync, m.person)["identifier"], m.entered_at, payload_for(sync, m.person)["fields"])
        for m in members
    ]
    path = transport_for(destination).write_snapshot(sync, rows)
    records = list(csv.DictReader(path.read_text().splitlines()))
    assert "snapshot" in path.name
    assert sorted((r["action"], r["identifier"], r["email"]) for r in records) == [
        ("member", "p0", "p0@example.com"),
        ("member", "p2", "p2@example.com"),
    ]


# --- retries --------------------------------------------------------------------------------


def test_a_500_is_retried_and_then_delivered(source, livelike, livelike_destination):
    livelike.faults = FailFirst("500")
    sync = flagged_sync()
    flag(source, people("p", 2), True)
    evaluate_all()
    summary = deliver(livelike_destination)

    assert [r["status"] for r in livelike.request_log()] == [500, 200]
    assert livelike.members("flagged") == {"p0", "p1"}
    assert states(sync) == [("enter", Delivery.SENT)] * 2
    assert (summary.sent, summary.retried, summary.dead) == (2, 2, 0)
    batches = DeliveryBatch.objects.filter(sync=sync).order_by("attempt")
    assert [(b.attempt, b.status) for b in batches] == [(1, 500), (2, 200)]
    assert len({b.batch_id for b in batches}) == 1
    run = SyncRun.objects.get(sync=sync)
    assert (run.planned, run.sent, run.retried, run.requests) == (2, 2, 2, 2)  # planned once, not per attempt


def test_a_429_makes_the_sender_wait_as_long_as_retry_after_says(source, livelike, livelike_destination):
    livelike.faults = FailFirst("429", retry_after=1)
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()
    before = timezone.now()
    deliver(livelike_destination)

    first, second = livelike.request_log()
    assert (first["status"], second["status"]) == (429, 200)
    assert second["received_at"] - first["answered_at"] >= 1.0 - 0.05
    assert livelike.retry_after_violations == []
    livelike_destination.refresh_from_db()
    assert livelike_destination.not_before is not None
    assert livelike_destination.not_before >= before + timedelta(seconds=1)
    assert states(sync) == [("enter", Delivery.SENT)]


def test_a_destination_that_always_fails_turns_rows_into_dead_letters(source, livelike, livelike_destination):
    livelike.faults = FaultPlan(rate=1.0, kinds=("500",))
    set_destination(livelike_destination, max_attempts=3)
    sync = flagged_sync()
    flag(source, people("p", 2), True)
    evaluate_all()
    summary = deliver(livelike_destination)

    assert len(livelike.request_log()) == 3
    assert livelike.members("flagged") == set()
    assert summary.dead == 2
    for delivery in Delivery.objects.filter(sync=sync):
        assert (delivery.state, delivery.attempts, delivery.response_status) == (Delivery.DEAD, 3, 500)
        assert delivery.last_error.startswith("gave up after 3 attempts: server error 500")
        assert delivery.acknowledged_at is None
    run = SyncRun.objects.get(sync=sync)
    assert run.status == SyncRun.FAILED and run.sent == 0 and "server error 500" in run.error


def test_a_run_whose_rows_all_went_dead_at_once_is_failed(source, livelike, livelike_destination):
    livelike.faults = FaultPlan(rate=1.0, kinds=("500",))
    set_destination(livelike_destination, max_attempts=1)
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()
    deliver(livelike_destination)

    assert states(sync) == [("enter", Delivery.DEAD)]
    run = SyncRun.objects.get(sync=sync)
    assert run.sent == 0 and run.status == SyncRun.FAILED


def test_a_wrong_token_is_retried_then_dead_and_never_marked_sent(source, livelike, livelike_destination, monkeypatch):
    monkeypatch.setenv("WRONG_TOKEN", "not-the-producer-token")
    destination_save(
        instance=livelike_destination, data={"credentials": {"producer_token": "env:WRONG_TOKEN"}, "max_attempts": 3}
    )
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()
    deliver(livelike_destination)

    assert [r["status"] for r in livelike.request_log()] == [401] * 3
    delivery = Delivery.objects.get(sync=sync)
    assert (delivery.state, delivery.attempts, delivery.response_status) == (Delivery.DEAD, 3, 401)
    assert "refused the credentials" in delivery.last_error
    assert delivery.acknowledged_at is None
    assert not Delivery.objects.filter(state=Delivery.SENT).exists()
    assert livelike.rows() == []


# --- order ----------------------------------------------------------------------------------


def test_an_exit_is_never_sent_before_an_entry_that_is_still_being_retried(source, livelike, livelike_destination):
    # a long backoff: the sender gives up its turn while the failed entry waits
    set_destination(livelike_destination, retry_base_s=60, retry_cap_s=60)
    livelike.faults = FailFirst("timeout", slow_seconds=1.5)  # no answer in time: it may have arrived
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()
    deliver(livelike_destination)
    assert states(sync) == [("enter", Delivery.PENDING)]

    assert actions(livelike, "p0") == [True]  # it had: the slow answer came after the client gave up

    flag(source, ["p0"], False)
    evaluate_all()
    deliver(livelike_destination)
    # the entry may have reached LiveLike, so the pair does not cancel; the exit waits behind
    # it, and being a removal, brings its retry forward instead of waiting the minute out
    assert actions(livelike, "p0") == [True, True, False]  # the entry again (same batch), then the exit
    assert livelike.exits_before_entry() == []
    assert states(sync) == [("enter", Delivery.SENT), ("exit", Delivery.SENT)]
    assert livelike.members("flagged") == set()


def test_an_entry_refused_with_a_500_and_a_later_exit_cancel_out(source, livelike, livelike_destination):
    set_destination(livelike_destination, retry_base_s=60, retry_cap_s=60)
    livelike.faults = FailFirst("500")  # answered: it did not arrive
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()
    deliver(livelike_destination)
    flag(source, ["p0"], False)
    evaluate_all()
    deliver(livelike_destination)
    assert states(sync) == [("enter", Delivery.CANCELLED), ("exit", Delivery.CANCELLED)]
    assert livelike.rows_for("p0") == [] and len(livelike.request_log()) == 1


def test_an_entry_and_exit_never_sent_cancel_out(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, ["p0", "p1"], True)
    evaluate_all()
    flag(source, ["p0"], False)
    evaluate_all()
    summary = deliver(livelike_destination)

    assert states(sync, "p0") == [("enter", Delivery.CANCELLED), ("exit", Delivery.CANCELLED)]
    assert Delivery.objects.get(sync=sync, customer_id="p0", action="exit").last_error.startswith("cancelled out")
    assert livelike.rows_for("p0") == []
    assert actions(livelike, "p1") == [True]
    assert summary.cancelled == 2


def test_enter_exit_enter_never_sent_sends_only_the_last_entry(source, livelike, livelike_destination):
    sync = flagged_sync()
    for value in (True, False, True):
        flag(source, ["p0"], value)
        evaluate_all()
    deliver(livelike_destination)

    assert states(sync, "p0") == [("enter", Delivery.CANCELLED), ("exit", Delivery.CANCELLED), ("enter", Delivery.SENT)]
    assert actions(livelike, "p0") == [True]
    last = Membership.objects.filter(person__customer_id="p0").order_by("-entered_at").first()
    assert datetime.fromisoformat(livelike.rows_for("p0")[0]["timestamp"]) == last.entered_at


# --- mass removal ---------------------------------------------------------------------------


def _twenty_members_then_twelve_leave(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, people("p", 20), True)
    evaluate_all()
    deliver(livelike_destination)
    assert len(livelike.members("flagged")) == 20
    flag(source, people("p", 12), False)
    evaluate_all()
    return sync


def test_a_mass_removal_is_held_and_alerted_until_approved(source, livelike, livelike_destination):
    sync = _twenty_members_then_twelve_leave(source, livelike, livelike_destination)
    hold = RemovalHold.objects.get(sync=sync)
    assert (hold.removals, hold.audience_size_before, hold.decision) == (12, 20, RemovalHold.PENDING)
    assert Delivery.objects.filter(sync=sync, action="exit", state=Delivery.HELD, hold=hold).count() == 12
    alert = Alert.objects.get(kind=Alert.MASS_REMOVAL)
    assert alert.is_open and alert.sync == sync and alert.details["removals"] == 12

    requests_before = len(livelike.request_log())
    deliver(livelike_destination)
    assert len(livelike.request_log()) == requests_before
    assert len(livelike.members("flagged")) == 20

    assert hold_decide(hold=hold, approve=True) == 12
    deliver(livelike_destination)
    assert livelike.members("flagged") == set(people("p", 20)) - set(people("p", 12))
    assert Delivery.objects.filter(sync=sync, action="exit", state=Delivery.SENT).count() == 12
    alert.refresh_from_db()
    hold.refresh_from_db()
    assert alert.resolved_at is not None and hold.decision == RemovalHold.APPROVED


def test_a_discarded_mass_removal_is_cancelled_and_never_sent(source, livelike, livelike_destination):
    sync = _twenty_members_then_twelve_leave(source, livelike, livelike_destination)
    hold = RemovalHold.objects.get(sync=sync)
    assert hold_decide(hold=hold, approve=False) == 12
    deliver(livelike_destination)
    assert len(livelike.members("flagged")) == 20
    assert not any(row["action"] is False for row in livelike.rows())
    assert Delivery.objects.filter(sync=sync, action="exit", state=Delivery.CANCELLED).count() == 12
    assert Alert.objects.get(kind=Alert.MASS_REMOVAL).resolved_at is not None
    hold.refresh_from_db()
    assert hold.decision == RemovalHold.DISCARDED


def test_fewer_than_ten_removals_are_never_held(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, people("p", 12), True)
    evaluate_all()
    deliver(livelike_destination)
    flag(source, people("p", 9), False)  # 75% of the audience, but only nine people
    evaluate_all()
    deliver(livelike_destination)
    assert not RemovalHold.objects.exists() and not Alert.objects.exists()
    assert livelike.members("flagged") == {"p9", "p10", "p11"}
    assert not Delivery.objects.filter(sync=sync, state=Delivery.HELD).exists()


# --- dry run, test cohort, pause ------------------------------------------------------------


def test_a_dry_run_records_what_would_be_sent_and_sends_nothing(source, livelike, livelike_destination):
    sync = flagged_sync(dry_run=True, fields=["email"])
    identify(source, "p0", flag=True, email="p0@example.com")
    identify(source, "p1", flag=True)
    evaluate_all()
    deliver(livelike_destination)

    assert livelike.request_log() == []
    rows = {d.customer_id: d for d in Delivery.objects.filter(sync=sync)}
    assert {d.state for d in rows.values()} == {Delivery.DRY_RUN}
    assert rows["p0"].payload == {"identifier": "p0", "fields": {"email": "p0@example.com"}}
    assert rows["p1"].payload == {"identifier": "p1", "fields": {}}
    batch = DeliveryBatch.objects.get(sync=sync)
    assert batch.error == "dry run: not sent" and batch.status is None
    assert sorted((r["delivery"], r["action"], r["identifier"]) for r in batch.rows) == [
        (rows["p0"].pk, "enter", "p0"),
        (rows["p1"].pk, "enter", "p1"),
    ]
    run = SyncRun.objects.get(sync=sync)
    assert (run.kind, run.sent, run.planned) == (SyncRun.DRY_RUN, 0, 2)


def test_a_test_cohort_sync_sends_only_internal_test_accounts(source, livelike, livelike_destination):
    sync = flagged_sync(test_cohort_only=True)
    flag(source, ["t0", "p0", "p1"], True)
    person_mark_test(customer_ids=["t0"], is_test=True)
    evaluate_all()
    deliver(livelike_destination)

    assert livelike.members("flagged") == {"t0"}
    for customer_id in ("p0", "p1"):
        delivery = Delivery.objects.get(sync=sync, customer_id=customer_id)
        assert delivery.state == Delivery.SKIPPED
        assert delivery.last_error == "not an internal test account (the sync sends the test cohort only)"
    assert SyncRun.objects.get(sync=sync).skipped == 2


def test_send_test_cohort_queues_an_entry_for_each_current_test_member(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, ["t0", "t1", "p0"], True)
    flag(source, ["t2"], False)  # a test account outside the audience
    person_mark_test(customer_ids=["t0", "t1", "t2"], is_test=True)
    evaluate_all()
    deliver(livelike_destination)
    assert sync_send_test_cohort(sync=sync) == 2
    assert sorted(Delivery.objects.filter(sync=sync, state=Delivery.PENDING).values_list("customer_id", flat=True)) == [
        "t0",
        "t1",
    ]
    deliver(livelike_destination)
    assert actions(livelike, "t0") == actions(livelike, "t1") == [True, True]
    assert actions(livelike, "p0") == [True]
    assert livelike.rows_for("t2") == []


def test_send_test_cohort_before_the_first_entry_went_out_still_sends_it(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, ["t0"], True)
    person_mark_test(customer_ids=["t0"], is_test=True)
    evaluate_all()
    assert sync_send_test_cohort(sync=sync) == 1  # the evaluation's entry is still unsent
    deliver(livelike_destination)
    assert livelike.members("flagged") == {"t0"}
    assert db_members("flagged") == {"t0"}


def test_a_paused_sync_keeps_its_deliveries_until_resumed(source, livelike, livelike_destination):
    sync = flagged_sync(paused=True)
    flag(source, people("p", 3), True)
    evaluate_all()
    summary = deliver(livelike_destination)
    assert summary.sent == 0 and livelike.request_log() == []
    assert states(sync) == [("enter", Delivery.PENDING)] * 3

    sync_set_paused(sync=sync, paused=False)
    deliver(livelike_destination)
    assert livelike.members("flagged") == set(people("p", 3))
    assert states(sync) == [("enter", Delivery.SENT)] * 3


def test_a_held_exit_between_two_unsent_entries_keeps_the_person_a_member(source, livelike, livelike_destination):
    """While paused: p0 enters, a mass removal takes p0 out (held), p0 comes back. After the
    removal is approved the destination must end with p0 as a member, as the audience has it."""
    sync = flagged_sync()
    flag(source, people("p", 20), True)
    evaluate_all()
    deliver(livelike_destination)
    flag(source, ["q0"], True)
    evaluate_all()
    sync_set_paused(sync=sync, paused=True)  # q0's entry waits
    flag(source, [*people("p", 12), "q0"], False)
    evaluate_all()  # 13 removals of 21: held
    flag(source, ["q0"], True)
    evaluate_all()
    sync_set_paused(sync=sync, paused=False)
    deliver(livelike_destination)
    assert states(sync, "q0") == [("enter", Delivery.SENT), ("exit", Delivery.HELD), ("enter", Delivery.PENDING)]
    # the second entry waits for the decision, and does not keep the sender busy meanwhile
    assert next_due(livelike_destination) is None and not _due_now(livelike_destination.pk)
    hold_decide(hold=RemovalHold.objects.get(sync=sync), approve=True)
    deliver(livelike_destination)

    # once approved, the removal and the return were both never sent: they cancel out
    assert states(sync, "q0") == [("enter", Delivery.SENT), ("exit", Delivery.CANCELLED), ("enter", Delivery.CANCELLED)]
    assert actions(livelike, "q0") == [True]
    assert "q0" in db_members("flagged")
    assert livelike.members("flagged") == db_members("flagged")
    assert livelike.exits_before_entry() == []


# --- erasure --------------------------------------------------------------------------------


def test_an_erased_person_exits_and_the_exit_reaches_livelike_with_their_identifier(ingest, livelike, livelike_destination):
    identifier_policy_save(
        data={"key": "profile", "name": "LiveLike profile", "field": "attribute", "attribute": "livelike_profile_id"}
    )
    sync = flagged_sync(identifier_policy="profile")
    audience_save(data={"key": "also", "name": "Also", "rule": {"attribute": "flag", "eq": True}})
    flag(ingest.source, ["c1", "c2"], True)
    identify(ingest.source, "c1", livelike_profile_id="lp-c1")
    identify(ingest.source, "c2", livelike_profile_id="lp-c2")
    evaluate_all()
    deliver(livelike_destination)
    assert livelike.members("flagged") == {"lp-c1", "lp-c2"}

    assert ingest.track_api("DELETE", "customers/c1").status_code == 200
    assert not Person.objects.filter(customer_id="c1").exists()
    assert not Membership.objects.filter(person__customer_id="c1").exists()
    assert db_members("also") == {"c2"}  # left every audience
    exit_row = Delivery.objects.get(sync=sync, customer_id="c1", action="exit")
    assert exit_row.person is None and exit_row.payload == {"identifier": "lp-c1", "fields": {}}

    deliver(livelike_destination)
    exit_row.refresh_from_db()
    assert exit_row.state == Delivery.SENT
    assert actions(livelike, "lp-c1") == [True, False]
    assert livelike.members("flagged") == {"lp-c2"}


def test_erasure_through_person_erase_sends_the_exit(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, ["c1"], True)
    evaluate_all()
    deliver(livelike_destination)
    assert person_erase(customer_id="c1", source=source)
    deliver(livelike_destination)
    assert actions(livelike, "c1") == [True, False]
    assert states(sync) == [("enter", Delivery.SENT), ("exit", Delivery.SENT)]


# --- the lease ------------------------------------------------------------------------------


def test_a_sender_without_the_lease_sends_nothing_until_the_lease_expires(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()
    assert acquire_lease(livelike_destination.pk, "other")
    summary = deliver(livelike_destination)
    assert summary.leased is False and summary.sent == 0
    assert livelike.request_log() == []
    assert states(sync) == [("enter", Delivery.PENDING)]
    set_destination(livelike_destination, lease_until=timezone.now() - timedelta(seconds=1))

    summary = deliver(livelike_destination)
    assert summary.leased is True and summary.sent == 1
    assert livelike.members("flagged") == {"p0"}
    livelike_destination.refresh_from_db()
    assert (livelike_destination.lease_owner, livelike_destination.lease_until) == ("", None)  # released


@pytest.mark.parametrize("fault", ["500", "429"])  # waiting out a backoff, waiting out a Retry-After
def test_a_sender_that_lost_its_lease_while_waiting_sends_nothing_more(source, livelike, livelike_destination, fault):
    livelike.faults = FailFirst(fault, retry_after=1)
    # a backoff long enough that the sender must wait it out (0.05 s can pass unwaited on a busy machine)
    set_destination(livelike_destination, retry_base_s=1.0, retry_cap_s=1.0)
    sync = flagged_sync()
    flag(source, ["p0"], True)
    evaluate_all()

    def sleep_past_the_lease(seconds):
        # a long wait: the lease ran out and another worker's sender took it meanwhile
        Destination.objects.filter(pk=livelike_destination.pk).update(
            lease_owner="other", lease_until=timezone.now() + timedelta(minutes=1)
        )
        time.sleep(seconds)

    deliver(livelike_destination, sleep=sleep_past_the_lease)
    assert [r["status"] for r in livelike.request_log()] == [int(fault)]
    assert states(sync) == [("enter", Delivery.PENDING)]
    livelike_destination.refresh_from_db()
    assert livelike_destination.lease_owner == "other"  # not released by the sender that lost it


# --- run counts -----------------------------------------------------------------------------


def test_sync_run_counts_and_status_match_what_happened(source, livelike, livelike_destination):
    identifier_policy_save(
        data={"key": "profile", "name": "LiveLike profile", "field": "attribute", "attribute": "livelike_profile_id"}
    )
    livelike.reject_user_ids = {"lp-p1"}
    livelike.faults = FailFirst("500")
    sync = flagged_sync(identifier_policy="profile")
    for customer_id in ("p0", "p1", "p2"):
        identify(source, customer_id, flag=True, livelike_profile_id=f"lp-{customer_id}")
    identify(source, "p3", flag=True)  # no profile id: skipped
    evaluate_all()
    summary = deliver(livelike_destination)

    run = SyncRun.objects.get(sync=sync)
    assert (run.planned, run.sent, run.rejected, run.skipped, run.retried) == (4, 2, 1, 1, 3)
    assert run.requests == 3  # the 500, the 400 for the batch, the resend of its valid rows
    assert run.status == SyncRun.PARTIAL and run.finished_at is not None
    assert summary.runs == {sync.pk: run.pk}
    assert set(Delivery.objects.filter(sync=sync).values_list("run", flat=True)) == {run.pk}


def test_a_clean_run_succeeded(source, livelike, livelike_destination):
    sync = flagged_sync()
    flag(source, people("p", 3), True)
    evaluate_all()
    deliver(livelike_destination)
    run = SyncRun.objects.get(sync=sync)
    assert (run.planned, run.sent, run.rejected, run.skipped, run.retried, run.requests) == (3, 3, 0, 0, 0, 1)
    assert run.status == SyncRun.SUCCEEDED and run.error == ""
