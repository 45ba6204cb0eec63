"""The editor's two views of a rule: rows and the rule itself turn into each other, and a rule
the rows cannot show is left to the YAML box."""

import pytest

from dashboard.editor import problems, rows_to_rule, rule_to_rows

ROUND_TRIPS = [
    {"event": "Added to Cart", "within": "2h"},
    {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"},
    {"event": "Product Viewed", "within": "7d", "where": {"category": "serum"}, "not_followed_by": "Added to Cart"},
    {"event": "Order Completed", "within": "30d", "min_count": 3},
    {"event": "Order Completed", "last_between": ["60d", "90d"]},
    {"event": "Order Completed", "last_between": ["60d", "90d"], "not_followed_by": "Refund Issued"},
    {"not": {"event": "Order Completed", "within": "1d"}},
    {"attribute": "vip_tier", "in": ["gold", "platinum"]},
    {"any": [{"in_audience": "vips"}, {"not": {"in_audience": "recent_purchasers_24h"}}]},
]


@pytest.mark.parametrize("rule", ROUND_TRIPS)
def test_rows_and_rules_turn_into_each_other(rule):
    match, rows = rule_to_rows(rule)
    assert rows_to_rule(match, rows) == rule
    assert problems(rule) == []


def test_an_empty_since_box_adds_nothing_to_the_rule():
    rows = [{"type": "did", "event": "Added to Cart", "within": "2h", "min_count": "1", "not_followed_by": "  "}]
    assert rows_to_rule("all", rows) == {"event": "Added to Cart", "within": "2h"}


@pytest.mark.parametrize(
    "rule",
    [
        # "did not add to cart with no purchase since" reads badly as a row: YAML only
        {"not": {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"}},
        {"any": [{"all": [{"event": "A"}, {"event": "B"}]}, {"event": "C"}]},
        {"event": "A", "where": {"category": "serum", "size": 50}},
    ],
)
def test_rules_the_rows_cannot_show_are_left_to_yaml(rule):
    assert rule_to_rows(rule) is None


def test_a_row_with_the_same_event_since_gets_the_rule_message():
    rule = rows_to_rule("all", [{"type": "did", "event": "Added to Cart", "within": "2h", "not_followed_by": "Added to Cart"}])
    assert problems(rule) == ["not_followed_by: must name another event than 'Added to Cart' (such as Order Completed)"]


def test_the_editor_names_a_list_over_its_bound_before_saving():
    tiers = ", ".join(f"tier_{n}" for n in range(5000))
    rule = rows_to_rule("all", [{"type": "attribute", "attribute": "vip_tier", "op": "in", "value": tiers}])
    assert problems(rule) == ["in: has 5,000 values; a list takes at most 1,000"]
