"""The benchmark data generator: exact counts, the same rows for the same seed, EventStat equal
to the aggregate of the event table, the schema left as migrations made it, and the recent
windows the audience benchmark relies on."""

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Count, Max, Min

from audiences.models import Event, EventStat, Person, Source
from benchmarks.datagen import EVENT_NAMES, Plan, generate

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PEOPLE, EVENTS = 300, 3000
TABLES = [m._meta.db_table for m in (Person, Event, EventStat)]


def schema():
    with connection.cursor() as cursor:
        return {table: connection.introspection.get_constraints(cursor, table) for table in TABLES}


def store_digest() -> str:
    """Every generated row in a fixed order (database ids of EventStat and Source left out:
    they come from sequences)."""
    digest = hashlib.sha256()
    for row in Person.objects.order_by("id").values_list(
        "id", "customer_id", "email", "phone", "cio_id", "attributes", "is_test", "created_at", "updated_at", "phone_e164"
    ):
        digest.update(repr(row[:5] + (json.dumps(row[5], sort_keys=True),) + row[6:]).encode())
    for row in Event.objects.order_by("id").values_list(
        "id", "person_id", "source__name", "name", "occurred_at", "received_at", "properties", "message_id"
    ):
        digest.update(repr(row[:6] + (json.dumps(row[6], sort_keys=True),) + row[7:]).encode())
    for row in EventStat.objects.order_by("person_id", "name").values_list("person_id", "name", "first_at", "last_at", "count"):
        digest.update(repr(row).encode())
    return digest.hexdigest()


def clear_store():
    EventStat.objects.all().delete()
    Event.objects.all().delete()
    Person.objects.all().delete()
    Source.objects.filter(name="bench").delete()


@pytest.mark.django_db(transaction=True)
def test_generate_counts_determinism_and_exact_event_stats():
    migrated = schema()
    result = generate(people=PEOPLE, events=EVENTS, seed=7, now=NOW, days=30, progress=None)

    assert (result["people"], result["events"]) == (PEOPLE, EVENTS)
    assert Person.objects.count() == PEOPLE and Event.objects.count() == EVENTS
    assert list(Source.objects.values_list("name", flat=True)) == ["bench"]
    assert schema() == migrated, "indexes and constraints must be exactly as migrations made them"
    # the look-up form of each phone, as ingest would have stored it
    from audiences.identifiers import phone_e164

    phones = list(Person.objects.exclude(phone="").values_list("phone", "phone_e164"))
    assert phones and all(e164 == phone_e164(phone) for phone, e164 in phones)
    assert sum(bool(e164) for _, e164 in phones) > len(phones) / 2

    # EventStat is exactly the aggregate of the event table, for every (person, name).
    aggregate = {
        (r["person_id"], r["name"]): (r["first"], r["last"], r["n"])
        for r in Event.objects.values("person_id", "name").annotate(
            first=Min("occurred_at"), last=Max("occurred_at"), n=Count("id")
        )
    }
    stats = {(s.person_id, s.name): (s.first_at, s.last_at, s.count) for s in EventStat.objects.all()}
    assert stats == aggregate
    assert result["event_stats"] == len(aggregate)

    # Shape: ids as the benchmark expects, events inside the window, unique message ids.
    assert Person.objects.filter(customer_id="cus_0000001").exists()
    assert Person.objects.filter(is_test=True).count() == 5
    assert Event.objects.filter(occurred_at__gt=NOW).count() == 0
    assert Event.objects.filter(occurred_at__lt=NOW - timedelta(days=30, hours=1)).count() == 0
    assert Event.objects.values("message_id").distinct().count() == EVENTS
    by_name = dict(Event.objects.values_list("name").annotate(n=Count("id")))
    assert set(by_name) == set(EVENT_NAMES)
    assert by_name["Product Viewed"] > by_name["Added to Cart"] > by_name["Checkout Started"] > by_name["Order Completed"]

    # Profiles agree with the events: last_order_date is the last Order Completed, when there is one.
    for stat in EventStat.objects.filter(name="Order Completed").select_related("person"):
        attributes = stat.person.attributes
        assert attributes["last_order_date"] == int(stat.last_at.timestamp())
        assert attributes["orders_count"] >= stat.count
    for person in Person.objects.all():
        assert person.attributes["vip_tier"] in ("none", "silver", "gold", "platinum")
        assert person.email == person.attributes["email"].strip()

    # New rows after the load do not collide with the generated ids.
    # (ids may start above 1 when earlier tests used the table: SQLite keeps its sequence)
    highest = max(Person.objects.values_list("id", flat=True))
    assert Person.objects.create(customer_id="after-the-load").id > highest

    # The same seed writes the same rows; another seed does not.
    Person.objects.filter(customer_id="after-the-load").delete()
    first = store_digest()
    clear_store()
    generate(people=PEOPLE, events=EVENTS, seed=7, now=NOW, days=30, progress=None)
    assert store_digest() == first
    clear_store()
    generate(people=PEOPLE, events=EVENTS, seed=8, now=NOW, days=30, progress=None)
    assert store_digest() != first


@pytest.mark.django_db(transaction=True)
def test_generate_refuses_a_store_that_is_not_empty():
    Person.objects.create(customer_id="already-here")
    with pytest.raises(RuntimeError, match="empty"):
        generate(people=10, events=10, now=NOW, progress=None)


def test_recent_windows_have_realistic_shares():
    """What the audience benchmark's short windows find, at a tenth of its size (no database):
    ~0.5 % of people carted in the last 2 h, ~1 % ordered in the last 24 h, a few percent
    lapsed 60-90 days by last_order_date."""
    plan = Plan(people=20_000, events=200_000, seed=1, now=NOW, days=120)
    end = plan.end
    carted, ordered, count, previous, out_of_order = set(), set(), 0, 0, 0
    for rows in plan.event_slices():
        for id_, person, name, at, _properties, _message_id in rows:
            count += 1
            out_of_order += at < previous
            previous = at
            if name == 1 and at > end - 7200:
                carted.add(person)
            elif name == 3 and at > end - 86400:
                ordered.add(person)
            assert id_ == count and end - 120 * 86400 - 36000 < at <= end
    assert count == 200_000
    assert out_of_order < count / 1000, "events come in time order, as ingest would write them"
    assert 0.003 < len(carted) / plan.people < 0.009
    assert 0.006 < len(ordered) / plan.people < 0.02

    lapsed = tiers = 0
    for chunk in plan.people_chunks():
        for row in chunk:
            attributes = json.loads(row[5])
            last_order = attributes.get("last_order_date", 0)
            lapsed += end - 90 * 86400 <= last_order <= end - 60 * 86400
            tiers += attributes["vip_tier"] != "none"
    assert 0.02 < lapsed / plan.people < 0.08
    assert 0.2 < tiers / plan.people < 0.45
