"""Any customer id is data, never part of a route that can break.

Ingest accepts ids with `/`, `..`, spaces, `%`, quotes and non-ASCII (up to Customer.io's 150
characters; longer ones are refused with a message). Every such person's timeline is reachable
from a people search, and no page that lists them breaks. Then a crawl of every URL pattern the
project serves, each path parameter filled with odd values (and with the real ids of such people),
as an anonymous visitor, a viewer and a retention manager: nothing answers 5xx.
"""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group, User
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import SCOPES, Audience, Membership, Person
from audiences.roles import RETENTION_MANAGER, VIEWER
from audiences.services import audience_save
from syncs.models import Delivery, Sync
from syncs.services import destination_save, sync_save
from tests.conftest import basic_auth
from tests.contract_servers.livelike import LiveLikeServer
from tests.test_role_matrix import TOKEN, make_user, world_for_the_module

ODD_IDS = [
    "../../etc/passwd",
    "a/b",
    "..",
    ".",
    "%2F",
    "a%2Fb",
    "with space",
    " padded ",
    "100%",
    "%%",
    "it's",
    'say "hi"',
    "<script>alert(1)</script>",
    "ünïcødé ✓ 顧客",
    "emoji 🛒",
    "a?b=c#d",
    "back\\slash",
    "semi;colon",
    "x" * 150,
]
# path values besides the ids of real people: separators, encodings, control characters, length
ODD_VALUES = ["/", "..", "%2F", "%", "ünï/cødé ✓", "x" * 4000, "nul\x00byte", "' \"<>", "-1", "0", "99999999999999999999"]
# the admin's ids go to Django's own object look-up: a separator, an encoding, a control character,
# a number out of range and one that is no id stand for the rest there
ADMIN_ODD_VALUES = ["/", "%2F", "ünï/cødé ✓", "nul\x00byte", "-1", "99999999999999999999"]


def identify_and_cart(source, customer_id, n=0):
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("identify", customer_id, f"odd-{n}-id", now, traits={"email": "shared@example.com"}),
            Message("event", customer_id, f"odd-{n}-cart", now, name="Added to Cart", properties={"sku": "serum"}),
        ],
    )


# --- ingest and the timeline -----------------------------------------------------------------


@pytest.fixture
def viewer(db, client):
    user = User.objects.create_user("viewer", password="pw-for-tests-1", is_staff=True)
    user.groups.add(Group.objects.get(name=VIEWER))
    client.force_login(user)
    return client


def test_ingest_accepts_odd_ids_and_every_timeline_is_reached_from_a_search(ingest, viewer):
    response = ingest.batch(
        [{"type": "identify", "userId": c, "traits": {"email": f"odd{n}@example.com"}} for n, c in enumerate(ODD_IDS)]
    )
    assert response.status_code == 200, response.content
    assert Person.objects.count() == len(ODD_IDS)
    for customer_id in ODD_IDS:
        found = viewer.get("/dashboard/people/", {"q": customer_id})
        assert found.status_code == 302, (customer_id, found.status_code)
        page = viewer.get(found["Location"])
        assert page.status_code == 200, (customer_id, found["Location"])
        assert html.escape(customer_id.strip()) in page.content.decode(), customer_id


def test_the_track_api_reaches_ids_with_slashes_and_percent_signs(ingest):
    for n, customer_id in enumerate(["../../etc/passwd", "a/b", "100%", "ends/events"]):
        path = "customers/" + quote(customer_id, safe="")
        assert ingest.track_api("PUT", path, {"plan": "pro"}).status_code == 200, customer_id
        response = ingest.track_api("POST", path + "/events", {"name": "Order Completed", "id": f"e{n}"})
        assert response.status_code == 200, customer_id
        person = Person.objects.get(customer_id=customer_id)
        assert person.attributes == {"plan": "pro"} and person.events.count() == 1
        assert ingest.track_api("DELETE", path).status_code == 200, customer_id
        assert not Person.objects.filter(customer_id=customer_id).exists()


@pytest.mark.parametrize("too_long", ["x" * 151, "x" * 4000])
def test_an_id_longer_than_customer_io_allows_is_refused_with_a_message(ingest, nothing_written, too_long):
    with nothing_written():
        response = ingest.batch([{"type": "identify", "userId": too_long, "traits": {}}])
        assert response.status_code == 400
        assert "userId" in response.json()["message"] and "150 characters" in response.json()["message"]
        response = ingest.track_api("PUT", "customers/" + too_long, {"plan": "pro"})
        assert response.status_code == 400 and "150 characters" in response.json()["message"]


def test_pages_that_list_people_with_odd_ids_link_to_their_timelines(ingest, viewer, livelike_server, monkeypatch):
    monkeypatch.setenv("LIVELIKE_PRODUCER_TOKEN", TOKEN)
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": livelike_server.url, "client_id": "client-1"},
            "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
        }
    )
    sync_save(data={"key": "carts-livelike", "audience": "carts", "destination": "livelike"})
    for n, customer_id in enumerate(ODD_IDS):
        identify_and_cart(ingest.source, customer_id, n)
    evaluate_all()
    Delivery.objects.update(state=Delivery.REJECTED, last_error="user_id: Unknown user.", acknowledged_at=timezone.now())

    links = set()
    for url in ("/dashboard/audiences/carts/", "/dashboard/syncs/carts-livelike/", "/dashboard/people/?q=shared%40example.com"):
        response = viewer.get(url)
        assert response.status_code == 200, url
        links |= set(re.findall(r'href="(/dashboard/people/[^"]+)"', response.content.decode()))
    assert len(links) >= len(ODD_IDS) // 2  # the audience page shows a sample, the sync page 50 rows
    for link in links:
        assert viewer.get(html.unescape(link)).status_code == 200, link


@pytest.fixture
def livelike_server():
    with LiveLikeServer(token=TOKEN, client_id="client-1") as server:
        yield server


# --- the crawl -------------------------------------------------------------------------------

PARAM = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>|\(\?P<(?P<group>\w+)>[^)]*\)")


def url_templates():
    """Every URL pattern the project serves, as (text with {name} holes, converter by name)."""

    def walk(resolver, prefix):
        for entry in resolver.url_patterns:
            text = prefix + _route_text(entry.pattern)
            if isinstance(entry, URLResolver):
                yield from walk(entry, text)
            elif isinstance(entry, URLPattern):
                yield text

    for text in walk(get_resolver(), ""):
        converters = {}

        def hole(match, converters=converters):
            name = match.group("name") or match.group("group")
            converters[name] = match.group("converter") or ("str" if match.group("name") else "regex")
            return "{" + name + "}"

        yield PARAM.sub(hole, text.replace("{", "{{").replace("}", "}}")), converters


def _route_text(pattern) -> str:
    text = str(pattern)
    if text.startswith("^") or text.endswith("$"):  # a regex: drop the anchors and the escapes
        text = text.removeprefix("^").removesuffix("$").replace("\\", "")
    return text


def crawl_values(world, converter: str, template: str) -> list[str]:
    """Odd values for every parameter; the world's real keys and numbers where they fit, so that
    the pages which list the odd people (an audience's sample, a sync's rejected rows) are read.
    The admin's ids are numbers: there the odd customer ids would only be more odd text, and
    one odd person's number stands for them all (130 admin patterns share a few views: every
    odd person on each took most of the suite's time)."""
    admin = template.startswith("admin/")
    values = list(ADMIN_ODD_VALUES if admin else ODD_VALUES) + ([] if admin else world.odd_ids)
    if converter == "slug":
        values += world.keys
    if converter in ("int", "path", "regex"):
        values += [str(pk) for pk in (world.odd_pks[:1] if admin else world.odd_pks)] + world.numbers
    return values


def fill(template: str, converters: dict, value: str) -> str:
    return "/" + template.format(**{name: quote(value, safe="") for name in converters})


def plant_odd_people(world) -> None:
    """People with odd ids who are in an audience and were synced."""
    for n, customer_id in enumerate(ODD_IDS):
        identify_and_cart(world.source, customer_id, n)
    evaluate_all()
    Delivery.objects.filter(customer_id__in=ODD_IDS).update(
        state=Delivery.REJECTED, last_error="user_id: Unknown user.", acknowledged_at=timezone.now()
    )
    world.source.scopes = list(SCOPES)
    world.source.save(update_fields=["scopes"])
    world.odd_ids = list(ODD_IDS)
    world.odd_pks = list(Person.objects.filter(customer_id__in=ODD_IDS).values_list("pk", flat=True))
    world.keys = [*Audience.objects.values_list("key", flat=True), *Sync.objects.values_list("key", flat=True)]
    world.numbers = [str(world.hold.pk), str(world.alert.pk)]
    assert Membership.objects.filter(audience__key="cart_0_2h", person__pk__in=world.odd_pks).exists()


@pytest.fixture(scope="module")
def odd_world(django_db_setup, django_db_blocker):
    """The role matrix's world, and people with odd ids who are in an audience and were synced."""
    with world_for_the_module(django_db_blocker, plant_odd_people) as world:
        yield world


def crawl(client, world, *, methods=("get",)) -> list[str]:
    failures = []
    templates = list(url_templates())
    assert len(templates) > 200  # the admin's patterns are in the walk, not only the dashboard's
    # logging out would crawl the rest as anonymous: it goes last
    templates.sort(key=lambda t: t[0] == "admin/logout/")
    for template, converters in templates:
        values = [""] if not converters else sorted(set().union(*(crawl_values(world, c, template) for c in converters.values())))
        dashboard = template.startswith("dashboard/")
        for value in values:
            url = fill(template, converters, value)
            requests = [(m, url) for m in methods]
            if dashboard and not converters:  # the dashboard's query parameters take odd values too
                requests.append(
                    (
                        "get",
                        url
                        + "?"
                        + "&".join(
                            f"{k}={quote(value or v, safe='')}"
                            for k in ("q", "kind", "week", "bucket", "id")
                            for v in ("../%2F ü\x00",)
                        ),
                    )
                )
            for method, target in requests:
                response = getattr(client, method)(target)
                if response.status_code >= 500:
                    failures.append(f"{method.upper()} /{template} ← {value[:40]!r}: {target[:100]} → {response.status_code}")
    return failures


def report(failures: list[str]) -> str:
    """One line per URL pattern that failed, with one of the values that broke it."""
    by_pattern = {}
    for failure in failures:
        by_pattern.setdefault(failure.split(" ← ")[0], failure)
    return f"{len(failures)} requests answered 5xx:\n" + "\n".join(by_pattern.values())


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["anonymous", VIEWER, RETENTION_MANAGER])
def test_no_url_answers_5xx_with_odd_values(odd_world, client, role):
    if role != "anonymous":
        client.force_login(make_user(role))
    client.raise_request_exception = False
    failures = crawl(client, odd_world, methods=("get", "post"))
    assert failures == [], report(failures)
    assert "_auth_user_id" not in client.session  # the crawl reached the end, logging out


@pytest.mark.django_db
def test_no_ingest_url_answers_5xx_with_odd_ids_and_a_server_key(odd_world, client):
    client.raise_request_exception = False
    failures = []
    for template, converters in url_templates():
        if not template.startswith(("ingest/", "track/")):
            continue
        for value in [""] if not converters else ODD_VALUES + odd_world.odd_ids:
            url = fill(template, converters, value)
            auth = (
                basic_auth(odd_world.source.name, odd_world.write_key)
                if template.startswith("track/")
                else basic_auth(odd_world.write_key)
            )
            for method in ("GET", "POST", "PUT", "DELETE"):
                body = json.dumps({"userId": value or "u", "name": "x", "event": "x", "batch": [], "outcomes": []})
                response = client.generic(method, url, body, content_type="application/json", HTTP_AUTHORIZATION=auth)
                if response.status_code >= 500:
                    failures.append(f"{method} /{template} ← {value[:40]!r}: {url[:100]} → {response.status_code}")
    assert failures == [], report(failures)
