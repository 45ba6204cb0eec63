"""The removals a sync does not send, for every kind (syncs/removals.py): an additive-only
sync never removes anyone, and a removal that would take the audience downstream under the
kind's minimum is held and alerted until the audience is back over it. Driven on the toy kind of
tests/syncs/toy_destination/, given a minimum here, and on LiveLike; TikTok's own are in
test_tiktok.py."""

import dataclasses
import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.services import audience_save
from syncs.audit import person_timeline
from syncs.delivery import deliver_destination
from syncs.destinations import registry
from syncs.models import Alert, Delivery, RemovalHold, Sync, SyncRun
from syncs.removals import ADDITIVE_ONLY
from syncs.selectors import suppression_lag
from syncs.services import destination_save, hold_decide, sync_save
from tests.syncs import toy_destination

pytestmark = pytest.mark.django_db

MESSAGE_IDS = itertools.count()


def flag(source, customer_ids, value: bool) -> None:
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("identify", customer_id, f"identify-{next(MESSAGE_IDS)}", now, traits={"flag": value})
            for customer_id in customer_ids
        ],
    )


def people(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def toy_with_minimum(monkeypatch, minimum: int | None):
    monkeypatch.setitem(registry.KINDS, "toy", dataclasses.replace(toy_destination.SPEC, min_audience_size=minimum))
    monkeypatch.setenv("TOY_API_KEY", "toy-key-1")
    toy_destination.SENT.clear()
    return destination_save(
        data={
            "key": "board",
            "name": "Board",
            "kind": "toy",
            "settings": {"board": "b-1"},
            "credentials": {"toy_api_key": "env:TOY_API_KEY"},
            "rate_limit_per_s": 200,
        }
    )


@pytest.fixture
def board(monkeypatch):
    """The toy kind with a minimum of 10 people."""
    return toy_with_minimum(monkeypatch, 10)


def flagged_sync(destination="board", **extra) -> Sync:
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    return sync_save(data={"key": "flagged-sync", "audience": "flagged", "destination": destination, **extra})


def sent(action: str) -> list[str]:
    return sorted(row["identifier"] for row in toy_destination.SENT if row["action"] == action)


def deliver(destination):
    return deliver_destination(destination.pk)


# --- additive only --------------------------------------------------------------------------


def test_an_additive_only_sync_skips_its_exits_with_the_reason_and_holds_no_mass_removal(source, monkeypatch):
    destination = toy_with_minimum(monkeypatch, None)
    sync = flagged_sync(additive_only=True)
    flag(source, people("p", 20), True)
    evaluate_all()
    deliver(destination)
    flag(source, people("p", 12), False)  # 60 %: a mass removal for any other sync
    evaluate_all()
    summary = deliver(destination)

    assert sent("exit") == [] and len(sent("enter")) == 20
    assert summary.batches == 0  # nothing was claimed: the exits were never queued to go
    exits = Delivery.objects.filter(sync=sync, action=Delivery.EXIT)
    assert exits.count() == 12
    assert set(exits.values_list("state", "last_error", "acknowledged_at")) == {(Delivery.SKIPPED, ADDITIVE_ONLY, None)}
    assert not RemovalHold.objects.exists() and not Alert.objects.exists()
    # the person page says why they are still downstream
    person = exits.first().person
    removal = next(m for m in person_timeline(person) if m.kind == "delivery" and m.title.startswith("remove from"))
    assert removal.status == Delivery.SKIPPED and removal.data["answer"] == f"Skipped: {ADDITIVE_ONLY}"
    # and no removal lag is counted for people never removed
    assert suppression_lag(sync, since=timezone.now() - timedelta(hours=1)).count == 0


def test_exits_queued_before_a_sync_became_additive_only_are_skipped_when_they_come_up(source, monkeypatch):
    destination = toy_with_minimum(monkeypatch, None)
    sync = flagged_sync()
    flag(source, people("p", 3), True)
    evaluate_all()
    deliver(destination)
    flag(source, ["p0"], False)
    evaluate_all()
    assert Delivery.objects.get(sync=sync, action=Delivery.EXIT).state == Delivery.PENDING
    sync_save(data={"additive_only": True}, instance=sync)
    deliver(destination)

    assert sent("exit") == []
    assert Delivery.objects.get(sync=sync, action=Delivery.EXIT).last_error == ADDITIVE_ONLY
    assert SyncRun.objects.filter(sync=sync).order_by("-started_at").first().skipped == 1


def test_an_additive_only_suppression_sync_still_sends_its_entries_at_once(source, livelike, livelike_destination):
    audience_save(data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"attribute": "flag", "eq": True}})
    sync = sync_save(data={"key": "buyers-livelike", "audience": "buyers", "destination": "livelike", "additive_only": True})
    flag(source, ["b0", "b1"], True)
    evaluate_all()
    deliver(livelike_destination)
    flag(source, ["b0"], False)
    evaluate_all()
    deliver(livelike_destination)

    assert livelike.members("buyers") == {"b0", "b1"}
    assert [row["action"] for row in livelike.rows_for("b0")] == [True]
    lag = suppression_lag(sync, since=timezone.now() - timedelta(hours=1))
    assert lag.count == 2  # the two suppressions, and nothing for the exit never sent


# --- the platform's minimum -----------------------------------------------------------------


def twelve_then_five_leave(source, board) -> Sync:
    sync = flagged_sync()
    flag(source, people("p", 12), True)
    evaluate_all()
    deliver(board)
    flag(source, people("p", 5), False)
    evaluate_all()
    return sync


def test_removals_that_would_go_under_the_minimum_are_held_and_go_once_it_is_back_over(source, board):
    sync = twelve_then_five_leave(source, board)
    hold = RemovalHold.objects.get(sync=sync)
    assert hold.removals == 3 and hold.reason.startswith("under the platform's minimum: Toy board needs at least 10 people")
    assert sorted(Delivery.objects.filter(hold=hold, state=Delivery.HELD).values_list("customer_id", flat=True)) == [
        "p2",
        "p3",
        "p4",
    ]
    alert = Alert.objects.get(kind=Alert.UNDER_MINIMUM)
    assert alert.details == {"hold": hold.pk, "removals": 3, "minimum": 10, "downstream": 10}
    deliver(board)
    assert sent("exit") == ["p0", "p1"]  # 12 → 10, no further

    flag(source, ["q0"], True)
    evaluate_all()
    deliver(board)  # q0 acknowledged: one more may go
    assert sent("exit") == ["p0", "p1", "p2"]
    hold.refresh_from_db()
    assert hold.removals == 2 and hold.decision == RemovalHold.PENDING
    alert.refresh_from_db()
    assert alert.is_open and alert.details["removals"] == 2

    flag(source, ["q1", "q2", "q3"], True)
    evaluate_all()
    deliver(board)
    assert sent("exit") == ["p0", "p1", "p2", "p3", "p4"]
    hold.refresh_from_db()
    alert.refresh_from_db()
    assert hold.decision == RemovalHold.APPROVED and alert.resolved_at is not None
    assert alert.details["resolution"] == "Flagged is back over Toy board's minimum of 10: the 2 removals still held went out."


def test_a_held_minimum_approved_by_a_person_is_sent_at_once(source, board):
    sync = twelve_then_five_leave(source, board)
    deliver(board)
    assert hold_decide(hold=RemovalHold.objects.get(sync=sync), approve=True) == 3
    deliver(board)
    assert sent("exit") == people("p", 5)
    alert = Alert.objects.get(kind=Alert.UNDER_MINIMUM)
    assert alert.details["resolution"] == "A person approved the held removals on the sync page."


def test_an_approved_mass_removal_still_stops_at_the_minimum(source, monkeypatch):
    destination = toy_with_minimum(monkeypatch, 15)
    sync = flagged_sync()
    flag(source, people("p", 20), True)
    evaluate_all()
    deliver(destination)
    flag(source, people("p", 12), False)
    evaluate_all()
    mass = RemovalHold.objects.get(sync=sync)
    assert mass.reason == "12 of 20 members (60%) would be removed at once"
    assert hold_decide(hold=mass, approve=True) == 12
    deliver(destination)

    assert sent("exit") == ["p0", "p1", "p10", "p11", "p2"]  # 20 → 15: the five oldest removals (ingest made p10 third)
    minimum = RemovalHold.objects.get(sync=sync, decision=RemovalHold.PENDING)
    assert minimum.removals == 7 and minimum.pk != mass.pk
    assert Alert.objects.get(kind=Alert.MASS_REMOVAL).resolved_at is not None
    assert Alert.objects.get(kind=Alert.UNDER_MINIMUM).is_open


def test_a_kind_without_a_minimum_never_holds_for_one(source, monkeypatch):
    destination = toy_with_minimum(monkeypatch, None)
    flagged_sync()
    flag(source, people("p", 12), True)
    evaluate_all()
    deliver(destination)
    flag(source, people("p", 3), False)
    evaluate_all()
    deliver(destination)
    assert sent("exit") == people("p", 3)
    assert not RemovalHold.objects.exists() and not Alert.objects.exists()
