"""The pages as a retention manager (and a viewer) uses them, in Debian's chromium: log in, build the
two-stage cart audience in the editor without typing a rule, be told off for a name that breaks
the convention, find the audience on the dashboard, follow the YAML and the rows, look a person
up, acknowledge an alert, read the sync, alerts, review and history pages.

Every page visited is saved to var/test-artifacts/screenshots/NN-name.png."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

NUMBER = re.compile(r"^\d[\d,. ]*$")


def wait_for_preview(page):
    """The preview panel has answered for the form as it is now: a size, a sample, overlaps."""
    expect(page.locator("#preview")).not_to_have_class(re.compile(r"\bstale\b"))
    expect(page.locator("#preview-size")).to_have_text(NUMBER)
    expect(page.locator("#preview-sample li").first).not_to_have_text("—")
    expect(page.locator("#preview-overlaps li").first).not_to_have_text("—")


def cart_group_for_new_stages(page, shot) -> tuple[str, str]:
    """The priority group the new stages go into: Cart abandoners when ranks 1 and 2 are free,
    else a new group made through the admin, as a retention manager would."""
    from audiences.models import PriorityGroup

    group = PriorityGroup.objects.filter(key="cart_abandoners").first()
    if group and not group.audiences.filter(priority_rank__in=[1, 2]).exists():
        return group.key, group.name
    page.goto("/admin/audiences/prioritygroup/add/")
    page.get_by_label("Key").fill("social_cart")
    page.get_by_label("Name").fill("Social cart abandoners")
    page.get_by_label("Description").fill("Two-stage cart audience for social ads; the freshest stage wins.")
    shot(page, "admin-priority-group-add")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("Social cart abandoners")
    return "social_cart", "Social cart abandoners"


def build_stage(page, shot, *, key, wrong_name, name, within, group, rank):
    page.get_by_role("link", name="+ New audience").click()
    page.wait_for_url("**/dashboard/audiences/new/")
    expect(page.locator("#preview-size")).to_have_text("—")
    expect(page.locator("#preview-size-label")).to_have_text("Fill in a condition to see who matches.")
    expect(page.locator("#preview-problems li")).to_have_count(0)

    # a name that breaks the convention: the live check names the wrong token as it is typed
    page.get_by_label("Name", exact=True).fill(wrong_name)
    wrong_token = wrong_name.split("_")[0]
    expect(page.locator("#name-check")).to_have_class(re.compile(r"\bbad\b"))
    expect(page.locator("#name-check")).to_contain_text(wrong_token)
    expect(page.locator("#name-check")).to_contain_text("channel")
    page.get_by_label("Key").fill(key)
    page.get_by_label("Description").fill(f"Added to cart in the last {within}, not bought.")

    # the rule, as rows: did an event · Added to Cart · in the last <within> · with no Order Completed since
    row = page.locator("#rows .cond").first
    expect(row.locator("select.kind")).to_have_value("did")
    row.get_by_label("event name").fill("Added to Cart")
    row.get_by_label("window, e.g. 2h; empty for ever").fill(within)
    row.get_by_label("event that must not come after it (optional)").fill("Order Completed")
    page.get_by_label("paid_purchased_24h_none").check()
    page.get_by_label("Priority group").select_option(group)
    page.get_by_label("rank").fill(str(rank))
    page.get_by_label("Identifier").select_option("email_sha256")
    expect(page.locator("#id_rule_yaml")).to_have_value(
        re.compile(rf"event: Added to Cart\s+within: {within}\s+not_followed_by: Order Completed")
    )
    wait_for_preview(page)
    shot(page, f"editor-{key}-wrong-name")

    # the server refuses it too, and keeps what was filled in
    page.get_by_role("button", name="Save audience").click()
    page.wait_for_load_state()
    expect(page.locator(".errornote")).to_contain_text("nothing was saved")
    expect(page.locator("#name-check")).to_contain_text(wrong_token)
    from audiences.models import Audience

    assert not Audience.objects.filter(key=key).exists()
    row = page.locator("#rows .cond").first
    expect(row.get_by_label("event name")).to_have_value("Added to Cart")
    expect(row.get_by_label("window, e.g. 2h; empty for ever")).to_have_value(within)
    expect(row.get_by_label("event that must not come after it (optional)")).to_have_value("Order Completed")
    expect(page.get_by_label("paid_purchased_24h_none")).to_be_checked()
    expect(page.get_by_label("rank")).to_have_value(str(rank))
    shot(page, f"editor-{key}-refused")

    # fixed: the check agrees, the preview shows numbers, and it saves
    page.get_by_label("Name", exact=True).fill(name)
    expect(page.locator("#name-check")).to_have_text("Follows the naming convention.")
    expect(page.locator("#name-check")).to_have_class(re.compile(r"\bok\b"))
    wait_for_preview(page)
    shot(page, f"editor-{key}-ready")
    page.get_by_role("button", name="Save audience").click()
    page.wait_for_url(f"**/dashboard/audiences/{key}/")
    expect(page.locator(".messagelist")).to_contain_text(f"Saved {name}")
    expect(page.locator(".card").first).to_contain_text("not evaluated yet")
    expect(page.locator(".panel")).to_contain_text("No evaluations yet")
    shot(page, f"audience-{key}-saved")


def test_a_retention_manager_builds_the_two_stage_cart_audience(page, manager, shot, login, world):
    from audiences.evaluation import evaluate_all
    from audiences.models import Audience, Membership

    login(page, "rita", screenshot=True)
    shot(page, "dashboard")
    group, group_name = cart_group_for_new_stages(page, shot)
    page.goto("/admin/")
    build_stage(
        page,
        shot,
        key="social_cart_0_2h",
        wrong_name="tiktok_cart_0-2h_nopurch",
        name="social_cart_0-2h_nopurch",
        within="2h",
        group=group,
        rank=1,
    )
    build_stage(
        page,
        shot,
        key="social_cart_2_24h",
        wrong_name="tiktok_cart_2-24h_nopurch",
        name="social_cart_2-24h_nopurch",
        within="24h",
        group=group,
        rank=2,
    )

    first, second = Audience.objects.get(key="social_cart_0_2h"), Audience.objects.get(key="social_cart_2_24h")
    assert first.rule == {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"}
    assert second.rule == {"event": "Added to Cart", "within": "24h", "not_followed_by": "Order Completed"}
    for audience, rank in ((first, 1), (second, 2)):
        assert list(audience.exclusions.values_list("key", flat=True)) == ["recent_purchasers_24h"]
        assert (audience.priority_group.key, audience.priority_rank) == (group, rank)
        assert audience.identifier_policy.key == "email_sha256"
        assert audience.owner.username == "rita"

    evaluate_all()

    def members(audience):
        return set(
            Membership.objects.filter(audience=audience, exited_at__isnull=True).values_list("person__customer_id", flat=True)
        )

    fresh, stale = members(first), members(second)
    assert fresh and stale and not fresh & stale
    assert {"bt_fresh_cart", "bt_both_carts"} <= fresh and "bt_stale_cart" in stale
    assert "bt_bought" not in fresh | stale

    # the dashboard lists the new stage with its sparkline; its page has the size chart
    page.get_by_role("link", name="Dashboard", exact=True).click()
    row = page.locator("#audiences tr[data-key=social_cart_0_2h]")
    expect(row).to_contain_text("social_cart_0-2h_nopurch")
    expect(row.locator("td.big")).to_have_text(str(len(fresh)))
    expect(row.locator("svg.spark path")).to_have_count(1)
    expect(row.locator("svg.spark")).to_contain_text("new")
    shot(page, "dashboard-with-new-stages")
    row.get_by_role("link", name="social_cart_0-2h_nopurch").click()
    page.wait_for_url("**/dashboard/audiences/social_cart_0_2h/")
    expect(page.locator("svg.chart").first).to_be_visible()
    expect(page.locator("svg.chart path").first).to_be_attached()
    expect(page.locator(".rule-words")).to_contain_text("paid_purchased_24h_none")
    expect(page.locator(".section-head .muted").first).to_contain_text(f"{group_name}, rank 1")
    shot(page, "audience-social-cart-0-2h")


def test_the_yaml_and_the_rows_follow_each_other(page, manager, shot, login, world):
    login(page, "rita")
    page.goto("/dashboard/audiences/serum_viewers_7d/")
    page.get_by_role("link", name="Edit audience").click()
    page.wait_for_url("**/dashboard/audiences/serum_viewers_7d/edit/")
    row = page.locator("#rows .cond").first
    expect(row.get_by_label("event name")).to_have_value("Product Viewed")
    expect(row.get_by_label("property", exact=True)).to_have_value("category")
    wait_for_preview(page)
    shot(page, "editor-edit-serum-viewers")

    # YAML → rows
    yaml_box = page.get_by_label("rule as YAML")
    yaml_box.fill("all:\n  - event: Added to Cart\n    within: 3d\n  - not:\n      event: Order Completed\n      within: 3d\n")
    expect(page.locator("#rows .cond")).to_have_count(2)
    first, second = page.locator("#rows .cond").nth(0), page.locator("#rows .cond").nth(1)
    expect(first.locator("select.kind")).to_have_value("did")
    expect(first.get_by_label("event name")).to_have_value("Added to Cart")
    expect(first.get_by_label("window, e.g. 2h; empty for ever")).to_have_value("3d")
    expect(second.locator("select.kind")).to_have_value("did_not")
    expect(second.get_by_label("event name")).to_have_value("Order Completed")
    wait_for_preview(page)
    shot(page, "editor-yaml-to-rows")

    # rows → YAML
    first.get_by_label("window, e.g. 2h; empty for ever").fill("5d")
    expect(yaml_box).to_have_value(re.compile(r"event: Added to Cart\s+within: 5d"))
    page.get_by_role("button", name="+ Add condition").click()
    third = page.locator("#rows .cond").nth(2)
    third.locator("select.kind").select_option("attribute")
    third.get_by_label("attribute").fill("vip_tier")
    third.get_by_label("comparison").select_option("in")
    third.get_by_label("value", exact=True).fill("gold, platinum")
    expect(yaml_box).to_have_value(re.compile(r"attribute: vip_tier\s+in:\s+- gold\s+- platinum"))
    wait_for_preview(page)
    shot(page, "editor-rows-to-yaml")

    # a rule that nests deeper than rows: the rows step aside and say so
    yaml_box.fill(
        "any:\n  - all:\n      - event: Added to Cart\n      - attribute: vip_tier\n        eq: gold\n  - event: Checkout Started\n"
    )
    expect(page.locator("#rows-too-complex")).to_contain_text("nests groups of conditions")
    expect(page.locator("#rows")).to_be_hidden()
    wait_for_preview(page)
    shot(page, "editor-yaml-too-complex-for-rows")

    # a YAML typo is reported, not saved
    yaml_box.fill("event: [Added to Cart\n")
    expect(page.locator("#preview-problems")).to_contain_text("YAML, line 2")
    expect(page.locator("#rows-too-complex")).to_contain_text("does not read as a rule yet")
    page.get_by_role("button", name="Save audience").click()
    page.wait_for_load_state()
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator("#conditions .field-errors")).to_contain_text("YAML, line")
    expect(yaml_box).to_have_value("event: [Added to Cart\n")
    expect(page.locator("#rows-too-complex")).to_contain_text("does not read as a rule yet")
    shot(page, "editor-yaml-typo-refused")
    from audiences.models import Audience

    assert Audience.objects.get(key="serum_viewers_7d").rule["event"] == "Product Viewed"


def test_a_person_timeline_through_the_people_look_up(page, manager, shot, login, world):
    login(page, "rita")
    page.get_by_role("link", name="People").click()
    shot(page, "people-look-up")
    page.get_by_label("Customer id, email or phone").fill("nobody@example.com")
    page.get_by_role("button", name="Look up").click()
    expect(page.locator(".empty")).to_contain_text("nobody@example.com")
    shot(page, "people-not-found")
    page.get_by_label("Customer id, email or phone").fill("FRESH.cart@EXAMPLE.com")
    page.get_by_role("button", name="Look up").click()
    page.wait_for_url(re.compile(r".*/dashboard/people/\d+/$"))  # by the person's number, not the customer id
    expect(page.locator(".cards")).to_contain_text("Fresh.Cart@Example.com")
    timeline = page.locator("ul.timeline")
    expect(timeline.locator("li.event").filter(has_text="Added to Cart")).to_have_count(1)
    expect(timeline.locator("li.event").filter(has_text="Product Viewed")).to_have_count(1)
    expect(timeline.locator("li.entered").filter(has_text="entered paid_cart_0-2h_nopurch")).to_have_count(1)
    expect(page.locator(".cards")).to_contain_text("paid_cart_0-2h_nopurch")
    shot(page, "person-timeline")
    page.locator("details.panel summary").filter(has_text="Attributes").click()
    expect(page.locator("table.attributes")).to_be_visible()
    shot(page, "person-attributes")


def test_an_alert_is_acknowledged_from_the_dashboard(page, manager, shot, login, world):
    from audiences.models import Audience
    from syncs.alerts import alert_open
    from syncs.models import Alert

    alert = alert_open(
        key="zero_count:audience:bt",
        kind=Alert.ZERO_COUNT,
        audience=Audience.objects.get(key="cart_2_24h"),
        message="paid_cart_2-24h_nopurch has had 0 members for 2 hours (it usually has 9).",
    )
    login(page, "rita")
    item = page.locator(".ds-alerts li.alert")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("Audience at zero")
    expect(page.locator("#audiences tr[data-key=cart_2_24h] .badge.bad")).to_have_text("1")
    shot(page, "dashboard-open-alert")
    item.get_by_role("button", name="Acknowledge").click()
    expect(page.locator(".messagelist")).to_contain_text("Alert acknowledged.")
    expect(item).to_have_class(re.compile(r"\backed\b"))
    expect(item).to_contain_text("acknowledged by rita")
    expect(item.get_by_role("button", name="Acknowledge")).to_have_count(0)
    shot(page, "dashboard-alert-acknowledged")
    alert.refresh_from_db()
    assert alert.acknowledged_by.username == "rita" and alert.acknowledged_at is not None

    page.get_by_role("link", name="Alerts", exact=True).click()
    expect(page.locator("li.alert.acked")).to_contain_text("acknowledged by rita")
    shot(page, "alerts-acknowledged")


def test_the_sync_alerts_review_and_history_pages(page, manager, shot, login, world):
    login(page, "rita")
    row = page.locator("#audiences tr[data-key=cart_0_2h]")
    row.get_by_role("link", name="LiveLike (demo, dry run)").click()
    page.wait_for_url("**/dashboard/syncs/cart-0-2h-to-livelike/")
    expect(page.locator("h1")).to_contain_text("paid_cart_0-2h_nopurch → LiveLike (demo, dry run)")
    expect(page.locator(".status.dry_run").first).to_be_visible()
    expect(page.get_by_role("heading", name="Run history")).to_be_visible()
    expect(page.get_by_role("heading", name="Dry-run log")).to_be_visible()
    shot(page, "sync-cart-0-2h")
    batch = page.locator("details.panel").filter(has_text="would have been sent").first
    batch.locator("summary").click()
    expect(batch.locator("pre.payload")).to_contain_text('"action": "enter"')
    shot(page, "sync-cart-0-2h-dry-run-batch")

    page.get_by_role("link", name="Alerts", exact=True).click()
    expect(page.get_by_role("heading", name="Open")).to_be_visible()
    expect(page.locator(".ok-line")).to_contain_text("No open alerts")
    shot(page, "alerts")

    page.get_by_role("link", name="Weekly review").click()
    from django.utils import timezone

    today = timezone.localdate()
    expect(page.locator("h1")).to_have_text(f"Weekly review, week ending {today:%d %b %Y}")
    expect(page.locator("#content")).to_contain_text(f"– {today:%a %d %b %Y}")
    from audiences.models import Audience

    expect(page.locator("table.ds-table").first.locator("tbody tr")).to_have_count(Audience.objects.count())
    shot(page, "weekly-review")
    page.get_by_role("link", name=re.compile("← Week ending")).click()
    expect(page.locator("h1")).to_have_text(f"Weekly review, week ending {today - timedelta(days=7):%d %b %Y}")
    expect(page.get_by_role("link", name=re.compile("Week ending .* →"))).to_be_visible()
    shot(page, "weekly-review-week-before")

    from audiences.services import audience_save

    audience_save(
        instance=Audience.objects.get(key="serum_viewers_7d"),
        actor=manager,
        data={"exclusions": ["recent_purchasers_24h", "vip_do_not_discount"], "cadence": "1h"},
    )
    page.get_by_role("link", name="Setting history").click()
    expect(page.locator("h1")).to_contain_text("Setting history")
    changes = page.locator("table.ds-table tbody tr").filter(has_text="serum_viewers_7d changed").filter(has_text="rita")
    expect(changes.filter(has_text="cadence: 15m → 1h")).to_have_count(1)
    # related settings by name, not by id
    expect(
        changes.filter(has_text="exclusions: paid_purchased_24h_none → paid_purchased_24h_none, paid_vip_any_nodiscount")
    ).to_have_count(1)
    expect(page.locator("table.ds-table tbody")).to_contain_text("owner: — → manager")
    shot(page, "setting-history")
    page.get_by_label("Show").select_option("priority group")
    page.wait_for_url("**/history/?kind=priority+group")
    expect(page.locator("table.ds-table tbody")).to_contain_text("cart_abandoners")
    shot(page, "setting-history-priority-groups")


def test_a_viewer_reads_the_dashboard_but_cannot_open_the_editor(page, viewer, shot, login, world):
    from audiences.models import Audience

    login(page, "vic")
    expect(page.locator("#audiences tbody tr")).to_have_count(Audience.objects.count())
    expect(page.get_by_role("link", name="+ New audience")).to_have_count(0)
    shot(page, "viewer-dashboard")
    # the filters apply as they change (static/downstream/app.js: no inline handler under the CSP)
    page.get_by_label("Purpose").select_option("suppression")
    page.wait_for_url(re.compile(r".*/admin/\?purpose=suppression"))
    expect(page.locator("#audiences tbody tr")).to_have_count(Audience.objects.filter(purpose="suppression").count())
    response = page.goto("/dashboard/audiences/new/")
    assert response.status == 403
    expect(page.locator("#content")).to_contain_text("Your role (Viewer) can read the dashboard but not make this change.")
    shot(page, "viewer-editor-forbidden")
    page.get_by_role("link", name="Back to the dashboard").click()
    page.wait_for_url("**/admin/")
    assert page.goto("/dashboard/audiences/cart_0_2h/edit/").status == 403
    page.goto("/dashboard/audiences/cart_0_2h/")
    expect(page.get_by_role("link", name="Edit audience")).to_have_count(0)
    expect(page.locator("svg.chart").first).to_be_visible()
    shot(page, "viewer-audience")
