import json
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

from audiences.demo import build_funnels, build_people
from audiences.ingest import source_authenticate
from audiences.models import Event, EventStat, Person, Source

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_source_prints_a_working_key_as_last_line():
    out, _ = run("create_source", "shop")
    key = out.strip().splitlines()[-1]
    source = Source.objects.get(name="shop")
    assert source_authenticate(write_key=key) == source
    assert key not in source.write_key_hash and source.key_hint == key[-4:]


def test_create_source_refuses_a_duplicate_and_rotates_on_request():
    old_key = run("create_source", "shop")[0].splitlines()[-1]
    with pytest.raises(CommandError, match="already exists; use --rotate"):
        run("create_source", "shop")
    new_key = run("create_source", "shop", "--rotate")[0].splitlines()[-1]
    assert source_authenticate(write_key=old_key) is None
    assert source_authenticate(write_key=new_key).name == "shop"


def test_create_source_refuses_a_bad_name():
    with pytest.raises(CommandError, match="name"):
        run("create_source", "not a slug!")


def test_import_jsonl_reports_bad_lines_by_number_and_imports_the_rest(tmp_path):
    lines = [
        json.dumps({"type": "identify", "userId": "u1", "traits": {"vip_tier": "gold"}}),
        json.dumps(
            {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "a", "timestamp": "2026-11-01T10:00:00Z"}
        ),
        "{broken json",
        "",
        json.dumps({"type": "track", "event": "Order Completed", "messageId": "b"}),
        json.dumps({"type": "track", "userId": "u2", "event": "Added to Cart", "messageId": "c"}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CommandError) as failure:
        run("import_events", str(path))
    assert failure.value.returncode == 1
    assert "2 bad line(s)" in str(failure.value)
    assert Event.objects.count() == 2
    assert Person.objects.get(customer_id="u1").attributes == {"vip_tier": "gold"}

    err = StringIO()
    with pytest.raises(CommandError):
        call_command("import_events", str(path), stdout=StringIO(), stderr=err)
    report = err.getvalue()
    assert "line 3: the body is not valid JSON" in report
    assert "line 5: userId: is required" in report
    assert "100.0%" in report  # progress reaches the end
    assert Event.objects.count() == 2  # the second import found them all already there


def test_import_csv_with_property_and_trait_columns(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(
        "userId,event,timestamp,messageId,properties.revenue,category\n"
        "u1,Order Completed,1764000000,o1,38.5,serum\n"
        "u2,Order Completed,2026-11-02T10:00:00Z,o2,12,cleanser\n"
        "u3,,,,,\n"
        ",Order Completed,1764000000,o3,1,x\n"
        "u4,Order Completed,soon,o4,1,x\n"
    )
    with pytest.raises(CommandError):
        run("import_events", str(path))
    first = Event.objects.get(message_id="o1")
    assert first.properties == {"revenue": 38.5, "category": "serum"}
    assert first.occurred_at == datetime.fromtimestamp(1764000000, tz=UTC)
    assert Event.objects.count() == 2
    assert Person.objects.filter(customer_id="u3").exists()  # an identify with no traits


def test_import_clean_csv_exits_zero(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("customer_id,type,traits.vip_tier,email\nu1,identify,gold,u1@example.com\n")
    out, _ = run("import_events", str(path))
    assert "1 imported" in out and "0 bad" in out
    assert Person.objects.get().attributes == {"vip_tier": "gold", "email": "u1@example.com"}


def test_import_csv_without_id_column_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("event,timestamp\nA,1\n")
    with pytest.raises(CommandError, match="customer id column"):
        run("import_events", str(path))


def test_demo_is_deterministic_for_a_seed_and_anchor():
    import random

    anchor = datetime(2026, 11, 29, 12, tzinfo=UTC)

    def generate(seed):
        rng = random.Random(seed)
        people = build_people(rng, 200, anchor)
        return people, build_funnels(rng, people, anchor, 30)

    assert generate(3) == generate(3)
    assert generate(3) != generate(4)


def test_demo_loads_a_realistic_store_once():
    out, _ = run("demo", "--people", "300", "--anchor", "2026-11-29T12:00:00Z")
    assert "300 people" in out
    assert Person.objects.count() == 300
    names = set(Event.objects.values_list("name", flat=True))
    assert names == {"Product Viewed", "Added to Cart", "Checkout Started", "Order Completed"}
    sample = Person.objects.exclude(attributes__last_order_date=None).first().attributes
    assert {"lifetime_value", "vip_tier", "last_order_date", "email"} <= set(sample)
    assert Person.objects.filter(is_test=True).count() == 5
    # funnel order holds: nobody completes more orders than they started checkouts
    for stat in EventStat.objects.filter(name="Order Completed")[:50]:
        checkouts = EventStat.objects.get(person=stat.person, name="Checkout Started").count
        assert stat.count <= checkouts
    again, _ = run("demo", "--people", "300")
    assert "already loaded" in again and Person.objects.count() == 300


def test_roles_exist_after_migrate_with_the_right_permissions():
    manager = Group.objects.get(name="Retention manager")
    viewer = Group.objects.get(name="Viewer")
    viewer_perms = set(viewer.permissions.values_list("codename", flat=True))
    assert viewer_perms and all(p.startswith("view_") for p in viewer_perms)
    manager_perms = set(manager.permissions.values_list("codename", flat=True))
    assert "change_person" in manager_perms and "view_event" in manager_perms
    assert "add_source" not in manager_perms and "change_event" not in manager_perms
