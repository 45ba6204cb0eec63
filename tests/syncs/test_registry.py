"""A destination kind is one folder and one registry line: the toy kind of
tests/syncs/toy_destination/ is registered here and nothing else changes, yet the admin, the
dashboard's editor, the services, config as code and the delivery worker all know it."""

from dataclasses import replace
from io import StringIO

import pytest
import yaml
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.services import audience_save, identifier_policy_save
from syncs import holdouts
from syncs.delivery import deliver_destination
from syncs.destinations import registry
from syncs.models import Delivery, Destination
from syncs.services import destination_save, global_holdout_save, sync_save
from tests.syncs import toy_destination

pytestmark = pytest.mark.django_db


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.KINDS, "toy", toy_destination.SPEC)  # the one registry line
    monkeypatch.setenv("TOY_API_KEY", "toy-key-1")
    toy_destination.SENT.clear()
    return toy_destination


def toy_data(**extra) -> dict:
    return {
        "key": "board",
        "name": "Board",
        "kind": "toy",
        "settings": {"board": "b-1", "colour": "blue"},
        "credentials": {"toy_api_key": "env:TOY_API_KEY"},
        **extra,
    }


def test_the_kinds_are_the_registry_and_each_folder_exports_its_spec():
    assert list(registry.KINDS) == ["livelike", "webhook", "file", "meta", "google", "tiktok"]
    for kind, spec in registry.KINDS.items():
        assert spec.kind == kind and spec.transport.__name__ == "Transport"
    assert registry.spec_for("livelike").max_batch == 500 and registry.spec_for("livelike").modes == ("membership", "events")
    with pytest.raises(LookupError, match="'snap' is not a destination kind: use livelike, webhook, file, meta, google, tiktok"):
        registry.spec_for("snap")
    # the ad platforms say so in their specs: the global paid holdout covers them and nothing else
    assert {kind for kind, spec in registry.KINDS.items() if spec.paid_media} == {"meta", "google", "tiktok"}


def test_the_admin_lists_the_toy_kind_and_its_add_offers_it_with_its_credential(toy, client):
    client.force_login(User.objects.create_superuser("root", password="x-password-1"))
    destination_save(data=toy_data())
    assert '<td class="field-kind">Toy board</td>' in client.get("/admin/syncs/destination/").content.decode()
    # adding is the dashboard's: its list of kinds offers the toy, whose form asks for its key
    kinds = client.get("/admin/syncs/destination/add/", follow=True)
    assert kinds.redirect_chain == [("/dashboard/destinations/new/", 302)]
    assert '/dashboard/destinations/new/?kind=toy"' in kinds.content.decode() and "Toy board" in kinds.content.decode()
    assert "Toy API key" in client.get("/dashboard/destinations/new/?kind=toy").content.decode()

    response = client.post(
        "/dashboard/destinations/new/",
        {
            "kind": "toy",
            "key": "typed",
            "name": "Typed",
            "setting__board": "b-1",
            "setting__colour": "red",
            "credential__toy_api_key": "typed-key",
            "batch_size": "50",
            "rate_limit_per_s": "2",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Destination.objects.get(key="typed").credentials == {"toy_api_key": "typed-key"}


def test_destination_save_takes_the_toy_settings_and_refuses_a_bad_one_with_the_spec_message(toy):
    destination = destination_save(data=toy_data())
    assert (destination.kind, destination.settings, destination.rate_limit_per_s) == (
        "toy",
        {"board": "b-1", "colour": "blue"},
        2.0,
    )
    assert destination.get_kind_display() == "Toy board"
    with pytest.raises(ValidationError) as failure:
        destination_save(data=toy_data(key="other", settings={"colour": "green", "size": 3}, batch_size=80))
    errors = failure.value.message_dict
    assert errors["settings"] == [
        "size: unknown setting for toy; expected board, colour",
        "board: required for toy",
        "colour: use red or blue",
    ]
    assert errors["batch_size"] == ["Toy board takes at most 50 rows a request"]


def test_a_toy_sync_refuses_a_policy_the_toy_cannot_match(toy):
    destination_save(data=toy_data())
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    identifier_policy_save(data={"key": "email", "name": "Email", "field": "email"})
    with pytest.raises(ValidationError) as failure:
        sync_save(data={"key": "flagged-board", "audience": "flagged", "destination": "board", "identifier_policy": "email"})
    assert failure.value.message_dict["identifier_policy"] == ["Toy board cannot match on email: use the customer id"]
    with pytest.raises(ValidationError) as failure:
        sync_save(data={"key": "flagged-board", "audience": "flagged", "destination": "board", "mode": "events"})
    assert failure.value.message_dict["mode"] == ["events mode is for LiveLike destinations"]


def test_config_as_code_round_trips_a_toy_destination(toy, tmp_path):
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "destinations": [toy_data()],  # the toy's own batch size and rate limit
                "syncs": [{"key": "flagged-board", "audience": "flagged", "destination": "board"}],
            },
            sort_keys=False,
        )
    )
    call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    board = Destination.objects.get(key="board")
    assert (board.credentials, board.batch_size, board.rate_limit_per_s) == ({"toy_api_key": "toy-key-1"}, 50, 2.0)

    out = StringIO()
    call_command("export_config", stdout=out)
    exported = yaml.safe_load(out.getvalue())
    (item,) = [d for d in exported["destinations"] if d["key"] == "board"]
    assert item["kind"] == "toy" and item["settings"] == {"board": "b-1", "colour": "blue"}
    assert item["credentials"] == {"toy_api_key": "env:TOY_API_KEY"}
    assert "batch_size" not in item and "rate_limit_per_s" not in item  # the kind's defaults
    again = tmp_path / "again.yaml"
    again.write_text(out.getvalue())
    plan = StringIO()
    call_command("apply_config", str(again), "--check", stdout=plan, stderr=StringIO())
    assert "board" not in plan.getvalue()  # nothing to change


def test_deliver_destination_sends_through_the_toy_transport(toy):
    destination = destination_save(data=toy_data())
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    sync_save(data={"key": "flagged-board", "audience": "flagged", "destination": "board"})
    source = source_create(name="shop")[0]
    ingest_messages(
        source=source,
        messages=[
            Message("identify", customer_id, f"m-{customer_id}", timezone.now(), traits={"flag": True})
            for customer_id in ("t1", "t2")
        ],
    )
    evaluate_all()
    summary = deliver_destination(destination.pk)

    assert summary.sent == 2
    assert sorted((row["board"], row["action"], row["identifier"]) for row in toy.SENT) == [
        ("b-1", "enter", "t1"),
        ("b-1", "enter", "t2"),
    ]


@pytest.mark.parametrize("paid_media", [True, False])
def test_the_global_paid_holdout_covers_a_toy_kind_whose_spec_says_paid_media(monkeypatch, toy, paid_media):
    monkeypatch.setitem(registry.KINDS, "toy", replace(toy.SPEC, paid_media=paid_media))
    global_holdout_save(data={"share": 0.5, "salt": "paid-toy"})
    destination = destination_save(data=toy_data())
    audience_save(data={"key": "flagged", "name": "Flagged", "rule": {"attribute": "flag", "eq": True}})
    sync_save(data={"key": "flagged-board", "audience": "flagged", "destination": "board"})
    ids = [f"t{n}" for n in range(40)]
    ingest_messages(
        source=source_create(name="shop")[0],
        messages=[
            Message("identify", customer_id, f"m-{customer_id}", timezone.now(), traits={"flag": True}) for customer_id in ids
        ],
    )
    evaluate_all()
    deliver_destination(destination.pk)

    held = {i for i in ids if holdouts.position("paid-toy", i) < 0.5} if paid_media else set()
    assert 0 < len({i for i in ids if holdouts.position("paid-toy", i) < 0.5}) < len(ids)  # the share splits these ids
    assert {row["identifier"] for row in toy.SENT} == set(ids) - held
    reasons = set(Delivery.objects.filter(held_out=True).values_list("last_error", flat=True))
    assert reasons == ({"held out: the global paid holdout (50 %, salt 'paid-toy') is never sent"} if paid_media else set())


def test_the_demo_livelike_syncs_send_the_customer_id_with_the_email_beside_it(monkeypatch):
    from pathlib import Path

    from syncs.models import Sync

    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", "demo-token")
    root = Path(__file__).resolve().parents[2]
    for path in (root / "audiences" / "demo_config.yaml", root / "syncs" / "demo_config.yaml"):
        call_command("apply_config", str(path), stdout=StringIO(), stderr=StringIO())
    livelike_syncs = Sync.objects.filter(destination__kind="livelike")
    assert livelike_syncs.count() == 3
    for sync in livelike_syncs:
        assert sync.audience.identifier_policy.hash_sha256  # the paid audiences hash for ad platforms
        assert (sync.policy().field, sync.policy().hash_sha256, sync.fields) == ("customer_id", False, ["email"])
