""" "vs 7 days ago" on the home page and the weekly review's change are one figure: the size at a
moment against the size seven days before it, and both pages say so. The review pages from one
week to the next."""

from __future__ import annotations

import re
from datetime import date, datetime

import pytest
import time_machine
from django.contrib.auth.models import Group, User
from django.utils import timezone

from audiences.models import Audience, SizeSample
from audiences.roles import VIEWER
from audiences.services import audience_save
from dashboard.rows import dashboard_rows
from syncs.review import weekly_review
from syncs.selectors import size_change

pytestmark = pytest.mark.django_db


def at(*args):
    return timezone.make_aware(datetime(*args))


@pytest.fixture
def carts():
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    for moment, size in ((at(2026, 5, 31, 12), 10), (at(2026, 6, 4, 12), 30), (at(2026, 6, 7, 18), 15)):
        SizeSample.objects.create(audience=audience, at=moment, last_at=moment, size=size)
    Audience.objects.filter(pk=audience.pk).update(current_size=15, last_evaluated_at=at(2026, 6, 7, 18))
    return Audience.objects.get(pk=audience.pk)


def test_home_and_review_agree_on_the_change_at_the_end_of_a_week(carts, client):
    with time_machine.travel(at(2026, 6, 8, 0, 0), tick=False):
        home = next(row for row in dashboard_rows() if row.audience == carts)
        review = next(row for row in weekly_review(week_ending=date(2026, 6, 7)).rows if row.audience == carts)
        assert (home.size_week_ago, home.audience.current_size, home.change) == (10, 15, 0.5)
        assert (review.size_start, review.size_end, review.change) == (10, 15, 0.5)
        assert (
            size_change([carts], at=at(2026, 6, 5))[carts.pk].before,
            size_change([carts], at=at(2026, 6, 5))[carts.pk].after,
        ) == (None, 30)

        viewer = User.objects.create_user("vera", password="pw-for-tests-1", is_staff=True)
        viewer.groups.add(Group.objects.get(name=VIEWER))
        client.force_login(viewer)
        page = client.get("/admin/").content.decode()
        assert "now vs same time last week" in page and "was 10" in page
        review_page = client.get("/dashboard/review/weekly/", {"week": "2026-06-07"}).content.decode()
        headers = re.sub(r"<[^>]+>", " ", re.search(r"<thead>(.*?)</thead>", review_page, re.DOTALL).group(1))
        assert re.search(r"Start\s+Mon 01 Jun", headers) and re.search(r"End\s+Sun 07 Jun", headers)
        assert re.search(r"Change\s+vs 7 days\s+before", headers)
        assert "Last week" not in headers and "This week" not in headers


def test_the_weekly_review_pages_back_and_forward(carts, client):
    viewer = User.objects.create_user("vera", password="pw-for-tests-1", is_staff=True)
    viewer.groups.add(Group.objects.get(name=VIEWER))
    client.force_login(viewer)
    with time_machine.travel(at(2026, 6, 10, 9, 0), tick=False):
        page = client.get("/dashboard/review/weekly/", {"week": "2026-05-31"}).content.decode()
        assert re.search(r'<a href="\?week=2026-05-24" rel="prev">', page)
        assert re.search(r'<a href="\?week=2026-06-07" rel="next">', page)
        current = client.get("/dashboard/review/weekly/").content.decode()  # the week ending today
        assert 'href="?week=2026-06-03" rel="prev"' in current and 'rel="next"' not in current
        assert "This week is still under way" in current


def test_a_week_before_an_audience_existed_has_no_size(carts):
    with time_machine.travel(at(2026, 6, 10, 9, 0), tick=False):
        row = next(r for r in weekly_review(week_ending=date(2026, 5, 24)).rows if r.audience == carts)
        assert (row.size_start, row.size_end, row.change) == (None, None, None)
