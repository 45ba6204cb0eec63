import pytest

from audiences.ingest import source_create
from audiences.services import audience_save
from syncs.services import destination_save, sync_save
from tests.contract_servers.livelike import LiveLikeServer
from tests.contract_servers.webhook import WebhookReceiver


@pytest.fixture
def livelike():
    with LiveLikeServer(token="producer-token", client_id="client-1") as server:
        yield server


@pytest.fixture
def webhook_receiver():
    with WebhookReceiver(secret="hook-secret") as server:
        yield server


@pytest.fixture
def source(db):
    return source_create(name="shop")[0]


@pytest.fixture
def livelike_destination(livelike, monkeypatch):
    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", "producer-token")
    return destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": livelike.api_url, "client_id": "client-1"},
            "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
            "timeout_s": 1.0,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.5,
            "rate_limit_per_s": 200,
        }
    )


def buyers_and_carts():
    """The seed's two audiences: a suppression audience and a cart audience that excludes it."""
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    audience_save(
        data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}, "exclusions": ["buyers"]}
    )


@pytest.fixture
def playbook_syncs(livelike_destination):
    buyers_and_carts()
    return (
        sync_save(data={"key": "buyers-livelike", "audience": "buyers", "destination": "livelike", "fields": ["email"]}),
        sync_save(data={"key": "carts-livelike", "audience": "carts", "destination": "livelike"}),
    )
