"""The official Customer.io Data Pipelines Python SDK, pointed at the live test server."""

from datetime import UTC, datetime, timedelta

import pytest
from customerio import analytics

from audiences.ingest import source_create
from audiences.models import Event, EventStat, Person

PEOPLE = 100
START = datetime(2026, 11, 20, 9, tzinfo=UTC)


def send_everything(client):
    for n in range(PEOPLE):
        user = f"sdk-{n:03d}"
        client.identify(
            user_id=user,
            traits={"email": f"{user}@example.com", "vip_tier": "gold" if n % 10 == 0 else "none"},
            message_id=f"{user}-identify",
            timestamp=START,
        )
        client.track(
            user_id=user,
            event="Added to Cart",
            properties={"sku": "SER-01", "price": 38.0},
            message_id=f"{user}-cart",
            timestamp=START + timedelta(minutes=n),
        )
        client.track(
            user_id=user,
            event="Order Completed",
            properties={"revenue": 38.0},
            message_id=f"{user}-order",
            timestamp=START + timedelta(minutes=n, seconds=30),
        )


def run_client(url, key, *, gzip):
    errors = []
    client = analytics.Client(
        write_key=key,
        host=url + "/ingest",
        gzip=gzip,
        upload_size=100,
        on_error=lambda exc, batch: errors.append(exc),
        max_retries=2,
    )
    send_everything(client)
    client.flush()
    client.shutdown()
    return errors


@pytest.mark.django_db(transaction=True)
def test_sdk_identify_and_track_100_people_exactly_once_even_when_sent_twice(live_server):
    _, key = source_create(name="sdk")

    assert run_client(live_server.url, key, gzip=False) == []
    assert Person.objects.count() == PEOPLE
    assert Event.objects.count() == 2 * PEOPLE
    assert Person.objects.get(customer_id="sdk-010").attributes["vip_tier"] == "gold"

    # The same messages again (a client that retried, or a replayed batch), gzipped this time.
    assert run_client(live_server.url, key, gzip=True) == []
    assert Person.objects.count() == PEOPLE
    assert Event.objects.count() == 2 * PEOPLE
    assert set(EventStat.objects.values_list("count", flat=True)) == {1}
    assert Event.objects.filter(name="Order Completed", person__customer_id="sdk-042").get().occurred_at == (
        START + timedelta(minutes=42, seconds=30)
    )
