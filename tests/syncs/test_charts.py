"""The server-side charts read right: whole-number size axes, entries and exits rising from
their own zero line (never below it), a single suppression-lag point still drawn, and no empty
lag panels on an activation sync."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Group, User

from audiences.roles import VIEWER
from dashboard.charts import lag_chart, size_chart, whole_ticks

START = datetime(2026, 6, 1)


def series(sizes, entered=None, exited=None):
    entered = entered or [0] * len(sizes)
    exited = exited or [0] * len(sizes)
    return [(START + timedelta(days=i), s, e, x) for i, (s, e, x) in enumerate(zip(sizes, entered, exited))]


def axis_labels(svg: str) -> list[str]:
    """The labels left of the plot (the time labels run under it)."""
    return re.findall(r'<text x="42" y="[\d.]+" text-anchor="end" class="axis">([^<]*)</text>', svg)


@pytest.mark.parametrize(
    "high, expected",
    [
        (0, [0, 1]),
        (1, [0, 1]),
        (3, [0, 1, 2, 3]),
        (5, [0, 2, 4, 6]),
        (7, [0, 2, 4, 6, 8]),
        (38, [0, 10, 20, 30, 40]),
        (1234, [0, 500, 1000, 1500]),
    ],
)
def test_axis_ticks_are_whole_numbers_covering_the_highest_value(high, expected):
    assert whole_ticks(high) == expected


def test_a_small_audience_has_no_half_members_on_its_axis():
    svg = str(size_chart(series([1, 3, 2])))
    labels = axis_labels(svg)
    assert labels and all(re.fullmatch(r"\d+", label) for label in labels), labels
    assert {"0", "1", "2", "3"} <= set(labels)


def test_entries_and_exits_rise_from_their_zero_line():
    svg = str(size_chart(series([5, 2, 6], entered=[5, 0, 4], exited=[0, 3, 0])))
    zero = max(float(y) for y in re.findall(r'<line x1="48" x2="1090" y1="([\d.]+)"', svg))
    bars = re.findall(
        r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" fill="(#[0-9a-f]+)"><title>([^<]*)</title>', svg
    )
    assert len(bars) == 3
    for y, h, _, _ in bars:
        assert float(y) + float(h) == pytest.approx(zero, abs=0.11), "every bar stands on the zero line"
    titles = [title for *_, title in bars]
    assert titles == ["+5 entered", "3 exited", "+4 entered"]
    assert not any(title.startswith("-") for title in titles)


def test_a_single_lag_point_still_draws():
    points = [(START + timedelta(hours=i), None, None) for i in range(24)]
    points[10] = (points[10][0], 4.0, 9.0)
    svg = str(lag_chart(points, target=60))
    dots = re.findall(r"<circle [^>]*><title>([^<]*)</title>", svg)
    assert dots == ["4.0 s", "9.0 s"]


@pytest.mark.django_db
def test_an_activation_sync_without_removals_shows_no_empty_lag_panels(client, playbook_syncs):
    viewer = User.objects.create_user("vera", password="pw-for-tests-1", is_staff=True)
    viewer.groups.add(Group.objects.get(name=VIEWER))
    client.force_login(viewer)
    activation = client.get("/dashboard/syncs/carts-livelike/").content.decode()
    assert "Suppression lag" not in activation and "Lag distribution" not in activation
    assert "No one has left this activation audience in the last 24 hours" in activation
    suppression = client.get("/dashboard/syncs/buyers-livelike/").content.decode()
    assert "Suppression lag, last 24 hours" in suppression and "Lag distribution" in suppression
