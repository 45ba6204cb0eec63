"""Every dashboard form and JSON endpoint answers odd input with a 400 that says what was wrong:
never a 500, and never a guess at what was meant (an unknown decision is not a discard)."""

import json

import pytest
from django.utils import timezone

from audiences.services import audience_save
from syncs.models import Alert, Destination, RemovalHold, Sync

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(db):
    audience = audience_save(data={"key": "vips", "name": "vips", "rule": {"attribute": "vip_tier", "eq": "gold"}})
    destination = Destination.objects.create(
        key="hook", name="Hook", kind="webhook", settings={"url": "https://example.com/hook"}
    )
    sync = Sync.objects.create(key="vips-hook", audience=audience, destination=destination)
    hold = RemovalHold.objects.create(sync=sync, reason="12 of 20 would leave", removals=12, audience_size_before=20)
    alert = Alert.objects.create(
        key=f"mass_removal:sync:{sync.pk}",
        kind=Alert.MASS_REMOVAL,
        sync=sync,
        audience=audience,
        message="12 removals held",
        opened_at=timezone.now(),
    )
    return sync, hold, alert


def test_an_unknown_hold_decision_is_a_400_and_decides_nothing(manager_client, world):
    sync, hold, _ = world
    response = manager_client.post(f"/dashboard/syncs/{sync.key}/holds/{hold.pk}", {"decision": "maybe"})
    assert response.status_code == 400
    assert "decision must be approve or discard" in response.content.decode()
    hold.refresh_from_db()
    assert hold.decision == RemovalHold.PENDING


@pytest.mark.parametrize("paused", ["yes", "", "2"])
def test_an_odd_pause_switch_is_a_400_and_changes_nothing(manager_client, world, paused):
    sync, _, _ = world
    Sync.objects.filter(pk=sync.pk).update(paused=True)
    response = manager_client.post(f"/dashboard/syncs/{sync.key}/pause", {"paused": paused})
    assert response.status_code == 400
    assert "paused must be 1 (pause) or 0 (resume)" in response.content.decode()
    assert Sync.objects.get(pk=sync.pk).paused is True


@pytest.mark.parametrize(
    "method,url,data",
    [
        ("get", "/dashboard/audiences/editor/check-name", {"name": "a\x00b"}),
        ("get", "/dashboard/audiences/editor/check-name", {"name": "vips", "key": "\x00"}),
        ("get", "/dashboard/people/", {"q": "cus\x00"}),
        ("get", "/admin/", {"destination": "\x00", "owner": "x"}),
        ("get", "/dashboard/history/", {"kind": "\x00"}),
        ("get", "/admin/audiences/person/", {"q": "\x00"}),
        ("post", "/dashboard/audiences/new/", {"key": "k", "name": "n\x00", "rule_yaml": "event: A\n"}),
        ("post", "/dashboard/alerts/{alert}/acknowledge", {"next": "/admin/\x00"}),
    ],
)
def test_text_with_a_nul_character_is_a_400_with_a_message(manager_client, world, method, url, data):
    response = getattr(manager_client, method)(url.format(alert=world[2].pk), data)
    assert response.status_code == 400
    assert "NUL character" in response.content.decode()


def test_a_nul_in_a_json_request_is_answered_in_json(manager_client, world):
    response = manager_client.post("/dashboard/audiences/editor/preview?x=%00", json.dumps({}), content_type="application/json")
    assert response.status_code == 400
    assert "NUL character" in response.json()["errors"][0]


def test_the_ingest_api_is_left_to_its_own_validation(client, db):
    response = client.post("/ingest/v1/batch?x=%00", json.dumps({"batch": []}), content_type="application/json")
    assert response.status_code == 401  # the key is checked first, as always
