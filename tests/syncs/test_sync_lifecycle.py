import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from syncs.delivery import deliver_destination
from syncs.models import Delivery, Destination
from syncs.selectors import suppression_lag
from syncs.services import sync_save
from tests.syncs.conftest import buyers_and_carts

pytestmark = pytest.mark.django_db


def buy(source, *customer_ids):
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[Message("event", c, f"{c}-order-{now.timestamp()}", now, name="Order Completed") for c in customer_ids],
    )


def test_a_new_sync_starts_with_the_people_already_in_the_audience(source, livelike, livelike_destination):
    buyers_and_carts()
    buy(source, "a", "b")
    evaluate_all()
    sync = sync_save(data={"key": "buyers-late", "audience": "buyers", "destination": "livelike"})
    queued = Delivery.objects.filter(sync=sync)
    assert sorted(queued.values_list("customer_id", "action", "initial")) == [("a", "enter", True), ("b", "enter", True)]
    deliver_destination(livelike_destination.pk, sleep=lambda s: None)
    assert livelike.members("buyers") == {"a", "b"}
    # backfilled entries are not changes anyone waited for: they stay out of the lag figures
    assert suppression_lag(sync, since=timezone.now() - timezone.timedelta(hours=1)).count == 0


def test_later_exits_follow_the_backfilled_entries(source, livelike, livelike_destination):
    buyers_and_carts()
    buy(source, "a")
    evaluate_all()
    sync_save(data={"key": "buyers-late", "audience": "buyers", "destination": "livelike"})
    deliver_destination(livelike_destination.pk, sleep=lambda s: None)
    from audiences.ingest import person_erase

    person_erase(customer_id="a")
    deliver_destination(livelike_destination.pk, sleep=lambda s: None)
    assert livelike.members("buyers") == set()
    assert livelike.exits_before_entry() == []


def config_file(tmp_path, token_ref="env:LL_TOKEN"):
    path = tmp_path / "downstream.yaml"
    path.write_text(
        json.dumps(
            {
                "destinations": [
                    {
                        "key": "ll",
                        "name": "LiveLike",
                        "kind": "livelike",
                        "settings": {"client_id": "c1", "base_url": "https://example.invalid/api/v1"},
                        "credentials": {"producer_token": token_ref},
                    }
                ]
            }
        )
    )
    return str(path)


def plan(path):
    out = StringIO()
    call_command("apply_config", path, "--check", stdout=out)
    return out.getvalue()


def test_a_rotated_secret_is_planned_and_applied(tmp_path, monkeypatch):
    monkeypatch.setenv("LL_TOKEN", "first-token")
    path = config_file(tmp_path)
    call_command("apply_config", path, stdout=StringIO())
    assert "no changes" in plan(path)
    monkeypatch.setenv("LL_TOKEN", "rotated-token")
    assert "change ll" in plan(path).replace("destinations.", "")
    call_command("apply_config", path, stdout=StringIO())
    assert Destination.objects.get().credentials == {"producer_token": "rotated-token"}
    assert "no changes" in plan(path)


def test_keep_settles_after_one_apply(tmp_path, monkeypatch):
    monkeypatch.setenv("LL_TOKEN", "first-token")
    call_command("apply_config", config_file(tmp_path), stdout=StringIO())
    keep = config_file(tmp_path, token_ref="keep")
    history = Destination.history.count()
    assert "no changes" in plan(keep)
    call_command("apply_config", keep, stdout=StringIO())
    assert Destination.history.count() == history
    assert Destination.objects.get().credentials == {"producer_token": "first-token"}
