"""One audience whose evaluation fails must not stop the others. Rules are bounded when saved,
but a rule stored before the bounds (written here with a queryset update, as an old row would
be) or a failure of the database must cost only that audience: it is rolled back on its own,
marked failing and skipped; every other audience, the suppression ones first, goes on."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from audiences.evaluation import evaluate_all, evaluate_due, evaluate_pending
from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.models import Audience, Membership, PendingEvaluation, SizeSample
from audiences.services import audience_save
from audiences.signals import membership_changed

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HUGE_LIST = {"attribute": "vip_tier", "in": [f"tier_{n}" for n in range(5000)]}
HUGE_NUMBER = {"attribute": "lifetime_value", "gt": 10**26}


@pytest.fixture
def source():
    return source_create(name="shop")[0]


def send(source, customer_id, name, at):
    ingest_messages(
        source=source, messages=[Message("event", customer_id, f"{customer_id}-{name}-{at}", at, name=name)], received_at=at
    )


def members(key):
    return set(Membership.objects.filter(audience__key=key, exited_at__isnull=True).values_list("person__customer_id", flat=True))


def store_rule(key, rule):
    """What an audience saved before rules were bounded looks like: the rule is in the row."""
    Audience.objects.filter(key=key).update(rule=rule)


def playbook_with_two_broken_audiences():
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    audience_save(
        data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}, "exclusions": ["buyers"]}
    )
    # keys sorted before and between the good ones, so they are evaluated first
    audience_save(data={"key": "a_vip_tiers", "name": "VIP tiers", "rule": {"attribute": "vip_tier", "eq": "gold"}})
    audience_save(data={"key": "big_spenders", "name": "Big spenders", "rule": {"attribute": "lifetime_value", "gt": 1000}})
    store_rule("a_vip_tiers", HUGE_LIST)
    store_rule("big_spenders", HUGE_NUMBER)


def failing(key):
    audience = Audience.objects.get(key=key)
    return audience.evaluation_failed_at, audience.evaluation_error


@pytest.mark.parametrize("evaluate", [evaluate_all, evaluate_due], ids=["evaluate_all", "evaluate_due"])
def test_a_full_pass_skips_and_marks_failing_audiences_and_evaluates_the_others(source, evaluate):
    playbook_with_two_broken_audiences()
    send(source, "cart_only", "Added to Cart", T0 - timedelta(minutes=10))
    send(source, "bought", "Added to Cart", T0 - timedelta(minutes=10))
    send(source, "bought", "Order Completed", T0 - timedelta(minutes=5))

    evaluations = evaluate(now=T0)

    assert sorted(e.audience_key for e in evaluations) == ["buyers", "carts"]
    assert members("buyers") == {"bought"} and members("carts") == {"cart_only"}
    assert failing("a_vip_tiers") == (T0, "rule: in: has 5,000 values; a list takes at most 1,000")
    assert failing("big_spenders") == (
        T0,
        "rule: gt: 100000000000000000000000000 is out of range: numbers go from -9,223,372,036,854,775,808 "
        "to 9,223,372,036,854,775,807",
    )
    assert failing("buyers") == (None, "")
    assert not SizeSample.objects.filter(audience__key__in=["a_vip_tiers", "big_spenders"]).exists()


def test_the_failing_mark_clears_when_the_audience_evaluates_again(source):
    playbook_with_two_broken_audiences()
    evaluate_all(now=T0)
    assert failing("a_vip_tiers")[0] == T0
    # the manager fixes the rule; saving goes through the bounds
    audience_save(instance=Audience.objects.get(key="a_vip_tiers"), data={"rule": {"attribute": "vip_tier", "in": ["gold"]}})
    evaluate_all(["a_vip_tiers"], now=T0 + timedelta(minutes=1))
    assert failing("a_vip_tiers") == (None, "")
    assert failing("big_spenders")[0] == T0  # still broken, still marked


def test_a_database_error_rolls_back_only_its_audience_and_the_pass_goes_on(source):
    """Entries already written for the failing audience are rolled back with it (a savepoint);
    on PostgreSQL the failed statement must not leave the transaction unusable for the others."""
    audience_save(
        data={"key": "buyers", "name": "Buyers", "purpose": "suppression", "rule": {"event": "Order Completed", "within": "1d"}}
    )
    audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "p", "Added to Cart", T0 - timedelta(minutes=10))
    send(source, "p", "Order Completed", T0 - timedelta(minutes=5))

    def broken_statement(sender, evaluation, **kwargs):
        if evaluation.audience_key == "buyers":
            with connection.cursor() as cursor:
                cursor.execute("SELECT no_such_column FROM audiences_audience")

    membership_changed.connect(broken_statement)
    try:
        evaluations = evaluate_all(now=T0)
    finally:
        membership_changed.disconnect(broken_statement)
    assert [e.audience_key for e in evaluations] == ["carts"]
    assert members("buyers") == set() and members("carts") == {"p"}
    at, error = failing("buyers")
    assert at == T0 and "no_such_column" in error


def test_the_realtime_pass_goes_on_past_a_failing_audience_and_keeps_no_claim_behind(source):
    """The purchase reaches the suppression audience although an audience evaluated before it
    fails; the queued person is evaluated once and not queued again forever."""
    playbook_with_two_broken_audiences()
    send(source, "p", "Added to Cart", T0 - timedelta(minutes=10))
    evaluate_all(now=T0)
    assert members("carts") == {"p"}
    PendingEvaluation.objects.all().delete()
    Audience.objects.filter(key__in=["a_vip_tiers", "big_spenders"]).update(evaluation_failed_at=None, evaluation_error="")

    bought_at = T0 + timedelta(seconds=30)
    send(source, "p", "Order Completed", bought_at)
    assert evaluate_pending(now=bought_at) == 1

    assert members("buyers") == {"p"} and members("carts") == set()
    assert not PendingEvaluation.objects.exists()
    assert failing("a_vip_tiers")[0] == bought_at and failing("big_spenders")[0] == bought_at
    # a per-person pass over a handful of people does not prove the audience evaluates again
    store_rule("a_vip_tiers", {"attribute": "vip_tier", "eq": "gold"})
    send(source, "p", "Added to Cart", bought_at + timedelta(seconds=1))
    evaluate_pending(now=bought_at + timedelta(seconds=1))
    assert failing("a_vip_tiers")[0] == bought_at


def test_an_audience_that_reads_a_failing_one_keeps_its_last_good_membership(source):
    """Carts excludes buyers. When buyers fails, carts goes on against buyers' members as they
    were at its last good evaluation (the alert says buyers is failing): a past purchaser stays
    out of carts; it is not emptied or stopped."""
    playbook_with_two_broken_audiences()
    send(source, "bought", "Order Completed", T0 - timedelta(minutes=5))
    evaluate_all(now=T0)
    assert members("buyers") == {"bought"}
    store_rule("buyers", HUGE_NUMBER)
    send(source, "bought", "Added to Cart", T0 + timedelta(minutes=1))
    send(source, "new", "Added to Cart", T0 + timedelta(minutes=1))

    evaluate_all(now=T0 + timedelta(minutes=2))

    assert failing("buyers")[0] == T0 + timedelta(minutes=2)
    assert members("buyers") == {"bought"}
    assert members("carts") == {"new"}
    assert Audience.objects.get(key="carts").last_evaluated_at == T0 + timedelta(minutes=2)


def test_the_evaluate_command_evaluates_the_others_and_names_the_failing_ones(source):
    from io import StringIO

    from django.core.management import CommandError, call_command

    playbook_with_two_broken_audiences()
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as refused:
        call_command("evaluate", stdout=out, stderr=err)
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == ["buyers", "carts"]
    assert err.getvalue().splitlines() == [
        "a_vip_tiers: evaluation failing: rule: in: has 5,000 values; a list takes at most 1,000",
        "big_spenders: evaluation failing: rule: gt: 100000000000000000000000000 is out of range: numbers go from "
        "-9,223,372,036,854,775,808 to 9,223,372,036,854,775,807",
    ]
    assert "2 audience(s) failed to evaluate" in str(refused.value)
