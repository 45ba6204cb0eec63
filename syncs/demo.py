"""The demo store's holdout history, outcomes and baselines (demo only: real history comes from
evaluations, the outbox and the outcomes API).

`manage.py demo` loads 30 days of funnels and evaluates the audiences once, at the end, so by
itself nothing has entered a cart audience long enough ago for its 7-day window to close, and
nothing could be measured. This replays the cart audiences' past stays from the funnels (a stay
starts at an abandoned cart, or when the higher-ranked stage lets go of it, and ends at the
window's end or at the purchase), records each with the real holdout decision of each sync (the
skipped deliveries and the membership flag, exactly as the outbox writes them), plants a modest
effect (a sent abandoner comes back and buys within 7 days a little more often than a held-out
one) and posts four weeks of ad outcomes and a launch baseline per paid audience, so the pages
and the weekly review have lift, cost per incremental conversion and baselines to show.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.db.models import Max
from django.utils import timezone

from audiences import rules as r
from audiences.demo import PRODUCTS, demo_source
from audiences.ingest import ingest_messages, source_create
from audiences.messages import Message
from audiences.models import Audience, Event, Membership, Person, Source

from . import holdouts
from .models import Baseline, Delivery, Sync
from .outcomes import outcomes_record

# a sent cart abandoner buys within the week this much more often than a held-out one
PLANTED_EXTRA = 0.035
WINDOW = timedelta(days=7)
OUTCOME_DAYS = 28
ADS_SOURCE = "demo-ads"
SEED = 23


def load_holdout_history(*, log=None) -> None:
    anchor = Event.objects.aggregate(at=Max("occurred_at"))["at"]
    if anchor is None:
        return
    rng = random.Random(SEED)
    planted = []
    for audience in Audience.objects.filter(purpose=Audience.ACTIVATION).order_by("key"):
        syncs = list(Sync.objects.filter(audience=audience, enabled=True).select_related("audience", "destination"))
        paid = holdouts.paid_holdout_for(syncs)
        in_force = {sync.pk: holdouts.holdouts_of(sync, paid) for sync in syncs}
        shape = _cart_rule(audience)
        if not shape or not any(in_force.values()):
            continue
        stays = _past_stays(audience, *shape, anchor=anchor)
        held_everywhere = _record(stays, syncs, in_force)
        planted += _plant(stays, held_everywhere, rng, anchor=anchor)
        if log:
            log(
                f"  {audience.key}: {len(stays):,} past stays recorded with their holdout, "
                f"{sum(held_everywhere.values()):,} held out of every sync"
            )
    if planted:
        ingest_messages(source=demo_source(), messages=planted, received_at=anchor)
    _outcomes_and_baselines(anchor, rng)


def _cart_rule(audience: Audience):
    """(event, window, ends-on event, entry delay) for a rule of the demo's cart shape, else None.
    The delay is the window of the higher-ranked stage of the same event in its priority group:
    cart_2_24h takes a cart over when cart_0_2h lets go of it."""
    rule = audience.rule or {}
    if set(rule) - {"event", "within", "not_followed_by"} or "within" not in rule or "event" not in rule:
        return None
    delay = timedelta(0)
    if audience.priority_group_id and audience.priority_rank:
        for higher in Audience.objects.filter(
            priority_group_id=audience.priority_group_id, priority_rank__lt=audience.priority_rank
        ):
            if (higher.rule or {}).get("event") == rule["event"] and "within" in higher.rule:
                delay = max(delay, r.Duration(higher.rule["within"]).delta)
    return rule["event"], r.Duration(rule["within"]).delta, rule.get("not_followed_by"), delay


def _past_stays(audience, event, window, ends_on, delay, *, anchor) -> list[tuple[int, object, object]]:
    """(person id, entered, left) of every stay that ended before the evaluation at `anchor`."""
    carts = defaultdict(list)
    for person_id, at in Event.objects.filter(name=event, occurred_at__lt=anchor - window).values_list(
        "person_id", "occurred_at"
    ):
        carts[person_id].append(at)
    buys = defaultdict(list)
    if ends_on:
        for person_id, at in Event.objects.filter(name=ends_on, person_id__in=list(carts)).values_list(
            "person_id", "occurred_at"
        ):
            buys[person_id].append(at)
    stays = []
    for person_id, times in carts.items():
        current = None
        for at in sorted(times):
            bought = min((b for b in buys[person_id] if b >= at), default=None)
            start, end = at + delay + timedelta(seconds=1), at + window
            if bought is not None:
                end = min(end, bought)
            if end <= start:
                continue
            if current and start <= current[2]:
                current[2] = max(current[2], end)
            else:
                current = [person_id, start, end]
                stays.append(current)
    return [tuple(stay) for stay in stays]


def _record(stays, syncs, in_force) -> dict[int, bool]:
    """Memberships and each sync's entry and exit rows, as the outbox would have written them.
    Returns, per stay (by index), whether it was held out of every sync."""
    customer_ids = dict(Person.objects.filter(pk__in={s[0] for s in stays}).values_list("pk", "customer_id"))
    memberships, deliveries, held_everywhere = [], [], {}
    audience_id = syncs[0].audience_id
    exit_reason = "held out: this person's entry was never sent, so there is nothing to remove"
    for n, (person_id, entered, left) in enumerate(stays):
        customer_id = customer_ids[person_id]
        decided = {sync.pk: holdouts.decide(in_force[sync.pk], customer_id) for sync in syncs}
        held_everywhere[n] = all(decided.values())
        memberships.append(
            Membership(
                audience_id=audience_id, person_id=person_id, entered_at=entered, exited_at=left, held_out=held_everywhere[n]
            )
        )
        for sync in syncs:
            reason, measured = decided[sync.pk], bool(in_force[sync.pk])
            went = Delivery.DRY_RUN if sync.dry_run else Delivery.SENT
            for action, at, skipped in (
                (Delivery.ENTER, entered, reason or ""),
                (Delivery.EXIT, left, exit_reason if reason else ""),
            ):
                deliveries.append(
                    Delivery(
                        sync=sync,
                        person_id=person_id,
                        customer_id=customer_id,
                        action=action,
                        triggered_at=at,
                        changed_at=at,
                        created_at=at,
                        next_attempt_at=at,
                        state=Delivery.SKIPPED if reason else went,
                        last_error=skipped,
                        held_out=(bool(reason) if measured else None) if action == Delivery.ENTER else (True if reason else None),
                        acknowledged_at=None if reason or sync.dry_run else at + timedelta(seconds=1),
                        attempts=0 if reason else 1,
                    )
                )
    Membership.objects.bulk_create(memberships, batch_size=2000)
    Delivery.objects.bulk_create(deliveries, batch_size=2000)
    return held_everywhere


def _plant(stays, held_everywhere, rng, *, anchor) -> list[Message]:
    """The effect: some sent abandoners come back and buy within the week (after the stay)."""
    customer_ids = dict(Person.objects.filter(pk__in={s[0] for s in stays}).values_list("pk", "customer_id"))
    orders = []
    for n, (person_id, entered, left) in enumerate(stays):
        if held_everywhere[n] or rng.random() >= PLANTED_EXTRA:
            continue
        latest = min(entered + WINDOW, anchor) - timedelta(minutes=1)
        if latest <= left:
            continue
        at = left + (latest - left) * rng.random()
        sku, _, category, price = rng.choice(PRODUCTS)
        # a buyer checks out first, as every order in the store does
        orders.append(
            Message(
                kind="event",
                customer_id=customer_ids[person_id],
                message_id=f"demo-return-checkout-{n}-{person_id}",
                timestamp=at - timedelta(minutes=2),
                name="Checkout Started",
                properties={"product_id": sku, "category": category, "price": price},
            )
        )
        orders.append(
            Message(
                kind="event",
                customer_id=customer_ids[person_id],
                message_id=f"demo-return-{n}-{person_id}",
                timestamp=at,
                name="Order Completed",
                properties={
                    "order_id": f"ORD-R{n}",
                    "revenue": price,
                    "currency": "USD",
                    "category": category,
                    "product_id": sku,
                },
            )
        )
    return orders


def _outcomes_and_baselines(anchor, rng) -> None:
    """Four weeks of what the ad platform reports for each paid audience, and the baseline the
    team captured before launch. The platform claims a conversion for about one in eight people
    it reached (it counts buyers who would have bought anyway), so its CPA reads far lower than
    the cost per incremental conversion the holdout measures: the point of measuring."""
    source = Source.objects.filter(name=ADS_SOURCE).first() or source_create(name=ADS_SOURCE, scopes=["outcomes"])[0]
    today = timezone.localdate()
    rows = []
    for audience in Audience.objects.filter(
        purpose=Audience.ACTIVATION, syncs__isnull=False, name__startswith="paid_"
    ).distinct():
        entered = defaultdict(int)
        for at in Membership.objects.filter(audience=audience, entered_at__gte=anchor - timedelta(days=OUTCOME_DAYS)).values_list(
            "entered_at", flat=True
        ):
            entered[timezone.localdate(at)] += 1
        for back in range(OUTCOME_DAYS):
            day = today - timedelta(days=back)
            people = entered.get(day) or max(1, audience.current_size // 30)
            reach = int(people * rng.uniform(1.6, 2.2))
            impressions = int(reach * rng.uniform(3.5, 5))
            conversions = round(people * rng.uniform(0.10, 0.14))
            spend = Decimal(conversions * rng.uniform(12, 16) + reach * 0.05).quantize(Decimal("0.01"))
            rows.append(
                {
                    "audience": audience,
                    "date": day,
                    "impressions": impressions,
                    "reach": reach,
                    "clicks": int(people * rng.uniform(0.9, 1.3)),
                    "conversions": conversions,
                    "spend": spend,
                    "revenue": Decimal(conversions * rng.uniform(30, 40)).quantize(Decimal("0.01")),
                    "currency": "USD",
                }
            )
        Baseline.objects.get_or_create(
            audience=audience,
            defaults={
                "captured_on": today - timedelta(days=OUTCOME_DAYS + 7),
                "cpa": Decimal("15.50"),
                "roas": Decimal("2.40"),
                "frequency": Decimal("4.00"),
                "conversion_rate": Decimal("0.1000"),
                "notes": "Captured from the ad platform the month before launch (demo).",
            },
        )
    outcomes_record(source=source, rows=rows)
