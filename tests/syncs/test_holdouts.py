"""Holdouts: who is held out (SHA-256 of salt:customer_id under the share), that the choice
holds over re-entries and restarts, that held-out people are never sent and the record says
why (the delivery, the membership, the person page, the run history), the global paid holdout,
suppression syncs refusing a share, setting changes in the history and in config files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from io import StringIO

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiences.evaluation import evaluate_audience
from audiences.models import Audience, Membership, Person
from audiences.services import audience_save
from syncs import holdouts
from syncs.audit import setting_changes
from syncs.delivery import deliver_destination
from syncs.destinations import registry
from syncs.models import Delivery, Destination, GlobalHoldout, Sync
from syncs.services import destination_save, global_holdout_save, sync_save
from tests.syncs import toy_destination

pytestmark = pytest.mark.django_db

IDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=150)
# what a person store holds (PostgreSQL text never holds a NUL)
STORED_IDS = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=150
)


# --- the choice itself ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(customer_id=IDS, salt=st.text(max_size=64), share=st.floats(0, 0.5), more=st.floats(0, 0.5))
def test_the_choice_is_a_pure_function_of_salt_and_id(customer_id, salt, share, more):
    where = holdouts.position(salt, customer_id)
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).hexdigest()
    assert 0 <= where < 1 and where == int(digest[:16], 16) / 2**64
    rule = holdouts.Holdout("x", share, salt)
    assert rule.holds_out(customer_id) == (where < share) == holdouts.Holdout("x", share, salt).holds_out(customer_id)
    if rule.holds_out(customer_id):  # a larger share keeps everyone a smaller one held out
        assert holdouts.Holdout("x", share + more, salt).holds_out(customer_id)


def test_another_process_makes_the_same_choice():
    """A restart (a worker on another machine) chooses the same people: nothing but the salt and
    the id goes in."""
    ids = [f"cus_{n:05d}" for n in range(2000)] + ["ann@example.com", "x/../y", "名前"]
    here = [holdouts.position("spring-2026", i) for i in ids]
    script = (
        "import json, sys; sys.path.insert(0, '.');"
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings_test'); django.setup();"
        "from syncs.holdouts import position; ids = json.load(sys.stdin);"
        "print(json.dumps([position('spring-2026', i) for i in ids]))"
    )
    import json

    there = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(ids), capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(there) == here


@pytest.mark.parametrize("share", [0.01, 0.05, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("salt", ["", "cart-0-2h-to-meta", "2026-q4"])
def test_the_held_out_share_of_100000_people_is_within_half_a_point(share, salt):
    rule = holdouts.Holdout("x", share, salt)
    held = sum(rule.holds_out(f"cus_{n:06d}") for n in range(100_000))
    assert abs(held / 100_000 - share) < 0.005


# --- the outbox records it ------------------------------------------------------------------


def hook(key="hook"):
    return destination_save(
        data={
            "key": key,
            "name": key.title(),
            "kind": "webhook",
            "settings": {"url": "http://127.0.0.1:9/hook"},
            "credentials": {"signing_secret": "s3cret-for-tests"},
        }
    )


def flagged_audience(key="flagged", purpose=Audience.ACTIVATION):
    return audience_save(
        data={"key": key, "name": key.title(), "purpose": purpose, "cadence": "1d", "rule": {"attribute": "flag", "eq": True}}
    )


def people(ids):
    return Person.objects.bulk_create([Person(customer_id=i, attributes={"flag": False}) for i in ids])


def set_in(ids, value: bool):
    Person.objects.filter(customer_id__in=list(ids)).update(attributes={"flag": value})


def entries(sync, customer_id):
    return list(Delivery.objects.filter(sync=sync, customer_id=customer_id, action=Delivery.ENTER).order_by("id"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    ids=st.lists(STORED_IDS, min_size=1, max_size=12, unique=True),
    rounds=st.lists(st.sets(st.integers(0, 11)), min_size=2, max_size=5),
    share=st.sampled_from([0.2, 0.5]),
    salt=st.text(st.characters(codec="ascii", categories=("L", "N")), max_size=10),
)
def test_a_person_stays_in_or_out_across_re_entries(ids, rounds, share, salt):
    Person.objects.all().delete()
    Sync.objects.all().delete()
    Audience.objects.all().delete()
    Destination.objects.all().delete()
    audience = flagged_audience()
    sync = sync_save(
        data={
            "key": "flagged-hook",
            "audience": "flagged",
            "destination": hook().key,
            "holdout_share": share,
            "holdout_salt": salt,
            "removal_guard_share": 1.0,
        }
    )
    people(ids)
    now = timezone.now()
    for n, members in enumerate(rounds):
        inside = {ids[i] for i in members if i < len(ids)}
        set_in(inside, True)
        set_in(set(ids) - inside, False)
        evaluate_audience(audience, now=now + timedelta(minutes=n))
    expected_salt = salt or sync.key
    for customer_id in ids:
        held = holdouts.position(expected_salt, customer_id) < share
        rows = entries(sync, customer_id)
        assert {r.held_out for r in rows} <= {held}, customer_id
        assert all(r.state == (Delivery.SKIPPED if held else Delivery.PENDING) for r in rows)
        exits = Delivery.objects.filter(sync=sync, customer_id=customer_id, action=Delivery.EXIT)
        assert all(e.state == (Delivery.SKIPPED if held else Delivery.PENDING) for e in exits)
        # the one sync holds them out, so the membership says they were sent nowhere
        assert set(Membership.objects.filter(person__customer_id=customer_id).values_list("held_out", flat=True)) <= {held}


@pytest.fixture
def livelike_sync(livelike_destination):
    flagged_audience()
    # everyone leaves at once in these tests: no mass-removal guard in the way
    return sync_save(
        data={
            "key": "flagged-livelike",
            "audience": "flagged",
            "destination": "livelike",
            "holdout_share": 0.3,
            "holdout_salt": "demo",
            "removal_guard_share": 1.0,
        }
    )


def test_held_out_people_are_never_sent_and_their_rows_say_why(livelike, livelike_sync):
    ids = [f"cus_{n:03d}" for n in range(60)]
    people(ids)
    set_in(ids, True)
    audience = Audience.objects.get(key="flagged")
    evaluate_audience(audience)
    deliver_destination(livelike_sync.destination_id, sleep=lambda s: None)
    held = {i for i in ids if holdouts.position("demo", i) < 0.3}
    assert 5 < len(held) < 35
    assert livelike.members("flagged") == set(ids) - held
    skipped = Delivery.objects.filter(sync=livelike_sync, state=Delivery.SKIPPED)
    assert set(skipped.values_list("customer_id", flat=True)) == held
    assert set(skipped.values_list("last_error", flat=True)) == {
        "held out: this sync's holdout (30 %, salt 'demo') is never sent"
    }
    assert set(Membership.objects.filter(held_out=True).values_list("person__customer_id", flat=True)) == held
    assert Membership.objects.filter(held_out=False).count() == len(ids) - len(held)

    set_in(ids, False)
    evaluate_audience(audience)
    deliver_destination(livelike_sync.destination_id, sleep=lambda s: None)
    assert livelike.members("flagged") == set()
    exits = Delivery.objects.filter(sync=livelike_sync, action=Delivery.EXIT)
    assert set(exits.filter(state=Delivery.SENT).values_list("customer_id", flat=True)) == set(ids) - held
    held_exits = exits.filter(state=Delivery.SKIPPED)
    assert set(held_exits.values_list("customer_id", flat=True)) == held
    assert {e.last_error for e in held_exits} == {"held out: this person's entry was never sent, so there is nothing to remove"}
    # no row about a held-out person ever reached the destination, neither an add nor a remove
    assert {row["user_id"] for row in livelike.rows()} == set(ids) - held


def test_the_person_page_and_the_run_history_say_why(client, livelike, livelike_sync):
    ids = [f"cus_{n:03d}" for n in range(40)]
    people(ids)
    set_in(ids, True)
    evaluate_audience(Audience.objects.get(key="flagged"))
    deliver_destination(livelike_sync.destination_id, sleep=lambda s: None)
    held = next(i for i in ids if holdouts.position("demo", i) < 0.3)
    client.force_login(User.objects.create_superuser("root", password="pw-for-tests-1"))
    page = client.get(f"/dashboard/people/{Person.objects.get(customer_id=held).pk}/").content.decode()
    assert "held out of every sync: sent nowhere" in page
    assert "held out, not sent" in page and "held out: this sync&#x27;s holdout (30 %, salt &#x27;demo&#x27;)" in page
    sync_page = client.get("/dashboard/syncs/flagged-livelike/").content.decode()
    assert "Holdout" in sync_page and "30 %" in sync_page


def test_changing_the_share_applies_to_entries_from_then_on_and_is_recorded(livelike, livelike_sync):
    ids = [f"cus_{n:03d}" for n in range(80)]
    people(ids)
    first, later = ids[:40], ids[40:]
    audience = Audience.objects.get(key="flagged")
    set_in(first, True)
    evaluate_audience(audience)
    manager = User.objects.create_user("rita", password="pw-for-tests-1")
    sync_save(instance=livelike_sync, data={"holdout_share": 0.0}, actor=manager)
    set_in(later, True)
    evaluate_audience(audience)
    # the first ones keep what they had; the later ones are all sent
    first_held = {i for i in first if holdouts.position("demo", i) < 0.3}
    assert set(Delivery.objects.filter(sync=livelike_sync, held_out=True).values_list("customer_id", flat=True)) == first_held
    assert set(Delivery.objects.filter(sync=livelike_sync, customer_id__in=later).values_list("held_out", flat=True)) == {None}
    assert set(Membership.objects.filter(person__customer_id__in=later).values_list("held_out", flat=True)) == {None}
    change = next(c for c in setting_changes(kind="sync") if c.key == "flagged-livelike" and c.action == "changed")
    assert change.who == "rita" and ("holdout_share", 0.3, 0.0) in change.changes

    # they leave: the held-out ones were never sent, so nothing is removed for them, whatever the setting is now
    set_in(ids, False)
    evaluate_audience(audience)
    deliver_destination(livelike_sync.destination_id, sleep=lambda s: None)
    assert livelike.members("flagged") == set()
    skipped_exits = Delivery.objects.filter(sync=livelike_sync, action=Delivery.EXIT, state=Delivery.SKIPPED)
    assert set(skipped_exits.values_list("customer_id", flat=True)) == first_held


def test_a_new_sync_holds_out_people_already_in_the_audience(livelike, livelike_destination):
    flagged_audience()
    ids = [f"cus_{n:03d}" for n in range(50)]
    people(ids)
    set_in(ids, True)
    evaluate_audience(Audience.objects.get(key="flagged"))
    sync = sync_save(data={"key": "late", "audience": "flagged", "destination": "livelike", "holdout_share": 0.2})
    held = {i for i in ids if holdouts.position("late", i) < 0.2}
    rows = Delivery.objects.filter(sync=sync, initial=True)
    assert set(rows.filter(state=Delivery.SKIPPED, held_out=True).values_list("customer_id", flat=True)) == held
    assert rows.filter(state=Delivery.PENDING).count() == len(ids) - len(held)
    deliver_destination(livelike_destination.pk, sleep=lambda s: None)
    assert livelike.members("flagged") == set(ids) - held
    # the control is the people sent nowhere: a sync with no holdout sends them, so they no longer are
    Membership.objects.filter(person__customer_id__in=held).update(held_out=True)
    sync_save(data={"key": "later-hook", "audience": "flagged", "destination": hook().key})
    assert not Membership.objects.filter(held_out=True).exists()


# --- the global paid holdout ----------------------------------------------------------------


@pytest.fixture
def paid_kind(monkeypatch):
    """The toy kind stands in for an ad platform: registered, its spec saying paid media."""
    monkeypatch.setitem(registry.KINDS, "toy", replace(toy_destination.SPEC, paid_media=True))
    monkeypatch.setenv("TOY_API_KEY", "toy-key-1")
    return destination_save(
        data={
            "key": "ads",
            "name": "Ads",
            "kind": "toy",
            "settings": {"board": "b-1"},
            "credentials": {"toy_api_key": "env:TOY_API_KEY"},
        }
    )


def test_the_global_holdout_covers_paid_syncs_only(paid_kind):
    manager = User.objects.create_user("rita", password="pw-for-tests-1")
    global_holdout_save(data={"share": 0.25, "salt": "paid-2026"}, actor=manager)
    flagged_audience()
    paid = sync_save(data={"key": "flagged-ads", "audience": "flagged", "destination": "ads"})
    ids = [f"cus_{n:03d}" for n in range(80)]
    people(ids)
    set_in(ids, True)
    evaluate_audience(Audience.objects.get(key="flagged"))
    held = {i for i in ids if holdouts.position("paid-2026", i) < 0.25}
    rows = Delivery.objects.filter(sync=paid, held_out=True)
    assert set(rows.values_list("customer_id", flat=True)) == held
    assert {r.last_error for r in rows} == {"held out: the global paid holdout (25 %, salt 'paid-2026') is never sent"}
    assert set(Membership.objects.filter(held_out=True).values_list("person__customer_id", flat=True)) == held

    # a webhook of the same audience is not paid media: it sends everyone, so nobody is sent nowhere
    sync_save(data={"key": "flagged-hook", "audience": "flagged", "destination": hook().key})
    more = [f"cus_{n:03d}" for n in range(80, 160)]
    people(more)
    set_in(more, True)
    evaluate_audience(Audience.objects.get(key="flagged"))
    assert not Delivery.objects.filter(sync__key="flagged-hook", held_out=True).exists()
    assert set(Membership.objects.filter(person__customer_id__in=more).values_list("held_out", flat=True)) == {False}

    change = next(c for c in setting_changes(kind="global holdout"))
    assert change.who == "rita" and ("share", 0.0, 0.25) in change.changes


def test_the_global_holdout_never_touches_a_suppression_sync(paid_kind):
    global_holdout_save(data={"share": 0.5})
    flagged_audience(key="buyers", purpose=Audience.SUPPRESSION)
    sync = sync_save(data={"key": "buyers-ads", "audience": "buyers", "destination": "ads"})
    people([f"cus_{n:03d}" for n in range(40)])
    set_in([f"cus_{n:03d}" for n in range(40)], True)
    evaluate_audience(Audience.objects.get(key="buyers"))
    assert Delivery.objects.filter(sync=sync, state=Delivery.PENDING).count() == 40
    assert set(Delivery.objects.filter(sync=sync).values_list("held_out", flat=True)) == {None}


# --- settings -------------------------------------------------------------------------------


def test_a_suppression_sync_refuses_a_share():
    hook()
    flagged_audience(key="buyers", purpose=Audience.SUPPRESSION)
    with pytest.raises(ValidationError) as refused:
        sync_save(data={"key": "buyers-hook", "audience": "buyers", "destination": "hook", "holdout_share": 0.1})
    assert refused.value.message_dict == {
        "holdout_share": [
            "a suppression sync never holds anyone out: everyone in a suppression audience must reach the destination, "
            "or the people it protects are not protected; set the holdout on the activation syncs"
        ]
    }
    assert (
        sync_save(data={"key": "buyers-hook", "audience": "buyers", "destination": "hook", "holdout_share": 0}).holdout_share == 0
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("holdout_share", 10, "must be a share from 0 to 0.5, such as 0.1 for 10 % (0 holds nobody out)"),
        ("holdout_share", -0.1, "must be a share from 0 to 0.5, such as 0.1 for 10 % (0 holds nobody out)"),
        ("holdout_share", "0.1", "must be a share from 0 to 0.5, such as 0.1 for 10 % (0 holds nobody out)"),
        ("holdout_share", True, "must be a share from 0 to 0.5, such as 0.1 for 10 % (0 holds nobody out)"),
        ("holdout_salt", "two words", "must be a text of at most 64 characters without spaces (blank: the default)"),
        ("holdout_salt", "x" * 65, "must be a text of at most 64 characters without spaces (blank: the default)"),
        ("holdout_salt", 7, "must be a text of at most 64 characters without spaces (blank: the default)"),
    ],
)
def test_share_and_salt_are_checked(field, value, message):
    hook()
    flagged_audience()
    with pytest.raises(ValidationError) as refused:
        sync_save(data={"key": "flagged-hook", "audience": "flagged", "destination": "hook", field: value})
    assert refused.value.message_dict == {field: [message]}


def test_the_global_holdout_is_checked():
    with pytest.raises(ValidationError) as refused:
        global_holdout_save(data={"share": 0.9, "salt": "a b", "kinds": ["meta"], "key": "other"})
    assert refused.value.message_dict == {
        "kinds": ["unknown field; expected one of key, salt, share"],
        "key": ["there is one global holdout, with the key 'global'"],
        "share": ["must be a share from 0 to 0.5, such as 0.1 for 10 % (0 holds nobody out)"],
        "salt": ["must be a text of at most 64 characters without spaces (blank: the default)"],
    }
    assert GlobalHoldout.objects.get().share == 0


def test_config_as_code_carries_sync_and_global_holdouts(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret-for-tests")
    flagged_audience()
    path = tmp_path / "team.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "destinations": [
                    {
                        "key": "hook",
                        "name": "Hook",
                        "kind": "webhook",
                        "settings": {"url": "http://127.0.0.1:9/hook"},
                        "credentials": {"signing_secret": "env:HOOK_SECRET"},
                    }
                ],
                "holdouts": [{"key": "global", "share": 0.05, "salt": "paid-2026"}],
                "syncs": [
                    {
                        "key": "flagged-hook",
                        "audience": "flagged",
                        "destination": "hook",
                        "holdout_share": 0.1,
                        "holdout_salt": "q4",
                    }
                ],
            }
        )
    )
    call_command("apply_config", str(path), stdout=StringIO())
    sync = Sync.objects.get(key="flagged-hook")
    assert (sync.holdout_share, sync.holdout_salt) == (0.1, "q4")
    assert (GlobalHoldout.objects.get().share, GlobalHoldout.objects.get().salt) == (0.05, "paid-2026")
    exported = yaml.safe_load(_run("export_config"))
    assert exported["holdouts"] == [{"key": "global", "share": 0.05, "salt": "paid-2026"}]
    assert {"holdout_share": 0.1, "holdout_salt": "q4"}.items() <= exported["syncs"][0].items()
    assert _plan_is_empty(path)

    # a listed section without the global holdout turns it off; the plan then settles
    path.write_text(yaml.safe_dump({"holdouts": []}))
    call_command("apply_config", str(path), stdout=StringIO())
    assert GlobalHoldout.objects.get().share == 0
    assert _plan_is_empty(path)

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"syncs": [{"key": "flagged-hook", "audience": "flagged", "destination": "hook", "holdout_share": 5}]})
    )
    with pytest.raises(Exception) as refused:
        call_command("apply_config", str(bad), stdout=StringIO(), stderr=StringIO())
    assert "syncs[flagged-hook].holdout_share: must be a share from 0 to 0.5" in str(refused.value)


def _run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _plan_is_empty(path) -> bool:
    from audiences.config import load_file, plan

    return plan(str(path), load_file(str(path))) == []


# --- the forms ------------------------------------------------------------------------------


def test_the_dashboard_sync_editor_takes_the_holdout_in_percent(client):
    from tests.conftest import logged_in

    hook()
    flagged_audience()
    sync = sync_save(data={"key": "flagged-hook", "audience": "flagged", "destination": "hook"})
    manager = logged_in(client, "Retention manager", "rita")
    form = {
        "mode": "membership",
        "removal_guard_share": "0.3",
        "holdout_percent": "12.5",
        "holdout_salt": "q4",
        "identifier_policy": "",
    }
    response = manager.post("/dashboard/syncs/flagged-hook/edit/", form)
    assert response.status_code == 302
    sync.refresh_from_db()
    assert (sync.holdout_share, sync.holdout_salt) == (0.125, "q4")
    assert 'value="12.5"' in manager.get("/dashboard/syncs/flagged-hook/edit/").content.decode()

    refused = manager.post("/dashboard/syncs/flagged-hook/edit/", {**form, "holdout_percent": "60"})
    assert refused.status_code == 400 and "Ensure this value is less than or equal to 50." in refused.content.decode()
    refused = manager.post("/dashboard/syncs/flagged-hook/edit/", {**form, "holdout_salt": "two words"})
    assert refused.status_code == 400 and "without spaces" in refused.content.decode()
    sync.refresh_from_db()
    assert (sync.holdout_share, sync.holdout_salt) == (0.125, "q4")


def test_the_admin_sends_a_sync_to_the_editor_which_offers_no_holdout_on_a_suppression_sync(client):
    from tests.conftest import logged_in

    hook()
    flagged_audience()
    flagged_audience(key="buyers", purpose=Audience.SUPPRESSION)
    activation = sync_save(data={"key": "flagged-hook", "audience": "flagged", "destination": "hook"})
    suppression = sync_save(data={"key": "buyers-hook", "audience": "buyers", "destination": "hook"})
    manager = logged_in(client, "Retention manager", "rita")
    # the share is set in the dashboard's editor (test_the_dashboard_sync_editor_takes_the_holdout_in_percent)
    response = manager.get(f"/admin/syncs/sync/{activation.pk}/change/")
    assert (response.status_code, response["Location"]) == (302, "/dashboard/syncs/flagged-hook/edit/")

    page = manager.get("/dashboard/syncs/buyers-hook/edit/").content.decode()
    assert 'name="holdout_percent"' not in page and 'name="holdout_salt"' not in page
    response = manager.post(
        "/dashboard/syncs/buyers-hook/edit/",
        {"mode": "membership", "removal_guard_share": "0.3", "identifier_policy": "", "holdout_percent": "10"},
    )
    assert response.status_code == 302
    suppression.refresh_from_db()
    assert suppression.holdout_share == 0
