from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from audiences.ingest import source_revoke
from audiences.models import Erasure, Event, EventStat, Person

pytestmark = pytest.mark.django_db


def track(user, event, message_id, at=None, **properties):
    message = {"type": "track", "userId": user, "event": event, "messageId": message_id, "properties": properties}
    if at:
        message["timestamp"] = at.isoformat()
    return message


def test_batch_creates_people_events_and_aggregates(ingest):
    t0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    response = ingest.batch(
        [
            track("u1", "Added to Cart", "m1", t0, category="serum"),
            track("u1", "Added to Cart", "m2", t0 + timedelta(hours=3)),
            track("u1", "Added to Cart", "m3", t0 - timedelta(hours=1)),  # out of order
            track("u2", "Order Completed", "m4", t0),
        ]
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"success": True, "accepted": 4, "duplicates": 0}
    stat = EventStat.objects.get(person__customer_id="u1", name="Added to Cart")
    assert (stat.count, stat.first_at, stat.last_at) == (3, t0 - timedelta(hours=1), t0 + timedelta(hours=3))
    assert Event.objects.get(message_id="m1").properties == {"category": "serum"}
    assert Person.objects.count() == 2


def test_same_batch_twice_lands_once(ingest):
    batch = [track("u1", "Checkout Started", f"m{n}") for n in range(5)]
    assert ingest.batch(batch).json()["accepted"] == 5
    again = ingest.batch(batch).json()
    assert again == {"success": True, "accepted": 0, "duplicates": 5}
    assert Event.objects.count() == 5
    assert EventStat.objects.get().count == 5


def test_duplicate_message_ids_inside_one_batch_count_once(ingest):
    response = ingest.batch([track("u1", "Added to Cart", "same"), track("u1", "Added to Cart", "same")])
    assert response.json()["accepted"] == 1
    assert EventStat.objects.get().count == 1


def test_message_ids_are_unique_per_source_not_globally(ingest, client):
    from audiences.ingest import source_create

    _, other_key = source_create(name="app")
    ingest.batch([track("u1", "Added to Cart", "m1")])
    ingest.batch([track("u1", "Added to Cart", "m1")], key=other_key)
    assert Event.objects.count() == 2


def test_message_without_id_is_deduplicated_by_content(ingest):
    message = {"type": "track", "userId": "u1", "event": "Product Viewed", "timestamp": "2026-11-01T10:00:00Z"}
    ingest.batch([message])
    ingest.batch([{**message, "sentAt": "2026-11-01T10:00:05Z"}])
    assert Event.objects.count() == 1


def test_identify_merges_traits_instead_of_replacing(ingest):
    ingest.batch([{"type": "identify", "userId": "u1", "traits": {"email": "Ann@Example.com", "vip_tier": "gold", "ltv": 10}}])
    ingest.batch([{"type": "identify", "userId": "u1", "traits": {"ltv": 25, "phone": "+1 415 555 0100", "vip_tier": None}}])
    person = Person.objects.get(customer_id="u1")
    assert person.attributes == {"email": "Ann@Example.com", "ltv": 25, "phone": "+1 415 555 0100"}
    assert (person.email, person.phone) == ("Ann@Example.com", "+1 415 555 0100")


@pytest.mark.parametrize(
    "phone, e164",
    [
        ("+1 (415) 555-0100", "+14155550100"),
        ("415-555-0100", "+14155550100"),  # no country code: read in PHONE_DEFAULT_REGION (US)
        ("+44 7911 123456", "+447911123456"),
        ("555", ""),  # not a valid number: kept as written, no E.164 form
    ],
)
def test_identify_keeps_the_phone_as_written_and_its_e164_form(ingest, phone, e164):
    ingest.batch([{"type": "identify", "userId": "u1", "traits": {"phone": phone}}])
    person = Person.objects.get(customer_id="u1")
    assert (person.phone, person.phone_e164) == (phone, e164)
    ingest.batch([{"type": "identify", "userId": "u1", "traits": {"phone": None}}])
    person.refresh_from_db()
    assert (person.phone, person.phone_e164) == ("", "")


def test_track_api_attributes_set_the_e164_phone_too(ingest, settings):
    settings.PHONE_DEFAULT_REGION = "GB"
    assert ingest.track_api("PUT", "customers/c1", {"phone": "07911 123456"}).status_code == 200
    assert Person.objects.get(customer_id="c1").phone_e164 == "+447911123456"


def test_numeric_user_id_is_the_same_person_as_its_string(ingest):
    ingest.batch([{"type": "identify", "userId": 42, "traits": {"a": 1}}])
    ingest.batch([{"type": "identify", "userId": "42", "traits": {"b": 2}}])
    assert Person.objects.get().attributes == {"a": 1, "b": 2}


def test_page_and_screen_are_stored_as_events(ingest):
    ingest.batch(
        [
            {"type": "page", "userId": "u1", "name": "Serums", "category": "Shop", "properties": {"url": "/serums"}},
            {"type": "screen", "userId": "u1", "name": "Cart"},
        ]
    )
    page = Event.objects.get(name="Page Viewed")
    assert page.properties == {"url": "/serums", "name": "Serums", "category": "Shop"}
    assert Event.objects.filter(name="Screen Viewed", properties__name="Cart").exists()


@pytest.mark.parametrize(
    "path,body",
    [
        ("/ingest/v1/track", {"userId": "u1", "event": "Order Completed", "messageId": "x"}),
        ("/ingest/v1/identify", {"userId": "u1", "traits": {"vip_tier": "gold"}}),
        ("/ingest/v1/page", {"userId": "u1", "name": "Home"}),
        ("/ingest/v1/screen", {"userId": "u1", "name": "Home"}),
    ],
)
def test_single_message_endpoints(ingest, path, body):
    response = ingest.post(path, body)
    assert response.status_code == 200, response.content
    assert Person.objects.filter(customer_id="u1").exists()


def test_gzip_body_is_accepted(ingest):
    response = ingest.batch([track("u1", "Added to Cart", "g1")], gzip_body=True)
    assert response.status_code == 200
    assert Event.objects.filter(message_id="g1").exists()


def test_bearer_write_key_is_accepted(ingest):
    response = ingest.client.post(
        "/ingest/v1/batch",
        {"batch": [track("u1", "Added to Cart", "b1")]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {ingest.key}",
    )
    assert response.status_code == 200


def test_timestamp_defaults_to_original_timestamp_then_to_now(ingest):
    before = timezone.now()
    ingest.batch(
        [
            {"type": "track", "userId": "u1", "event": "A", "messageId": "1", "originalTimestamp": "2026-11-01T08:00:00+02:00"},
            {"type": "track", "userId": "u1", "event": "B", "messageId": "2"},
        ]
    )
    assert Event.objects.get(name="A").occurred_at == datetime(2026, 11, 1, 6, tzinfo=UTC)
    assert Event.objects.get(name="B").occurred_at >= before


def test_revoked_key_gets_401(ingest, nothing_written):
    source_revoke(source=ingest.source)
    with nothing_written():
        response = ingest.batch([track("u1", "Added to Cart", "r1")])
    assert response.status_code == 401
    assert "write key" in response.json()["message"]


@pytest.mark.parametrize("auth", [None, "Basic !!!notbase64", "Basic " + "d3Jvbmc6", "Token abc"])
def test_missing_or_wrong_key_gets_401(client, source_and_key, nothing_written, auth):
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    with nothing_written():
        response = client.post("/ingest/v1/batch", {"batch": []}, content_type="application/json", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")


def test_get_on_ingest_is_405_not_a_login_redirect(client):
    response = client.get("/ingest/v1/batch")
    assert response.status_code == 405
    assert response["Allow"] == "POST"


# --- Customer.io Track API v1 -----------------------------------------------------------------


def test_track_api_put_merges_attributes_and_empty_string_removes(ingest):
    assert ingest.track_api("PUT", "customers/c1", {"email": "c1@example.com", "plan": "pro", "ltv": 3}).status_code == 200
    assert ingest.track_api("PUT", "customers/c1", {"plan": "", "ltv": 4}).status_code == 200
    person = Person.objects.get(customer_id="c1")
    assert person.attributes == {"email": "c1@example.com", "ltv": 4}
    assert person.email == "c1@example.com"


def test_track_api_event_with_unix_timestamp_and_id_dedup(ingest):
    body = {"name": "Order Completed", "data": {"revenue": 30}, "timestamp": 1764000000, "id": "01HZX"}
    assert ingest.track_api("POST", "customers/c1/events", body).status_code == 200
    assert ingest.track_api("POST", "customers/c1/events", body).status_code == 200
    event = Event.objects.get()
    assert event.occurred_at == datetime.fromtimestamp(1764000000, tz=UTC)
    assert event.properties == {"revenue": 30}
    assert EventStat.objects.get().count == 1


def test_track_api_delete_erases_person_and_events(ingest):
    ingest.track_api("POST", "customers/c1/events", {"name": "Order Completed", "id": "e1"})
    ingest.track_api("PUT", "customers/c1", {"email": "c1@example.com"})
    response = ingest.track_api("DELETE", "customers/c1")
    assert response.status_code == 200
    assert not Person.objects.exists() and not Event.objects.exists() and not EventStat.objects.exists()
    erasure = Erasure.objects.get()
    assert erasure.events_deleted == 1
    assert "c1" not in erasure.customer_id_hash


def test_track_api_needs_site_id_and_key(ingest, nothing_written):
    with nothing_written():
        assert ingest.track_api("PUT", "customers/c1", {"a": 1}, site_id="other").status_code == 401
        assert ingest.track_api("PUT", "customers/c1", {"a": 1}, key="wrong").status_code == 401
        response = ingest.client.put(
            "/track/api/v1/customers/c1", b"{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {ingest.key}"
        )
        assert response.status_code == 401
