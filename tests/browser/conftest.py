"""Browser tests: Playwright drives Debian's chromium (never a downloaded one) against pytest-django's
live server, on a test database holding the demo store. Every page a test visits is saved as a
full-page screenshot under var/test-artifacts/screenshots/ so that a person can look at them."""

from __future__ import annotations

import os
import re
import shutil
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(settings.VAR_DIR) / "test-artifacts" / "screenshots"
PASSWORD = "browser-tests-pw-1"
VIEWPORT = {"width": 1366, "height": 900}


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason=f"no chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) to run the browser tests"
    )
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop on this thread, which makes Django refuse ORM
    # calls from the test body ("you cannot call this from an async context"). The tests do call
    # the ORM between browser steps, on purpose and never concurrently with it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Shots:
    """Numbered full-page screenshots, in the order the run visits the pages."""

    count = 0

    def __call__(self, page, name: str) -> Path:
        Shots.count += 1
        path = SHOTS / f"{Shots.count:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.png"
        page.evaluate("window.scrollTo(0, 0)")  # sticky panels are drawn where the top of the page has them
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shot():
    return Shots()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport=VIEWPORT, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # what the Content-Security-Policy blocked (an inline script, handler or style) is an error too
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if message.type == "error" and "Content Security Policy" in message.text else None
        ),
    )
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the pages: {errors}"


def make_user(username: str, role: str):
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user(username, email=f"{username}@example.com", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def login(shot):
    """Logs in through the real login page."""

    def login(page, username: str, password: str = PASSWORD, *, screenshot: bool = False):
        page.goto("/admin/login/?next=/admin/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        if screenshot:
            shot(page, "login")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/admin/")

    return login


@pytest.fixture
def world(transactional_db):
    """The demo store (a small one) with its playbook and syncs applied and evaluated, plus a few
    people whose carts and orders fall in known windows, so the cart stages are never empty."""
    from django.core.management import call_command
    from django.utils import timezone

    from audiences.demo import demo_source
    from audiences.evaluation import evaluate_all
    from audiences.ingest import ingest_messages
    from audiences.messages import Message

    call_command("demo", "--people", "120", stdout=StringIO(), stderr=StringIO())
    now = timezone.now()
    people = {
        # customer id: (email, [(event, minutes ago)])
        "bt_fresh_cart": ("Fresh.Cart@Example.com", [("Product Viewed", 40), ("Added to Cart", 35)]),
        "bt_stale_cart": ("stale.cart@example.com", [("Product Viewed", 310), ("Added to Cart", 300)]),
        "bt_both_carts": ("both.carts@example.com", [("Added to Cart", 600), ("Added to Cart", 20)]),
        "bt_bought": ("bought@example.com", [("Added to Cart", 50), ("Checkout Started", 45), ("Order Completed", 40)]),
    }
    messages = []
    for customer_id, (email, events) in people.items():
        messages.append(
            Message(
                kind="identify",
                customer_id=customer_id,
                message_id=f"{customer_id}-id",
                timestamp=now - timedelta(days=1),
                traits={"email": email, "first_name": "Test"},
            )
        )
        for n, (name, minutes) in enumerate(events):
            messages.append(
                Message(
                    kind="event",
                    customer_id=customer_id,
                    message_id=f"{customer_id}-{n}",
                    timestamp=now - timedelta(minutes=minutes),
                    name=name,
                    properties={"product_id": "SER-01", "category": "serum", "price": 38.0},
                )
            )
    ingest_messages(source=demo_source(), messages=messages, received_at=now)
    evaluate_all()
    yield {"people": people}
    # The flush after a transactional test empties the tables but leaves SQLite's AUTOINCREMENT
    # counters where the demo left them; tests that load rows with explicit ids from 1
    # (benchmarks/datagen) expect the counters of an empty database.
    from django.db import connection

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM sqlite_sequence")


@pytest.fixture
def manager(world):
    return make_user("rita", "Retention manager")


@pytest.fixture
def viewer(world):
    return make_user("vic", "Viewer")
