from datetime import UTC, timedelta

import pytest

from audiences.rules import (
    All,
    Any,
    AttributeCondition,
    Duration,
    EventCondition,
    InAudience,
    Not,
    RuleError,
    describe,
    event_names,
    parse_duration,
    parse_rule,
    referenced_audiences,
)

NOT_A_DURATION = "is not a duration such as 15m, 2h, 7d, 4w"
ONE_OPERATOR = (
    "an attribute condition needs exactly one of eq, ne, gt, gte, lt, lte, in, exists, contains, older_than, newer_than"
)
ONE_KIND = "a condition needs exactly one of all, any, not, event, attribute, in_audience"
EVENT_KEYS = "unknown key; expected event, within, last_between, min_count, where, not_followed_by"


# --- constructs parse into the right node ----------------------------------------------------


def test_all_any_and_not_wrap_their_children():
    rule = {"all": [{"event": "A"}, {"any": [{"event": "B"}, {"not": {"in_audience": "vips"}}]}]}
    assert parse_rule(rule) == All(
        (
            EventCondition(name="A"),
            Any((EventCondition(name="B"), Not(InAudience("vips")))),
        )
    )


def test_an_event_without_options_means_ever_and_at_least_once():
    node = parse_rule({"event": "  Order Completed "})
    assert node == EventCondition(name="Order Completed", within=None, last_between=None, min_count=1, where=())


def test_not_followed_by_names_the_event_that_must_not_come_after():
    node = parse_rule({"event": "Added to Cart", "within": "2h", "not_followed_by": " Order Completed"})
    assert node == EventCondition(name="Added to Cart", within=Duration("2h"), not_followed_by="Order Completed")


def test_event_within_keeps_the_duration():
    node = parse_rule({"event": "Added to Cart", "within": "2h"})
    assert node == EventCondition(name="Added to Cart", within=Duration("2h"))
    assert node.within.delta == timedelta(hours=2)


def test_event_min_count():
    node = parse_rule({"event": "Order Completed", "within": "30d", "min_count": 3})
    assert node.min_count == 3 and node.within == Duration("30d")


def test_event_last_between_is_newer_then_older():
    node = parse_rule({"event": "Order Completed", "last_between": ["60d", "90d"]})
    assert node.last_between == (Duration("60d"), Duration("90d"))
    assert node.within is None
    assert [d.delta for d in node.last_between] == [timedelta(days=60), timedelta(days=90)]


def test_event_where_is_sorted_property_value_pairs():
    node = parse_rule({"event": "Product Viewed", "within": "7d", "where": {"size": 50, "category": "serum", "sale": True}})
    assert node.where == (("category", "serum"), ("sale", True), ("size", 50))


@pytest.mark.parametrize(
    "operator, value, parsed",
    [
        ("eq", "gold", "gold"),
        ("ne", "gold", "gold"),
        ("gt", 100, 100),
        ("gte", 99.5, 99.5),
        ("lt", 0, 0),
        ("lte", -3, -3),
        ("in", ["gold", "platinum", 3], ("gold", "platinum", 3)),
        ("exists", False, False),
        ("contains", "@example.com", "@example.com"),
        ("older_than", "60d", Duration("60d")),
        ("newer_than", "4w", Duration("4w")),
    ],
)
def test_every_attribute_operator(operator, value, parsed):
    assert parse_rule({"attribute": "vip_tier", operator: value}) == AttributeCondition("vip_tier", operator, parsed)


@pytest.mark.parametrize("name", ["in", "exact", "isnull", "has_key", "vip__tier", "tier_", "_"])
def test_names_django_reads_as_syntax_are_attribute_and_property_names_like_any_other(name):
    # the compiler builds its key lookups from the name, never a lookup path (tests/audiences/test_attribute_names.py)
    assert parse_rule({"attribute": name, "eq": "gold"}) == AttributeCondition(name, "eq", "gold")
    assert parse_rule({"event": "A", "where": {name: "serum"}}) == EventCondition(name="A", where=((name, "serum"),))


def test_in_audience():
    assert parse_rule({"in_audience": "recent_purchasers-24h"}) == InAudience("recent_purchasers-24h")


@pytest.mark.parametrize(
    "text, delta",
    [
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("4w", timedelta(weeks=4)),
        ("1m", timedelta(minutes=1)),
        ("999999d", timedelta(days=999999)),
    ],
)
def test_durations_and_their_timedelta(text, delta):
    assert parse_duration(text) == delta
    assert Duration(text).delta == delta


@pytest.mark.parametrize("text", ["2x", "0m", "07d", "1234567m", "2 h", "2H", "h", "", "1.5h", "-2h", "2h\n", 2])
def test_not_a_duration(text):
    with pytest.raises(ValueError, match="is not a duration such as 15m, 2h, 7d, 4w"):
        parse_duration(text)


def test_duration_words_are_singular_for_one():
    assert Duration("1h").words() == "1 hour"
    assert Duration("2w").words() == "2 weeks"
    assert Duration("15m").words() == "15 minutes"


def test_nesting_up_to_the_limit_parses():
    rule = {"event": "A"}
    for _ in range(12):
        rule = {"not": rule}
    node = parse_rule(rule)
    for _ in range(12):
        assert isinstance(node, Not)
        node = node.child
    assert node == EventCondition(name="A")


def test_referenced_audiences_and_event_names_walk_the_whole_tree():
    node = parse_rule({"all": [{"event": "A"}, {"not": {"any": [{"in_audience": "x"}, {"event": "B"}]}}, {"in_audience": "y"}]})
    assert referenced_audiences(node) == {"x", "y"}
    assert event_names(node) == {"A", "B"}


# --- every bad rule, with its path ------------------------------------------------------------


def _too_deep():
    rule = {"event": "A"}
    for _ in range(13):
        rule = {"not": rule}
    return rule


BAD_RULES = [
    # durations
    ({"all": [{"event": "A"}, {"not": {"event": "B", "within": "2x"}}]}, "all[1].not.within", f'"2x" {NOT_A_DURATION}'),
    ({"event": "A", "within": 2}, "within", f"2 {NOT_A_DURATION}"),
    ({"attribute": "last_order_date", "older_than": "60"}, "older_than", f'"60" {NOT_A_DURATION}'),
    ({"attribute": "last_order_date", "newer_than": "0d"}, "newer_than", f'"0d" {NOT_A_DURATION}'),
    # unknown keys
    ({"event": "A", "whithin": "2h"}, "whithin", EVENT_KEYS),
    ({"all": [{"event": "A"}], "within": "2h"}, "within", "unknown key; expected all"),
    ({"any": [{"event": "A"}, {"not": {"event": "B"}, "where": {}}]}, "any[1].where", "unknown key; expected not"),
    ({"in_audience": "vips", "within": "2h"}, "within", "unknown key; expected in_audience"),
    # one kind of node
    ({"event": "A", "attribute": "x", "eq": 1}, "", f"{ONE_KIND} (found event, attribute)"),
    ({"any": [{"all": [{"event": "A"}], "any": [{"event": "B"}]}]}, "any[0]", f"{ONE_KIND} (found all, any)"),
    ({}, "", f"{ONE_KIND} (found nothing)"),
    ({"evnt": "A"}, "", f"{ONE_KIND} (found evnt)"),
    # groups
    ({"all": []}, "all", "must be a non-empty list of conditions"),
    ({"any": {"event": "A"}}, "any", "must be a non-empty list of conditions"),
    ({"all": ["Added to Cart"]}, "all[0]", 'a condition must be a mapping, not "Added to Cart"'),
    ([{"event": "A"}], "", 'a condition must be a mapping, not [{"event": "A"}]'),
    ({"not": None}, "not", "a condition must be a mapping, not null"),
    # events
    ({"event": ""}, "event", '"" is not an event name'),
    ({"event": "   "}, "event", '"   " is not an event name'),
    ({"event": 42}, "event", "42 is not an event name"),
    ({"event": "x" * 256}, "event", f'"{"x" * 256}" is not an event name'),
    ({"event": "A", "last_between": "60d"}, "last_between", 'must be two durations, newer first, such as ["60d", "90d"]'),
    (
        {"event": "A", "last_between": ["60d", "90d", "120d"]},
        "last_between",
        'must be two durations, newer first, such as ["60d", "90d"]',
    ),
    ({"event": "A", "last_between": ["60d", "90"]}, "last_between[1]", f'"90" {NOT_A_DURATION}'),
    ({"event": "A", "last_between": ["90d", "60d"]}, "last_between", "90d must be shorter than 60d (newer age first)"),
    ({"event": "A", "last_between": ["2w", "14d"]}, "last_between", "2w must be shorter than 14d (newer age first)"),
    (
        {"event": "A", "within": "7d", "last_between": ["60d", "90d"]},
        "last_between",
        "use either within or last_between, not both",
    ),
    ({"event": "A", "min_count": 0}, "min_count", "0 is not a whole number of at least 1"),
    ({"event": "A", "min_count": "3"}, "min_count", '"3" is not a whole number of at least 1'),
    ({"event": "A", "min_count": True}, "min_count", "true is not a whole number of at least 1"),
    ({"event": "A", "min_count": 2.5}, "min_count", "2.5 is not a whole number of at least 1"),
    ({"event": "A", "min_count": 1_000_001}, "min_count", "1000001 is not a whole number of at least 1"),
    (
        {"event": "A", "last_between": ["60d", "90d"], "min_count": 2},
        "min_count",
        "cannot be combined with last_between; use within",
    ),
    # not_followed_by
    ({"event": "A", "not_followed_by": ""}, "not_followed_by", '"" is not an event name'),
    ({"event": "A", "not_followed_by": ["B"]}, "not_followed_by", '["B"] is not an event name'),
    ({"event": "A", "not_followed_by": " A"}, "not_followed_by", "must name another event than 'A' (such as Order Completed)"),
    (
        {"event": "A", "within": "30d", "min_count": 2, "not_followed_by": "B"},
        "not_followed_by",
        "cannot be combined with min_count: it reads the last matching event only",
    ),
    # where
    (
        {"event": "A", "where": ["category"]},
        "where",
        "must be a mapping of event properties to values, such as {category: serum}",
    ),
    ({"event": "A", "where": {}}, "where", "must be a mapping of event properties to values, such as {category: serum}"),
    (
        {"event": "A", "where": {"product category": "serum"}},
        "where.product category",
        "is not a property name (letters, digits, _ and -)",
    ),
    ({"event": "A", "where": {"tags": ["serum"]}}, "where.tags", '["serum"] must be a single text, number or true/false value'),
    ({"event": "A", "where": {"tags": None}}, "where.tags", "null must be a single text, number or true/false value"),
    # attributes
    ({"attribute": "vip_tier"}, "", ONE_OPERATOR),
    ({"attribute": "ltv", "gt": 1, "lt": 5}, "", ONE_OPERATOR),
    ({"attribute": "vip_tier", "like": "gold"}, "", ONE_OPERATOR),
    ({"attribute": "vip tier", "eq": "gold"}, "attribute", '"vip tier" is not an attribute name (letters, digits, _ and -)'),
    ({"attribute": 7, "eq": "gold"}, "attribute", "7 is not an attribute name (letters, digits, _ and -)"),
    ({"attribute": "vip_tier", "eq": ["gold"]}, "eq", '["gold"] must be a single text, number or true/false value'),
    ({"attribute": "vip_tier", "ne": None}, "ne", "null must be a single text, number or true/false value"),
    ({"attribute": "ltv", "gt": "100"}, "gt", '"100" must be a number (use older_than/newer_than for dates)'),
    ({"attribute": "ltv", "lte": True}, "lte", "true must be a number (use older_than/newer_than for dates)"),
    ({"attribute": "vip_tier", "in": []}, "in", "must be a non-empty list of text, number or true/false values"),
    ({"attribute": "vip_tier", "in": "gold"}, "in", "must be a non-empty list of text, number or true/false values"),
    ({"attribute": "vip_tier", "in": ["gold", ["x"]]}, "in", "must be a non-empty list of text, number or true/false values"),
    ({"attribute": "email", "exists": "yes"}, "exists", "must be true or false"),
    ({"attribute": "email", "contains": ""}, "contains", "must be a non-empty text"),
    ({"attribute": "email", "contains": 5}, "contains", "must be a non-empty text"),
    # a trailing newline (a YAML block scalar) is not part of a valid value
    ({"event": "A", "within": "2h\n"}, "within", f'"2h\\n" {NOT_A_DURATION}'),
    (
        {"attribute": "vip_tier\n", "exists": True},
        "attribute",
        '"vip_tier\\n" is not an attribute name (letters, digits, _ and -)',
    ),
    ({"event": "A", "where": {"category\n": "serum"}}, "where.category\n", "is not a property name (letters, digits, _ and -)"),
    ({"in_audience": "vips\n"}, "in_audience", '"vips\\n" is not an audience key'),
    # depth and audiences
    (_too_deep(), ".".join(["not"] * 13), "is nested more than 12 levels deep"),
    ({"in_audience": "recent purchasers"}, "in_audience", '"recent purchasers" is not an audience key'),
    ({"in_audience": 5}, "in_audience", "5 is not an audience key"),
]


@pytest.mark.parametrize("rule, path, message", BAD_RULES)
def test_bad_rule_names_the_problem_and_its_path(rule, path, message):
    with pytest.raises(RuleError) as failure:
        parse_rule(rule)
    assert failure.value.problems == [(path, message)]
    assert str(failure.value) == (f"{path}: {message}" if path else message)


def test_several_problems_are_reported_at_once_in_order():
    rule = {
        "all": [
            {"event": "", "within": "2x"},
            {"attribute": "ltv", "gt": "a lot"},
            "Order Completed",
            {"any": []},
        ]
    }
    with pytest.raises(RuleError) as failure:
        parse_rule(rule)
    assert failure.value.problems == [
        ("all[0].event", '"" is not an event name'),
        ("all[0].within", f'"2x" {NOT_A_DURATION}'),
        ("all[1].gt", '"a lot" must be a number (use older_than/newer_than for dates)'),
        ("all[2]", 'a condition must be a mapping, not "Order Completed"'),
        ("all[3].any", "must be a non-empty list of conditions"),
    ]
    assert str(failure.value).startswith('all[0].event: "" is not an event name; all[0].within: ')


# --- bounds -----------------------------------------------------------------------------------
# A rule that saves must compile to a statement both databases run: SQLite refuses expressions
# nested 1,000 deep ("Expression tree is too large") and integers beyond 64 bits ("Python int
# too large to convert to SQLite INTEGER"); PostgreSQL plans hundreds of EXISTS for minutes.

TIERS = [f"tier_{n}" for n in range(5000)]
OUT_OF_RANGE = "out of range: numbers go from -9,223,372,036,854,775,808 to 9,223,372,036,854,775,807"

OVER_BOUNDS = [
    ({"attribute": "vip_tier", "in": TIERS}, "in", "has 5,000 values; a list takes at most 1,000"),
    ({"attribute": "lifetime_value", "gt": 10**26}, "gt", f"100000000000000000000000000 is {OUT_OF_RANGE}"),
    ({"attribute": "lifetime_value", "lte": -(2**63) - 1}, "lte", f"-9223372036854775809 is {OUT_OF_RANGE}"),
    ({"attribute": "lifetime_value", "gt": 1e26}, "gt", f"1e+26 is {OUT_OF_RANGE}"),
    ({"attribute": "lifetime_value", "gte": float("inf")}, "gte", "Infinity is not a finite number"),
    ({"attribute": "ltv", "eq": float("-inf")}, "eq", "-Infinity is not a finite number"),
    ({"attribute": "ltv", "in": [1, 2**64]}, "in[1]", f"18446744073709551616 is {OUT_OF_RANGE}"),
    ({"attribute": "email", "contains": "x" * 1001}, "contains", "is 1,001 characters long; a text value takes at most 1,000"),
    ({"attribute": "vip_tier", "ne": "x" * 5000}, "ne", "is 5,000 characters long; a text value takes at most 1,000"),
    (
        {"attribute": "vip_tier", "in": ["gold", "y" * 1001]},
        "in[1]",
        "is 1,001 characters long; a text value takes at most 1,000",
    ),
    ({"event": "A", "where": {"sku": "z" * 1001}}, "where.sku", "is 1,001 characters long; a text value takes at most 1,000"),
    ({"event": "A", "where": {"qty": 10**19}}, "where.qty", f"10000000000000000000 is {OUT_OF_RANGE}"),
    ({"event": "A", "where": {f"p{n}": n for n in range(21)}}, "where", "names 21 properties; a where takes at most 20"),
    (
        {"attribute": "vip_tier", "eq": "gold\x00"},
        "eq",
        "holds a NUL character (\\0), which PostgreSQL cannot keep in JSON; remove it",
    ),
    ({"in_audience": "k" * 65}, "in_audience", f'"{"k" * 65}" is not an audience key'),
    (
        {"any": [{"event": f"E{n}"} for n in range(50)]},
        "",
        "the rule has 51 conditions (counting all, any and not); at most 50 (put a part of it in an audience of its own "
        "and use in_audience)",
    ),
    (
        {
            "any": [
                {"attribute": "a", "in": TIERS[:1000]},
                {"attribute": "b", "in": TIERS[1000:2000]},
                {"attribute": "c", "in": TIERS[2000:2001]},
            ]
        },
        "",
        "the rule lists 2,001 values in all; at most 2,000",
    ),
]


@pytest.mark.parametrize("rule, path, message", OVER_BOUNDS)
def test_a_rule_over_its_bounds_is_refused_with_the_path(rule, path, message):
    with pytest.raises(RuleError) as failure:
        parse_rule(rule)
    assert failure.value.problems == [(path, message)]


def test_a_rule_with_thousands_of_problems_reports_twenty_and_counts_the_rest():
    with pytest.raises(RuleError) as failure:
        parse_rule({"attribute": "ltv", "in": [2**64] * 1000})
    assert len(failure.value.problems) == 21
    assert failure.value.problems[-1] == ("", "and 980 more problems")


AT_THE_BOUNDS = [
    {"attribute": "vip_tier", "in": TIERS[:1000]},
    {"attribute": "ltv", "in": [1, 2.5, True, "1", *TIERS[:996]]},
    {"attribute": "lifetime_value", "lte": 2**63 - 1},
    {"attribute": "lifetime_value", "gt": -(2**63)},
    {"attribute": "lifetime_value", "lt": 9.2e18},
    {"attribute": "email", "contains": "x" * 1000},
    {"event": "A", "where": {f"p{n}": n for n in range(20)}},
    {"any": [{"attribute": "vip_tier", "in": TIERS[:1000]}, {"attribute": "vip_tier", "in": TIERS[1000:2000]}]},
    {"all": [{"event": f"E{n}", "within": "2h", "not_followed_by": "Order Completed"} for n in range(49)]},
    {
        "any": [
            {
                "all": [
                    {"not": {"event": f"E{n}", "within": "2h", "min_count": 2, "where": {"x": n}}},
                    {"not": {"attribute": "vip_tier", "in": TIERS[n * 80 : (n + 1) * 80]}},
                ]
            }
            for n in range(9)
        ]
    },
]


@pytest.mark.django_db
@pytest.mark.parametrize("rule", AT_THE_BOUNDS, ids=range(len(AT_THE_BOUNDS)))
def test_every_rule_within_the_bounds_runs_on_the_database(rule):
    from datetime import datetime

    from audiences.compiler import compile_rule
    from audiences.models import Person

    Person.objects.create(customer_id="a", attributes={"vip_tier": "tier_999", "ltv": 1.0, "lifetime_value": 2**63 - 1})
    Person.objects.create(customer_id="b", attributes={"vip_tier": "tier_1000", "ltv": "1", "lifetime_value": -(2**63)})
    Person.objects.create(customer_id="c", attributes={"ltv": True, "email": "x" * 1000})
    members = set(
        Person.objects.filter(compile_rule(rule, datetime(2026, 11, 29, tzinfo=UTC))).values_list("customer_id", flat=True)
    )
    expected = {
        0: {"a"},
        1: {"a", "b", "c"},
        2: {"a", "b"},
        3: {"a"},
        4: {"b"},
        5: {"c"},
        6: set(),
        7: {"a", "b"},
        8: set(),
        9: {"a", "b", "c"},
    }
    assert members == expected[AT_THE_BOUNDS.index(rule)]


# --- plain words ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, words",
    [
        ({"event": "Added to Cart", "within": "2h"}, "did Added to Cart in the last 2 hours"),
        (
            {"event": "Order Completed", "within": "30d", "min_count": 3},
            "did Order Completed at least 3 times in the last 30 days",
        ),
        (
            {"event": "Order Completed", "last_between": ["60d", "90d"]},
            "last did Order Completed between 60 days and 90 days ago",
        ),
        ({"not": {"event": "Order Completed", "within": "1d"}}, "did not do Order Completed in the last 1 day"),
        (
            {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"},
            "did Added to Cart in the last 2 hours with no Order Completed since",
        ),
        (
            {"event": "Order Completed", "last_between": ["60d", "90d"], "not_followed_by": "Refund Issued"},
            "last did Order Completed between 60 days and 90 days ago with no Refund Issued since",
        ),
        (
            {"event": "Product Viewed", "within": "7d", "where": {"category": "serum"}},
            'did Product Viewed with category = "serum" in the last 7 days',
        ),
        (
            {
                "all": [
                    {"attribute": "last_order_date", "older_than": "60d"},
                    {"attribute": "last_order_date", "newer_than": "90d"},
                ]
            },
            "last_order_date is more than 60 days ago and last_order_date is within the last 90 days",
        ),
        (
            {
                "all": [
                    {"event": "Signed Up"},
                    {"any": [{"attribute": "vip_tier", "in": ["gold", "platinum"]}, {"attribute": "ltv", "gte": 500}]},
                ]
            },
            'did Signed Up ever and (vip_tier is one of "gold", "platinum" or ltv is at least 500)',
        ),
        (
            {"not": {"any": [{"attribute": "email", "exists": True}, {"attribute": "phone", "exists": False}]}},
            "not (has email or has no phone)",
        ),
    ],
)
def test_describe_in_plain_words(rule, words):
    assert describe(parse_rule(rule)) == words


def test_describe_uses_audience_names_when_given():
    node = parse_rule({"all": [{"in_audience": "vips"}, {"not": {"in_audience": "recent_purchasers_24h"}}]})
    assert (
        describe(node, {"recent_purchasers_24h": "Bought in the last day"}) == "is in vips and is not in Bought in the last day"
    )
