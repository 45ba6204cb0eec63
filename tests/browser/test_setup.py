"""A retention manager connects LiveLike and sends an audience there without typing JSON:
a destination from the kind's own form, its connection tested against the LiveLike contract
server, renamed through the admin's Change (which is the same editor), a sync whose first
batch is shown as it will go on the wire, going live, and the first run watched on the sync
page. Screenshots go to var/test-artifacts/screenshots/."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.contract_servers.livelike import LiveLikeServer

pytestmark = pytest.mark.browser


def test_a_livelike_destination_and_sync_set_up_tested_previewed_and_live(page, manager, shot, login, world):
    from audiences.models import Membership
    from syncs.delivery import deliver_destination
    from syncs.models import Sync

    with LiveLikeServer(token="typed-producer-token", client_id="shop-app") as livelike:
        login(page, "rita")
        page.locator(".ds-nav").get_by_role("link", name="Destinations").click()
        page.get_by_role("link", name="+ New destination").click()
        shot(page, "destination-kinds")
        page.get_by_role("link", name="LiveLike").click()
        page.get_by_label("Name").fill("LiveLike (shop)")
        page.get_by_label("Key").fill("livelike-shop")
        page.get_by_label("Base URL").fill(livelike.api_url)
        page.get_by_label("Client id").fill("shop-app")
        page.get_by_label("LiveLike producer token").fill("typed-producer-token")
        shot(page, "destination-form-filled")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".messagelist")).to_contain_text("Saved LiveLike (shop)")
        expect(page.locator("body")).not_to_contain_text("typed-producer-token")
        expect(page.get_by_label("LiveLike producer token (stored)")).to_have_value("")

        page.get_by_role("button", name="Test connection").click()
        expect(page.locator(".messagelist")).to_contain_text("LiveLike accepted the producer token for application shop-app.")
        shot(page, "destination-connection-tested")

        # changed later from the admin's list: its Change is this editor, where Save keeps the token
        page.goto("/admin/syncs/destination/")
        page.get_by_role("link", name="livelike-shop").click()
        page.wait_for_url("**/dashboard/destinations/livelike-shop/")
        page.get_by_label("Name").fill("LiveLike shop app")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".messagelist")).to_contain_text("Saved LiveLike shop app")
        expect(page.get_by_label("LiveLike producer token (stored)")).to_have_value("")
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator(".messagelist")).to_contain_text("LiveLike accepted the producer token for application shop-app.")

        page.get_by_role("link", name="+ New sync to LiveLike shop app").click()
        page.get_by_label("Audience").select_option("cart_0_2h")
        page.get_by_role("button", name="Next: what to send").click()
        page.get_by_label("Key").fill("cart-livelike-shop")
        page.get_by_label("Email").check()
        shot(page, "sync-form-filled")
        page.get_by_role("button", name="Create in dry run").click()

        expect(page.locator(".messagelist")).to_contain_text("It is in dry run")
        expect(page.locator(".dry-run-panel")).to_contain_text("Dry run: nothing is sent yet")
        members = set(
            Membership.objects.filter(audience__key="cart_0_2h", exited_at__isnull=True).values_list(
                "person__customer_id", flat=True
            )
        )
        assert members, "the cart audience has members to preview"
        body = json.loads(page.locator("#wire-body").inner_text())
        assert {row["user_id"] for row in body} <= members and all(row["action"] is True for row in body)
        assert all(row["audience_id"] == "cart_0_2h" and "@" in row["email"] for row in body)
        expect(page.locator(".first-batch")).to_contain_text(
            f"POST {livelike.api_url}/applications/shop-app/segment-audience-sync/"
        )
        expect(page.locator(".first-batch")).to_contain_text("•••• (stored credential)")
        shot(page, "sync-dry-run-first-batch")

        sync = Sync.objects.get(key="cart-livelike-shop")
        deliver_destination(sync.destination_id)  # the dry run: recorded, nothing sent
        assert livelike.members("cart_0_2h") == set()

        page.get_by_role("button", name="Go live").click()
        expect(page.locator(".messagelist")).to_contain_text("is live")
        expect(page.locator(".dry-run-panel")).to_have_count(0)
        deliver_destination(sync.destination_id)  # what the worker does next
        page.reload()
        first_run = page.locator("section:has(h2:text('Run history')) tbody tr").first
        expect(first_run).to_contain_text(str(len(members)))
        shot(page, "sync-live-first-run")
        assert livelike.members("cart_0_2h") == members

        page.get_by_role("link", name="Setting history").click()
        expect(page.locator("body")).to_contain_text("cart-livelike-shop")
        shot(page, "history-went-live")


def test_a_meta_destination_and_a_suppression_sync_set_up_tested_previewed_and_live(page, manager, shot, login, world):
    """The ad platforms are offered beside LiveLike, each with its own form: Meta's asks for a
    Graph API version and an access token, its sync for the custom audience's id and the keys it
    matches on, and its first batch is Meta's schema of hashed identifiers."""
    from audiences.models import Membership
    from syncs.delivery import deliver_destination
    from syncs.models import Sync
    from tests.contract_servers.meta import MetaServer

    audience_id = "23850000000000001"
    with MetaServer("typed-meta-token", audiences=(audience_id,)) as meta:
        login(page, "rita")
        page.goto("/dashboard/destinations/new/")
        for label in ("Meta Custom Audiences", "Google (Data Manager API)", "TikTok"):
            expect(page.locator(".card", has_text=label).first).to_be_visible()
        page.locator(".card", has_text="Meta Custom Audiences").first.click()
        page.get_by_label("Name").fill("Meta (shop)")
        page.get_by_label("Key").fill("meta-shop")
        page.get_by_label("Base URL").fill(meta.url)
        expect(page.get_by_label("Graph API version")).not_to_have_value("")
        page.get_by_label("Meta access token").fill("typed-meta-token")
        shot(page, "meta-destination-form-filled")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".messagelist")).to_contain_text("Saved Meta (shop)")
        expect(page.locator("body")).not_to_contain_text("typed-meta-token")
        page.get_by_role("button", name="Test connection").click()
        expect(page.locator(".messagelist")).to_contain_text("Meta accepted the access token")
        shot(page, "meta-destination-connection-tested")

        page.get_by_role("link", name="+ New sync to Meta (shop)").click()
        page.get_by_label("Audience").select_option("recent_purchasers_24h")
        page.get_by_role("button", name="Next: what to send").click()
        page.get_by_label("Key").fill("buyers-meta-shop")
        page.get_by_label("Audience id downstream").fill(audience_id)
        expect(page.get_by_text("Match on")).to_be_visible()
        shot(page, "meta-sync-form-filled")
        page.get_by_role("button", name="Create in dry run").click()
        expect(page.locator(".messagelist")).to_contain_text("It is in dry run")
        # Meta matches on its own keys: the sync says so, not the audience's identifier policy
        expect(page.locator("h1 + .muted")).to_contain_text("matches on email, phone")
        expect(page.locator("h1 + .muted")).not_to_contain_text("identifier:")
        expect(page.locator(".first-batch")).to_contain_text(f"/{audience_id}/users")
        expect(page.locator("#wire-body")).to_contain_text("EMAIL")
        expect(page.locator("body")).not_to_contain_text("typed-meta-token")
        shot(page, "meta-sync-dry-run-first-batch")

        sync = Sync.objects.get(key="buyers-meta-shop")
        members = Membership.objects.filter(audience__key="recent_purchasers_24h", exited_at__isnull=True)
        assert members.exists(), "the demo has recent purchasers to send"
        page.get_by_role("button", name="Go live").click()
        expect(page.locator(".messagelist")).to_contain_text("is live")
        deliver_destination(sync.destination_id)
        page.reload()
        expect(page.locator("section:has(h2:text('Run history')) tbody tr").first).to_be_visible()
        shot(page, "meta-sync-live-first-run")
        assert len(meta.members(audience_id)) == members.exclude(person__email="").count()
