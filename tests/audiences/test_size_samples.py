"""Size samples: evaluations under a minute apart merge into one sample, but never across zero,
so a drop to 0 and back shows in the samples, the weekly review's days at zero and the audience
chart (which marks a bucket's dip under its largest size)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group, User
from django.utils import timezone

from audiences.evaluation import record_size_sample
from audiences.models import SizeSample
from audiences.roles import VIEWER
from audiences.services import audience_save
from syncs.review import weekly_review
from syncs.selectors import size_series

pytestmark = pytest.mark.django_db

NOON = timezone.make_aware(datetime(2026, 6, 5, 12, 0))


def sample(audience, seconds, size, entered=0, exited=0):
    record_size_sample(
        audience, at=NOON + timedelta(seconds=seconds), size=size, entered=entered, exited=exited, full=False, duration_ms=1
    )


@pytest.fixture
def carts():
    return audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})


def test_a_drop_to_zero_and_back_within_a_minute_keeps_its_zero(carts):
    sample(carts, 0, 5, entered=5)
    sample(carts, 10, 0, exited=5)
    sample(carts, 20, 5, entered=5)
    assert list(SizeSample.objects.filter(audience=carts).order_by("at").values_list("size", flat=True)) == [5, 0, 5]
    assert weekly_review(week_ending=date(2026, 6, 7)).rows[0].days_at_zero == 1
    minute = size_series([carts.pk], since=NOON, until=NOON + timedelta(minutes=1), bucket=timedelta(seconds=10))[carts.pk]
    assert [size for _, size, _, _ in minute[:3]] == [5, 0, 5]


def test_samples_under_a_minute_apart_still_merge_away_from_zero(carts):
    sample(carts, 0, 5, entered=5)
    sample(carts, 10, 7, entered=2)
    sample(carts, 20, 0, exited=7)
    sample(carts, 30, 0)
    assert list(SizeSample.objects.filter(audience=carts).order_by("at").values_list("size", "entered", "exited")) == [
        (7, 7, 0),
        (0, 0, 7),
    ]


def test_the_audience_chart_marks_a_drop_to_zero_inside_one_bucket(carts, client):
    sample(carts, 0, 5, entered=5)
    sample(carts, 10, 0, exited=5)
    sample(carts, 20, 5, entered=5)
    viewer = User.objects.create_user("vera", password="pw-for-tests-1", is_staff=True)
    viewer.groups.add(Group.objects.get(name=VIEWER))
    client.force_login(viewer)
    with time_machine.travel(NOON + timedelta(hours=3), tick=False):
        page = client.get("/dashboard/audiences/carts/", {"by": "hour"}).content.decode()
    assert re.findall(r'<circle class="dip" [^>]*><title>([^<]*)</title>', page) == ["down to 0"]
