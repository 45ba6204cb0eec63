"""The role matrix over HTTP: an anonymous request reaches nothing but the login page and the
ingest API; a viewer reads every page and changes nothing; a retention manager changes what the
role allows.

One small world (the demo configuration, a LiveLike destination and syncs, a person with events
and deliveries, a held mass removal and its alert, an outcome, a row of every model the admin
lists) is built once for the module; every test runs in a savepoint inside it and is rolled back.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.forms import MultiWidget
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from audiences import config as audience_config
from audiences.evaluation import evaluate_all
from audiences.ingest import ingest_messages, person_erase, person_mark_test, source_create
from audiences.messages import Message
from audiences.models import Audience, IdentifierPolicy, NamingConvention, Person, PriorityGroup, Source
from audiences.roles import RETENTION_MANAGER, VIEWER
from audiences.services import audience_save, priority_group_save
from dashboard import urls as dashboard_urls
from syncs.delivery import deliver_destination
from syncs.models import Alert, Baseline, CustomerIoWorkspace, Delivery, Destination, Outcome, RemovalHold, SourcePull, Sync
from syncs.outcomes import outcomes_record
from syncs.services import destination_save, sync_save, workspace_save
from tests.conftest import basic_auth, store_counts
from tests.contract_servers.livelike import LiveLikeServer

BASE_DIR = Path(__file__).resolve().parent.parent
DEMO_CONFIG = BASE_DIR / "audiences" / "demo_config.yaml"
TOKEN = "ll-producer-token-7f3a9c"
NEW_TOKEN = "ll-rotated-token-b81e44"
ROLE_APPS = ("audiences", "syncs", "django_q")
EMAIL = "ann.buyer@example.com"


# --- the world ------------------------------------------------------------------------------


def _message(kind, customer_id, n, **fields):
    return Message(kind, customer_id, f"world-{customer_id}-{n}", timezone.now(), **fields)


def build_world(livelike_url: str) -> SimpleNamespace:
    audience_config.apply(str(DEMO_CONFIG))
    # the reporting job posts outcomes with this key too, so it carries that scope beside track
    source, write_key = source_create(name="shop", scopes=["track", "outcomes"])
    destination = destination_save(
        data={
            "key": "livelike",
            "name": "LiveLike",
            "kind": "livelike",
            "settings": {"base_url": livelike_url, "client_id": "client-1"},
            "credentials": {"producer_token": "env:LIVELIKE_PRODUCER_TOKEN"},
            "timeout_s": 1.0,
            "retry_base_s": 0.05,
            "retry_cap_s": 0.5,
            "rate_limit_per_s": 200,
        }
    )
    cart_sync = sync_save(data={"key": "cart-livelike", "audience": "cart_0_2h", "destination": "livelike", "fields": ["email"]})
    vip_sync = sync_save(data={"key": "vip-livelike", "audience": "vip_do_not_discount", "destination": "livelike"})
    # never evaluated, never sent: what a manager may still delete in the admin
    audience_save(
        data={
            "key": "draft_lookalike",
            "name": "paid_lookalike_any_none",
            "enabled": False,
            "rule": {"attribute": "lookalike", "eq": True},
        }
    )
    sync_save(data={"key": "draft-livelike", "audience": "lapsed_60_90d", "destination": "livelike", "enabled": False})
    priority_group_save(data={"key": "unused_group", "name": "Unused"})
    # new, not evaluated yet, and already excluded from another audience
    audience_save(
        data={
            "key": "fresh_buyers",
            "name": "paid_purchased_1h_none",
            "purpose": "suppression",
            "rule": {"event": "Order Completed", "within": "1h"},
            "enabled": False,
        }
    )
    audience_save(
        data={"exclusions": ["recent_purchasers_24h", "fresh_buyers"]}, instance=Audience.objects.get(key="lapsed_60_90d")
    )

    ingest_messages(
        source=source,
        messages=[
            _message("identify", "cus_1", 1, traits={"email": EMAIL, "phone": "+14155550100"}),
            _message("event", "cus_1", 2, name="Added to Cart", properties={"sku": "serum-30ml"}),
        ],
    )
    person_mark_test(customer_ids=["cus_1"], is_test=True)
    vips = [f"vip{i}" for i in range(12)]
    ingest_messages(source=source, messages=[_message("identify", c, 1, traits={"vip_tier": "gold"}) for c in vips])
    ingest_messages(source=source, messages=[_message("identify", "gone-1", 1, traits={"email": "gone@example.com"})])
    evaluate_all()
    deliver_destination(destination.pk)
    # every VIP leaves at once: the removals are held and a mass-removal alert opens
    ingest_messages(source=source, messages=[_message("identify", c, 2, traits={"vip_tier": "bronze"}) for c in vips])
    evaluate_all()
    hold = RemovalHold.objects.get(sync=vip_sync)
    alert = Alert.objects.get(kind=Alert.MASS_REMOVAL)
    person_erase(customer_id="gone-1", source=source)

    cart = Audience.objects.get(key="cart_0_2h")
    outcomes_record(
        source=source,
        rows=[
            {
                "audience": cart,
                "date": timezone.localdate(),
                "impressions": 1000,
                "reach": 800,
                "clicks": 40,
                "conversions": 4,
                "spend": Decimal("50.00"),
                "revenue": Decimal("200.00"),
                "currency": "USD",
            }
        ],
    )
    Baseline.objects.create(audience=cart, cpa=Decimal("15.00"))
    workspace_save(data={"key": "cio", "name": "Customer.io", "credentials": {"app_key": "env:CIO_APP_KEY"}})
    SourcePull.objects.create(audience=cart, members=1)
    _django_q_rows()
    _login_throttling_rows()
    User.objects.create_superuser("engineer", password="pw-for-tests-1")
    assert destination.credentials["producer_token"] == TOKEN
    return SimpleNamespace(
        source=source,
        write_key=write_key,
        destination=destination,
        cart_sync=cart_sync,
        vip_sync=vip_sync,
        hold=hold,
        alert=alert,
        person=Person.objects.get(customer_id="cus_1"),
        cart=cart,
    )


def _login_throttling_rows():
    """A locked-out login (django-axes), which only a superuser sees and unlocks."""
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    seen = {
        "user_agent": "curl/8",
        "ip_address": "127.0.0.2",
        "username": "admin",
        "http_accept": "*/*",
        "path_info": "/admin/login/",
    }
    AccessAttempt.objects.create(**seen, get_data="", post_data="username=admin", failures_since_start=5)
    AccessFailureLog.objects.create(**seen, locked_out=True)
    AccessLog.objects.create(**seen)


def _django_q_rows():
    from django_q.models import OrmQ, Schedule, Task

    now = timezone.now()
    Schedule.objects.create(name="world-schedule", func="syncs.tasks.deliver_due", schedule_type=Schedule.MINUTES, minutes=1)
    for success in (True, False):
        Task.objects.create(
            id=uuid.uuid4().hex,
            name=f"world-task-{success}",
            func="syncs.tasks.deliver_due",
            started=now,
            stopped=now,
            success=success,
            result="done" if success else "Traceback: boom",
        )
    OrmQ.objects.create(key="world", payload="not-a-signed-package", lock=now)


@contextmanager
def world_for_the_module(django_db_blocker, extend=lambda world: None):
    """The world, built once (and `extend`ed) in an outer transaction rolled back at the end;
    each test's own transaction is a savepoint inside it."""
    with pytest.MonkeyPatch.context() as patch, LiveLikeServer(token=TOKEN, client_id="client-1") as livelike:
        patch.setenv("LIVELIKE_PRODUCER_TOKEN", TOKEN)
        patch.setenv("CIO_APP_KEY", "cio-app-key-0000")
        with django_db_blocker.unblock():
            outer = transaction.atomic()
            outer.__enter__()
            try:
                built = build_world(livelike.url)
                extend(built)
            except BaseException:
                transaction.set_rollback(True)
                outer.__exit__(None, None, None)
                raise
        try:
            yield built
        finally:
            with django_db_blocker.unblock():
                transaction.set_rollback(True)
                outer.__exit__(None, None, None)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with world_for_the_module(django_db_blocker) as built:
        yield built


def make_user(role: str | None, username: str | None = None) -> User:
    user = User.objects.create_user(
        username or (role or "nobody").lower().replace(" ", "-"), password="pw-for-tests-1", is_staff=True
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def as_viewer(world, db, client):
    client.force_login(make_user(VIEWER))
    return client


@pytest.fixture
def as_manager(world, db, client):
    client.force_login(make_user(RETENTION_MANAGER))
    return client


@pytest.fixture
def anonymous(world, db, client):
    return client


def snapshot() -> dict:
    """Every row of every table of the roles' apps (history and many-to-many tables included)
    and of the admin log, read raw: a write anywhere shows as a difference."""
    models = [m for m in apps.get_models(include_auto_created=True) if m._meta.app_label in ROLE_APPS]
    models.append(apps.get_model("admin", "LogEntry"))
    rows = {}
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)} ORDER BY 1")
            rows[model._meta.db_table] = cursor.fetchall()
    return rows


def login_redirect(response) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/admin/login/")


# --- (1) every page -------------------------------------------------------------------------

# name → (kwargs from the world, query, viewer status, manager status)
DASHBOARD_PAGES = {
    "audience-new": (lambda w: {}, "", 403, 200),
    "editor-preview": (lambda w: {}, "", 405, 405),
    "editor-check-name": (lambda w: {}, "?name=paid_cart_0-2h_nopurch", 200, 200),
    "audience": (lambda w: {"key": "cart_0_2h"}, "", 200, 200),
    "audience-edit": (lambda w: {"key": "cart_0_2h"}, "", 403, 200),
    "sync": (lambda w: {"key": "vip-livelike"}, "", 200, 200),
    "sync-runs": (lambda w: {"key": "cart-livelike"}, "", 200, 200),
    "sync-pause": (lambda w: {"key": "cart-livelike"}, "", 405, 405),
    "sync-test-cohort": (lambda w: {"key": "cart-livelike"}, "", 405, 405),
    "hold-decide": (lambda w: {"key": "vip-livelike", "hold_id": w.hold.pk}, "", 405, 405),
    "sync-new": (lambda w: {}, "", 403, 200),
    "sync-edit": (lambda w: {"key": "vip-livelike"}, "", 403, 200),
    "sync-go-live": (lambda w: {"key": "vip-livelike"}, "", 405, 405),
    "destinations": (lambda w: {}, "", 200, 200),
    "destination-new": (lambda w: {}, "?kind=livelike", 403, 200),
    "destination-edit": (lambda w: {"key": "livelike"}, "", 403, 200),
    "destination-test": (lambda w: {"key": "livelike"}, "", 405, 405),
    "alerts": (lambda w: {}, "", 200, 200),
    "alert-ack": (lambda w: {"alert_id": w.alert.pk}, "", 405, 405),
    "people": (lambda w: {}, "?q=nobody-has-this-id", 200, 200),
    "person": (lambda w: {"person_id": w.person.pk}, "", 200, 200),
    "history": (lambda w: {}, "", 200, 200),
    "review": (lambda w: {}, "", 200, 200),
    "storage": (lambda w: {}, "", 200, 200),
    "home": (lambda w: {}, "", 302, 302),
}


def test_the_matrix_lists_every_dashboard_url():
    assert {p.name for p in dashboard_urls.urlpatterns} == set(DASHBOARD_PAGES)


def dashboard_url(world, name):
    kwargs, query, _, _ = DASHBOARD_PAGES[name]
    return reverse(f"dashboard:{name}", kwargs=kwargs(world)) + query


def admin_models():
    return sorted(admin.site._registry, key=lambda m: m._meta.label)


ADMIN_PAGES = [(m._meta.label, page) for m in admin_models() for page in ("changelist", "change")]


def admin_url(label, page):
    model = apps.get_model(label)
    name = f"admin:{model._meta.app_label}_{model._meta.model_name}_{page}"
    if page == "changelist":
        return reverse(name)
    obj = admin.site._registry[model].get_queryset(RequestFactory().get("/")).order_by("pk").first()
    assert obj is not None, f"the world has no {label} to open"
    return reverse(name, args=[obj.pk])


ADMIN_EXPECTED = {True: 200, False: 403}  # is the model in a role's apps?
# added and changed in the dashboard's editors: the admin sends a manager there, a viewer reads its page
EDITED_IN_THE_DASHBOARD = {"syncs.Destination", "syncs.Sync"}

ALL_PAGES = (
    [("/admin/", None)]
    + [(f"dashboard:{name}", name) for name in DASHBOARD_PAGES]
    + [(f"admin:{label}:{page}", (label, page)) for label, page in ADMIN_PAGES]
)


def resolve_page(world, page):
    if page is None:
        return "/admin/", 200, 200
    if isinstance(page, str):
        _, _, viewer, manager = DASHBOARD_PAGES[page]
        return dashboard_url(world, page), viewer, manager
    label, kind = page
    expected = ADMIN_EXPECTED[label.split(".")[0] in ROLE_APPS]
    return admin_url(label, kind), expected, 302 if kind == "change" and label in EDITED_IN_THE_DASHBOARD else expected


@pytest.mark.parametrize("page", [p for _, p in ALL_PAGES], ids=[i for i, _ in ALL_PAGES])
def test_anonymous_gets_the_login_page_and_no_data(anonymous, world, page):
    url, _, _ = resolve_page(world, page)
    for method in ("get", "post"):
        response = getattr(anonymous, method)(url)
        assert login_redirect(response), (method, url, response.status_code)
        assert EMAIL.encode() not in response.content and b"cus_1" not in response.content


@pytest.mark.parametrize("page", [p for _, p in ALL_PAGES], ids=[i for i, _ in ALL_PAGES])
def test_a_viewer_reads_every_page(as_viewer, world, page):
    url, expected, _ = resolve_page(world, page)
    assert as_viewer.get(url).status_code == expected, url


@pytest.mark.parametrize("page", [p for _, p in ALL_PAGES], ids=[i for i, _ in ALL_PAGES])
def test_a_retention_manager_reads_every_page(as_manager, world, page):
    url, _, expected = resolve_page(world, page)
    assert as_manager.get(url).status_code == expected, url


def test_the_login_page_is_open(anonymous):
    response = anonymous.get("/admin/login/")
    assert response.status_code == 200 and b"Password" in response.content


def test_a_staff_account_without_a_role_reads_no_admin_page(world, db, client):
    client.force_login(make_user(None))
    assert client.get(admin_url("audiences.Person", "change")).status_code == 403
    assert client.get(admin_url("syncs.Destination", "changelist")).status_code == 403


def test_pages_show_what_each_role_may_do(world, db, client):
    client.force_login(make_user(VIEWER))
    sync_page = client.get(dashboard_url(world, "sync")).content.decode()
    assert reverse("dashboard:sync-pause", args=["vip-livelike"]) not in sync_page
    assert reverse("dashboard:hold-decide", args=["vip-livelike", world.hold.pk]) not in sync_page
    assert reverse("dashboard:alert-ack", args=[world.alert.pk]) not in client.get("/dashboard/alerts/").content.decode()
    assert (
        reverse("dashboard:audience-edit", args=["cart_0_2h"])
        not in client.get(dashboard_url(world, "audience")).content.decode()
    )
    client.force_login(make_user(RETENTION_MANAGER))
    sync_page = client.get(dashboard_url(world, "sync")).content.decode()
    assert reverse("dashboard:sync-pause", args=["vip-livelike"]) in sync_page
    assert reverse("dashboard:hold-decide", args=["vip-livelike", world.hold.pk]) in sync_page
    assert reverse("dashboard:alert-ack", args=[world.alert.pk]) in client.get("/dashboard/alerts/").content.decode()


@pytest.mark.parametrize("role", [VIEWER, RETENTION_MANAGER])
def test_no_page_shows_a_stored_credential(world, db, client, role):
    client.force_login(make_user(role))
    for url in (
        admin_url("syncs.Destination", "change"),
        admin_url("syncs.Destination", "changelist"),
        admin_url("syncs.CustomerIoWorkspace", "change"),
        "/dashboard/syncs/cart-livelike/",
        "/dashboard/history/",
    ):
        content = client.get(url, follow=True).content  # a manager's admin page is the dashboard's editor
        assert TOKEN.encode() not in content and b"cio-app-key-0000" not in content, url


# --- (2) every write ------------------------------------------------------------------------


def admin_form_data(model, obj, user, **changes) -> dict:
    """The POST body the admin's own form would send for `obj` (or an empty add form), with changes."""
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/")
    request.user = user
    # every field, as a user who may change them sees it, whoever posts it
    form = model_admin.get_form(request, obj, change=False)(instance=obj)
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field.widget, MultiWidget):  # a date and a time
            for i, part in enumerate(field.widget.decompress(value)):
                data[f"{name}_{i}"] = "" if part is None else str(part)
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, (list, tuple)):
            data[name] = [str(v) for v in value]
        elif value is not None:
            data[name] = str(value)
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        elif value is True:
            data[name] = "on"
        elif isinstance(value, (dict, list)) and name not in ("exclusions",):
            data[name] = json.dumps(value)
        else:
            data[name] = value
    return data


def _form(client, model, obj, fields) -> dict:
    """The admin form's body as the signed-in user would send it (nothing when nobody is)."""
    if "_auth_user_id" not in client.session:
        return {}
    user = User.objects.get(pk=client.session["_auth_user_id"])
    return admin_form_data(model, obj, user, **{k: (v() if callable(v) else v) for k, v in fields.items()})


def _admin_add(model, **fields):
    def request(client, world):
        data = _form(client, model, None, fields)
        return client.post(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add"), data)

    return request


def _admin_change(model, lookup, **fields):
    def request(client, world):
        obj = model.objects.get(**lookup)
        data = _form(client, model, obj, fields)
        return client.post(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.pk]), data)

    return request


def _admin_revert(model, lookup, **fields):
    """POST the simple_history "revert" form of the object's first version."""

    def request(client, world):
        obj = model.objects.get(**lookup)
        first = obj.history.order_by("history_id").first()
        data = _form(client, model, first.instance, fields)
        name = f"admin:{model._meta.app_label}_{model._meta.model_name}_simple_history"
        return client.post(reverse(name, args=[obj.pk, first.history_id]), data)

    return request


def _admin_delete(model, lookup):
    def request(client, world):
        obj = model.objects.get(**lookup)
        return client.post(
            reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_delete", args=[obj.pk]), {"post": "yes"}
        )

    return request


def _admin_action(model, action, lookup=None, **extra):
    def request(client, world):
        objects = model.objects.filter(**(lookup or {}))
        assert objects.exists()
        data = {
            "action": action,
            "index": "0",
            "_selected_action": [str(pk) for pk in objects.values_list("pk", flat=True)],
            **extra,
        }
        return client.post(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"), data)

    return request


def _post(url_of, data=None, **extra):
    """POST `data` (or `data(world)`) to `url_of(world)`."""

    def request(client, world):
        return client.post(url_of(world), (data(world) if callable(data) else data) or {}, **extra)

    return request


EDITOR_NEW = {
    "key": "email_vip",
    "name": "email_vip_any_none",
    "description": "VIPs for email",
    "purpose": "activation",
    "cadence": "15m",
    "identifier_policy": "email_sha256",
    "priority_group": "",
    "priority_rank": "",
    "rule_yaml": "attribute: vip_tier\neq: gold\n",
    "enabled": "on",
}
EDITOR_EDIT = {
    "name": "paid_cart_0-2h_nopurch",
    "description": "Edited by the matrix",
    "purpose": "activation",
    "cadence": "realtime",
    "identifier_policy": "email_sha256",
    "priority_group": "cart_abandoners",
    "priority_rank": "1",
    "rule_yaml": "event: Added to Cart\nwithin: 2h\n",
    "exclusions": ["recent_purchasers_24h"],
    "enabled": "on",
}
DESTINATION_NEW = {
    "kind": "webhook",
    "key": "hook",
    "name": "Hook",
    "setting__url": "http://127.0.0.1:9/hook",
    "credential__signing_secret": "hook-secret-1",
    "batch_size": "100",
    "rate_limit_per_s": "5",
}
SYNC_NEW = {
    "audience": "lapsed_60_90d",
    "destination": "livelike",
    "key": "lapsed-livelike",
    "mode": "membership",
    "removal_guard_share": "0.3",
}
SYNC_EDIT = {"mode": "membership", "fields": ["email"], "removal_guard_share": "0.3", "test_cohort_only": "on"}

# name → (request, did it happen?, may a retention manager do it?)
WRITES = {
    "editor: new audience": (
        _post(lambda w: "/dashboard/audiences/new/", EDITOR_NEW),
        lambda w: Audience.objects.filter(key="email_vip").exists(),
        True,
    ),
    "editor: edit audience": (
        _post(lambda w: "/dashboard/audiences/cart_0_2h/edit/", EDITOR_EDIT),
        lambda w: Audience.objects.get(key="cart_0_2h").description == "Edited by the matrix",
        True,
    ),
    "dashboard: pause sync": (
        _post(lambda w: "/dashboard/syncs/cart-livelike/pause", {"paused": "1"}),
        lambda w: Sync.objects.get(key="cart-livelike").paused,
        True,
    ),
    "dashboard: send test cohort": (
        _post(lambda w: "/dashboard/syncs/cart-livelike/test-cohort"),
        lambda w: Delivery.objects.filter(sync__key="cart-livelike", state=Delivery.PENDING).exists(),
        True,
    ),
    "dashboard: approve hold": (
        _post(lambda w: f"/dashboard/syncs/vip-livelike/holds/{w.hold.pk}", {"decision": "approve"}),
        lambda w: RemovalHold.objects.get(pk=w.hold.pk).decision == RemovalHold.APPROVED,
        True,
    ),
    "dashboard: discard hold": (
        _post(lambda w: f"/dashboard/syncs/vip-livelike/holds/{w.hold.pk}", {"decision": "discard"}),
        lambda w: RemovalHold.objects.get(pk=w.hold.pk).decision == RemovalHold.DISCARDED,
        True,
    ),
    "dashboard: acknowledge alert": (
        _post(lambda w: f"/dashboard/alerts/{w.alert.pk}/acknowledge"),
        lambda w: Alert.objects.get(pk=w.alert.pk).acknowledged_at is not None,
        True,
    ),
    "dashboard: new destination": (
        _post(lambda w: "/dashboard/destinations/new/", DESTINATION_NEW),
        lambda w: Destination.objects.filter(key="hook").exists(),
        True,
    ),
    "dashboard: change destination token": (
        _post(
            lambda w: "/dashboard/destinations/livelike/",
            lambda w: {
                "kind": "livelike",
                "name": "LiveLike",
                "setting__base_url": w.destination.settings["base_url"],
                "setting__client_id": "client-1",
                "credential__producer_token": NEW_TOKEN,
            },
        ),
        lambda w: Destination.objects.get(key="livelike").credentials["producer_token"] == NEW_TOKEN,
        True,
    ),
    "dashboard: new sync": (
        _post(lambda w: "/dashboard/syncs/new/", SYNC_NEW),
        lambda w: Sync.objects.filter(key="lapsed-livelike", dry_run=True).exists(),
        True,
    ),
    "dashboard: change sync": (
        _post(lambda w: "/dashboard/syncs/cart-livelike/edit/", SYNC_EDIT),
        lambda w: Sync.objects.get(key="cart-livelike").test_cohort_only,
        True,
    ),
    "admin: add audience": (
        _admin_add(
            Audience,
            key="email_vip",
            name="email_vip_any_none",
            purpose="activation",
            source_kind="rules",
            rule={"attribute": "vip_tier", "eq": "gold"},
            cadence="15m",
            enabled=True,
        ),
        lambda w: Audience.objects.filter(key="email_vip").exists(),
        True,
    ),
    "admin: change audience": (
        _admin_change(Audience, {"key": "lapsed_60_90d"}, description="Changed in the admin"),
        lambda w: Audience.objects.get(key="lapsed_60_90d").description == "Changed in the admin",
        True,
    ),
    "admin: revert an audience to an earlier version": (
        _admin_revert(Audience, {"key": "lapsed_60_90d"}, description="Reverted from its history"),
        lambda w: Audience.objects.get(key="lapsed_60_90d").description == "Reverted from its history",
        True,
    ),
    # a destination's or a sync's history is read in the admin, never reverted: its editor changes it
    "admin: revert a destination to an earlier version": (
        _admin_revert(Destination, {"key": "livelike"}, name="LiveLike (reverted)"),
        lambda w: Destination.objects.get(key="livelike").name == "LiveLike (reverted)",
        False,
    ),
    "admin: revert a sync to an earlier version": (
        _admin_revert(Sync, {"key": "cart-livelike"}, test_cohort_only=True),
        lambda w: Sync.objects.get(key="cart-livelike").test_cohort_only,
        False,
    ),
    "admin: revert a baseline to an earlier version": (
        _admin_revert(Baseline, {}, notes="Reverted from its history"),
        lambda w: Baseline.objects.get().notes == "Reverted from its history",
        True,
    ),
    "admin: change a baseline": (
        _admin_change(Baseline, {}, cpa="17.50"),
        lambda w: Baseline.objects.get().cpa == Decimal("17.50"),
        True,
    ),
    # the App API key is the engineer's, like write keys
    "admin: change the Customer.io workspace": (
        _admin_change(CustomerIoWorkspace, {"key": "cio"}, name="CIO renamed"),
        lambda w: CustomerIoWorkspace.objects.get(key="cio").name == "CIO renamed",
        False,
    ),
    "admin: delete audience": (
        _admin_delete(Audience, {"key": "draft_lookalike"}),
        lambda w: not Audience.objects.filter(key="draft_lookalike").exists(),
        True,
    ),
    # lapsed_60_90d excludes it: deleting it would silently stop the exclusion (the service refuses)
    "admin: delete an audience another one excludes": (
        _admin_delete(Audience, {"key": "fresh_buyers"}),
        lambda w: not Audience.objects.filter(key="fresh_buyers").exists(),
        False,
    ),
    "admin action: delete an audience another one excludes": (
        _admin_action(Audience, "delete_selected", {"key": "fresh_buyers"}, post="yes"),
        lambda w: not Audience.objects.filter(key="fresh_buyers").exists(),
        False,
    ),
    # deleting would take its size samples and memberships, which no role may delete
    "admin: delete an evaluated audience": (
        _admin_delete(Audience, {"key": "serum_viewers_7d"}),
        lambda w: not Audience.objects.filter(key="serum_viewers_7d").exists(),
        False,
    ),
    # the admin's add and change of a destination or a sync send a manager to the dashboard's editor:
    # what the old forms posted (JSON settings, a sync live at once) writes nothing
    "admin: add destination": (
        _admin_add(
            Destination,
            key="hook",
            name="Hook",
            kind="webhook",
            settings={"url": "http://127.0.0.1:9/hook"},
            signing_secret="hook-secret-1",
            batch_size="100",
            rate_limit_per_s="5",
            timeout_s="5",
            max_attempts="3",
            retry_base_s="1",
            retry_cap_s="60",
        ),
        lambda w: Destination.objects.filter(key="hook").exists(),
        False,
    ),
    "admin: change destination token": (
        _admin_change(Destination, {"key": "livelike"}, producer_token=NEW_TOKEN),
        lambda w: Destination.objects.get(key="livelike").credentials["producer_token"] == NEW_TOKEN,
        False,
    ),
    "admin: delete destination": (
        _admin_delete(Destination, {"key": "livelike"}),
        lambda w: not Destination.objects.filter(key="livelike").exists(),
        False,
    ),  # syncs protect it
    "admin: add sync": (
        _admin_add(
            Sync,
            key="lapsed-livelike",
            audience=lambda: Audience.objects.get(key="lapsed_60_90d").pk,
            destination=lambda: Destination.objects.get(key="livelike").pk,
            mode="membership",
            fields=[],
            removal_guard_share="0.3",
            enabled=True,
        ),
        lambda w: Sync.objects.filter(key="lapsed-livelike").exists(),
        False,
    ),
    "admin: change sync": (
        _admin_change(Sync, {"key": "cart-livelike"}, dry_run=True),
        lambda w: Sync.objects.get(key="cart-livelike").dry_run,
        False,
    ),
    "admin: delete sync": (
        _admin_delete(Sync, {"key": "draft-livelike"}),
        lambda w: not Sync.objects.filter(key="draft-livelike").exists(),
        True,
    ),
    # its deliveries and runs are the audit trail
    "admin: delete a sync that has sent": (
        _admin_delete(Sync, {"key": "cart-livelike"}),
        lambda w: not Sync.objects.filter(key="cart-livelike").exists(),
        False,
    ),
    # a hold is decided through hold_decide (releases or cancels the rows, resolves the alert), never edited
    "admin: decide a hold by editing it": (
        _admin_change(RemovalHold, {}, decision="approved"),
        lambda w: RemovalHold.objects.get(pk=w.hold.pk).decision != RemovalHold.PENDING,
        False,
    ),
    "admin: resolve an alert by editing it": (
        _admin_change(Alert, {"kind": "mass_removal"}, message="edited", resolved_at_0="2026-01-01", resolved_at_1="10:00"),
        lambda w: Alert.objects.get(pk=w.alert.pk).message == "edited",
        False,
    ),
    "admin: add naming convention": (
        _admin_add(
            NamingConvention,
            key="short",
            template="{channel}_{intent}",
            tokens={"channel": {"values": ["paid"]}, "intent": {"values": ["cart"]}},
        ),
        lambda w: NamingConvention.objects.filter(key="short").exists(),
        True,
    ),
    "admin: change naming convention": (
        _admin_change(NamingConvention, {"key": "retention"}, example="paid_vip_any_none"),
        lambda w: NamingConvention.objects.get(key="retention").example == "paid_vip_any_none",
        True,
    ),
    "admin: delete naming convention": (
        _admin_delete(NamingConvention, {"key": "retention"}),
        lambda w: not NamingConvention.objects.filter(key="retention").exists(),
        True,
    ),
    "admin: add identifier policy": (
        _admin_add(IdentifierPolicy, key="cio", name="cio_id", field="cio_id", default_region="US"),
        lambda w: IdentifierPolicy.objects.filter(key="cio").exists(),
        True,
    ),
    "admin: change identifier policy": (
        _admin_change(IdentifierPolicy, {"key": "phone_e164"}, default_region="GB"),
        lambda w: IdentifierPolicy.objects.get(key="phone_e164").default_region == "GB",
        True,
    ),
    "admin: delete identifier policy": (
        _admin_delete(IdentifierPolicy, {"key": "phone_e164"}),
        lambda w: not IdentifierPolicy.objects.filter(key="phone_e164").exists(),
        True,
    ),
    "admin: add priority group": (
        _admin_add(PriorityGroup, key="winback", name="Winback"),
        lambda w: PriorityGroup.objects.filter(key="winback").exists(),
        True,
    ),
    "admin: change priority group": (
        _admin_change(PriorityGroup, {"key": "cart_abandoners"}, name="Carts"),
        lambda w: PriorityGroup.objects.get(key="cart_abandoners").name == "Carts",
        True,
    ),
    "admin: delete priority group": (
        _admin_delete(PriorityGroup, {"key": "unused_group"}),
        lambda w: not PriorityGroup.objects.filter(key="unused_group").exists(),
        True,
    ),
    # its two cart audiences would silently lose it and overlap (config as code refuses too)
    "admin: delete a priority group in use": (
        _admin_delete(PriorityGroup, {"key": "cart_abandoners"}),
        lambda w: not PriorityGroup.objects.filter(key="cart_abandoners").exists(),
        False,
    ),
    "admin: mark a person as not a test account": (
        _admin_change(Person, {"customer_id": "cus_1"}, is_test=False),
        lambda w: not Person.objects.get(customer_id="cus_1").is_test,
        True,
    ),
    # people arrive through the ingest API and leave through erasure, which tells the destinations
    "admin: add a person": (
        _admin_add(Person, customer_id="hand-made"),
        lambda w: Person.objects.filter(customer_id="hand-made").exists(),
        False,
    ),
    "admin: delete a person": (
        _admin_delete(Person, {"customer_id": "cus_1"}),
        lambda w: not Person.objects.filter(customer_id="cus_1").exists(),
        False,
    ),
    "admin action: pause syncs": (_admin_action(Sync, "pause"), lambda w: Sync.objects.filter(paused=True).exists(), True),
    "admin action: send test cohort": (
        _admin_action(Sync, "send_test_cohort", {"key": "cart-livelike"}),
        lambda w: Delivery.objects.filter(sync__key="cart-livelike", state=Delivery.PENDING).exists(),
        True,
    ),
    "admin action: approve hold": (
        _admin_action(RemovalHold, "approve"),
        lambda w: RemovalHold.objects.get(pk=w.hold.pk).decision == RemovalHold.APPROVED,
        True,
    ),
    "admin action: discard hold": (
        _admin_action(RemovalHold, "discard"),
        lambda w: RemovalHold.objects.get(pk=w.hold.pk).decision == RemovalHold.DISCARDED,
        True,
    ),
    "admin action: acknowledge alert": (
        _admin_action(Alert, "acknowledge"),
        lambda w: Alert.objects.filter(acknowledged_at__isnull=False).exists(),
        True,
    ),
    "admin action: revoke write key": (
        _admin_action(Source, "revoke_keys"),
        lambda w: Source.objects.filter(revoked_at__isnull=False).exists(),
        False,
    ),
    "admin action: rotate write key": (
        _admin_action(Source, "rotate_keys"),
        lambda w: Source.objects.get(pk=w.source.pk).write_key_hash != w.source.write_key_hash,
        False,
    ),
    "admin action: delete audiences": (
        _admin_action(Audience, "delete_selected", {"key": "draft_lookalike"}, post="yes"),
        lambda w: not Audience.objects.filter(key="draft_lookalike").exists(),
        True,
    ),
    "admin action: resubmit a failed task": (
        _admin_action(apps.get_model("django_q", "Failure"), "resubmit_task"),
        lambda w: not apps.get_model("django_q", "Failure").objects.exists(),
        False,
    ),
    "admin: add a source": (_admin_add(Source, name="mobile"), lambda w: Source.objects.filter(name="mobile").exists(), False),
}


def _run(write, client, world):
    request, _, _ = WRITES[write]
    return request(client, world)


@pytest.mark.parametrize("write", list(WRITES))
def test_a_viewer_changes_nothing(as_viewer, world, write):
    before = snapshot()
    response = _run(write, as_viewer, world)
    if write.startswith("admin action:"):  # not offered to the viewer: "No action selected"
        assert response.status_code in (200, 302, 403), response.status_code
    else:
        assert response.status_code == 403, response.status_code
    assert snapshot() == before
    assert not WRITES[write][1](world)


@pytest.mark.parametrize("write", list(WRITES))
def test_a_retention_manager_changes_what_the_role_allows(as_manager, world, write):
    _, happened, allowed = WRITES[write]
    before = snapshot()
    response = _run(write, as_manager, world)
    assert response.status_code in (200, 302, 403), response.status_code
    if allowed:
        assert response.status_code == 302, response.content.decode()[:3000]
        assert happened(world)
    else:
        assert not happened(world)
        assert snapshot() == before


def test_the_editor_preview_is_open_to_a_viewer_and_writes_nothing(as_viewer, world):
    before = snapshot()
    response = as_viewer.post(
        "/dashboard/audiences/editor/preview",
        json.dumps(
            {
                "source": "yaml",
                "yaml": "event: Added to Cart\nwithin: 2h\n",
                "key": "cart_0_2h",
                "identifier_policy": "email_sha256",
                "exclusions": ["recent_purchasers_24h"],
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["errors"] == [] and answer["preview"]["size"] == 1
    assert answer["preview"]["sample"] == [{"customer_id": "cus_1", "email": EMAIL}]
    assert snapshot() == before


@pytest.mark.parametrize("write", list(WRITES))
def test_anonymous_writes_reach_the_login_page(anonymous, world, write):
    assert login_redirect(_run(write, anonymous, world))
    assert not WRITES[write][1](world)


# --- (3) the ingest API answers machines, not a login page ----------------------------------

INGEST = [
    ("POST", "/ingest/v1/batch"),
    ("POST", "/ingest/v1/track"),
    ("POST", "/ingest/v1/identify"),
    ("POST", "/ingest/v1/page"),
    ("POST", "/ingest/v1/screen"),
    ("POST", "/ingest/v1/outcomes"),
    ("PUT", "/track/api/v1/customers/cus_1"),
    ("DELETE", "/track/api/v1/customers/cus_1"),
    ("POST", "/track/api/v1/customers/cus_1/events"),
]


@pytest.mark.parametrize("method,path", INGEST)
@pytest.mark.parametrize("auth", ["none", "wrong key", "logged-in viewer"])
def test_the_ingest_api_answers_401_json_without_a_key(world, db, client, method, path, auth):
    extra = {}
    if auth == "wrong key":
        extra["HTTP_AUTHORIZATION"] = (
            basic_auth("shop", "ds_not-the-key") if path.startswith("/track") else basic_auth("ds_not-the-key")
        )
    elif auth == "logged-in viewer":
        client.force_login(make_user(VIEWER))
    before = (store_counts(), Outcome.objects.count(), Person.objects.filter(customer_id="cus_1").exists())
    body = {"batch": [], "outcomes": [], "name": "Order Completed", "userId": "cus_1", "event": "x"}
    response = client.generic(method, path, json.dumps(body), content_type="application/json", **extra)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"].startswith("Basic")
    assert response.json()["code"] == "unauthorized" and response.json()["errors"][0]["message"]
    assert (store_counts(), Outcome.objects.count(), Person.objects.filter(customer_id="cus_1").exists()) == before


def test_the_ingest_api_takes_the_write_key_not_a_session(world, db, client):
    response = client.post(
        "/ingest/v1/outcomes",
        json.dumps(
            {
                "outcomes": [
                    {
                        "audience": "cart_0_2h",
                        "date": (timezone.localdate() - timedelta(days=1)).isoformat(),
                        "conversions": 2,
                        "spend": 10,
                    }
                ]
            }
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=basic_auth(world.write_key),
    )
    assert response.status_code == 200 and response.json() == {"success": True, "recorded": 1}
    assert client.get("/ingest/v1/outcomes").status_code == 405  # a wrong method is JSON too, never a login page
