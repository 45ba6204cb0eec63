"""The dashboard shows stored values as a person reads them: the dry-run log, a person's
attributes and a setting's changes as formatted JSON or a table, never Python's repr of a dict."""

from __future__ import annotations

import html
import json
import re
import uuid

import pytest

from audiences.models import Audience, Person
from audiences.services import audience_save
from syncs.models import DeliveryBatch

pytestmark = pytest.mark.django_db


def pre_blocks(page: str) -> list[str]:
    return [html.unescape(block) for block in re.findall(r'<pre class="payload">(.*?)</pre>', page, re.DOTALL)]


def test_the_dry_run_log_is_formatted_json(viewer_client, playbook_syncs):
    sync = playbook_syncs[1]
    rows = [{"delivery": 1, "action": "enter", "identifier": "ann", "fields": {"email": "ann@example.com"}}]
    DeliveryBatch.objects.create(batch_id=uuid.uuid4(), sync=sync, error="dry run: not sent", rows=rows)
    page = viewer_client.get(f"/dashboard/syncs/{sync.key}/").content.decode()
    assert "{'delivery'" not in html.unescape(page)
    logged = [block for block in pre_blocks(page) if '"identifier"' in block]
    assert len(logged) == 1 and json.loads(logged[0]) == rows
    assert '\n  {\n    "action": "enter",' in logged[0]  # indented, one key a line


def test_a_persons_attributes_are_a_table(viewer_client):
    person = Person.objects.create(customer_id="ann", attributes={"vip_tier": "gold", "skin": {"type": "dry"}, "ltv": 38})
    page = html.unescape(viewer_client.get(f"/dashboard/people/{person.pk}/").content.decode())
    rows = re.findall(r"<tr><td><code>(.*?)</code></td><td>(.*?)</td></tr>", page, re.DOTALL)
    assert [name for name, _ in rows] == ["ltv", "skin", "vip_tier"]
    values = dict(rows)
    assert values["ltv"] == "38" and values["vip_tier"] == '"gold"'
    assert json.loads(re.sub(r"</?pre[^>]*>", "", values["skin"])) == {"type": "dry"}
    assert "{'" not in page


def test_a_changed_rule_in_the_history_is_formatted_json(viewer_client, playbook_syncs):
    carts = Audience.objects.get(key="carts")
    audience_save(data={"rule": {"event": "Added to Cart", "within": "4h"}}, instance=carts)
    page = viewer_client.get("/dashboard/history/", {"kind": "audience"}).content.decode()
    blocks = pre_blocks(page)
    assert {"event": "Added to Cart", "within": "2h"} in [json.loads(b) for b in blocks]
    assert {"event": "Added to Cart", "within": "4h"} in [json.loads(b) for b in blocks]
    assert "{'event'" not in html.unescape(page)


def test_an_emptied_list_in_the_history_reads_as_a_dash_on_one_line(viewer_client, playbook_syncs):
    audience_save(data={"exclusions": []}, instance=Audience.objects.get(key="carts"))
    page = viewer_client.get("/dashboard/history/", {"kind": "audience"}).content.decode()
    change = re.search(r"<div><strong>exclusions</strong>: (.*?)</div>", page, re.DOTALL)
    assert change and re.sub(r"<[^>]+>", "", change.group(1)).strip() == "Buyers → —"
