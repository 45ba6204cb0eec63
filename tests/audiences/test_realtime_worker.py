"""Realtime audiences with the real worker: an ingest request, then the qcluster evaluates."""

import pytest
import requests
from django.db import close_old_connections

from audiences.ingest import source_create
from audiences.models import Membership
from audiences.services import audience_save
from tests.processes import running_stack, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def current_members(key):
    close_old_connections()
    return set(Membership.objects.filter(audience__key=key, exited_at__isnull=True).values_list("person__customer_id", flat=True))


def test_realtime_audience_follows_an_ingest_request_through_the_worker():
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    audience_save(
        data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}, "exclusions": ["buyers"]}
    )
    _, key = source_create(name="web")
    with running_stack() as stack:

        def post(body):
            return requests.post(f"{stack.web_url}/ingest/v1/batch", json={"batch": body}, auth=(key, ""), timeout=10)

        assert post([{"type": "track", "userId": "u1", "event": "Added to Cart", "messageId": "c1"}]).status_code == 200
        _, took = wait_until(lambda: current_members("carts") == {"u1"})
        print(f"entered the cart audience {took:.2f} s after the ingest request returned")
        assert post([{"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "o1"}]).status_code == 200
        _, took = wait_until(lambda: current_members("buyers") == {"u1"} and current_members("carts") == set())
        print(f"suppressed and out of the cart audience {took:.2f} s after the purchase")
