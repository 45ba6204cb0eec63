"""Window expiry with the real worker: a cart whose two hours end a few seconds from now leaves
the audience within seconds of its window's end, with no new event and no full evaluation."""

from datetime import timedelta

import pytest
import requests
from django.db import close_old_connections
from django.utils import timezone

from audiences.ingest import source_create
from audiences.models import Event, Membership
from audiences.services import audience_save
from tests.processes import running_stack, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def membership(customer_id):
    close_old_connections()
    return Membership.objects.filter(audience__key="carts", person__customer_id=customer_id).first()


def test_a_cart_leaves_within_seconds_of_its_window_ending():
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    _, key = source_create(name="web")
    with running_stack() as stack:

        def cart(customer_id, at):
            body = {
                "batch": [
                    {
                        "type": "track",
                        "userId": customer_id,
                        "event": "Added to Cart",
                        "messageId": f"cart-{customer_id}",
                        "timestamp": at.isoformat(),
                    }
                ]
            }
            assert requests.post(f"{stack.web_url}/ingest/v1/batch", json=body, auth=(key, ""), timeout=10).status_code == 200

        cart("warm-up", timezone.now())  # once this one is in, the worker is up
        wait_until(lambda: membership("warm-up"), timeout=30)
        # relative to the clock the worker reads too (a year ahead under make test-future)
        ends = timezone.now() + timedelta(seconds=4)
        cart("u1", ends - timedelta(hours=2))
        wait_until(lambda: membership("u1"))
        left, _ = wait_until(lambda: (m := membership("u1")) and m.exited_at and m, timeout=30)
        ended = Event.objects.get(message_id="cart-u1").occurred_at + timedelta(hours=2)
        late = (left.exited_at - ended).total_seconds()
        print(f"left {late:.2f} s after the window ended")
        assert 0 < late < 3
