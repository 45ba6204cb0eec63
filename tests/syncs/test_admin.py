"""The admin lists destinations and syncs, runs their actions and keeps their history; adding and
changing them is the dashboard editors' (forms made from the kind's spec, write-only
credentials, dry run first), where the admin sends whoever may do it. A viewer keeps the admin's
read-only page."""

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from audiences.models import Audience
from audiences.roles import VIEWER
from audiences.services import audience_save
from syncs.models import Destination, Sync
from syncs.services import destination_save, sync_save
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

SECRET = "pt_live_secret_value_123"


def livelike_form(server, **extra):
    """The dashboard editor's form, as a browser sends it."""
    return {
        "kind": "livelike",
        "key": "livelike",
        "name": "LiveLike",
        "setting__base_url": server.api_url,
        "setting__client_id": "abc",
        "credential__producer_token": SECRET,
        "batch_size": "500",
        "rate_limit_per_s": "10",
        **extra,
    }


def admin_form(server, **extra):
    """What the admin's old add and change forms took: settings as JSON, the token by name."""
    return {
        "key": "livelike",
        "name": "LiveLike",
        "kind": "livelike",
        "batch_size": "500",
        "rate_limit_per_s": "10",
        "settings": f'{{"base_url": "{server.api_url}", "client_id": "abc"}}',
        "producer_token": SECRET,
        **extra,
    }


@pytest.fixture
def stored(livelike):
    destination = destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": livelike.api_url, "client_id": "abc"},
            "credentials": {"producer_token": SECRET},
        }
    )
    audience_save(data={"key": "buyers", "name": "Buyers", "rule": {"attribute": "bought", "eq": True}})
    sync = sync_save(data={"key": "buyers-livelike", "audience": "buyers", "destination": "livelike"})
    return destination, sync


def test_the_admin_sends_adding_and_changing_to_the_dashboard_editors(manager_client, livelike, stored):
    destination, sync = stored
    for url, editor in [
        ("/admin/syncs/destination/add/", "/dashboard/destinations/new/"),
        (f"/admin/syncs/destination/{destination.pk}/change/", "/dashboard/destinations/livelike/"),
        ("/admin/syncs/sync/add/", "/dashboard/syncs/new/"),
        (f"/admin/syncs/sync/{sync.pk}/change/", "/dashboard/syncs/buyers-livelike/edit/"),
    ]:
        response = manager_client.get(url)
        assert (response.status_code, response["Location"]) == (302, editor), url
    # the old forms' bodies write nothing: raw JSON settings, a new sync live at once
    before = (list(Destination.objects.values()), list(Sync.objects.values()))
    assert manager_client.post("/admin/syncs/destination/add/", admin_form(livelike, key="other")).status_code == 302
    assert (
        manager_client.post(
            f"/admin/syncs/destination/{destination.pk}/change/", admin_form(livelike, name="Renamed", producer_token="typed")
        ).status_code
        == 302
    )
    assert (
        manager_client.post(f"/admin/syncs/sync/{sync.pk}/change/", {"key": "buyers-livelike", "dry_run": ""}).status_code == 302
    )
    # nor does reverting to a version in the history: the history is read, the editor changes
    first = destination.history.order_by("history_id").first()
    revert = manager_client.post(
        f"/admin/syncs/destination/{destination.pk}/history/{first.history_id}/", admin_form(livelike, name="Reverted")
    )
    assert revert.status_code == 403
    assert (list(Destination.objects.values()), list(Sync.objects.values())) == before
    page = manager_client.get(f"/admin/syncs/destination/{destination.pk}/history/{first.history_id}/").content.decode()
    assert 'name="_save"' not in page and SECRET not in page

    # the list, its actions and the history stay in the admin
    changelist = manager_client.get("/admin/syncs/sync/").content.decode()
    assert "buyers-livelike" in changelist and 'value="pause"' in changelist and 'value="send_test_cohort"' in changelist
    manager_client.post("/admin/syncs/sync/", {"action": "pause", "index": "0", "_selected_action": [str(sync.pk)]})
    sync.refresh_from_db()
    assert sync.paused
    assert manager_client.get(f"/admin/syncs/sync/{sync.pk}/history/").status_code == 200


def test_a_credential_typed_in_the_editor_is_stored_encrypted_and_shown_nowhere(manager_client, livelike):
    response = manager_client.post("/dashboard/destinations/new/", livelike_form(livelike))
    assert response.status_code == 302, response.content.decode()[:2000]
    destination = Destination.objects.get()
    assert destination.credentials == {"producer_token": SECRET}
    assert destination.credentials_encrypted and SECRET not in destination.credentials_encrypted
    change = destination.history.get()
    assert (change.history_type, change.history_user.username) == ("+", "rita")

    pages = {
        "editor": manager_client.get("/dashboard/destinations/livelike/"),
        "admin list": manager_client.get("/admin/syncs/destination/"),
        "admin history": manager_client.get(f"/admin/syncs/destination/{destination.pk}/history/"),
        "admin version": manager_client.get(f"/admin/syncs/destination/{destination.pk}/history/{change.history_id}/"),
        "setting history": manager_client.get("/dashboard/history/?kind=destination"),
        "viewer's admin page": logged_in(Client(), VIEWER, "viewer").get(f"/admin/syncs/destination/{destination.pk}/change/"),
    }
    for name, page in pages.items():
        assert page.status_code == 200, name
        content = page.content.decode()
        assert SECRET not in content and destination.credentials_encrypted not in content, name
    assert "producer_token" in pages["viewer's admin page"].content.decode()  # which credentials are set, not their values


def test_a_destination_without_its_token_is_refused(manager_client, livelike):
    response = manager_client.post("/dashboard/destinations/new/", livelike_form(livelike, credential__producer_token=""))
    assert response.status_code == 400
    assert 'id="id_credential__producer_token-error"' in response.content.decode()
    assert not Destination.objects.exists()


def test_admin_audience_form_validates_the_rule_like_config_as_code(client):
    user = User.objects.create_user("mgr", password="x-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Retention manager"))
    client.force_login(user)
    response = client.post(
        "/admin/audiences/audience/add/",
        {
            "key": "carts",
            "name": "Carts",
            "purpose": "activation",
            "source_kind": "rules",
            "rule": '{"event": "Added to Cart", "within": "2x"}',
            "source_settings": "{}",
            "cadence": "realtime",
            "enabled": "on",
        },
    )
    assert response.status_code == 200
    assert "within: &quot;2x&quot; is not a duration such as 15m, 2h, 7d, 4w" in response.content.decode()
    assert not Audience.objects.exists()


def test_a_viewer_reads_destinations_and_syncs_in_the_admin_and_changes_nothing(viewer_client, livelike, stored):
    destination, sync = stored
    assert viewer_client.get("/admin/syncs/destination/").status_code == 200
    for url in (f"/admin/syncs/destination/{destination.pk}/change/", f"/admin/syncs/sync/{sync.pk}/change/"):
        page = viewer_client.get(url)
        assert page.status_code == 200, url  # Django's read-only page, not a redirect
        assert 'name="_save"' not in page.content.decode() and 'name="key"' not in page.content.decode()
    before = (list(Destination.objects.values()), list(Sync.objects.values()))
    assert viewer_client.get("/admin/syncs/destination/add/").status_code == 403
    assert viewer_client.post("/admin/syncs/destination/add/", admin_form(livelike, key="other")).status_code == 403
    assert viewer_client.post(f"/admin/syncs/destination/{destination.pk}/change/", admin_form(livelike)).status_code == 403
    assert viewer_client.post(f"/admin/syncs/sync/{sync.pk}/change/", {"dry_run": "on"}).status_code == 403
    assert viewer_client.post("/dashboard/destinations/livelike/", livelike_form(livelike, name="Renamed")).status_code == 403
    assert (list(Destination.objects.values()), list(Sync.objects.values())) == before
