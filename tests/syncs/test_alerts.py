"""Each alert kind opens once per key, notifies once by email and once to the chat webhook,
resolves when its condition goes away and then notifies "Resolved" once each way; a chat
webhook that fails is retried on the next pass, neither lost nor sent twice.

The conditions come from the real flow wherever the flow can make them in a test (ingest →
evaluation → outbox → delivery to the LiveLike contract server); history that would take days
(size samples of last week, three failed runs) is written as rows, and time is moved by passing
`now` to the check.
"""

from __future__ import annotations

import itertools
import socket
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Audience, SizeSample
from audiences.preview import refresh_coverage
from audiences.roles import RETENTION_MANAGER, VIEWER
from audiences.services import audience_save, identifier_policy_save
from syncs.alerts import alert_resolution
from syncs.delivery import deliver_destination
from syncs.models import Alert, Delivery, Destination, RemovalHold, SyncRun
from syncs.monitoring import check_alerts, notify_alerts
from syncs.services import hold_decide, sync_save
from tests.contract_servers.common import ContractServer, Request, Response

pytestmark = pytest.mark.django_db

BASE_URL = "https://downstream.example.com"
ONCALL = ["oncall@example.com", "retention@example.com"]
MESSAGE_IDS = itertools.count()


class ChatWebhook(ContractServer):
    """A Slack-compatible incoming webhook: `POST` a JSON object with a non-empty `text`
    (mrkdwn, links as `<url|label>`) → 200 `ok`; otherwise 400 `invalid_payload` or `no_text`,
    as Slack answers. Injected faults (`faults.update(rate=1, kinds=["500"])`) answer 500."""

    name = "chat"
    PATH = "/services/T000/B000/alerts"

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._messages: list[dict] = []

    def handle(self, req: Request) -> Response:
        if req.path != self.PATH:
            return Response(404, b"no_service", content_type="text/plain")
        if req.method != "POST":
            return Response(405, b"invalid_method", content_type="text/plain")
        try:
            body = req.json()
        except ValueError:
            return Response(400, b"invalid_payload", content_type="text/plain")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
            return Response(400, b"no_text", content_type="text/plain")
        with self._lock:
            self._messages.append(body)
        return Response(200, b"ok", content_type="text/plain")

    def messages(self) -> list[dict]:
        with self._lock:
            return list(self._messages)


@pytest.fixture
def chat(settings):
    with ChatWebhook() as server:
        settings.ALERT_WEBHOOK_URL = server.url + ChatWebhook.PATH
        settings.ALERT_EMAILS = ONCALL
        settings.BASE_URL = BASE_URL
        yield server


# --- helpers --------------------------------------------------------------------------------


def identify(source, customer_ids, **traits):
    ingest_messages(
        source=source,
        messages=[Message("identify", c, f"identify-{next(MESSAGE_IDS)}", timezone.now(), traits=traits) for c in customer_ids],
    )


def people(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def flagged(key="flagged", **extra):
    return audience_save(data={"key": key, "name": key.title(), "rule": {"attribute": "flag", "eq": True}, **extra})


def flagged_sync(key="flagged", **extra):
    flagged(key, **{k: v for k, v in extra.items() if k in ("purpose", "identifier_policy")})
    sync_extra = {k: v for k, v in extra.items() if k not in ("purpose", "identifier_policy")}
    return sync_save(data={"key": f"{key}-livelike", "audience": key, "destination": "livelike", **sync_extra})


def open_alerts():
    return list(Alert.objects.filter(resolved_at__isnull=True))


def only_open_alert(kind) -> Alert:
    alerts = open_alerts()
    assert [a.kind for a in alerts] == [kind], [a.message for a in alerts]
    return alerts[0]


def expect_notified_once(mailoutbox, chat, alert: Alert, *, verb: str, link: str):
    """One notification pass sends exactly one email and one chat message for this alert."""
    alert.refresh_from_db()
    assert notify_alerts() == 1
    assert len(mailoutbox) == 1
    email = mailoutbox[0]
    assert email.to == ONCALL
    said = f"{alert_resolution(alert)} It was: {alert.message}" if verb == "Resolved" else alert.message
    if verb == "Resolved":
        assert alert_resolution(alert) != "The condition has cleared.", "a resolution says how it resolved"
    assert email.subject == f"[Downstream] {verb}: {said}"[:150]
    assert said in email.body and link in email.body
    assert chat.messages() == [{"text": f"[Downstream] {verb}: {said} <{link}|Open in Downstream>"}]
    assert notify_alerts() == 0, "a second pass sent the same notification again"
    assert len(mailoutbox) == 1 and len(chat.messages()) == 1
    mailoutbox.clear()
    chat.reset_state()


def expect_silence(mailoutbox, chat):
    assert notify_alerts() == 0
    assert mailoutbox == [] and chat.messages() == []


def lifecycle_until_resolved(mailoutbox, chat, alert, link, clear_condition, *, check=check_alerts, check_after=None):
    """Notified on opening; another check neither duplicates nor re-notifies it; once the
    condition is cleared (`check_after`: the check at a later time) the check resolves it and
    "Resolved" goes out once each way."""
    check_after = check_after or check
    expect_notified_once(mailoutbox, chat, alert, verb="Alert", link=link)
    assert check()["opened"] == 0
    assert Alert.objects.filter(key=alert.key).count() == 1
    expect_silence(mailoutbox, chat)
    clear_condition()
    assert check_after()["resolved"] == 1
    alert.refresh_from_db()
    assert alert.resolved_at is not None and not open_alerts()
    expect_notified_once(mailoutbox, chat, alert, verb="Resolved", link=link)
    assert check_after()["resolved"] == 0
    expect_silence(mailoutbox, chat)


def audience_link(key):
    return f"{BASE_URL}/dashboard/audiences/{key}/"


def sync_link(key):
    return f"{BASE_URL}/dashboard/syncs/{key}/"


# --- zero count -----------------------------------------------------------------------------


def test_an_audience_that_falls_to_zero_opens_notifies_and_resolves(source, chat, mailoutbox):
    audience = flagged()
    identify(source, people("p", 3), flag=True)
    evaluate_all(now=timezone.now() - timedelta(hours=2))  # it had members
    assert check_alerts() == {"open": 0, "opened": 0, "resolved": 0}
    identify(source, people("p", 3), flag=False)
    evaluate_all()

    assert check_alerts() == {"open": 1, "opened": 1, "resolved": 0}
    alert = only_open_alert(Alert.ZERO_COUNT)
    assert alert.key == f"zero_count:audience:{audience.pk}" and alert.audience == audience
    assert "is at 0 members (it had up to 3" in alert.message

    def members_again():
        identify(source, ["p0"], flag=True)
        evaluate_all()

    lifecycle_until_resolved(mailoutbox, chat, alert, audience_link("flagged"), members_again)


def test_an_audience_that_never_had_members_is_not_at_zero(source, chat, mailoutbox):
    flagged()
    evaluate_all()
    assert check_alerts()["open"] == 0
    expect_silence(mailoutbox, chat)


# --- sudden drop ----------------------------------------------------------------------------


def test_a_drop_below_half_the_trailing_mean_opens_and_resolves(source, chat, mailoutbox):
    audience = flagged()
    now = timezone.now()
    SizeSample.objects.bulk_create(
        [
            SizeSample(audience=audience, at=now - timedelta(days=d, hours=3), last_at=now - timedelta(days=d, hours=3), size=40)
            for d in range(1, 8)
        ]
    )
    identify(source, people("p", 40), flag=True)
    evaluate_all()
    assert check_alerts()["open"] == 0  # 40 against a mean of 40
    identify(source, people("p", 21), flag=False)  # 19 left: under half of 40
    evaluate_all()

    assert check_alerts()["opened"] == 1
    alert = only_open_alert(Alert.SUDDEN_DROP)
    assert alert.details == {"size": 19, "mean": 40.0}
    assert "fell to 19, under 50% of its 7-day mean (40)" in alert.message

    def back_up():
        identify(source, people("p", 21), flag=True)
        evaluate_all()

    lifecycle_until_resolved(mailoutbox, chat, alert, audience_link("flagged"), back_up)


def test_a_drop_to_exactly_half_is_not_sudden(source, chat, mailoutbox):
    audience = flagged()
    now = timezone.now()
    SizeSample.objects.bulk_create(
        [SizeSample(audience=audience, at=now - timedelta(days=d), last_at=now - timedelta(days=d), size=40) for d in range(1, 8)]
    )
    identify(source, people("p", 20), flag=True)
    evaluate_all()
    assert check_alerts()["open"] == 0


# --- failing sync ---------------------------------------------------------------------------


def test_three_failed_runs_in_a_row_open_a_failing_sync_alert_until_a_run_succeeds(
    source, livelike, livelike_destination, chat, mailoutbox
):
    sync = flagged_sync()
    start = timezone.now() - timedelta(minutes=30)
    for minutes in (0, 1, 2):
        SyncRun.objects.create(
            sync=sync,
            status=SyncRun.FAILED,
            started_at=start + timedelta(minutes=minutes),
            finished_at=start + timedelta(minutes=minutes),
            error="HTTP 500",
        )
    assert check_alerts()["opened"] == 1
    alert = only_open_alert(Alert.FAILING_SYNC)
    assert alert.key == f"failing_sync:sync:{sync.pk}" and alert.sync == sync
    assert "3 failed runs in a row" in alert.message

    def a_run_succeeds():
        identify(source, ["p0"], flag=True)
        evaluate_all()
        deliver_destination(livelike_destination.pk)
        assert SyncRun.objects.filter(sync=sync).first().status == SyncRun.SUCCEEDED
        assert livelike.members("flagged") == {"p0"}

    lifecycle_until_resolved(mailoutbox, chat, alert, sync_link(sync.key), a_run_succeeds)


def test_two_failed_runs_are_not_yet_failing(livelike_destination, chat):
    sync = flagged_sync()
    for minutes in (0, 1):
        SyncRun.objects.create(sync=sync, status=SyncRun.FAILED, started_at=timezone.now() - timedelta(minutes=minutes))
    assert check_alerts()["open"] == 0


def test_dead_letters_open_a_failing_sync_alert_for_a_day(source, livelike, livelike_destination, chat, mailoutbox):
    Destination.objects.filter(pk=livelike_destination.pk).update(max_attempts=1)
    sync = flagged_sync()
    livelike.faults.update(rate=1.0, kinds=["500"])
    identify(source, ["p0", "p1"], flag=True)
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    assert Delivery.objects.filter(sync=sync, state=Delivery.DEAD).count() == 2

    assert check_alerts()["opened"] == 1
    alert = only_open_alert(Alert.FAILING_SYNC)
    assert "dead letters in the last 24 hours" in alert.message
    tomorrow = timezone.now() + timedelta(hours=25)
    lifecycle_until_resolved(
        mailoutbox, chat, alert, sync_link(sync.key), lambda: None, check_after=lambda: check_alerts(now=tomorrow)
    )


# --- suppression lag ------------------------------------------------------------------------


def test_suppression_lag_over_target_opens_and_resolves_when_the_hour_is_clean(
    source, livelike, livelike_destination, chat, mailoutbox
):
    sync = flagged_sync("buyers", purpose="suppression")
    identify(source, people("b", 5), flag=True)
    # the worker acknowledged these five minutes after the evaluation that suppressed them
    evaluate_all(now=timezone.now() - timedelta(minutes=5))
    deliver_destination(livelike_destination.pk)
    assert livelike.members("buyers") == set(people("b", 5))
    lags = [d.lag_s for d in Delivery.objects.filter(sync=sync)]
    assert len(lags) == 5 and min(lags) >= 300

    assert check_alerts()["opened"] == 1
    alert = only_open_alert(Alert.LAG_OVER_TARGET)
    assert alert.key == f"lag_over_target:sync:{sync.pk}" and alert.details["count"] == 5
    assert alert.details["p95"] >= 300 and "suppression lag p95" in alert.message
    later = timezone.now() + timedelta(hours=1, minutes=5)
    lifecycle_until_resolved(
        mailoutbox, chat, alert, sync_link(sync.key), lambda: None, check_after=lambda: check_alerts(now=later)
    )


def test_fast_suppression_opens_no_lag_alert(source, livelike, livelike_destination, chat):
    flagged_sync("buyers", purpose="suppression")
    identify(source, people("b", 5), flag=True)
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    assert check_alerts()["open"] == 0


# --- identifier coverage --------------------------------------------------------------------


def test_low_identifier_coverage_of_a_synced_audience_opens_and_resolves(
    source, livelike, livelike_destination, chat, mailoutbox
):
    identifier_policy_save(
        data={"key": "profile", "name": "LiveLike profile", "field": "attribute", "attribute": "livelike_profile_id"}
    )
    sync = flagged_sync(identifier_policy="profile")
    audience = sync.audience
    identify(source, people("p", 4), flag=True)
    identify(source, ["p0"], livelike_profile_id="lp-p0")
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    assert refresh_coverage(audience) == 0.25

    assert check_alerts()["opened"] == 1
    alert = only_open_alert(Alert.LOW_COVERAGE)
    assert alert.key == f"low_coverage:audience:{audience.pk}"
    assert "Only 25% of Flagged have a valid identifier" in alert.message

    def profile_ids_arrive():
        for customer_id in people("p", 4):
            identify(source, [customer_id], livelike_profile_id=f"lp-{customer_id}")
        assert refresh_coverage(audience) == 1.0

    lifecycle_until_resolved(mailoutbox, chat, alert, audience_link("flagged"), profile_ids_arrive)


def test_low_coverage_of_an_audience_without_a_sync_is_no_alert(source, chat):
    identifier_policy_save(data={"key": "email", "name": "Email", "field": "email"})
    audience = flagged(identifier_policy="email")
    identify(source, people("p", 4), flag=True)
    evaluate_all()
    assert refresh_coverage(audience) == 0.0
    assert check_alerts()["open"] == 0


# --- stale sync -----------------------------------------------------------------------------


def test_changes_waiting_over_three_cadences_make_a_stale_sync(source, livelike, livelike_destination, chat, mailoutbox):
    sync = flagged_sync()
    identify(source, people("p", 3), flag=True)
    evaluate_all()  # the worker is not running: the entries wait in the outbox
    assert Delivery.objects.filter(sync=sync, state=Delivery.PENDING).count() == 3
    assert check_alerts(now=timezone.now() + timedelta(minutes=2))["open"] == 0  # realtime: 3 × 1 minute

    later = timezone.now() + timedelta(minutes=4)
    assert check_alerts(now=later)["opened"] == 1
    alert = only_open_alert(Alert.STALE_SYNC)
    assert alert.key == f"stale_sync:sync:{sync.pk}" and "Is the worker running?" in alert.message

    def the_worker_runs():
        deliver_destination(livelike_destination.pk)
        assert livelike.members("flagged") == set(people("p", 3))

    lifecycle_until_resolved(mailoutbox, chat, alert, sync_link(sync.key), the_worker_runs, check=lambda: check_alerts(now=later))


# --- held mass removal ----------------------------------------------------------------------


def test_a_held_mass_removal_alerts_until_the_hold_is_decided(source, livelike, livelike_destination, chat, mailoutbox):
    sync = flagged_sync()
    identify(source, people("p", 20), flag=True)
    evaluate_all()
    deliver_destination(livelike_destination.pk)
    identify(source, people("p", 12), flag=False)
    evaluate_all()  # 12 of 20 leave in one full evaluation: held

    hold = RemovalHold.objects.get(sync=sync)
    alert = only_open_alert(Alert.MASS_REMOVAL)
    assert alert.key == f"mass_removal:hold:{hold.pk}" and alert.details == {"hold": hold.pk, "removals": 12, "size_before": 20}
    assert check_alerts() == {"open": 0, "opened": 0, "resolved": 0}  # the check neither duplicates nor resolves it
    assert Alert.objects.filter(kind=Alert.MASS_REMOVAL).count() == 1

    expect_notified_once(mailoutbox, chat, alert, verb="Alert", link=sync_link(sync.key))
    evaluate_all()
    expect_silence(mailoutbox, chat)
    assert hold_decide(hold=hold, approve=True) == 12
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    expect_notified_once(mailoutbox, chat, alert, verb="Resolved", link=sync_link(sync.key))
    deliver_destination(livelike_destination.pk)
    assert livelike.members("flagged") == set(people("p", 20)) - set(people("p", 12))


# --- notifications --------------------------------------------------------------------------


def _zero_count_alert(source) -> Alert:
    flagged()
    identify(source, ["p0"], flag=True)
    evaluate_all(now=timezone.now() - timedelta(hours=2))
    identify(source, ["p0"], flag=False)
    evaluate_all()
    check_alerts()
    return only_open_alert(Alert.ZERO_COUNT)


def test_a_failing_chat_webhook_is_retried_next_time_and_nothing_is_sent_twice(source, chat, mailoutbox):
    alert = _zero_count_alert(source)
    chat.faults.update(rate=1.0, kinds=["500"])
    assert notify_alerts() == 0
    assert [r["status"] for r in chat.request_log()] == [500]
    alert.refresh_from_db()
    assert alert.notified_open_at is None  # given back, not lost
    assert notify_alerts() == 0
    assert len(chat.request_log()) == 2

    chat.faults.update(rate=0.0)
    assert notify_alerts() == 1
    assert [m["text"].split(":")[0] for m in chat.messages()] == ["[Downstream] Alert"]
    assert len(mailoutbox) == 1, [m.subject for m in mailoutbox]
    assert notify_alerts() == 0
    assert len(chat.messages()) == 1 and len(mailoutbox) == 1


def test_a_failing_mail_server_is_retried_without_posting_to_chat_again(source, chat, mailoutbox, settings):
    alert = _zero_count_alert(source)
    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    assert notify_alerts() == 0
    assert len(chat.messages()) == 1
    alert.refresh_from_db()
    assert alert.notified_open_at is None

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert notify_alerts() == 1
    assert len(mailoutbox) == 1 and len(chat.messages()) == 1
    assert notify_alerts() == 0


def test_a_failing_webhook_on_resolution_is_retried_too(source, chat, mailoutbox):
    alert = _zero_count_alert(source)
    assert notify_alerts() == 1
    identify(source, ["p0"], flag=True)
    evaluate_all()
    check_alerts()
    mailoutbox.clear()
    chat.reset_state()
    chat.faults.update(rate=1.0, kinds=["500"])
    assert notify_alerts() == 0
    chat.faults.update(rate=0.0)
    assert notify_alerts() == 1
    assert [m["text"] for m in chat.messages()] == [
        f"[Downstream] Resolved: Flagged is back at 1 member. It was: {alert.message} <{audience_link('flagged')}|Open in Downstream>"
    ]
    assert len(mailoutbox) == 1 and mailoutbox[0].subject.startswith("[Downstream] Resolved:")


def test_a_resolved_zero_count_says_the_size_it_is_back_at(source, chat, mailoutbox):
    alert = _zero_count_alert(source)
    identify(source, ["p0", "p1"], flag=True)
    evaluate_all()
    check_alerts()
    notify_alerts()
    resolved = chat.messages()[-1]["text"]
    assert resolved.startswith("[Downstream] Resolved: Flagged is back at 2 members. It was: Flagged is at 0 members")
    assert mailoutbox[-1].subject.startswith("[Downstream] Resolved: Flagged is back at 2 members.")
    alert.refresh_from_db()
    assert alert_resolution(alert) == "Flagged is back at 2 members."
    viewer = User.objects.create_user("vera", password="pw-for-tests-1", is_staff=True)
    viewer.groups.add(Group.objects.get(name=VIEWER))
    client = Client()
    client.force_login(viewer)
    assert "<td>Flagged is back at 2 members.</td>" in client.get("/dashboard/alerts/").content.decode()


def test_without_a_webhook_only_email_is_sent(source, chat, mailoutbox, settings):
    settings.ALERT_WEBHOOK_URL = ""
    _zero_count_alert(source)
    assert notify_alerts() == 1
    assert len(mailoutbox) == 1 and chat.request_log() == []


def test_an_alert_that_opened_and_resolved_between_passes_still_says_both(source, chat, mailoutbox):
    alert = _zero_count_alert(source)
    identify(source, ["p0"], flag=True)
    evaluate_all()
    check_alerts()
    assert notify_alerts() == 2
    assert [m["text"].split(":")[0] for m in chat.messages()] == ["[Downstream] Alert", "[Downstream] Resolved"]
    assert [m.subject.split(":")[0] for m in mailoutbox] == ["[Downstream] Alert", "[Downstream] Resolved"]
    alert.refresh_from_db()
    assert alert.notified_open_at and alert.notified_resolved_at


# --- failing evaluation ---------------------------------------------------------------------
# Rules are bounded when saved; these are stored with a queryset update, as rows saved before
# the bounds are.
HUGE_LIST = {"attribute": "vip_tier", "in": [f"tier_{n}" for n in range(5000)]}
HUGE_NUMBER = {"attribute": "lifetime_value", "gt": 10**26}


def test_an_audience_whose_evaluation_fails_opens_an_alert_until_it_evaluates_again(source, chat, mailoutbox):
    flagged()
    big = flagged("big_spenders")
    Audience.objects.filter(pk=big.pk).update(rule=HUGE_NUMBER)
    identify(source, people("p", 2), flag=True)
    evaluate_all()
    assert Audience.objects.get(key="flagged").current_size == 2  # the others go on

    assert check_alerts() == {"open": 1, "opened": 1, "resolved": 0}
    alert = only_open_alert(Alert.FAILING_EVALUATION)
    assert alert.key == f"failing_evaluation:audience:{big.pk}" and alert.audience == big
    assert alert.get_kind_display() == "Evaluation failing"
    assert alert.message.startswith("Big_Spenders is failing to evaluate and is skipped until it evaluates again: rule: gt: ")
    assert "100000000000000000000000000 is out of range" in alert.message

    def fixed():
        audience_save(instance=Audience.objects.get(pk=big.pk), data={"rule": {"attribute": "flag", "eq": True}})
        evaluate_all()

    lifecycle_until_resolved(mailoutbox, chat, alert, audience_link("big_spenders"), fixed)


def test_a_failing_audience_never_evaluated_alerts_too(source, chat):
    audience = flagged()
    Audience.objects.filter(pk=audience.pk).update(rule=HUGE_LIST)
    evaluate_all()
    assert Audience.objects.get(pk=audience.pk).last_evaluated_at is None
    check_alerts()
    assert only_open_alert(Alert.FAILING_EVALUATION).audience == audience


def test_stored_over_bounds_rules_answer_their_pages_with_the_error_and_stop_nothing_else(source, client, livelike_destination):
    """The report: a 5,000-value list and a 1e26 threshold stopped every evaluation, kept
    purchases out of the suppression audience, made both pages answer 500 and left the dashboard
    saying there was no open alert."""
    from tests.syncs.conftest import buyers_and_carts

    buyers_and_carts()
    flagged("vip_tiers")
    flagged("big_spenders")
    Audience.objects.filter(key="vip_tiers").update(rule=HUGE_LIST)
    Audience.objects.filter(key="big_spenders").update(rule=HUGE_NUMBER)
    now = timezone.now()
    ingest_messages(
        source=source,
        messages=[
            Message("event", "p1", "p1-cart", now - timedelta(minutes=5), name="Added to Cart"),
            Message("event", "p1", "p1-order", now - timedelta(minutes=1), name="Order Completed"),
            Message("event", "p2", "p2-cart", now - timedelta(minutes=5), name="Added to Cart"),
        ],
    )

    from audiences.evaluation import evaluate_due, evaluate_pending

    evaluate_due()
    evaluate_pending()
    member_keys = dict(Audience.objects.values_list("key", "current_size"))
    assert (member_keys["buyers"], member_keys["carts"]) == (1, 1)  # the purchase reached the suppression audience
    check_alerts()
    assert sorted(a.audience.key for a in open_alerts() if a.kind == Alert.FAILING_EVALUATION) == ["big_spenders", "vip_tiers"]

    client.force_login(_user(VIEWER))
    for key, error in [
        ("vip_tiers", "rule: in: has 5,000 values; a list takes at most 1,000"),
        ("big_spenders", "rule: gt: 100000000000000000000000000 is out of range"),
    ]:
        response = client.get(f"/dashboard/audiences/{key}/")
        assert response.status_code == 200, key
        page = response.content.decode()
        assert "Evaluation failing" in page and error in page
    for key in ("buyers", "carts"):
        response = client.get(f"/dashboard/audiences/{key}/")
        assert response.status_code == 200 and "Evaluation failing" not in response.content.decode()
    home = client.get("/admin/").content.decode()
    assert "No open alerts" not in home and "Big_Spenders is failing to evaluate" in home

    client.force_login(_user(RETENTION_MANAGER))
    assert client.get("/dashboard/audiences/vip_tiers/edit/").status_code == 200


# --- acknowledging through the page ---------------------------------------------------------


def _user(role):
    user = User.objects.create_user(role.lower().replace(" ", "-"), password="pw-for-tests-1", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def test_a_manager_acknowledges_an_alert_from_the_alerts_page(source, client, chat, mailoutbox):
    alert = _zero_count_alert(source)
    manager = _user(RETENTION_MANAGER)
    client.force_login(manager)
    page = client.get("/dashboard/alerts/").content.decode()
    assert f"/dashboard/alerts/{alert.pk}/acknowledge" in page and alert.message in page

    response = client.post(f"/dashboard/alerts/{alert.pk}/acknowledge", follow=True)
    assert response.redirect_chain == [("/dashboard/alerts/", 302)]
    assert "Alert acknowledged." in response.content.decode()
    assert "acknowledged by retention-manager" in response.content.decode()
    alert.refresh_from_db()
    assert alert.acknowledged_by == manager and alert.acknowledged_at is not None
    assert alert.resolved_at is None  # acknowledged is not resolved: the check still owns it
    first_ack = alert.acknowledged_at
    client.post(f"/dashboard/alerts/{alert.pk}/acknowledge")
    alert.refresh_from_db()
    assert alert.acknowledged_at == first_ack
    assert check_alerts()["open"] == 1


def test_acknowledging_from_the_home_page_returns_there(source, client):
    alert = _zero_count_alert(source)
    client.force_login(_user(RETENTION_MANAGER))
    response = client.post(f"/dashboard/alerts/{alert.pk}/acknowledge", {"next": "/admin/?purpose=activation"})
    assert response.status_code == 302 and response["Location"] == "/admin/?purpose=activation"


@pytest.mark.parametrize("target", ["https://evil.example/phish", "//evil.example/phish", "http://testserver.evil.example/"])
def test_acknowledging_never_redirects_off_site(source, client, target):
    alert = _zero_count_alert(source)
    client.force_login(_user(RETENTION_MANAGER))
    response = client.post(f"/dashboard/alerts/{alert.pk}/acknowledge", {"next": target})
    assert response.status_code == 302 and response["Location"] == "/dashboard/alerts/"


def test_a_viewer_cannot_acknowledge(source, client):
    alert = _zero_count_alert(source)
    client.force_login(_user(VIEWER))
    assert f"/dashboard/alerts/{alert.pk}/acknowledge" not in client.get("/dashboard/alerts/").content.decode()
    assert client.post(f"/dashboard/alerts/{alert.pk}/acknowledge").status_code == 403
    alert.refresh_from_db()
    assert alert.acknowledged_at is None
