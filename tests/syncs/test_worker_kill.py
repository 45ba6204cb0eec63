"""The worker, for real: SIGKILL it at random moments while it delivers, and two at once."""

import random
import time

import pytest
import requests
from django.db import close_old_connections

from audiences.ingest import source_create
from audiences.models import Membership, PendingEvaluation
from audiences.services import audience_save
from syncs.models import Delivery
from syncs.services import destination_save, sync_save
from tests.contract_servers.common import FaultPlan
from tests.contract_servers.livelike import LiveLikeServer
from tests.processes import running_stack, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
PEOPLE = 120


def flagged_audience_to(livelike, monkeypatch, **destination):
    monkeypatch.setenv("LL_TOKEN", "producer-token")
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": livelike.api_url, "client_id": "client-1"},
            "credentials": {"producer_token": "env:LL_TOKEN"},
            "max_attempts": 50,
            **destination,
        }
    )
    sync_save(data={"key": "flagged-livelike", "audience": "flagged", "destination": "livelike"})
    return source_create(name="web")[1]


def post_flags(stack, key, flags: dict):
    batch = [{"type": "identify", "userId": f"p{n:03d}", "traits": {"flag": value}} for n, value in flags.items()]
    response = requests.post(f"{stack.web_url}/ingest/v1/batch", json={"batch": batch}, auth=(key, ""), timeout=30)
    assert response.status_code == 200, response.text


def settled():
    close_old_connections()
    return not PendingEvaluation.objects.exists() and not Delivery.objects.filter(state__in=Delivery.OPEN_STATES).exists()


def current_members():
    close_old_connections()
    return set(
        Membership.objects.filter(audience__key="flagged", exited_at__isnull=True).values_list("person__customer_id", flat=True)
    )


def test_sigkill_during_deliveries_loses_nothing(monkeypatch):
    # A slow destination (every answer takes 0.15 s) so that kills land mid-request often.
    faults = FaultPlan(rate=0.5, kinds=("timeout",), seed=7, slow_seconds=0.15)
    with LiveLikeServer(token="producer-token", client_id="client-1", faults=faults) as livelike:
        key = flagged_audience_to(livelike, monkeypatch, timeout_s=1.0, retry_base_s=0.2, retry_cap_s=1.0, batch_size=20)
        rng = random.Random(20261129)
        with running_stack(workers=1) as stack:
            kills = 0
            for _ in range(24):
                flags = {n: rng.random() < 0.5 for n in rng.sample(range(PEOPLE), 40)}
                post_flags(stack, key, flags)
                time.sleep(rng.uniform(0.05, 0.6))
                stack.kill_worker(stack.workers[0])
                kills += 1
                stack.start_worker()
                time.sleep(rng.uniform(0.0, 0.3))
            # the last word for everyone, then let the worker finish
            post_flags(stack, key, {n: n % 3 == 0 for n in range(PEOPLE)})
            wait_until(settled, timeout=180, interval=0.5)
        downstream = livelike.members("flagged")
        expected = current_members()
        duplicates = len(livelike.duplicates())
        print(
            f"\n{kills} SIGKILLs; {livelike.rows_received} rows received, {duplicates} rows sent twice; "
            f"{len(expected)} members, downstream {len(downstream)}"
        )
        assert kills >= 20
        assert expected == {f"p{n:03d}" for n in range(PEOPLE) if n % 3 == 0}
        assert downstream == expected
        assert not Delivery.objects.filter(state=Delivery.DEAD).exists()
        assert livelike.exits_before_entry() == []


def most_in_flight(log) -> int:
    """The most requests the server had open at one moment."""
    edges = sorted([(r["received_at"], 1) for r in log] + [(r["answered_at"], -1) for r in log])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def test_two_workers_share_one_sender_per_destination_within_its_rate_limit(monkeypatch):
    """Two clusters, one destination: one sender at a time (the lease), so the rate limit holds
    across them and no more requests are out at once than the destination's concurrency. Two
    senders would each go at the full rate."""
    faults = FaultPlan(rate=1.0, kinds=("timeout",), seed=3, slow_seconds=0.05)  # every answer a little slow
    with LiveLikeServer(token="producer-token", client_id="client-1", faults=faults) as livelike:
        key = flagged_audience_to(livelike, monkeypatch, timeout_s=2.0, batch_size=10, rate_limit_per_s=20, concurrency=2)
        with running_stack(workers=2) as stack:
            for start in range(0, 600, 100):
                post_flags(stack, key, {n: True for n in range(start, start + 100)})
            wait_until(settled, timeout=120, interval=0.5)
        log = [r for r in livelike.request_log() if "audience-sync" in r["path"]]
        busiest_second = livelike.max_requests_in_any_1s_window
        print(
            f"\n{len(log)} requests from 2 workers, at most {busiest_second} in a second, at most {most_in_flight(log)} at once"
        )
        assert len(log) >= 60
        assert busiest_second <= 21  # 20 a second, and one more where a window edge falls between two
        assert most_in_flight(log) <= 2
        assert livelike.duplicates() == []
        assert len(livelike.members("flagged")) == 600
