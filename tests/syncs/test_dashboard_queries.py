"""The dashboard's query count does not grow with the number of audiences or samples."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audiences.models import Audience, SizeSample
from syncs.models import Delivery, Destination, Sync, SyncRun

pytestmark = pytest.mark.django_db
MAX_QUERIES = 20


def build(first: int, count: int, hours: int = 24 * 8) -> None:
    now = timezone.now()
    audiences = Audience.objects.bulk_create(
        [
            Audience(
                key=f"aud_{n:03d}",
                name=f"Audience {n}",
                purpose="suppression" if n % 3 == 0 else "activation",
                rule={"event": "Added to Cart", "within": "2h"},
                current_size=100 + n,
                last_evaluated_at=now,
                identifier_coverage=0.95,
            )
            for n in range(first, first + count)
        ]
    )
    SizeSample.objects.bulk_create(
        [
            SizeSample(
                audience=a, at=now - timedelta(hours=h), last_at=now - timedelta(hours=h), size=100 + h % 7, entered=2, exited=1
            )
            for a in audiences
            for h in range(hours)
        ],
        batch_size=5000,
    )
    destination = Destination.objects.get_or_create(key="files", defaults={"name": "Files", "kind": "file"})[0]
    syncs = Sync.objects.bulk_create([Sync(key=f"s-{a.key}", audience=a, destination=destination) for a in audiences])
    SyncRun.objects.bulk_create(
        [SyncRun(sync=s, status="succeeded", started_at=now - timedelta(minutes=k)) for s in syncs for k in range(3)]
    )
    Delivery.objects.bulk_create(
        [
            Delivery(
                sync=s,
                customer_id="c",
                action="enter",
                triggered_at=now,
                changed_at=now,
                state="sent",
                acknowledged_at=now + timedelta(seconds=1),
                next_attempt_at=now,
            )
            for s in syncs
        ]
    )


def test_dashboard_queries_are_bounded_whatever_the_number_of_audiences(admin_client, django_assert_max_num_queries):
    build(0, 10)
    with django_assert_max_num_queries(MAX_QUERIES):
        small = admin_client.get("/admin/")
    assert small.status_code == 200 and b"Audience 9" in small.content
    build(10, 60)
    with django_assert_max_num_queries(MAX_QUERIES):
        large = admin_client.get("/admin/")
    assert large.status_code == 200
    assert large.content.count(b'class="spark"') == 70  # every audience with its sparkline
