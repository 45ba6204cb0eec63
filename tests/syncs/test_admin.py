import pytest
from django.contrib.auth.models import Group, User

from audiences.models import Audience
from syncs.models import Destination

pytestmark = pytest.mark.django_db

SECRET = "pt_live_secret_value_123"


def manager_client(client):
    user = User.objects.create_user("mgr", password="x-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Retention manager"))
    client.force_login(user)
    return client


def destination_form(**extra):
    return {
        "key": "livelike", "name": "LiveLike", "kind": "livelike",
        "settings": '{"base_url": "https://cf-blast.livelikecdn.com/api/v1", "client_id": "abc"}',
        "batch_size": 500, "rate_limit_per_s": 10, "timeout_s": 10, "max_attempts": 8, "retry_base_s": 2,
        "retry_cap_s": 300, "concurrency": 4, "producer_token": SECRET, **extra,
    }


def test_admin_creates_a_destination_through_the_service_and_never_shows_the_secret(client):
    client = manager_client(client)
    response = client.post("/admin/syncs/destination/add/", destination_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    destination = Destination.objects.get()
    assert destination.credentials == {"producer_token": SECRET}
    assert SECRET not in destination.credentials_encrypted
    page = client.get(f"/admin/syncs/destination/{destination.pk}/change/").content.decode()
    assert SECRET not in page
    history = client.get(f"/admin/syncs/destination/{destination.pk}/history/").content.decode()
    assert SECRET not in history


def test_admin_keeps_the_stored_secret_when_left_empty_and_shows_service_errors(client):
    client = manager_client(client)
    client.post("/admin/syncs/destination/add/", destination_form())
    destination = Destination.objects.get()
    response = client.post(
        f"/admin/syncs/destination/{destination.pk}/change/", destination_form(producer_token="", batch_size=900)
    )
    assert response.status_code == 200
    assert "LiveLike takes at most 500 rows a request" in response.content.decode()
    response = client.post(f"/admin/syncs/destination/{destination.pk}/change/", destination_form(producer_token="", name="LL"))
    assert response.status_code == 302
    destination.refresh_from_db()
    assert destination.name == "LL" and destination.credentials == {"producer_token": SECRET}


def test_a_destination_without_its_token_is_refused(client):
    client = manager_client(client)
    response = client.post("/admin/syncs/destination/add/", destination_form(producer_token=""))
    assert response.status_code == 200
    assert "producer_token: required for livelike" in response.content.decode()
    assert not Destination.objects.exists()


def test_admin_audience_form_validates_the_rule_like_config_as_code(client):
    client = manager_client(client)
    response = client.post("/admin/audiences/audience/add/", {
        "key": "carts", "name": "Carts", "purpose": "activation", "source_kind": "rules",
        "rule": '{"event": "Added to Cart", "within": "2x"}', "source_settings": "{}", "cadence": "realtime",
        "enabled": "on",
    })
    assert response.status_code == 200
    assert "within: &quot;2x&quot; is not a duration such as 15m, 2h, 7d, 4w" in response.content.decode()
    assert not Audience.objects.exists()


def test_viewer_cannot_change_syncs_or_destinations(client):
    user = User.objects.create_user("v", password="x-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Viewer"))
    client.force_login(user)
    assert client.get("/admin/syncs/destination/").status_code == 200
    assert client.post("/admin/syncs/destination/add/", destination_form()).status_code == 403
    assert not Destination.objects.exists()
