"""Window expiry against full evaluation: for random people, events and rules (the generators of
test_compiler_property), evaluating only the people whose time has come, at every instant where
some answer can turn (a window's end or opening, a date's age, and a microsecond after), leaves
every realtime audience with the members a full evaluation gives then: the plain-Python
reference at every instant, the compiled rules whenever the tick evaluated someone, and an
hourly consistency check at the end that corrects nobody. New events and attributes arrive on
the way, and the realtime audiences exclude, rank below and include one another. Runs on
whichever database the suite runs against; every time is passed, never read from the clock."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audiences.compiler import members_queryset
from audiences.dependencies import dependency_order
from audiences.evaluation import evaluate_all, evaluate_expired, evaluate_pending
from audiences.ingest import ingest_messages
from audiences.messages import Message
from audiences.models import Audience, Event, Membership, Person, PriorityGroup, Source, WindowExpiry
from tests.audiences.reference import Reference, duration
from tests.audiences.test_compiler_property import (
    ATTRIBUTE_KEYS,
    ATTRIBUTE_VALUES,
    DATES,
    EVENT_NAMES,
    NOW,
    OFFSETS,
    PROPERTY_VALUES,
    event_leaf,
    load,
    rules_strategy,
)

HORIZON = NOW + timedelta(days=120)
MICROSECOND = timedelta(microseconds=1)

# test_compiler_property's people, with their events mostly inside the windows the rules use
# (so that there is something to end) and some anywhere
RECENT = st.one_of(
    st.integers(-3 * 3600, 3 * 86400).map(lambda s: timedelta(seconds=s)),
    st.sampled_from(["30m", "2h", "1d", "7d", "2w"]).flatmap(
        lambda d: st.integers(-600, 600).map(lambda s: duration(d) + timedelta(seconds=s))
    ),
    OFFSETS,
)
# and a date attribute (unix seconds, 200 days ago to 10 days ahead) half of the time
attributes_strategy = st.tuples(
    st.dictionaries(st.sampled_from(ATTRIBUTE_KEYS), ATTRIBUTE_VALUES, max_size=2), st.one_of(st.none(), DATES)
).map(lambda pair: pair[0] if pair[1] is None else {**pair[0], "last_order_date": pair[1]})
people_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "attributes": attributes_strategy,
            "events": st.lists(
                st.tuples(
                    st.sampled_from(EVENT_NAMES),
                    RECENT,
                    st.dictionaries(st.sampled_from(["category", "qty"]), PROPERTY_VALUES, max_size=1),
                ),
                min_size=1,
                max_size=4,
            ),
            "in_a": st.booleans(),
            "was_in_b": st.booleans(),
        }
    ),
    min_size=1,
    max_size=5,
)
# test_compiler_property's rules, and as often conditions that move with the clock combined with
# each other and with those rules (where all / any / not decide when an answer turns)
turning_leaf = st.one_of(
    event_leaf.filter(lambda leaf: "within" in leaf or "last_between" in leaf),
    st.builds(
        lambda op, d: {"attribute": "last_order_date", op: d},
        st.sampled_from(["older_than", "newer_than"]),
        st.sampled_from(["1d", "60d", "90d"]),
    ),
)
mixed = st.tuples(st.sampled_from(["all", "any"]), st.lists(st.one_of(turning_leaf, rules_strategy), min_size=2, max_size=3))
rule_strategy = st.one_of(
    rules_strategy,
    turning_leaf,
    mixed.map(lambda m: {m[0]: m[1]}),
    mixed.map(lambda m: {"not": {m[0]: m[1]}}),
)
# later arrivals: seconds after NOW, then a new event (that many seconds old) or a date attribute
arrivals_strategy = st.lists(
    st.tuples(
        st.integers(1, 20 * 86400),
        st.integers(0, 9),
        st.one_of(st.tuples(st.sampled_from(EVENT_NAMES), st.integers(0, 3 * 3600)), st.tuples(st.just("date"), DATES)),
    ),
    max_size=3,
)


def windows(rule) -> set[timedelta]:
    if isinstance(rule, dict):
        found = set()
        for key, value in rule.items():
            if key in ("within", "older_than", "newer_than"):
                found.add(duration(value))
            elif key == "last_between":
                found |= {duration(value[0]), duration(value[1])}
            else:
                found |= windows(value)
        return found
    if isinstance(rule, list):
        return set().union(*(windows(item) for item in rule))
    return set()


def store() -> tuple[dict, dict]:
    attributes = dict(Person.objects.values_list("pk", "attributes"))
    events = {}
    for person_id, name, at, properties in Event.objects.values_list("person_id", "name", "occurred_at", "properties"):
        events.setdefault(person_id, []).append((name, at, properties))
    return attributes, events


def turning_points(attributes, events, durations, after: datetime) -> list[datetime]:
    """Every instant after `after` where an answer can turn: an event time or a date attribute
    plus a window, and a microsecond later (a window that holds up to an instant has turned then)."""
    anchors = [at for person in events.values() for _, at, _ in person]
    for values in attributes.values():
        for key in ("last_order_date", "ltv"):
            value = values.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and -1e10 < value < 1e10:
                anchors.append(datetime.fromtimestamp(value, UTC))
    points = {a + w + d for a in anchors for w in durations for d in (timedelta(0), MICROSECOND)}
    return sorted(p for p in points if after < p <= HORIZON)


def realtime_audiences(rules) -> list[Audience]:
    """x0; x1 excludes x0; x2 ranks below x1 and takes x0's members as well."""
    group = PriorityGroup.objects.create(key="stages", name="Stages")
    made = []
    for n, rule in enumerate(rules):
        audience = Audience.objects.create(
            key=f"x{n}",
            name=f"x{n}",
            rule={"any": [rule, {"in_audience": "x0"}]} if n == 2 else rule,
            purpose=Audience.SUPPRESSION if n == 0 else Audience.ACTIVATION,
            priority_group=group if n else None,
            priority_rank=n or None,
        )
        if n == 1:
            audience.exclusions.add(made[0])
        made.append(audience)
    return made


def expected_members(audiences, attributes, events, fixed, at) -> dict[str, set]:
    """The reference's answer for x0, x1, x2, with their exclusion and priority."""
    memberships = dict(fixed)
    for audience in audiences:
        found = Reference(attributes=attributes, events=events, memberships=memberships, now=at).members(audience.rule)
        if audience.key == "x1":
            found -= memberships["x0"]
        if audience.key == "x2":
            found -= memberships["x1"]
        memberships[audience.key] = found
    return {a.key: memberships[a.key] for a in audiences}


def current_members(audiences) -> dict[str, set]:
    found = {a.key: set() for a in audiences}
    for key, person_id in Membership.objects.filter(audience__in=audiences, exited_at__isnull=True).values_list(
        "audience__key", "person_id"
    ):
        found[key].add(person_id)
    return found


def arrive(source, arrival, at: datetime, n: int) -> None:
    _, who, (kind, value) = arrival
    customer_id = f"p{who % Person.objects.count()}"
    if kind == "date":
        message = Message("identify", customer_id, f"late{n}", at, traits={"last_order_date": value})
    else:
        message = Message("event", customer_id, f"late{n}", at - timedelta(seconds=value), name=kind)
    ingest_messages(source=source, messages=[message], received_at=at)
    evaluate_pending(now=at)


def person(events=(), **attributes):
    return {"attributes": attributes, "events": list(events), "in_a": False, "was_in_b": False}


def days_ago(days: float) -> int:
    return int((NOW - timedelta(days=days)).timestamp())


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(people=people_strategy, rules=st.lists(rule_strategy, min_size=1, max_size=3), arrivals=arrivals_strategy)
# every way an answer turns, and every way all / any / not decide when: all that holds turns with
# its first child, any that holds with its last, a date crossing its age, a window opening
@example(
    people=[
        person(
            [("Added to Cart", timedelta(minutes=50), {}), ("Order Completed", timedelta(days=2), {})],
            last_order_date=days_ago(59),
        )
    ],
    rules=[
        {"all": [{"event": "Added to Cart", "within": "2h"}, {"event": "Order Completed", "within": "7d"}]},
        {"all": [{"attribute": "last_order_date", "older_than": "60d"}, {"not": {"event": "Added to Cart", "within": "2h"}}]},
        {"event": "Order Completed", "last_between": ["1d", "7d"], "not_followed_by": "Added to Cart"},
    ],
    arrivals=[(3 * 86400, 0, ("Added to Cart", 60))],
)
@example(
    people=[
        person(
            [("Added to Cart", timedelta(minutes=10), {}), ("Order Completed", timedelta(hours=5), {})],
            vip_tier="silver",
            last_order_date=days_ago(80),
        ),
        person([("Product Viewed", timedelta(hours=h), {"category": "serum"}) for h in (2, 5, 30)]),
    ],
    rules=[
        {"any": [{"event": "Added to Cart", "within": "30m"}, {"attribute": "vip_tier", "eq": "gold"}]},
        {"any": [{"event": "Order Completed", "within": "1d"}, {"attribute": "last_order_date", "newer_than": "90d"}]},
        {"event": "Product Viewed", "within": "1d", "min_count": 2, "where": {"category": "serum"}},
    ],
    arrivals=[],
)
@example(
    people=[
        person(
            [
                ("Product Viewed", timedelta(hours=20), {"category": "serum"}),
                ("Product Viewed", timedelta(hours=30), {"category": "toner"}),
                ("Order Completed", timedelta(days=3), {}),
            ]
        )
    ],
    rules=[
        {
            "event": "Product Viewed",
            "last_between": ["1d", "7d"],
            "where": {"category": "serum"},
            "not_followed_by": "Order Completed",
        },
        {"not": {"event": "Product Viewed", "last_between": ["2h", "1d"], "where": {"category": "toner"}}},
    ],
    arrivals=[(86400, 0, ("Order Completed", 0))],
)
def test_evaluating_the_expired_people_keeps_the_members_of_a_full_evaluation(people, rules, arrivals):
    Audience.objects.exclude(key__in=["aud_a", "aud_b"]).delete()
    PriorityGroup.objects.all().delete()
    load(people)
    # in_audience reads their members, fixed here: no rule of theirs to evaluate
    Audience.objects.filter(key__in=["aud_a", "aud_b"]).update(enabled=False)
    fixed = {
        key: set(Membership.objects.filter(audience__key=key, exited_at__isnull=True).values_list("person_id", flat=True))
        for key in ("aud_a", "aud_b")
    }
    audiences = dependency_order(realtime_audiences(rules))
    durations = windows(rules)
    source = Source.objects.get(name="prop")
    evaluate_all(now=NOW)
    attributes, events = store()
    points = turning_points(attributes, events, durations, NOW)
    arriving = sorted(arrivals)
    last, n = NOW, 0
    while points or arriving:
        if arriving and (not points or arriving[0][0] <= (points[0] - NOW).total_seconds()):
            arrival = arriving.pop(0)
            at = max(NOW + timedelta(seconds=arrival[0]), last)
            arrive(source, arrival, at, n)
            n += 1
            attributes, events = store()
            points = turning_points(attributes, events, durations, at)
        else:
            at = points.pop(0)
        evaluated = evaluate_expired(now=at)
        assert not WindowExpiry.objects.filter(due_at__lte=at).exists(), at
        members = current_members(audiences)
        assert members == expected_members(audiences, attributes, events, fixed, at), (rules, at)
        if evaluated:
            compiled = {a.key: set(members_queryset(a, at).values_list("pk", flat=True)) for a in audiences}
            assert members == compiled, (rules, at)
        last = at
    # the consistency check finds nothing to correct
    assert [e.differences for e in evaluate_all(now=last + MICROSECOND)] == [0] * len(audiences)
