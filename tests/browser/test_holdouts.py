"""A retention manager gives a sync a 10 % holdout in the dashboard's sync editor, sees it on the
sync page, watches the people it holds out skipped with the holdout as the reason (the person
page), and reads the measured lift on the audience page and in the weekly review; a suppression
sync offers no holdout at all; the global paid holdout is changed in the admin. Screenshots go
to var/test-artifacts/screenshots/."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_a_holdout_set_in_the_sync_editor_and_the_lift_read_on_the_pages(page, manager, shot, login, world):
    from django.utils import timezone

    from audiences.demo import demo_source
    from audiences.evaluation import evaluate_all
    from audiences.ingest import ingest_messages
    from audiences.messages import Message
    from audiences.models import Audience, Person
    from syncs import holdouts
    from syncs.audit import setting_changes
    from syncs.lift import lift_for
    from syncs.models import Delivery, Sync
    from syncs.services import sync_save

    # the demo's cart sync starts without a holdout here; the manager sets one
    sync = Sync.objects.get(key="cart-0-2h-to-livelike")
    sync_save(instance=sync, data={"holdout_share": 0})
    login(page, "rita")
    page.goto("/dashboard/syncs/cart-0-2h-to-livelike/")
    holdout = page.locator("section#holdout")
    expect(holdout.locator(".card").first).to_contain_text("none: everyone is sent")
    shot(page, "sync-before-holdout")

    holdout.get_by_role("link", name="Change the holdout").click()
    page.wait_for_url("**/syncs/cart-0-2h-to-livelike/edit/**")
    page.get_by_label("Holdout (%)").fill("10")
    shot(page, "sync-editor-holdout-10")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".messagelist")).to_contain_text("Saved cart-0-2h-to-livelike")
    expect(holdout.locator(".card").first).to_contain_text("10.0 %")
    expect(holdout).to_contain_text("This sync's holdout: 10 % (salt 'demo-2026')")
    shot(page, "sync-with-holdout")
    sync.refresh_from_db()
    assert sync.holdout_share == 0.1
    change = next(c for c in setting_changes(kind="sync") if c.key == sync.key and c.who == "rita")
    assert ("holdout_share", 0.0, 0.1) in change.changes

    # new carts: the holdout chooses by customer id, and the person page says why one was not sent
    now = timezone.now()
    carts = [f"bt_holdout_{n:02d}" for n in range(40)]
    ingest_messages(
        source=demo_source(),
        received_at=now,
        messages=[
            Message(
                kind="event",
                customer_id=c,
                message_id=f"{c}-cart",
                timestamp=now - timedelta(minutes=5),
                name="Added to Cart",
                properties={"product_id": "SER-01"},
            )
            for c in carts
        ],
    )
    evaluate_all()
    held = [c for c in carts if holdouts.position("demo-2026", c) < 0.1]
    assert held, "the 10 % holdout picks some of 40 people"
    rows = Delivery.objects.filter(sync=sync, customer_id__in=carts, action=Delivery.ENTER)
    assert set(rows.filter(state=Delivery.SKIPPED).values_list("customer_id", flat=True)) == set(held)
    page.goto(f"/dashboard/people/{Person.objects.get(customer_id=held[0]).pk}/")
    expect(page.locator(".timeline")).to_contain_text("held out, not sent")
    expect(page.locator(".timeline")).to_contain_text("held out: this sync's holdout (10 %, salt 'demo-2026') is never sent")
    shot(page, "person-held-out")

    # the lift on the audience page: the figures the selector gives
    audience = Audience.objects.get(key="cart_0_2h")
    lift = lift_for(audience)
    page.goto("/dashboard/audiences/cart_0_2h/")
    section = page.locator("section#lift")
    expect(section.locator(".holdouts")).to_contain_text("cart-0-2h-to-livelike")
    expect(section.locator(".lift-verdict").first).to_have_text(lift.verdict + ".")
    cards = section.locator(".lift-cards .card")
    expect(cards.nth(0)).to_contain_text(f"{lift.sent.converted:,} of {lift.sent.members:,} members")
    expect(cards.nth(1)).to_contain_text(f"{lift.held.converted:,} of {lift.held.members:,} members")
    expect(cards.nth(2)).to_contain_text(lift.shown["difference"])
    expect(cards.nth(4)).to_contain_text(lift.shown["cost"])
    section.scroll_into_view_if_needed()
    shot(page, "audience-lift")

    page.goto("/dashboard/review/weekly/")
    expect(page.locator("table.review-lift")).to_contain_text("paid_cart_0-2h_nopurch")
    expect(page.locator("table.review-lift")).to_contain_text(lift.shown["difference"])
    shot(page, "review-lift")


def test_a_suppression_sync_offers_no_holdout_and_the_global_one_is_set_in_the_admin(page, manager, shot, login, world):
    from syncs.models import GlobalHoldout

    login(page, "rita")
    page.goto("/dashboard/syncs/purchasers-to-livelike/edit/")
    expect(page.get_by_label("Holdout (%)")).to_have_count(0)
    expect(page.locator(".editor form")).to_contain_text("A suppression sync never holds anyone out")
    shot(page, "suppression-sync-editor")

    page.goto("/admin/syncs/globalholdout/")
    page.get_by_role("link", name=re.compile("global paid holdout")).click()
    page.get_by_label("Share").fill("0.05")
    shot(page, "admin-global-holdout")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    assert GlobalHoldout.objects.get().share == 0.05
    page.goto("/dashboard/history/?kind=global+holdout")
    expect(page.locator("table")).to_contain_text("rita")
    shot(page, "history-global-holdout")
