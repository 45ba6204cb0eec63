"""A skincare D2C store to click around in: people with realistic attributes and 30 days of
browse → cart → checkout → purchase funnels. The same seed and anchor give the same data."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import requests

from .ingest import ingest_messages, person_mark_test, source_create
from .messages import Message
from .models import Source

FIRST_NAMES = (
    "Ava Mia Zoe Ivy Ella Nora Lily Ruby Isla Maya Leah Chloe Grace Hana Aria Emma Olivia Sofia "
    "Liam Noah Omar Leo Ethan Lucas Mateo Kai Theo Jonah Ezra Finn Arjun Ravi Kenji Yusuf"
).split()
LAST_NAMES = (
    "Smith Garcia Chen Patel Nguyen Kim Müller Rossi Silva Cohen Okafor Haddad Novak Larsen "
    "Dubois Santos Tanaka Ibrahim Walsh Moreau Kowalski Brown Jones Ali Singh Park Costa"
).split()
PRODUCTS = [
    ("SER-01", "Vitamin C Glow Serum", "serum", 38.0),
    ("SER-02", "Hyaluronic Hydra Serum", "serum", 32.0),
    ("SER-03", "Retinol Night Serum", "serum", 45.0),
    ("MOI-01", "Barrier Repair Moisturiser", "moisturiser", 29.0),
    ("MOI-02", "Oil-Free Gel Cream", "moisturiser", 26.0),
    ("CLE-01", "Gentle Foaming Cleanser", "cleanser", 18.0),
    ("CLE-02", "Balm Cleanser", "cleanser", 24.0),
    ("SUN-01", "Daily Mineral SPF 50", "sunscreen", 30.0),
    ("TON-01", "Exfoliating AHA Toner", "toner", 22.0),
    ("EYE-01", "Peptide Eye Cream", "eye cream", 35.0),
]
SKIN_TYPES = ("dry", "oily", "combination", "sensitive", "normal")
PHONE_FORMATS = ("+1 (415) 555-{:04d}", "415-555-{:04d}", "+44 7700 9{:05d}", "")
TEST_ACCOUNTS = 5
DEMO_SOURCE = "demo"
# Applied in order by `manage.py demo`; the sync side appends its own file.
DEMO_CONFIG_FILES = [Path(__file__).with_name("demo_config.yaml")]
# Called by `manage.py demo` after the files are applied, before the first evaluation, with
# `log`: the sync side appends what it loads of its own (its holdout history, outcomes).
DEMO_EXTRAS = []


@dataclass
class DemoSummary:
    people: int
    events: int
    anchor: datetime


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def build_people(rng: random.Random, count: int, anchor: datetime) -> list[Message]:
    people = []
    for n in range(1, count + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        test_account = n <= TEST_ACCOUNTS
        domain = "downstream.test" if test_account else rng.choice(("example.com", "mail.example", "example.org"))
        email = f"{first}.{last}{n}@{domain}".lower()
        if rng.random() < 0.15:
            email = f"  {email.title()} "  # the mess real sign-up forms produce; normalised on sync
        phone = rng.choice(PHONE_FORMATS).format(n % 10000)
        orders = max(0, int(rng.expovariate(1 / 2.2)))
        lifetime_value = round(sum(rng.uniform(25, 120) for _ in range(orders)), 2)
        tier = (
            "platinum"
            if lifetime_value > 600
            else "gold"
            if lifetime_value > 300
            else "silver"
            if lifetime_value > 120
            else "none"
        )
        traits = {
            "email": email,
            "first_name": first,
            "last_name": last,
            "skin_type": rng.choice(SKIN_TYPES),
            "orders_count": orders,
            "lifetime_value": lifetime_value,
            "vip_tier": tier,
            "accepts_marketing": rng.random() < 0.7,
            "created_at": _unix(anchor - timedelta(days=rng.randint(30, 720))),
        }
        if phone:
            traits["phone"] = phone
        if orders:
            traits["last_order_date"] = _unix(anchor - timedelta(days=rng.uniform(1, 200)))
        people.append(
            Message(
                kind="identify",
                customer_id=f"cus_{n:05d}",
                message_id=f"demo-identify-{n}",
                timestamp=anchor - timedelta(days=30),
                traits=traits,
            )
        )
    return people


def build_funnels(rng: random.Random, people: list[Message], anchor: datetime, days: int) -> list[Message]:
    """Sessions spread over the window, more of them lately; each walks the funnel a way."""
    events: list[Message] = []
    counter = 0

    def emit(person, name, at, properties):
        nonlocal counter
        counter += 1
        events.append(
            Message(
                kind="event",
                customer_id=person.customer_id,
                message_id=f"demo-{counter}",
                timestamp=at,
                name=name,
                properties=properties,
            )
        )

    span = days * 86400
    for person in people:
        favourite = rng.choice(PRODUCTS)
        for _ in range(min(20, int(rng.expovariate(1 / 5)))):
            # skewed towards the recent end so that short windows (0–2h carts) have people in them
            at = anchor - timedelta(seconds=span * rng.random() ** 1.6)
            product = favourite if rng.random() < 0.5 else rng.choice(PRODUCTS)
            sku, title, category, price = product
            item = {"product_id": sku, "product_name": title, "category": category, "price": price}
            emit(person, "Product Viewed", at, item)
            if rng.random() > 0.32:
                continue
            at += timedelta(minutes=rng.uniform(0.5, 6))
            quantity = 1 if rng.random() < 0.85 else 2
            emit(person, "Added to Cart", at, {**item, "quantity": quantity})
            if rng.random() > 0.55:
                continue
            at += timedelta(minutes=rng.uniform(1, 20))
            value = round(price * quantity, 2)
            emit(person, "Checkout Started", at, {"value": value, "currency": "USD", "category": category})
            if rng.random() > 0.62:
                continue
            at += timedelta(minutes=rng.uniform(1, 10) if rng.random() < 0.9 else rng.uniform(120, 600))
            if at > anchor:
                continue
            emit(
                person,
                "Order Completed",
                at,
                {"order_id": f"ORD-{counter}", "revenue": value, "currency": "USD", "category": category},
            )
    events.sort(key=lambda m: m.timestamp)
    return events


def _apply_orders_to_profiles(people: list[Message], events: list[Message]) -> None:
    """The shop's back end updates last_order_date and lifetime value when an order lands."""
    by_id = {p.customer_id: p for p in people}
    for event in events:
        if event.name != "Order Completed":
            continue
        traits = by_id[event.customer_id].traits
        traits["orders_count"] = traits.get("orders_count", 0) + 1
        traits["lifetime_value"] = round(traits.get("lifetime_value", 0) + event.properties["revenue"], 2)
        traits["last_order_date"] = max(traits.get("last_order_date", 0), _unix(event.timestamp))


def demo_source() -> Source:
    return Source.objects.filter(name=DEMO_SOURCE).first() or source_create(name=DEMO_SOURCE)[0]


def load_demo(*, seed: int, anchor: datetime, people: int, days: int, progress=None) -> DemoSummary:
    rng = random.Random(seed)
    profiles = build_people(rng, people, anchor)
    funnels = build_funnels(rng, profiles, anchor, days)
    _apply_orders_to_profiles(profiles, funnels)
    source = demo_source()
    for start in range(0, len(profiles), 2000):
        ingest_messages(source=source, messages=profiles[start : start + 2000], received_at=anchor)
    for start in range(0, len(funnels), 5000):
        ingest_messages(source=source, messages=funnels[start : start + 5000], received_at=anchor)
        if progress:
            progress(min(start + 5000, len(funnels)), len(funnels))
    person_mark_test(customer_ids=[p.customer_id for p in profiles[:TEST_ACCOUNTS]], is_test=True)
    return DemoSummary(people=len(profiles), events=len(funnels), anchor=anchor)


def live_feed(*, url: str, write_key: str, seed: int, people: int, rate: float, log, stop_after: int | None = None):
    """Keeps sending funnel steps through the ingest API so that the dashboard moves."""
    rng = random.Random(seed)
    session = requests.Session()
    session.auth = (write_key, "")
    endpoint = url.rstrip("/") + "/ingest/v1/batch"
    sent = 0
    while stop_after is None or sent < stop_after:
        person = f"cus_{rng.randint(1, people):05d}"
        sku, title, category, price = rng.choice(PRODUCTS)
        item = {"product_id": sku, "product_name": title, "category": category, "price": price}
        steps = ["Product Viewed"]
        for name, chance in (("Added to Cart", 0.45), ("Checkout Started", 0.6), ("Order Completed", 0.65)):
            if rng.random() > chance:
                break
            steps.append(name)
        batch = [{"type": "track", "userId": person, "event": name, "properties": item} for name in steps]
        if steps[-1] == "Order Completed":
            batch.append({"type": "identify", "userId": person, "traits": {"last_order_date": int(time.time())}})
        try:
            response = session.post(endpoint, json={"batch": batch}, timeout=10)
            log(f"{person}: {' → '.join(steps)}  [{response.status_code}]")
        except requests.RequestException as exc:
            log(f"ingest API not reachable at {endpoint}: {exc.__class__.__name__}; retrying")
        sent += 1
        time.sleep(rng.expovariate(rate))


def backfill_size_history(*, days: int, seed: int = 11) -> int:
    """Synthetic hourly size samples for the week before the first evaluation, so that the demo's
    charts have a shape (a daily rhythm around today's size). Demo only: real history comes
    from evaluations."""
    import math

    from .models import Audience, SizeSample

    rng = random.Random(seed)
    rows = []
    for audience in Audience.objects.all():
        first = SizeSample.objects.filter(audience=audience).order_by("at").first()
        if first is None:
            continue
        size = audience.current_size
        swing = 0.35 if audience.cadence == Audience.REALTIME else 0.08
        previous = size
        for hours_back in range(days * 24, 0, -1):
            at = first.at - timedelta(hours=hours_back)
            rhythm = 1 + swing * math.sin((at.hour - 9) / 24 * 2 * math.pi)
            value = max(0, round(size * rhythm * rng.uniform(0.9, 1.1)))
            delta = value - previous
            rows.append(
                SizeSample(
                    audience=audience,
                    at=at,
                    last_at=at,
                    size=value,
                    entered=max(delta, 0) + rng.randint(0, max(1, value // 20)),
                    exited=max(-delta, 0) + rng.randint(0, max(1, value // 20)),
                    evaluations=60,
                    full=True,
                )
            )
            previous = value
    SizeSample.objects.bulk_create(rows, batch_size=2000)
    return len(rows)
