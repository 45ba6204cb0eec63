"""Write keys carry scopes: a browser key (`track`) sends track, identify, page and screen and
nothing else; erasure and outcomes need a server key that carries `erase` or `outcomes`."""

import json
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.models import Erasure, Event, Person, Source
from audiences.services import audience_save
from syncs.models import Outcome
from tests.conftest import IngestClient, basic_auth

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop_person(db):
    """A person with events that came from another source than the one trying to erase them."""
    shop, _ = source_create(name="shop")
    ingest_messages(
        source=shop,
        messages=[
            Message("identify", "cus_00042", "m0", timezone.now(), traits={"email": "ann@example.com"}),
            *[Message("event", "cus_00042", f"m{n}", timezone.now(), name="Order Completed") for n in range(1, 14)],
        ],
    )
    return Person.objects.get(customer_id="cus_00042")


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def create_source(*args) -> str:
    out = StringIO()
    call_command("create_source", *args, stdout=out, stderr=StringIO())
    return last_line(out.getvalue())


def outcomes_body():
    return {"outcomes": [{"audience": "carts", "date": timezone.localdate().isoformat(), "conversions": 1, "spend": 10}]}


def test_a_fresh_source_gets_a_track_key(db):
    create_source("web")
    assert Source.objects.get(name="web").scopes == ["track"]


def test_a_fresh_track_key_cannot_erase_anyone(client, shop_person):
    key = create_source("sectest")
    ingest = IngestClient(client, Source.objects.get(name="sectest"), key)
    response = ingest.track_api("DELETE", "customers/cus_00042")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    assert answer["code"] == "forbidden"
    assert "erase" in answer["message"] and "scope" in answer["message"]
    assert answer["errors"][0]["message"] == answer["message"]
    assert Person.objects.filter(customer_id="cus_00042").exists()
    assert Event.objects.filter(person=shop_person).count() == 13
    assert not Erasure.objects.exists()


def test_a_fresh_track_key_cannot_post_outcomes(client, db):
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    key = create_source("sectest")
    response = client.post(
        "/ingest/v1/outcomes", json.dumps(outcomes_body()), content_type="application/json", HTTP_AUTHORIZATION=basic_auth(key)
    )
    assert response.status_code == 403
    assert "outcomes" in response.json()["message"] and "scope" in response.json()["message"]
    assert not Outcome.objects.exists()


def test_a_track_key_still_sends_every_kind_of_message(client, db):
    key = create_source("web")
    ingest = IngestClient(client, Source.objects.get(name="web"), key)
    for path, body in [
        ("/ingest/v1/track", {"userId": "u1", "event": "Added to Cart", "messageId": "a"}),
        ("/ingest/v1/identify", {"userId": "u1", "traits": {"email": "u1@example.com"}}),
        ("/ingest/v1/page", {"userId": "u1", "name": "Home", "messageId": "b"}),
        ("/ingest/v1/screen", {"userId": "u1", "name": "Home", "messageId": "c"}),
        ("/ingest/v1/batch", {"batch": [{"type": "track", "userId": "u1", "event": "Viewed", "messageId": "d"}]}),
    ]:
        assert ingest.post(path, body).status_code == 200, path
    assert ingest.track_api("PUT", "customers/u2", {"plan": "pro"}).status_code == 200
    assert ingest.track_api("POST", "customers/u2/events", {"name": "Order Completed", "id": "e"}).status_code == 200
    assert Event.objects.count() == 5


def test_a_key_with_erase_can_erase(client, shop_person):
    key = create_source("backend", "--scope", "track,erase")
    ingest = IngestClient(client, Source.objects.get(name="backend"), key)
    response = ingest.track_api("DELETE", "customers/cus_00042")
    assert response.status_code == 200, response.content
    assert not Person.objects.filter(customer_id="cus_00042").exists() and not Event.objects.exists()
    assert Erasure.objects.get().events_deleted == 13


def test_a_key_with_outcomes_can_post_outcomes_but_not_track(client, db):
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    key = create_source("ads-reporting", "--scope", "outcomes")
    assert Source.objects.get(name="ads-reporting").scopes == ["outcomes"]
    response = client.post(
        "/ingest/v1/outcomes", json.dumps(outcomes_body()), content_type="application/json", HTTP_AUTHORIZATION=basic_auth(key)
    )
    assert response.status_code == 200 and Outcome.objects.count() == 1
    response = client.post(
        "/ingest/v1/track",
        json.dumps({"userId": "u1", "event": "x", "messageId": "m"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=basic_auth(key),
    )
    assert response.status_code == 403 and "track" in response.json()["message"]
    assert not Person.objects.exists()


def test_scopes_are_kept_in_a_fixed_order_and_unknown_ones_are_refused(db):
    create_source("server", "--scope", "outcomes, erase,track")
    assert Source.objects.get(name="server").scopes == ["track", "erase", "outcomes"]
    with pytest.raises(CommandError, match="'delete' is not a scope.*track, erase, outcomes"):
        create_source("bad", "--scope", "track,delete")
    with pytest.raises(CommandError, match="at least one scope"):
        create_source("empty", "--scope", ",")
    assert not Source.objects.filter(name__in=["bad", "empty"]).exists()


def test_rotating_a_key_keeps_its_scopes(db):
    create_source("backend", "--scope", "track,erase")
    create_source("backend", "--rotate")
    assert Source.objects.get(name="backend").scopes == ["track", "erase"]


def test_a_superuser_sets_scopes_in_the_admin(client, db):
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests-1"))
    response = client.post("/admin/audiences/source/add/", {"name": "backend", "scopes": ["track", "erase"]})
    assert response.status_code in (200, 302), response.content.decode()[:2000]  # the page that shows the key once
    source = Source.objects.get(name="backend")
    assert source.scopes == ["track", "erase"]
    response = client.post(f"/admin/audiences/source/{source.pk}/change/", {"name": "backend", "scopes": ["outcomes"]})
    assert response.status_code == 302
    assert Source.objects.get(name="backend").scopes == ["outcomes"]
    response = client.post(f"/admin/audiences/source/{source.pk}/change/", {"name": "backend"})
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert Source.objects.get(name="backend").scopes == ["outcomes"]
