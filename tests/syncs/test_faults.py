"""The fault acceptance test: a LiveLike that answers 429, 500, times out or resets the
connection on 30% of requests, and people entering and leaving over several rounds while
earlier changes are still being retried. Every change must arrive, in order per person,
without a retry ignoring Retry-After and without a dead letter."""

import itertools
import random
import time
from datetime import datetime

import pytest
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Membership
from audiences.services import audience_save
from syncs.delivery import deliver_destination
from syncs.models import Delivery
from syncs.services import destination_save, sync_save
from tests.contract_servers.common import FaultPlan
from tests.contract_servers.livelike import LiveLikeServer

pytestmark = pytest.mark.django_db

SEED = 20261129
PEOPLE = [f"person-{i:02d}" for i in range(60)]
ROUNDS = 10
DRAIN_DEADLINE_S = 40


def set_flags(source, flags: dict[str, bool], round_no: int):
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("identify", customer_id, f"round-{round_no}-{customer_id}", now, traits={"flag": value})
            for customer_id, value in flags.items()
        ],
    )


def collapse_repeats(items):
    """A batch resent after a timeout arrives twice in a row; count it once."""
    return [key for key, _ in itertools.groupby(items)]


def test_every_change_arrives_in_order_through_429s_500s_timeouts_and_resets(source, monkeypatch):
    plan = FaultPlan(rate=0.3, kinds=("429", "500", "timeout", "reset"), seed=SEED, retry_after=1, slow_seconds=1.5)
    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", "producer-token")
    with LiveLikeServer(token="producer-token", client_id="client-1", faults=plan) as server:
        destination = destination_save(
            data={
                "key": "livelike",
                "name": "LiveLike",
                "kind": "livelike",
                "settings": {"base_url": server.api_url, "client_id": "client-1"},
                "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
                "timeout_s": 0.5,
                "retry_base_s": 0.3,
                "retry_cap_s": 1.0,
                "rate_limit_per_s": 200,
                "batch_size": 4,
                "max_attempts": 50,
            }
        )
        audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
        # half the audience leaving at once is the point here, not something to hold for a person
        sync = sync_save(
            data={"key": "flagged-livelike", "audience": "flagged", "destination": "livelike", "removal_guard_share": 1.0}
        )

        rng = random.Random(SEED)
        flags = {customer_id: False for customer_id in PEOPLE}
        started = time.monotonic()
        for round_no in range(ROUNDS):
            # about half the people change each round; earlier changes may still be in retry
            share = 0.7 if round_no == 0 else 0.5
            changed = {c: not flags[c] for c in PEOPLE if rng.random() < share}
            flags.update(changed)
            set_flags(source, changed, round_no)
            evaluate_all()
            # a short turn: backoffs outlast it, so the next round's changes meet rows still in retry
            deliver_destination(destination.pk, max_seconds=0.3)

        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while Delivery.objects.filter(state__in=Delivery.OPEN_STATES).exists() and time.monotonic() < deadline:
            deliver_destination(destination.pk, max_seconds=5)
        elapsed = time.monotonic() - started

        counters = server.state()["counters"]
        duplicates = server.duplicates()
        print(
            f"\n{len(PEOPLE)} people, {ROUNDS} rounds, {Delivery.objects.count()} deliveries in {elapsed:.1f} s: "
            f"{counters['requests']} requests, faults {counters['faults']}, {counters['rows_applied']} rows applied, "
            f"{len(duplicates)} rows seen twice, {Delivery.objects.filter(state=Delivery.CANCELLED).count()} cancelled, "
            f"{Delivery.objects.filter(attempts__gt=1).count()} retried"
        )

        assert not Delivery.objects.filter(state__in=Delivery.OPEN_STATES).exists(), "not drained in time"
        outcomes = set(Delivery.objects.values_list("state", flat=True))
        assert outcomes <= {Delivery.SENT, Delivery.CANCELLED}, outcomes
        assert Delivery.objects.filter(state=Delivery.SENT).exists()
        assert sum(counters["faults"].values()) >= 10  # the faults really happened
        assert Delivery.objects.filter(attempts__gt=1).exists()

        members = set(
            Membership.objects.filter(audience__key="flagged", exited_at__isnull=True).values_list(
                "person__customer_id", flat=True
            )
        )
        assert members == {c for c, value in flags.items() if value}
        assert server.members("flagged") == members
        assert server.exits_before_entry() == []
        assert server.retry_after_violations == []
        assert server.server_errors == []

        # per person, what arrived is what was sent, in the order it happened
        for customer_id in PEOPLE:
            sent = [
                (d.action == Delivery.ENTER, d.changed_at)
                for d in Delivery.objects.filter(sync=sync, customer_id=customer_id, state=Delivery.SENT).order_by("id")
            ]
            arrived = collapse_repeats((row["action"], row["timestamp"]) for row in server.rows_for(customer_id))
            assert [action for action, _ in arrived] == [action for action, _ in sent], customer_id
            assert [datetime.fromisoformat(ts) for _, ts in arrived] == [at for _, at in sent], customer_id
        # every duplicate is a repeat of a row already applied, never a change out of order
        for duplicate in duplicates:
            assert any(
                r["action"] == duplicate["action"] and r["timestamp"] == duplicate["timestamp"] and r["seq"] < duplicate["seq"]
                for r in server.rows_for(duplicate["user_id"])
            )
