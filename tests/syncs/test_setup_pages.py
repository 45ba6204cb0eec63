"""Destinations and syncs set up from the dashboard, against the LiveLike contract server:
forms made from the spec (no JSON typed), credentials write-only, the connection test, the
first batch shown as it goes on the wire, dry run first and going live as a recorded step."""

import json

import pytest
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.services import audience_save, identifier_policy_save
from syncs.delivery import deliver_destination
from syncs.destinations import registry
from syncs.models import Delivery, Destination, Sync
from syncs.services import destination_save
from tests.syncs import toy_destination

pytestmark = pytest.mark.django_db


def livelike_form(server, **extra):
    return {
        "kind": "livelike",
        "name": "LiveLike",
        "key": "livelike",
        "setting__base_url": server.api_url,
        "setting__client_id": "client-1",
        "credential__producer_token": "producer-token",
        "batch_size": 500,
        "rate_limit_per_s": 10,
        **extra,
    }


@pytest.fixture
def buyers(source):
    audience_save(data={"key": "buyers", "name": "Buyers", "rule": {"attribute": "bought", "eq": True}})
    ingest_messages(
        source=source,
        messages=[
            Message("identify", f"c{i}", f"m{i}", timezone.now(), traits={"bought": True, "email": f"C{i}@Example.com "})
            for i in range(3)
        ],
    )
    evaluate_all()


def test_the_destination_form_is_the_kind_s_own_fields_and_never_shows_a_credential(manager_client, livelike):
    page = manager_client.get("/dashboard/destinations/new/?kind=livelike").content.decode()
    assert 'name="setting__client_id"' in page and 'name="setting__base_url"' in page
    assert 'name="credential__producer_token"' in page and 'type="password"' in page
    assert 'name="settings"' not in page and "signing_secret" not in page  # no JSON, no other kind's secret

    response = manager_client.post("/dashboard/destinations/new/", livelike_form(livelike))
    assert response.status_code == 302 and response["Location"] == "/dashboard/destinations/livelike/"
    destination = Destination.objects.get(key="livelike")
    assert destination.settings == {"base_url": livelike.api_url, "client_id": "client-1"}
    assert destination.credentials == {"producer_token": "producer-token"}
    page = manager_client.get("/dashboard/destinations/livelike/").content.decode()
    assert "producer-token" not in page and "LiveLike producer token (stored)" in page

    # an empty credential keeps the stored one
    manager_client.post(
        "/dashboard/destinations/livelike/", livelike_form(livelike, name="LiveLike EU", credential__producer_token="")
    )
    destination.refresh_from_db()
    assert (destination.name, destination.credentials) == ("LiveLike EU", {"producer_token": "producer-token"})


def test_errors_stand_beside_their_fields_and_nothing_is_saved(manager_client, livelike):
    response = manager_client.post(
        "/dashboard/destinations/new/",
        livelike_form(livelike, setting__base_url="ftp://x", setting__client_id="", batch_size=900),
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="id_setting__client_id-error"' in page and 'id="id_batch_size-error"' in page
    assert "LiveLike takes at most 500 rows a request" in page
    assert not Destination.objects.exists()


def test_test_connection_asks_livelike_and_says_what_it_answered(manager_client, livelike):
    manager_client.post("/dashboard/destinations/new/", livelike_form(livelike))
    page = manager_client.post("/dashboard/destinations/livelike/test", follow=True).content.decode()
    assert "LiveLike accepted the producer token for application client-1." in page
    assert [r["path"] for r in livelike.state()["requests"]][-1] == "/api/v1/applications/client-1/validate-app/"

    destination = Destination.objects.get(key="livelike")
    destination.set_credentials({"producer_token": "wrong"}, {"producer_token": "keep"})
    destination.save()
    page = manager_client.post("/dashboard/destinations/livelike/test", follow=True).content.decode()
    assert "Test connection: 401: LiveLike refused the credentials" in page


def test_test_connection_asks_tiktok_and_says_what_it_answered(manager_client):
    from tests.contract_servers.tiktok import TikTokServer

    with TikTokServer("tt-dashboard-token", "7012345678901234567", audiences={"1800000000000001": "EMAIL_SHA256"}) as tiktok:
        response = manager_client.post(
            "/dashboard/destinations/new/",
            {
                "kind": "tiktok",
                "name": "TikTok",
                "key": "tiktok",
                "setting__base_url": tiktok.api_url,
                "setting__advertiser_id": "7012345678901234567",
                "setting__calculate_type": "EMAIL_SHA256",
                "credential__access_token": "tt-dashboard-token",
                "batch_size": 500,
                "rate_limit_per_s": 2,
            },
        )
        assert response.status_code == 302, response.content.decode()[:3000]
        page = manager_client.post("/dashboard/destinations/tiktok/test", follow=True).content.decode()
        assert (
            "Test connection: TikTok accepted the access token for advertiser Downstream Test Advertiser "
            "(7012345678901234567, STATUS_ENABLE); it holds 1 custom audience."
        ) in page
        assert [r["path"] for r in tiktok.request_log()] == [
            "/open_api/v1.3/advertiser/info/",
            "/open_api/v1.3/dmp/custom_audience/list/",
        ]

        tiktok.token = "rotated"
        page = manager_client.post("/dashboard/destinations/tiktok/test", follow=True).content.decode()
        assert (
            "Test connection: TikTok refused the access token or its permissions: TikTok code 40105 on the "
            "advertiser look-up: Access token is incorrect or has been revoked."
        ) in page
        assert "tt-dashboard-token" not in page


def test_a_sync_made_in_the_dashboard_starts_in_dry_run_shows_its_first_batch_and_goes_live(manager_client, livelike, buyers):
    manager_client.post("/dashboard/destinations/new/", livelike_form(livelike))
    step_two = manager_client.get("/dashboard/syncs/new/?audience=buyers&destination=livelike").content.decode()
    assert 'name="fields"' in step_two and 'name="identifier_policy"' in step_two and 'name="match_on"' not in step_two
    response = manager_client.post(
        "/dashboard/syncs/new/",
        {
            "audience": "buyers",
            "destination": "livelike",
            "key": "buyers-livelike",
            "mode": "membership",
            "fields": ["email"],
            "removal_guard_share": 0.3,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    sync = Sync.objects.get(key="buyers-livelike")
    assert sync.dry_run and sync.fields == ["email"]

    page = manager_client.get("/dashboard/syncs/buyers-livelike/").content.decode()
    assert "Dry run: nothing is sent yet" in page and 'id="go-live"' in page
    assert f"POST {livelike.api_url}/applications/client-1/segment-audience-sync/" in page
    assert "producer-token" not in page and "•••• (stored credential)" in page
    body = page.split('id="wire-body">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"')
    rows = json.loads(body)
    assert [(r["user_id"], r["email"], r["action"]) for r in rows] == [
        ("c0", "c0@example.com", True),
        ("c1", "c1@example.com", True),
        ("c2", "c2@example.com", True),
    ]

    deliver_destination(sync.destination_id)  # the dry run records, sends nothing
    assert livelike.members("buyers") == set()
    assert Delivery.objects.filter(sync=sync, state=Delivery.DRY_RUN).count() == 3

    manager_client.post("/dashboard/syncs/buyers-livelike/go-live")
    sync.refresh_from_db()
    assert not sync.dry_run
    change = sync.history.order_by("-history_date").first()
    assert (change.dry_run, change.history_user.username) == (False, "rita")
    deliver_destination(sync.destination_id)
    assert livelike.members("buyers") == {"c0", "c1", "c2"}
    again = manager_client.post("/dashboard/syncs/buyers-livelike/go-live", follow=True).content.decode()
    assert "Buyers-livelike is live already" in again  # the admin's message list capitalises


def test_a_viewer_may_read_destinations_but_not_add_or_go_live(viewer_client, livelike, buyers):
    destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": livelike.api_url, "client_id": "client-1"},
            "credentials": {"producer_token": "producer-token"},
        }
    )
    assert viewer_client.get("/dashboard/destinations/").status_code == 200
    assert viewer_client.get("/dashboard/destinations/new/?kind=livelike").status_code == 403
    assert viewer_client.post("/dashboard/destinations/livelike/test").status_code == 403
    assert viewer_client.get("/dashboard/syncs/new/").status_code == 403


def test_a_kind_registered_from_one_folder_is_in_the_dashboard_editor(manager_client, monkeypatch):
    monkeypatch.setitem(registry.KINDS, "toy", toy_destination.SPEC)
    kinds = manager_client.get("/dashboard/destinations/new/").content.decode()
    assert "?kind=toy" in kinds and "Toy board" in kinds
    page = manager_client.get("/dashboard/destinations/new/?kind=toy").content.decode()
    assert 'name="setting__board"' in page and 'name="credential__toy_api_key"' in page
    assert '<option value="blue">blue</option>' in page


def test_an_unknown_kind_or_audience_is_a_clear_400(manager_client):
    assert "There is no destination kind" in manager_client.get("/dashboard/destinations/new/?kind=nope").content.decode()
    response = manager_client.get("/dashboard/syncs/new/?audience=nope&destination=nope")
    assert response.status_code == 400 and "Choose an audience from the list." in response.content.decode()


def test_the_sync_form_refuses_a_policy_livelike_cannot_match_beside_the_field(manager_client, livelike, buyers):
    identifier_policy_save(data={"key": "hashed-email", "name": "Hashed email", "field": "email", "hash_sha256": True})
    manager_client.post("/dashboard/destinations/new/", livelike_form(livelike))
    step_two = manager_client.get("/dashboard/syncs/new/?audience=buyers&destination=livelike").content.decode()
    assert "hashed-email" not in step_two  # a policy the kind cannot use is not offered
    response = manager_client.post(
        "/dashboard/syncs/new/",
        {
            "audience": "buyers",
            "destination": "livelike",
            "key": "x",
            "mode": "membership",
            "identifier_policy": "hashed-email",
            "removal_guard_share": 0.3,
        },
    )
    assert response.status_code == 400 and 'id="id_identifier_policy-error"' in response.content.decode()
    assert not Sync.objects.exists()
