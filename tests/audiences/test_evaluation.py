from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from audiences.evaluation import evaluate_all, evaluate_audience, evaluate_due, evaluate_pending, next_evaluation
from audiences.ingest import ingest_messages, person_erase, source_create
from audiences.messages import Message
from audiences.models import Audience, Membership, PendingEvaluation, Person, SizeSample
from audiences.preview import audience_preview
from audiences.services import audience_save, identifier_policy_save, priority_group_save
from audiences.signals import membership_changed

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture
def source():
    return source_create(name="shop")[0]


@pytest.fixture
def announced():
    """Every membership change announced to the sync side."""
    seen = []

    def receiver(sender, evaluation, **kwargs):
        seen.append(evaluation)

    membership_changed.connect(receiver)
    yield seen
    membership_changed.disconnect(receiver)


def send(source, customer_id, name, at, **properties):
    ingest_messages(
        source=source,
        messages=[Message("event", customer_id, f"{customer_id}-{name}-{at.timestamp()}", at, name=name, properties=properties)],
        received_at=at,
    )


def identify(source, customer_id, at=T0, **traits):
    ingest_messages(
        source=source, messages=[Message("identify", customer_id, f"i-{customer_id}", at, traits=traits)], received_at=at
    )


def members(key):
    return set(Membership.objects.filter(audience__key=key, exited_at__isnull=True).values_list("person__customer_id", flat=True))


def playbook():
    """The seed's case: purchasers suppressed, carts split 0–2h and 2–24h with no overlap."""
    audience_save(
        data={
            "key": "purchasers_24h",
            "name": "Purchasers 24h",
            "purpose": "suppression",
            "rule": {"event": "Order Completed", "within": "24h"},
        }
    )
    priority_group_save(data={"key": "carts", "name": "Cart abandoners"})
    audience_save(
        data={
            "key": "cart_0_2h",
            "name": "Cart 0-2h",
            "rule": {"event": "Added to Cart", "within": "2h"},
            "exclusions": ["purchasers_24h"],
            "priority_group": "carts",
            "priority_rank": 1,
        }
    )
    audience_save(
        data={
            "key": "cart_2_24h",
            "name": "Cart 2-24h",
            "rule": {"event": "Added to Cart", "within": "24h"},
            "exclusions": ["purchasers_24h"],
            "priority_group": "carts",
            "priority_rank": 2,
        }
    )


def test_full_evaluation_writes_entries_history_and_a_size_sample(source, announced):
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=10))
    send(source, "b", "Added to Cart", T0 - timedelta(hours=3))
    evaluation = evaluate_audience(audience, now=T0)
    assert (len(evaluation.entries), list(evaluation.exits), evaluation.size) == (1, [], 1)
    membership = Membership.objects.get()
    assert (membership.person.customer_id, membership.entered_at, membership.exited_at) == ("a", T0, None)
    sample = SizeSample.objects.get()
    assert (sample.size, sample.entered, sample.exited, sample.full) == (1, 1, 0, True)
    assert [list(e.entries) for e in announced] == [[membership.person_id]]
    audience.refresh_from_db()
    assert (audience.current_size, audience.last_evaluated_at) == (1, T0)


def test_people_leave_when_the_window_passes_without_a_new_event(source):
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "a", "Added to Cart", T0)
    evaluate_audience(audience, now=T0)
    assert members("carts") == {"a"}
    evaluation = evaluate_audience(audience, now=T0 + timedelta(hours=2, seconds=1))
    assert members("carts") == set() and len(evaluation.exits) == 1
    row = Membership.objects.get()
    assert row.exited_at == T0 + timedelta(hours=2, seconds=1)  # history kept, not deleted


def test_re_entry_is_a_new_membership_row(source):
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "a", "Added to Cart", T0)
    evaluate_audience(audience, now=T0)
    evaluate_audience(audience, now=T0 + timedelta(hours=3))
    send(source, "a", "Added to Cart", T0 + timedelta(hours=4))
    evaluate_audience(audience, now=T0 + timedelta(hours=4))
    rows = list(Membership.objects.order_by("entered_at").values_list("entered_at", "exited_at"))
    assert rows == [(T0, T0 + timedelta(hours=3)), (T0 + timedelta(hours=4), None)]


def test_unchanged_evaluations_extend_the_last_sample_instead_of_adding_rows(source):
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "1d"}})
    send(source, "a", "Added to Cart", T0)
    for minute in range(0, 50, 2):
        evaluate_audience(audience, now=T0 + timedelta(minutes=minute))
    assert SizeSample.objects.count() == 1
    sample = SizeSample.objects.get()
    assert (sample.evaluations, sample.last_at) == (25, T0 + timedelta(minutes=48))
    evaluate_audience(audience, now=T0 + timedelta(hours=2))
    assert SizeSample.objects.count() == 2


def test_suppression_takes_purchasers_out_of_the_activation_audience(source):
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=30))
    send(source, "b", "Added to Cart", T0 - timedelta(minutes=30))
    send(source, "b", "Order Completed", T0 - timedelta(minutes=5))
    evaluate_all(now=T0)
    assert members("purchasers_24h") == {"b"}
    assert members("cart_0_2h") == {"a"}


@pytest.mark.parametrize("where", [None, {"category": "serum"}])
def test_not_followed_by_keeps_carts_with_no_purchase_since(source, where):
    """ "Added to Cart in the last 2h and not purchased since": a purchase after the cart takes a
    person out, a purchase before it does not (they came back for more), a purchase stamped the
    same second counts as since. With a `where`, the last matching cart is the one that counts."""
    rule = {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed", **({"where": where} if where else {})}
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": rule})
    props = where or {}
    send(source, "abandoned", "Added to Cart", T0 - timedelta(minutes=30), **props)
    send(source, "bought", "Added to Cart", T0 - timedelta(minutes=30), **props)
    send(source, "bought", "Order Completed", T0 - timedelta(minutes=10))
    send(source, "came_back", "Order Completed", T0 - timedelta(hours=20))
    send(source, "came_back", "Added to Cart", T0 - timedelta(minutes=20), **props)
    send(source, "same_second", "Added to Cart", T0 - timedelta(minutes=5), **props)
    send(source, "same_second", "Order Completed", T0 - timedelta(minutes=5))
    send(source, "stale", "Added to Cart", T0 - timedelta(hours=3), **props)
    evaluate_audience(audience, now=T0)
    assert members("carts") == {"abandoned", "came_back"}
    # the purchase arrives: out at the next evaluation, with no cart event needed
    send(source, "abandoned", "Order Completed", T0 + timedelta(minutes=1))
    evaluate_audience(audience, now=T0 + timedelta(minutes=1))
    assert members("carts") == {"came_back"}
    # a new cart after that purchase brings them back
    send(source, "abandoned", "Added to Cart", T0 + timedelta(minutes=2), **props)
    evaluate_audience(audience, now=T0 + timedelta(minutes=2))
    assert members("carts") == {"abandoned", "came_back"}
    if where:
        # a later cart of another category is not the one the rule reads
        send(source, "came_back", "Order Completed", T0 + timedelta(minutes=3))
        send(source, "came_back", "Added to Cart", T0 + timedelta(minutes=4), category="toner")
        evaluate_audience(audience, now=T0 + timedelta(minutes=4))
        assert members("carts") == {"abandoned"}


def test_not_followed_by_with_last_between(source):
    rule = {"event": "Order Completed", "last_between": ["60d", "90d"], "not_followed_by": "Refund Issued"}
    audience = audience_save(data={"key": "winback", "name": "Winback", "rule": rule})
    send(source, "lapsed", "Order Completed", T0 - timedelta(days=70))
    send(source, "refunded", "Order Completed", T0 - timedelta(days=70))
    send(source, "refunded", "Refund Issued", T0 - timedelta(days=65))
    send(source, "refunded_before", "Refund Issued", T0 - timedelta(days=80))
    send(source, "refunded_before", "Order Completed", T0 - timedelta(days=75))
    evaluate_audience(audience, now=T0)
    assert members("winback") == {"lapsed", "refunded_before"}


@pytest.mark.parametrize(
    "rule",
    [
        {"event": "Added to Cart", "within": "2h", "not_followed_by": "Order Completed"},  # the aggregate
        {"event": "Added to Cart", "within": "2h", "where": {"category": "serum"}, "not_followed_by": "Order Completed"},
        {"event": "Added to Cart", "last_between": ["1m", "2h"], "not_followed_by": "Order Completed"},
    ],
    ids=["within", "where", "last_between"],
)
def test_not_followed_by_counts_a_purchase_in_the_same_second_as_since_whatever_the_fraction(source, rule):
    """The README: the same second counts as after, erring towards suppression. A purchase at
    :08.100 and a cart at :08.700 (clocks of two systems, rounding) must not keep the person in
    the cart audience; a purchase in the second before the cart still does not count."""
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": rule})
    cart_second = (T0 - timedelta(minutes=30)).replace(second=8)
    cases = {
        "same_second_earlier_fraction": timedelta(milliseconds=100 - 700),
        "same_second_later_fraction": timedelta(milliseconds=900 - 700),
        "second_before": timedelta(milliseconds=900 - 1700),
    }
    for customer_id, purchase_offset in cases.items():
        cart_at = cart_second + timedelta(milliseconds=700)
        send(source, customer_id, "Added to Cart", cart_at, category="serum")
        send(source, customer_id, "Order Completed", cart_at + purchase_offset)
    evaluate_audience(audience, now=T0)
    assert members("carts") == {"second_before"}
    # per-person evaluation reads the same compiled rule
    Membership.objects.all().delete()
    evaluate_audience(audience, now=T0, person_ids=list(Person.objects.values_list("pk", flat=True)))
    assert members("carts") == {"second_before"}


def test_priority_group_puts_each_person_in_the_freshest_stage_only(source):
    playbook()
    send(source, "fresh", "Added to Cart", T0 - timedelta(minutes=30))
    send(source, "stale", "Added to Cart", T0 - timedelta(hours=5))
    send(source, "both", "Added to Cart", T0 - timedelta(hours=10))
    send(source, "both", "Added to Cart", T0 - timedelta(minutes=10))
    evaluate_all(now=T0)
    assert members("cart_0_2h") == {"fresh", "both"}
    assert members("cart_2_24h") == {"stale"}
    # as time passes people move down a stage, and are never in both at once
    for hours in (1, 2, 3, 23, 25):
        evaluate_all(now=T0 + timedelta(hours=hours))
        assert not members("cart_0_2h") & members("cart_2_24h")
    assert members("cart_0_2h") == set() and members("cart_2_24h") == set()


def test_evaluation_follows_dependencies_whatever_the_key_order(source):
    audience_save(
        data={
            "key": "zz_buyers",
            "name": "Buyers",
            "purpose": "suppression",
            "rule": {"event": "Order Completed", "within": "1d"},
        }
    )
    audience_save(
        data={"key": "aa_carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "1d"}, "exclusions": ["zz_buyers"]}
    )
    send(source, "a", "Added to Cart", T0)
    send(source, "a", "Order Completed", T0)
    assert [e.audience_key for e in evaluate_all(now=T0)] == ["zz_buyers", "aa_carts"]
    assert members("aa_carts") == set()


def test_a_dependency_cycle_is_refused_when_saved():
    audience_save(data={"key": "one", "name": "One", "rule": {"attribute": "x", "exists": True}})
    audience_save(data={"key": "two", "name": "Two", "rule": {"in_audience": "one"}})
    with pytest.raises(ValidationError) as refused:
        audience_save(instance=Audience.objects.get(key="one"), data={"rule": {"in_audience": "two"}})
    assert "one → two → one" in str(refused.value)


def test_realtime_audiences_follow_ingest_for_the_touched_people_only(source, announced):
    playbook()
    send(source, "a", "Added to Cart", T0 - timedelta(minutes=20))
    send(source, "b", "Added to Cart", T0 - timedelta(minutes=20))
    evaluate_all(now=T0)
    assert members("cart_0_2h") == {"a", "b"}
    PendingEvaluation.objects.all().delete()
    received = T0 + timedelta(seconds=1)
    send(source, "b", "Order Completed", received)
    assert PendingEvaluation.objects.filter(person__customer_id="b").exists()
    assert evaluate_pending(now=received) == 1
    assert members("purchasers_24h") == {"b"}
    assert members("cart_0_2h") == {"a"}
    exits = [e for e in announced if e.audience_key == "cart_0_2h" and e.exits]
    assert exits and not exits[-1].full
    person_b = Person.objects.get(customer_id="b").pk
    assert exits[-1].triggered(person_b) == received  # lag is measured from the ingest request
    assert not PendingEvaluation.objects.exists()


def test_ingest_api_request_wakes_realtime_evaluation_after_commit(client, source, django_capture_on_commit_callbacks):
    audience_save(data={"key": "buyers", "name": "Buyers", "rule": {"event": "Order Completed", "within": "1d"}})
    source_key = source_create(name="web")[1]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/ingest/v1/track",
            {"userId": "u1", "event": "Order Completed", "messageId": "m1"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {source_key}",
        )
    assert response.status_code == 200
    # test settings run the worker's task in-process (Q_CLUSTER sync); a real worker does it in ~0.1 s
    assert members("buyers") == {"u1"}


def test_erasure_leaves_every_audience_and_announces_the_exits(source, announced):
    playbook()
    send(source, "a", "Added to Cart", T0)
    send(source, "a", "Order Completed", T0)
    evaluate_all(now=T0)
    assert members("purchasers_24h") == {"a"}
    announced.clear()
    person_erase(customer_id="a", source=source)
    assert [(e.audience_key, e.erasure, len(e.exits)) for e in announced] == [("purchasers_24h", True, 1)]
    assert Audience.objects.get(key="purchasers_24h").current_size == 0
    assert not Person.objects.exists() and not Membership.objects.exists()


def test_due_audiences_follow_their_cadence_and_are_claimed_once(source):
    audience_save(data={"key": "hourly", "name": "Hourly", "cadence": "1h", "rule": {"attribute": "vip", "eq": True}})
    audience_save(data={"key": "live", "name": "Live", "rule": {"attribute": "vip", "eq": True}})
    audience_save(data={"key": "cron", "name": "Cron", "cadence": "0 6 * * *", "rule": {"attribute": "vip", "eq": True}})
    identify(source, "a", vip=True)
    assert sorted(e.audience_key for e in evaluate_due(now=T0)) == ["cron", "hourly", "live"]
    assert evaluate_due(now=T0) == []  # claimed: an overlapping tick does nothing
    # realtime: people leave by window expiry, and the full evaluation is an hourly consistency check
    assert [e.audience_key for e in evaluate_due(now=T0 + timedelta(minutes=1))] == []
    assert sorted(e.audience_key for e in evaluate_due(now=T0 + timedelta(hours=1, minutes=1))) == ["hourly", "live"]
    cron = Audience.objects.get(key="cron")
    assert cron.next_evaluation_at == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    assert next_evaluation(cron, T0) == cron.next_evaluation_at


def test_changing_the_rule_makes_the_audience_due_again(source):
    audience = audience_save(data={"key": "hourly", "name": "Hourly", "cadence": "1h", "rule": {"attribute": "vip", "eq": True}})
    evaluate_due(now=T0)
    audience_save(instance=audience, data={"rule": {"attribute": "vip", "eq": False}})
    assert [e.audience_key for e in evaluate_due(now=T0 + timedelta(minutes=1))] == ["hourly"]


def test_preview_shows_size_sample_overlap_and_coverage(source):
    playbook()
    identifier_policy_save(data={"key": "email", "name": "Email", "field": "email"})
    for n in range(30):
        identify(source, f"p{n}", email=f"P{n}@Example.com " if n % 3 else "not-an-email")
        send(source, f"p{n}", "Added to Cart", T0 - timedelta(minutes=n))
    evaluate_all(now=T0)
    preview = audience_preview(rule={"event": "Added to Cart", "within": "1d"}, identifier_policy="email", now=T0)
    assert preview.size == 30
    assert len(preview.sample) == 20
    overlap = {o.key: o.count for o in preview.overlaps}
    assert overlap == {"cart_0_2h": 30, "cart_2_24h": 0, "purchasers_24h": 0}
    assert (preview.coverage_valid, preview.coverage_looked) == (20, 30)


def test_evaluate_and_members_commands(source):
    from django.utils import timezone

    playbook()
    send(source, "a", "Added to Cart", timezone.now())
    out = StringIO()
    call_command("evaluate", "purchasers_24h", "cart_0_2h", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("purchasers_24h: size 0") and lines[1].startswith("cart_0_2h:")
    out = StringIO()
    call_command("members", "cart_0_2h", stdout=out)
    assert out.getvalue().split() == ["a"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("purpose", ["x"]),
        ("source_kind", {"a": 1}),
        ("cadence", 5),
        ("exclusions", [["x"]]),
        ("priority_group", ["g"]),
        ("identifier_policy", 3),
        ("rule", "not a mapping"),
        ("name", 7),
        ("enabled", "yes"),
    ],
)
def test_wrongly_typed_audience_fields_get_a_message_not_a_crash(field, value):
    with pytest.raises(ValidationError) as refused:
        audience_save(data={"key": "x", "name": "X", "rule": {"attribute": "a", "exists": True}, field: value})
    assert field in refused.value.message_dict
    assert not Audience.objects.exists()


def test_evaluations_do_not_add_to_the_setting_history(source):
    audience = audience_save(data={"key": "carts", "name": "Carts", "rule": {"event": "Added to Cart", "within": "2h"}})
    send(source, "a", "Added to Cart", T0)
    before = audience.history.count()
    evaluate_audience(audience, now=T0)
    evaluate_audience(audience, now=T0 + timedelta(hours=3))
    assert audience.history.count() == before
