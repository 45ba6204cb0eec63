"""The feedback loop (POST /ingest/v1/outcomes and the audience page), the weekly review (the
selector, its page and `manage.py weekly_review`), and the audit trail: one person's timeline,
looking a person up, and who changed which setting when, never showing a credential."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.models import Audience, Person, SizeSample
from audiences.roles import RETENTION_MANAGER, VIEWER
from audiences.services import audience_save
from syncs.audit import person_timeline, setting_changes
from syncs.delivery import deliver_destination
from syncs.models import Alert, Baseline, Delivery, Destination, Outcome
from syncs.review import render_text, weekly_review
from syncs.services import destination_save, sync_save
from tests.conftest import basic_auth
from tests.syncs.conftest import buyers_and_carts

pytestmark = pytest.mark.django_db

MESSAGE_IDS = itertools.count()


def user(role, name=None):
    account = User.objects.create_user(name or role.lower().replace(" ", "-"), password="pw-for-tests-1", is_staff=True)
    account.groups.add(Group.objects.get(name=role))
    return account


# --- outcomes -------------------------------------------------------------------------------


@pytest.fixture
def reporter(db):
    """A source whose write key the ad platform's reporting job uses."""
    return source_create(name="ads-reporting", scopes=["outcomes"])


@pytest.fixture
def carts(db):
    return audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})


def post_outcomes(client, key, body, *, raw=False):
    return client.post(
        "/ingest/v1/outcomes",
        body if raw else json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=basic_auth(key),
    )


def person_url(customer_id) -> str:
    return f"/dashboard/people/{Person.objects.get(customer_id=customer_id).pk}/"


def day(offset=0) -> str:
    return (timezone.localdate() + timedelta(days=offset)).isoformat()


def test_outcomes_are_stored_per_audience_per_day(client, reporter, carts):
    source, key = reporter
    audience_save(data={"key": "lapsed", "name": "Lapsed", "rule": {"attribute": "lapsed", "eq": True}})
    response = post_outcomes(
        client,
        key,
        {
            "outcomes": [
                {
                    "audience": "carts",
                    "date": day(-1),
                    "impressions": 1000,
                    "reach": 400,
                    "clicks": 50,
                    "conversions": 5,
                    "spend": "125.40",
                    "revenue": 500,
                    "currency": "eur",
                },
                {"audience": "carts", "date": day(0), "impressions": 10, "clicks": 1, "conversions": 0, "spend": 2.5},
                {"audience": "lapsed", "date": day(-1), "conversions": 1, "spend": 9},
            ]
        },
    )
    assert response.status_code == 200 and response.json() == {"success": True, "recorded": 3}
    stored = {(o.audience.key, o.date.isoformat()): o for o in Outcome.objects.select_related("audience")}
    assert set(stored) == {("carts", day(-1)), ("carts", day(0)), ("lapsed", day(-1))}
    yesterday = stored[("carts", day(-1))]
    assert (yesterday.impressions, yesterday.reach, yesterday.clicks, yesterday.conversions) == (1000, 400, 50, 5)
    assert (yesterday.spend, yesterday.revenue, yesterday.currency, yesterday.source) == (
        Decimal("125.40"),
        Decimal("500.00"),
        "EUR",
        source,
    )
    today = stored[("carts", day(0))]
    assert (today.reach, today.revenue, today.spend) == (None, None, Decimal("2.50"))


def test_a_day_reported_again_replaces_what_that_source_said(client, reporter, carts):
    source, key = reporter
    post_outcomes(client, key, {"outcomes": [{"audience": "carts", "date": day(-1), "conversions": 5, "spend": 100}]})
    response = post_outcomes(
        client, key, {"outcomes": [{"audience": "carts", "date": day(-1), "conversions": 7, "spend": 140, "clicks": 9}]}
    )
    assert response.status_code == 200
    outcome = Outcome.objects.get()
    assert (outcome.conversions, outcome.spend, outcome.clicks) == (7, Decimal("140.00"), 9)
    # another source's numbers for the same day are its own row
    other_source, other_key = source_create(name="social-reporting", scopes=["outcomes"])
    post_outcomes(client, other_key, {"outcomes": [{"audience": "carts", "date": day(-1), "conversions": 1, "spend": 10}]})
    assert sorted(Outcome.objects.values_list("source__name", "conversions")) == [("ads-reporting", 7), ("social-reporting", 1)]


BAD = [
    ("unknown audience", [{"audience": "nope", "date": day(-1)}], [(0, "audience")]),
    ("audience not a text", [{"audience": 12, "date": day(-1)}], [(0, "audience")]),
    ("bad date", [{"audience": "carts", "date": "28/11/2026"}], [(0, "date")]),
    ("impossible date", [{"audience": "carts", "date": "2026-02-30"}], [(0, "date")]),
    ("missing date", [{"audience": "carts"}], [(0, "date")]),
    ("future date", [{"audience": "carts", "date": day(7)}], [(0, "date")]),
    ("negative conversions", [{"audience": "carts", "date": day(-1), "conversions": -1}], [(0, "conversions")]),
    ("negative spend", [{"audience": "carts", "date": day(-1), "spend": "-3.00"}], [(0, "spend")]),
    ("fractional clicks", [{"audience": "carts", "date": day(-1), "clicks": 1.5}], [(0, "clicks")]),
    ("boolean impressions", [{"audience": "carts", "date": day(-1), "impressions": True}], [(0, "impressions")]),
    ("spend not a number", [{"audience": "carts", "date": day(-1), "spend": "lots"}], [(0, "spend")]),
    ("infinite revenue", [{"audience": "carts", "date": day(-1), "revenue": "Infinity"}], [(0, "revenue")]),
    ("bad currency", [{"audience": "carts", "date": day(-1), "currency": "dollars"}], [(0, "currency")]),
    ("an item not an object", [["carts", day(-1)]], [(0, "")]),
    (
        "one bad among good ones",
        [{"audience": "carts", "date": day(-2), "conversions": 2}, {"audience": "carts", "date": day(-1), "conversions": -2}],
        [(1, "conversions")],
    ),
]


@pytest.mark.parametrize("items,problems", [(i, p) for _, i, p in BAD], ids=[n for n, _, _ in BAD])
def test_a_bad_outcome_gets_400_with_each_problem_and_writes_nothing(client, reporter, carts, items, problems):
    _, key = reporter
    response = post_outcomes(client, key, {"outcomes": items})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == problems
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    assert not Outcome.objects.exists()


@pytest.mark.parametrize(
    "body",
    [{"outcomes": {"audience": "carts"}}, {"outcomes": "carts"}, [], {"rows": []}, {}],
    ids=["an object", "a text", "a bare array", "another key", "empty"],
)
def test_outcomes_must_be_an_array(client, reporter, carts, body):
    response = post_outcomes(client, reporter[1], body)
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "index": None,
            "field": "outcomes",
            "message": "is required: an array of {audience, date, impressions, clicks, conversions, spend}",
        }
    ]
    assert not Outcome.objects.exists()


def test_outcomes_that_are_not_json_get_400(client, reporter, carts):
    response = post_outcomes(client, reporter[1], b"{not json", raw=True)
    assert response.status_code == 400 and response.json()["errors"]
    assert not Outcome.objects.exists()


def test_more_than_a_thousand_outcomes_are_refused_whole(client, reporter, carts):
    items = [{"audience": "carts", "date": day(-1)}] * 1001
    response = post_outcomes(client, reporter[1], {"outcomes": items})
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert not Outcome.objects.exists()


def test_the_audience_page_shows_outcomes_with_cost_per_conversion(client, reporter, carts, viewer_client):
    _, key = reporter
    other_key = source_create(name="social-reporting", scopes=["outcomes"])[1]
    post_outcomes(
        client,
        key,
        {
            "outcomes": [
                {"audience": "carts", "date": day(-1), "impressions": 4000, "clicks": 120, "conversions": 4, "spend": "50.00"},
                {"audience": "carts", "date": day(-2), "impressions": 900, "clicks": 30, "conversions": 0, "spend": "31.00"},
            ]
        },
    )
    # two sources on one day add up: 75.00 for 5 conversions
    post_outcomes(client, other_key, {"outcomes": [{"audience": "carts", "date": day(-1), "conversions": 1, "spend": "25.00"}]})

    html = viewer_client.get("/dashboard/audiences/carts/").content.decode()
    section = html[html.index("Downstream outcomes beside sizes") : html.index("Sample members")]
    rows = [re.sub(r"<[^>]+>", "|", row) for row in re.findall(r"<tr>(.*?)</tr>", section)[1:]]
    cells = [[c for c in row.split("|") if c] for row in rows]
    yesterday = (timezone.localdate() - timedelta(days=1)).strftime("%a %d %b")
    before = (timezone.localdate() - timedelta(days=2)).strftime("%a %d %b")
    assert cells == [
        [yesterday, "—", "4,000", "120", "5", "75.00", "15.00"],
        [before, "—", "900", "30", "0", "31.00", "—"],
    ]


# --- weekly review --------------------------------------------------------------------------


@pytest.fixture
def week():
    """A week that ended two days ago: (its last day, its first midnight, the midnight after it)."""
    last_day = timezone.localdate() - timedelta(days=2)
    end = timezone.make_aware(datetime.combine(last_day + timedelta(days=1), datetime.min.time()))
    return last_day, end - timedelta(days=7), end


@pytest.fixture
def reviewed_week(week, livelike_destination, reporter):
    """One suppression audience's week, written as the rows a week of running leaves behind."""
    last_day, start, end = week
    buyers_and_carts()
    buyers = Audience.objects.get(key="buyers")
    sync = sync_save(data={"key": "buyers-livelike", "audience": "buyers", "destination": "livelike"})

    def sample(at, size):
        SizeSample.objects.create(audience=buyers, at=at, last_at=at, size=size)

    sample(start - timedelta(hours=1), 100)  # where the week began
    sample(start + timedelta(days=1, hours=1), 0)
    sample(start + timedelta(days=1, hours=5), 0)  # the same day again
    sample(start + timedelta(days=3, hours=2), 0)
    sample(end - timedelta(hours=2), 80)  # where it ended
    sample(end + timedelta(hours=3), 0)  # the next week

    person = Person.objects.create(customer_id="b1")
    moment = start + timedelta(days=2)

    def delivery(action, state, *, lag=None, at=moment):
        Delivery.objects.create(
            sync=sync,
            person=person,
            customer_id="b1",
            action=action,
            state=state,
            triggered_at=at,
            changed_at=at,
            created_at=at,
            acknowledged_at=at + timedelta(seconds=lag) if lag is not None else None,
        )

    for seconds in range(1, 21):
        delivery(Delivery.ENTER, Delivery.SENT, lag=seconds)
    delivery(Delivery.EXIT, Delivery.SENT, lag=5000)  # leaving a suppression audience is not suppression lag
    delivery(Delivery.ENTER, Delivery.SENT, lag=9000, at=start - timedelta(days=1))  # last week's
    for _ in range(3):
        delivery(Delivery.ENTER, Delivery.REJECTED, lag=1)
    delivery(Delivery.ENTER, Delivery.DEAD)
    delivery(Delivery.ENTER, Delivery.REJECTED, lag=1, at=start - timedelta(hours=1))

    def alert(key, opened, resolved=None):
        Alert.objects.create(key=key, kind=Alert.ZERO_COUNT, audience=buyers, message=key, opened_at=opened, resolved_at=resolved)

    alert("opened-and-closed", start + timedelta(days=1, hours=1), start + timedelta(days=2))
    alert("opened-still-open", start + timedelta(days=3, hours=2))
    alert("closed-from-before", start - timedelta(days=3), start + timedelta(hours=5))
    alert("long-ago", start - timedelta(days=30), start - timedelta(days=20))

    Baseline.objects.create(audience=buyers, captured_on=last_day - timedelta(days=60), cpa=Decimal("99.00"))
    Baseline.objects.create(
        audience=buyers,
        captured_on=last_day - timedelta(days=30),
        cpa=Decimal("20.00"),
        roas=Decimal("3.00"),
        frequency=Decimal("2.00"),
        conversion_rate=Decimal("0.0800"),
    )
    source = reporter[0]
    for offset, spend, conversions, clicks, impressions, reach, revenue in (
        (1, "100.00", 4, 40, 800, 300, "400.00"),
        (3, "25.00", 1, 10, 200, 100, "100.00"),
        (7, "999.00", 99, 99, 999, 99, "1.00"),  # the day after the week
    ):
        Outcome.objects.create(
            audience=buyers,
            source=source,
            date=start.date() + timedelta(days=offset),
            spend=Decimal(spend),
            conversions=conversions,
            clicks=clicks,
            impressions=impressions,
            reach=reach,
            revenue=Decimal(revenue),
        )
    return last_day, buyers


def test_weekly_review_reports_each_figure_of_the_week(reviewed_week, week):
    last_day, buyers = reviewed_week
    report = weekly_review(week_ending=last_day)
    assert (report.start, report.end, report.last_day) == (week[1], week[2], last_day)
    row = next(r for r in report.rows if r.audience == buyers)
    assert (row.size_start, row.size_end, row.change) == (100, 80, -0.2)
    assert row.days_at_zero == 2
    assert (row.lag.count, row.lag.p50, row.lag.p95) == (20, 11.0, 19.0)
    assert (row.rejected, row.dead) == (3, 1)
    assert (row.alerts_opened, row.alerts_closed) == (2, 2)
    assert (report.alerts_opened, report.alerts_closed) == (2, 2)
    assert row.baseline.cpa == Decimal("20.00")
    assert (row.outcomes.spend, row.outcomes.conversions, row.outcomes.cpa) == (Decimal("125.00"), 5, Decimal("25.00"))
    assert (row.outcomes.roas, row.outcomes.frequency, row.outcomes.conversion_rate) == (Decimal("4.00"), 2.5, 0.1)
    carts = next(r for r in report.rows if r.audience.key == "carts")
    assert (carts.size_start, carts.days_at_zero, carts.lag.count, carts.rejected, carts.baseline) == (None, 0, 0, 0, None)

    text = render_text(report)
    assert "Alerts: 2 opened, 2 closed." in text
    assert "size 100 → 80 (-20%); days at zero: 2; rejected rows: 3, dead letters: 1; alerts: 2 opened, 2 closed" in text
    assert "suppression lag p50 11.0 s, p95 19.0 s over 20 changes" in text
    assert "CPA 25.00 (baseline 20.00), ROAS 4.00 (baseline 3.00), frequency 2.5 (baseline 2.00)" in text


def test_the_review_page_shows_the_week(reviewed_week, viewer_client):
    last_day, buyers = reviewed_week
    response = viewer_client.get("/dashboard/review/weekly/", {"week": last_day.isoformat()})
    assert response.status_code == 200
    html = response.content.decode()
    assert f"week ending {last_day:%d %b %Y}" in html
    row = next(r for r in re.findall(r'<tr class="review-audience[^"]*">(.*?)</tr>', html, re.S) if "Buyers" in r)
    cells = [c.strip() for c in re.sub(r"<[^>]+>", "|", row).split("|") if c.strip()]
    assert cells[2:14] == ["100", "80", "-20 %", "2", "11 s", "19 s", "3 +1 dead", "2 / 2", "25.00", "(20.00)", "4.00", "(3.00)"]


@pytest.mark.parametrize("week", ["last-week", "2026-02-30", "9999-12-31", "<b>2026</b>"])
def test_the_review_page_refuses_a_week_that_is_not_a_date(viewer_client, week):
    response = viewer_client.get("/dashboard/review/weekly/", {"week": week})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert "is not a date: give the last day of the week" in response.content.decode()


def test_weekly_review_command_prints_the_report(reviewed_week):
    last_day, _ = reviewed_week
    out = StringIO()
    call_command("weekly_review", "--week-ending", last_day.isoformat(), stdout=out)
    text = out.getvalue()
    assert text.startswith("Downstream weekly review, ")
    assert "size 100 → 80 (-20%); days at zero: 2" in text and "p95 19.0 s" in text


def test_weekly_review_email_goes_to_alert_emails(reviewed_week, settings, mailoutbox):
    last_day, _ = reviewed_week
    settings.ALERT_EMAILS = ["retention@example.com", "oncall@example.com"]
    settings.BASE_URL = "https://downstream.example.com/"
    out = StringIO()
    call_command("weekly_review", "--week-ending", last_day.isoformat(), "--email", stdout=out)
    assert len(mailoutbox) == 1
    email = mailoutbox[0]
    assert email.to == ["retention@example.com", "oncall@example.com"]
    assert email.subject == f"Downstream weekly review, week ending {last_day:%d %b %Y}"
    assert "size 100 → 80 (-20%)" in email.body
    assert f"https://downstream.example.com/dashboard/review/weekly/?week={last_day.isoformat()}" in email.body
    assert "Sent to retention@example.com, oncall@example.com." in out.getvalue()


def test_weekly_review_email_without_alert_emails_is_an_error(reviewed_week, settings, mailoutbox):
    settings.ALERT_EMAILS = []
    with pytest.raises(CommandError, match="ALERT_EMAILS is empty"):
        call_command("weekly_review", "--email", stdout=StringIO())
    assert mailoutbox == []


@pytest.mark.parametrize("week", ["29/11/2026", "9999-12-31"])
def test_weekly_review_command_refuses_a_bad_date(db, week):
    with pytest.raises(CommandError, match="is not a date"):
        call_command("weekly_review", "--week-ending", week, stdout=StringIO())


# --- a person's timeline --------------------------------------------------------------------


def send(source, customer_id, kind, **fields):
    ingest_messages(source=source, messages=[Message(kind, customer_id, f"m-{next(MESSAGE_IDS)}", timezone.now(), **fields)])


@pytest.fixture
def ann(source, livelike, playbook_syncs, livelike_destination):
    """Ann adds to cart (enters Carts, sent), then buys: she leaves Carts and enters Buyers, and
    LiveLike refuses both of those rows."""
    send(source, "ann", "identify", traits={"email": "Ann@Example.com", "phone": "+14155550100", "cio_id": "cio_ann"})
    send(source, "ann", "event", name="Added to Cart", properties={"sku": "serum-30ml"})
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    livelike.reject_user_ids = {"ann"}
    send(source, "ann", "event", name="Order Completed", properties={"order_id": "o-981"})
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    return Person.objects.get(customer_id="ann")


def test_the_timeline_has_events_entries_exits_and_what_each_destination_answered(ann):
    timeline = person_timeline(ann)
    assert [m.at for m in timeline] == sorted((m.at for m in timeline), reverse=True)
    titles = [(m.kind, m.title) for m in timeline]
    for expected in [
        ("event", "Added to Cart"),
        ("event", "Order Completed"),
        ("entered", "entered Carts"),
        ("exited", "left Carts"),
        ("entered", "entered Buyers"),
        ("delivery", "add to Carts at LiveLike"),
        ("delivery", "remove from Carts at LiveLike"),
        ("delivery", "add to Buyers at LiveLike"),
    ]:
        assert titles.count(expected) == 1, (expected, titles)
    moments = {m.title: m for m in timeline}
    assert moments["Added to Cart"].data == {"sku": "serum-30ml"}
    added = moments["add to Carts at LiveLike"]
    assert (added.status, added.data["answer"], added.detail) == ("sent", "Sent (HTTP 200)", "identifier ann")
    removed = moments["remove from Carts at LiveLike"]
    assert removed.status == "rejected" and removed.data["answer"] == "Rejected by destination (HTTP 400): user_id: Unknown user."
    buyer = moments["add to Buyers at LiveLike"]  # the buyers sync maps email
    assert buyer.detail == "identifier ann, fields email=ann@example.com"  # as sent: normalised
    assert buyer.data["answer"].startswith("Rejected by destination (HTTP 400)")
    # the order: cart event, entry, delivery, then the order and what followed it
    order = [t for _, t in reversed(titles)]
    assert (
        order.index("Added to Cart")
        < order.index("entered Carts")
        < order.index("add to Carts at LiveLike")
        < order.index("Order Completed")
    )
    assert order.index("Order Completed") < order.index("left Carts")


def test_the_person_page_shows_the_timeline(ann, viewer_client):
    response = viewer_client.get(f"/dashboard/people/{ann.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    for text in (
        "Ann@Example.com",
        "+14155550100",
        "cio_ann",
        "Added to Cart",
        "sku=serum-30ml",
        "Order Completed",
        "order_id=o-981",
        "entered Carts",
        "left Carts",
        "entered Buyers",
        "add to Carts at LiveLike",
        "Sent (HTTP 200)",
        "remove from Carts at LiveLike",
        "Rejected by destination (HTTP 400): user_id: Unknown user.",
        "identifier ann",
    ):
        assert text in html, text
    assert re.search(r"In audiences now</div><div class=\"value\">1<", html)


def test_an_unknown_or_erased_person_is_a_404(viewer_client, db):
    assert viewer_client.get("/dashboard/people/nobody/").status_code == 404
    assert viewer_client.get("/dashboard/people/999999/").status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "ann",
        "ann@example.com",
        "ANN@EXAMPLE.COM",
        " Ann@Example.com ",
        "+14155550100",
        "cio_ann",
        # a phone as a person types it: read in the phone policies' region (US when there is none)
        "(415) 555-0100",
        "415.555.0100",
        "+1 415 555 0100",
    ],
)
def test_a_person_is_found_by_id_email_in_any_case_and_phone(source, viewer_client, query):
    send(source, "ann", "identify", traits={"email": "Ann@Example.com", "phone": "+14155550100", "cio_id": "cio_ann"})
    send(source, "bob", "identify", traits={"email": "bob@example.com", "phone": "+14155550199"})
    response = viewer_client.get("/dashboard/people/", {"q": query})
    assert response.status_code == 302 and response["Location"] == person_url("ann")


def test_a_phone_written_locally_is_read_in_the_phone_policy_s_region(source, viewer_client):
    from audiences.services import identifier_policy_save

    identifier_policy_save(data={"key": "uk_phone", "name": "UK phone", "field": "phone", "default_region": "GB"})
    send(source, "ann", "identify", traits={"phone": "+442079460018"})
    response = viewer_client.get("/dashboard/people/", {"q": "020 7946 0018"})
    assert response.status_code == 302 and response["Location"] == person_url("ann")


@pytest.mark.parametrize(
    "stored, typed",
    [
        ("+44 7911 123456", "+447911123456"),
        ("415-555-0100", "+1 415 555 0100"),
        ("(415) 555-0100", "415.555.0100"),
    ],
)
def test_a_phone_stored_in_one_format_is_found_in_another(source, viewer_client, stored, typed):
    send(source, "ann", "identify", traits={"phone": stored})
    response = viewer_client.get("/dashboard/people/", {"q": typed})
    assert response.status_code == 302 and response["Location"] == person_url("ann")


def test_the_e164_form_of_people_stored_before_it_existed_is_filled_in(source):
    import importlib

    from django.apps import apps

    send(source, "ann", "identify", traits={"phone": "(415) 555-0100"})
    send(source, "bob", "identify", traits={"phone": "not a number"})
    Person.objects.update(phone_e164="")
    importlib.import_module("audiences.migrations.0005_person_phone_e164").fill_phone_e164(apps, None)
    assert dict(Person.objects.values_list("customer_id", "phone_e164")) == {"ann": "+14155550100", "bob": ""}


def test_looking_up_nobody_says_so(source, viewer_client):
    send(source, "ann", "identify", traits={"email": "ann@example.com"})
    response = viewer_client.get("/dashboard/people/", {"q": "an"})
    assert response.status_code == 200
    assert "Nobody has the customer id, email or phone “an”" in response.content.decode()


def test_a_lookup_matching_several_people_lists_them(source, viewer_client):
    send(source, "ann", "identify", traits={"email": "shared@example.com"})
    send(source, "ann-2", "identify", traits={"email": "Shared@example.com"})
    html = viewer_client.get("/dashboard/people/", {"q": "shared@example.com"}).content.decode()
    assert "2 people match" in html and person_url("ann") in html and person_url("ann-2") in html


# --- setting history ------------------------------------------------------------------------

EDIT = {
    "name": "Carts",
    "description": "Carts from the last two hours",
    "purpose": "activation",
    "cadence": "15m",
    "identifier_policy": "",
    "priority_group": "",
    "priority_rank": "",
    "rule_yaml": "event: Added to Cart\nwithin: 2h\n",
    "exclusions": ["buyers"],
    "enabled": "on",
}


def test_setting_history_shows_who_changed_which_audience_field_when(client, playbook_syncs):
    manager = user(RETENTION_MANAGER, "rita")
    client.force_login(manager)
    before = timezone.now()
    response = client.post("/dashboard/audiences/carts/edit/", EDIT)
    assert response.status_code == 302

    change = setting_changes(kind="audience")[0]
    assert (change.who, change.what, change.key, change.action) == ("rita", "audience", "carts", "changed")
    assert before <= change.at <= timezone.now()
    assert sorted(change.changes) == [("cadence", "realtime", "15m"), ("description", "", "Carts from the last two hours")]
    created = [c for c in setting_changes(kind="audience") if c.key == "carts" and c.action == "created"]
    assert len(created) == 1 and created[0].who == "system / config file"

    client.force_login(user(VIEWER))
    html = client.get("/dashboard/history/", {"kind": "audience"}).content.decode()
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", html, re.S) if "rita" in r)
    assert f"{change.at:%Y-%m-%d %H:%M:%S}" in row and "<code>carts</code> changed" in row
    assert "<strong>description</strong>" in row and "Carts from the last two hours" in row
    assert "<strong>cadence</strong>" in row and "15m" in row


def test_setting_history_never_shows_a_credential(client, livelike, playbook_syncs, livelike_destination, monkeypatch):
    manager = user(RETENTION_MANAGER, "rita")
    client.force_login(manager)
    data = {
        "kind": "livelike",
        "name": "LiveLike",
        "setting__base_url": livelike.api_url,
        "setting__client_id": "client-1",
        "batch_size": "500",
        "rate_limit_per_s": "200",
        "timeout_s": "1",
        "max_attempts": "8",
        "concurrency": "4",
        "credential__producer_token": "typed-token-5b2c91e7",
    }
    response = client.post("/dashboard/destinations/livelike/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Destination.objects.get(pk=livelike_destination.pk).credentials == {"producer_token": "typed-token-5b2c91e7"}
    # and again through a config file's env reference
    monkeypatch.setenv("LIVELIKE_TOKEN_V3", "env-token-77a0c3d4")
    destination_save(
        data={"credentials": {"producer_token": "env:LIVELIKE_TOKEN_V3"}},
        instance=Destination.objects.get(pk=livelike_destination.pk),
    )

    changes = [c for c in setting_changes(kind="destination") if c.action == "changed"]
    assert [c.who for c in changes] == ["system / config file", "rita"]
    for change in changes:
        assert ("credentials", "…", "replaced (not shown)") in change.changes
        assert all(field not in ("credentials_encrypted", "credential_refs") for field, _, _ in change.changes)
    client.force_login(user(VIEWER))
    for url in ("/dashboard/history/", "/dashboard/history/?kind=destination"):
        html = client.get(url).content.decode()
        assert "replaced (not shown)" in html
        for secret in ("typed-token-5b2c91e7", "env-token-77a0c3d4", "producer-token"):
            assert secret not in html, (url, secret)
