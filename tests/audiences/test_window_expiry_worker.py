"""Window expiry with the real worker: a cart whose two hours end a few seconds from now leaves
the audience within seconds of its window's end, with no new event and no full evaluation, and
does so too when the worker that waited for it died a moment before."""

import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from django.core.cache import cache
from django.db import close_old_connections, connection
from django.utils import timezone

from audiences.ingest import source_create
from audiences.models import Event, Membership
from audiences.services import audience_save
from audiences.tasks import EXPIRY_LEASE
from tests.processes import running_stack, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def membership(customer_id):
    close_old_connections()
    return Membership.objects.filter(audience__key="carts", person__customer_id=customer_id).first()


def cart(stack, key, customer_id, at):
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


def cart_ending_in(stack, key, customer_id, seconds: float):
    """A cart whose 2 hours end `seconds` from now, in the audience; when they end."""
    # relative to the clock the worker reads too (a year ahead under make test-future)
    cart(stack, key, customer_id, timezone.now() + timedelta(seconds=seconds) - timedelta(hours=2))
    wait_until(lambda: membership(customer_id))
    return Event.objects.get(message_id=f"cart-{customer_id}").occurred_at + timedelta(hours=2)


def seconds_late(customer_id, ended) -> float:
    left, _ = wait_until(lambda: (m := membership(customer_id)) and m.exited_at and m, timeout=40)
    return (left.exited_at - ended).total_seconds()


@contextmanager
def carts_with_a_worker():
    """The carts audience, a web server and a worker that has evaluated a first cart: (stack, key)."""
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    _, key = source_create(name="web")
    with running_stack() as stack:
        cart(stack, key, "warm-up", timezone.now())  # once this one is in, the worker is up
        wait_until(lambda: membership("warm-up"), timeout=30)
        yield stack, key


def while_the_waiter_waits(ended, seconds_before: float) -> None:
    """Once the waiter holds its lease, until `seconds_before` the window's end."""
    wait_until(lambda: cache.get(EXPIRY_LEASE))
    time.sleep(max((ended - timezone.now()).total_seconds() - seconds_before, 0))


def test_a_cart_leaves_within_seconds_of_its_window_ending():
    with carts_with_a_worker() as (stack, key):
        ended = cart_ending_in(stack, key, "u1", 4)
        late = seconds_late("u1", ended)
        print(f"left {late:.2f} s after the window ended")
        assert 0 < late < 3


def test_a_cart_leaves_within_seconds_when_the_worker_waiting_for_it_died_just_before():
    # The cluster is killed a second before the window ends, its waiter's lease still in the
    # cache, and started again at once: a new worker takes the lease over once nobody renews
    # it, instead of leaving the exit to the scheduler's first tick (~30 s later)
    with carts_with_a_worker() as (stack, key):
        ended = cart_ending_in(stack, key, "u1", 6)
        while_the_waiter_waits(ended, 1)
        lease = cache.get(EXPIRY_LEASE)
        stack.kill_worker(stack.workers[0])
        assert membership("u1").exited_at is None and lease
        stack.start_worker()
        late = seconds_late("u1", ended)
        print(f"left {late:.2f} s after the window ended, the worker killed 1 s before it and restarted")
        assert 0 < late < 10


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="drops the connections of PostgreSQL's other sessions")
def test_a_cart_leaves_within_seconds_when_the_database_dropped_the_waiters_connection():
    # a failover or a restarted server: every other session's connection is cut two seconds
    # before the window ends, the waiter's among them
    with carts_with_a_worker() as (stack, key):
        ended = cart_ending_in(stack, key, "u1", 6)
        while_the_waiter_waits(ended, 2)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cursor.fetchone()[0] >= 1
        late = seconds_late("u1", ended)
        print(f"left {late:.2f} s after the window ended, the database's connections cut 2 s before it")
        assert 0 < late < 5
