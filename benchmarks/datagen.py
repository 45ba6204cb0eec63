"""Benchmark data for the audience engine: N people and M events of the demo's skincare store,
fast, deterministic for a seed, with EventStat equal to the aggregate of the event table.

    .venv/bin/python benchmarks/datagen.py --database-url postgres://postgres@127.0.0.1:5432/downstream_bench_eval \\
        --people 1000000 --events 10000000 [--seed 1] [--days 120] [--now 2026-03-01T12:00:00Z]

The CLI drops/recreates and migrates the database first. `generate()` fills an already migrated,
empty database through the configured Django connection (DATABASE_URL decides the backend).

How the data looks (figures measured at 1M people / 10M events, seed 1):

* Events are written in time order, as a live store's ingest would have written them (ids and
  heap order follow occurred_at: correlation 0.99999), which matters for index correlation and
  for what a time-window query touches. The window is cut into slices of equal event counts;
  a slice's sessions pick a person by activity weight, walk the funnel (1-4 product views,
  then cart 35 %, checkout 55 % of carts, order 62 % of checkouts, minutes apart; 10 % of
  orders hours later) and are sorted. Mix: 70.5 % Product Viewed, 15.6 % Added to Cart,
  8.6 % Checkout Started, 5.3 % Order Completed.
* Event times are skewed towards `now` like a growing store: the age of an event is
  `days * u ** 1.3` for uniform u, so the last 2 h hold 0.37 % of all events (0.58 % of
  people carted in them) and the last 24 h 2.5 % (1.3 % of people ordered in them).
* Activity: 30 % of people are dormant, the others have lognormal weights; 61 % of people
  have events in the window (median 9, p99 110, max ~1,300 events per active person).
* Catalogue: the demo's ten products (same ids) take 60 % of views, 190 long-tail SKUs in
  the same categories the rest.
* Profiles come after the events, so the attributes agree with them like a shop back end's
  would: orders_count and lifetime_value are a pre-window history plus the window's orders,
  last_order_date is the last Order Completed (or a date before the window), vip_tier follows
  lifetime value with the demo's thresholds (68 % none, 20 % silver, 9 % gold, 2.5 %
  platinum); 4.5 % of people have last_order_date 60-90 days ago. Emails: 10 % padded and
  title-cased, 5 % capitalised; phones in five formats for 65 %; cio_id for 92 %.
* PostgreSQL: COPY in text format (events with FREEZE into the freshly truncated table, so the
  pages are all-visible and need no hint-bit writes later), the secondary indexes and
  foreign keys of person/event/eventstat dropped during the load and recreated from their
  catalogue definitions afterwards (checked identical), EventStat by INSERT ... SELECT ...
  GROUP BY, then VACUUM ANALYZE (this server runs with autovacuum off).
* SQLite: executemany in large transactions with synchronous=OFF and foreign keys off, the
  same index drop/recreate, then ANALYZE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVENT_NAMES = ("Product Viewed", "Added to Cart", "Checkout Started", "Order Completed")
VIEWED, CARTED, CHECKOUT, ORDERED = range(4)
SOURCE_NAME = "bench"
SESSION_EVENTS_PER_SLICE = 5000  # events sorted together; bounds the disorder of the time order
RECENCY_POWER = 1.3  # age = days * u ** RECENCY_POWER
DORMANT_SHARE = 0.30  # people with no event in the window
ACTIVITY_SIGMA = 1.1  # lognormal spread of the other people's activity
TEST_ACCOUNTS = 5
VIP_TIERS = ("none", "silver", "gold", "platinum")
AREA_CODES = (212, 305, 312, 415, 512, 617, 646, 702, 718, 206, 303, 404, 503, 602, 713, 917)


# --- the catalogue ----------------------------------------------------------------------------


def _catalogue():
    """The demo's ten products (same ids) take 60 % of views; 190 long-tail SKUs the rest."""
    from audiences.demo import PRODUCTS

    sizes = ("Mini", "Travel", "Refill", "Duo", "Jumbo")
    tail = []
    for i in range(190):
        sku, title, category, price = PRODUCTS[i % len(PRODUCTS)]
        variant = i // len(PRODUCTS)
        tail.append(
            (
                f"{sku}-{variant + 1:02d}",
                f"{title} {sizes[variant % len(sizes)]} {variant + 1}",
                category,
                round(price * (0.5 + 0.1 * (variant % 13)), 2),
            )
        )
    return list(PRODUCTS), tail


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass
class _Catalogue:
    products: list  # (sku, title, category, price)
    hero_count: int
    view: list = field(default_factory=list)  # JSON per product
    cart: list = field(default_factory=list)  # JSON per product and quantity - 1
    checkout: list = field(default_factory=list)
    order_tail: list = field(default_factory=list)  # JSON after the order id
    value: list = field(default_factory=list)  # revenue per product and quantity - 1

    @classmethod
    def build(cls):
        heroes, tail = _catalogue()
        cat = cls(products=heroes + tail, hero_count=len(heroes))
        for sku, title, category, price in cat.products:
            item = {"product_id": sku, "product_name": title, "category": category, "price": price}
            cat.view.append(_dumps(item))
            cat.cart.append([_dumps({**item, "quantity": q}) for q in (1, 2)])
            values = [round(price * q, 2) for q in (1, 2)]
            cat.value.append(values)
            cat.checkout.append([_dumps({"value": v, "currency": "USD", "category": category}) for v in values])
            cat.order_tail.append([_dumps({"revenue": v, "currency": "USD", "category": category})[1:] for v in values])
        return cat


# --- the plan: what generate() will write, independent of the backend ---------------------------


@dataclass
class Plan:
    people: int
    events: int
    seed: int
    now: datetime
    days: int

    def __post_init__(self):
        if self.people < 1 or self.events < 0 or self.days < 1:
            raise ValueError("need people >= 1, events >= 0 and days >= 1")
        if self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.end = int(self.now.timestamp())  # whole seconds; every event is at or before it
        self.span = self.days * 86400
        self.catalogue = _Catalogue.build()
        # What the events did to each profile, filled while the events are generated.
        self.orders = array("l", bytes(8 * self.people))
        self.revenue = array("d", bytes(8 * self.people))
        self.last_order = array("q", bytes(8 * self.people))
        # Timestamps as text: one string per minute of the window.
        self.first_minute = (self.end - self.span) // 60 - 1
        self._minutes: list[str] = []

    def minute_text(self) -> list[str]:
        if not self._minutes:
            start = datetime.fromtimestamp(self.first_minute * 60, UTC)
            count = self.end // 60 - self.first_minute + 1
            self._minutes = [f"{start + timedelta(minutes=i):%Y-%m-%d %H:%M}:" for i in range(count)]
        return self._minutes

    def weights(self) -> list[float]:
        rng = random.Random(f"{self.seed}/activity")
        lognormal = rng.lognormvariate
        chance = rng.random
        return [0.0 if chance() < DORMANT_SHARE else lognormal(0.0, ACTIVITY_SIGMA) for _ in range(self.people)]

    # -- events --

    def event_slices(self) -> Iterator[list[tuple]]:
        """Lists of (id, person_id, name index, unix seconds, properties JSON, message id), in time
        order but for the rare session that runs past its slice (~2 in 10,000 events)."""
        if not self.events:
            return
        rng = random.Random(f"{self.seed}/events")
        rand, getrandbits = rng.random, rng.getrandbits
        cumulative = list(accumulate(self.weights()))
        total_weight = cumulative[-1]
        if total_weight <= 0:
            raise ValueError("no active people")
        cat = self.catalogue
        heroes, tails = cat.hero_count, len(cat.products) - cat.hero_count
        view_json, cart_json, checkout_json, order_tail, values = (cat.view, cat.cart, cat.checkout, cat.order_tail, cat.value)
        orders, revenue, last_order = self.orders, self.revenue, self.last_order
        end, span, power = self.end, self.span, RECENCY_POWER
        slices = max(1, math.ceil(self.events / SESSION_EVENTS_PER_SLICE))
        next_id = 1
        order_number = 0
        for k in range(slices):
            # oldest slice first: u runs from 1 down to 0, age = span * u ** power
            quota = round(self.events * (k + 1) / slices) - round(self.events * k / slices)
            u_high = 1 - k / slices
            u_width = 1 / slices
            rows: list[tuple] = []
            append = rows.append
            while len(rows) < quota:
                person = bisect_right(cumulative, rand() * total_weight) + 1
                at = end - int(span * (u_high - u_width * rand()) ** power)
                views = 1
                while views < 4 and rand() < 0.38:
                    views += 1
                for _ in range(views):
                    r = rand()
                    product = int(r / 0.6 * heroes) if r < 0.6 else heroes + int((r - 0.6) / 0.4 * tails)
                    append((at, person, VIEWED, view_json[product], 0.0))
                    at += 20 + int(rand() * 160)
                    if at > end:
                        break
                if at > end or rand() > 0.35:
                    continue
                quantity = 0 if rand() < 0.85 else 1
                append((at, person, CARTED, cart_json[product][quantity], 0.0))
                at += 60 + int(rand() * 1140)
                if at > end or rand() > 0.55:
                    continue
                append((at, person, CHECKOUT, checkout_json[product][quantity], 0.0))
                at += 60 + int(rand() * 540) if rand() < 0.9 else 7200 + int(rand() * 28800)
                if at > end or rand() > 0.62:
                    continue
                order_number += 1
                append(
                    (
                        at,
                        person,
                        ORDERED,
                        f'{{"order_id": "ORD-{order_number:08d}", {order_tail[product][quantity]}',
                        values[product][quantity],
                    )
                )
            del rows[quota:]  # only the last session's tail
            rows.sort()
            out = []
            for at, person, name, properties, value in rows:
                if name == ORDERED:
                    p = person - 1
                    orders[p] += 1
                    revenue[p] += value
                    if at > last_order[p]:
                        last_order[p] = at
                out.append((next_id, person, name, at, properties, f"{getrandbits(64):016x}-{next_id:010x}"))
                next_id += 1
            yield out

    # -- people --

    def people_chunks(self, size: int = 20000) -> Iterator[list[tuple]]:
        """Lists of (id, customer_id, email, phone, cio_id, attributes JSON, is_test, unix
        created_at, phone in E.164 or ""). Call after event_slices() is exhausted: the profiles
        fold in the orders."""
        from audiences.demo import FIRST_NAMES, LAST_NAMES, SKIN_TYPES
        from audiences.identifiers import phone_e164

        rng = random.Random(f"{self.seed}/people")
        rand, choice, getrandbits = rng.random, rng.choice, rng.getrandbits
        expovariate, uniform = rng.expovariate, rng.uniform
        end, span = self.end, self.span
        orders, revenue, last_order = self.orders, self.revenue, self.last_order
        chunk: list[tuple] = []
        for n in range(1, self.people + 1):
            first, last = choice(FIRST_NAMES), choice(LAST_NAMES)
            test_account = n <= TEST_ACCOUNTS
            domain = "downstream.test" if test_account else choice(("example.com", "mail.example", "example.org"))
            raw_email = f"{first}.{last}{n}@{domain}".lower()
            r = rand()
            if r < 0.10:
                raw_email = f"  {raw_email.title()} "  # the mess sign-up forms produce
            elif r < 0.15:
                raw_email = raw_email.capitalize()
            digits = 2_000_000 + n * 7 % 8_000_000
            area, exchange, line = choice(AREA_CODES), digits // 10000, digits % 10000
            r = rand()
            if r < 0.35:
                raw_phone = ""
            elif r < 0.55:
                raw_phone = f"+1{area}{exchange}{line:04d}"
            elif r < 0.70:
                raw_phone = f"+1 ({area}) {exchange}-{line:04d}"
            elif r < 0.82:
                raw_phone = f"{area}-{exchange}-{line:04d}"
            elif r < 0.90:
                raw_phone = f" ({area}) {exchange} {line:04d}"
            else:
                raw_phone = f"+44 7700 9{n % 100000:05d}"
            cio_id = f"{getrandbits(24):06x}{n:06x}" if rand() < 0.92 else ""
            p = n - 1
            history = int(expovariate(1 / 2.4)) if rand() < 0.7 else 0  # orders before the window
            history_value = round(history * uniform(35, 110), 2)
            orders_count = history + orders[p]
            lifetime_value = round(history_value + revenue[p], 2)
            tier = (
                "platinum"
                if lifetime_value > 600
                else "gold"
                if lifetime_value > 300
                else "silver"
                if lifetime_value > 120
                else "none"
            )
            if last_order[p]:
                last_order_date = last_order[p]
            elif history:
                last_order_date = end - span - int(uniform(1, 540) * 86400)
            else:
                last_order_date = 0
            created = end - int(uniform(0, 900) * 86400)
            if last_order_date and created > last_order_date:
                created = last_order_date - int(uniform(1, 200) * 86400)
            attributes = {
                "email": raw_email,
                "first_name": first,
                "last_name": last,
                "skin_type": choice(SKIN_TYPES),
                "orders_count": orders_count,
                "lifetime_value": lifetime_value,
                "vip_tier": tier,
                "accepts_marketing": rand() < 0.7,
                "created_at": created,
            }
            if raw_phone:
                attributes["phone"] = raw_phone
            if last_order_date:
                attributes["last_order_date"] = last_order_date
            if cio_id:
                attributes["cio_id"] = cio_id
            chunk.append(
                (
                    n,
                    f"cus_{n:07d}",
                    raw_email.strip(),
                    raw_phone.strip(),
                    cio_id,
                    _dumps(attributes),
                    test_account,
                    created,
                    phone_e164(raw_phone.strip()),
                )
            )
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _datetime_text(unix: int) -> str:
    return f"{datetime.fromtimestamp(unix, UTC):%Y-%m-%d %H:%M:%S}"


# --- writing ----------------------------------------------------------------------------------

EVENT_COLUMNS = "id, person_id, source_id, name, occurred_at, received_at, properties, message_id"
PERSON_COLUMNS = "id, customer_id, email, phone, cio_id, attributes, is_test, created_at, updated_at, phone_e164"
LOADED_MODELS = ("Person", "Event", "EventStat")


class _Progress:
    def __init__(self, progress, what: str, total: int):
        self.progress, self.what, self.total = progress, what, total
        self.started = self.last = time.perf_counter()
        self.done = 0

    def add(self, count: int, force: bool = False):
        self.done += count
        now = time.perf_counter()
        if self.progress and (force or now - self.last >= 10):
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.progress(f"  {self.what} {self.done:,}/{self.total:,}  {rate:,.0f}/s")

    def finish(self) -> float:
        self.add(0, force=True)
        return time.perf_counter() - self.started


def generate(*, people: int, events: int, seed: int = 1, now: datetime, days: int = 120, progress=print) -> dict:
    """Fill an empty, migrated database; returns counts and timings in seconds.

    Must run outside any transaction (it manages its own; with pytest-django use
    `django_db(transaction=True)`), on an empty person store."""
    from django.db import connection

    from audiences.ingest import source_create
    from audiences.models import Event, EventStat, Person

    if connection.in_atomic_block:
        raise RuntimeError("generate() manages its own transactions; call it outside transaction.atomic()")
    if Person.objects.exists() or Event.objects.exists() or EventStat.objects.exists():
        raise RuntimeError("generate() needs an empty person store")
    progress = progress or (lambda line: None)
    plan = Plan(people=people, events=events, seed=seed, now=now, days=days)
    started = time.perf_counter()
    source, _ = source_create(name=SOURCE_NAME)
    writer = (_PostgresWriter if connection.vendor == "postgresql" else _SQLiteWriter)(plan, source.id, progress)
    timings = writer.run()
    timings["total"] = time.perf_counter() - started
    counts = {
        "people": Person.objects.count(),
        "events": Event.objects.count(),
        "event_stats": EventStat.objects.count(),
    }
    progress(
        f"  done: {counts['people']:,} people, {counts['events']:,} events, {counts['event_stats']:,} event stats "
        f"in {timings['total']:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in timings.items() if k != 'total')})"
    )
    return {**counts, "backend": connection.vendor, "seed": seed, "now": plan.now, "days": days, "seconds": timings}


class _Writer:
    def __init__(self, plan: Plan, source_id: int, progress):
        self.plan, self.source_id, self.progress = plan, source_id, progress
        from django.db import connection

        from audiences.models import Event, EventStat, Person

        self.connection = connection
        self.tables = {m.__name__: m._meta.db_table for m in (Person, Event, EventStat)}
        self.timings: dict[str, float] = {}

    def timed(self, what: str, started: float):
        self.timings[what] = time.perf_counter() - started

    def event_stat_sql(self) -> str:
        return (
            f"INSERT INTO {self.tables['EventStat']} (person_id, name, first_at, last_at, count) "
            f"SELECT person_id, name, MIN(occurred_at), MAX(occurred_at), COUNT(*) FROM {self.tables['Event']} "
            "GROUP BY person_id, name ORDER BY person_id, name"
        )

    def reset_sequences(self, cursor):
        from django.apps import apps
        from django.core.management.color import no_style

        models = [apps.get_model("audiences", name) for name in LOADED_MODELS]
        for sql in self.connection.ops.sequence_reset_sql(no_style(), models):
            cursor.execute(sql)


class _PostgresWriter(_Writer):
    """COPY with the secondary indexes and foreign keys detached, then rebuilt."""

    SETTINGS = (
        "synchronous_commit = off",
        "maintenance_work_mem = '1GB'",
        "work_mem = '512MB'",
        "max_parallel_maintenance_workers = 2",
    )

    def run(self) -> dict:
        from django.db import transaction

        event, person, stat = self.tables["Event"], self.tables["Person"], self.tables["EventStat"]
        tables = (person, event, stat)
        with self.connection.cursor() as cursor:
            for setting in self.SETTINGS:
                cursor.execute(f"SET {setting}")
            try:
                before = self.schema(cursor, tables)
                started = time.perf_counter()
                with transaction.atomic():
                    restore = {table: self.detach(cursor, table) for table in tables}
                self.timed("detach", started)

                started = time.perf_counter()
                with transaction.atomic():
                    self.copy_events(cursor, freeze=self.truncate_for_freeze(cursor, event))
                self.timed("events", started)

                started = time.perf_counter()
                with transaction.atomic():
                    self.copy_people(cursor)
                self.timed("people", started)

                started = time.perf_counter()
                for sql in restore[person] + restore[event]:
                    step = time.perf_counter()
                    with transaction.atomic():
                        cursor.execute(sql)
                    self.progress(f"  {time.perf_counter() - step:5.1f} s  {sql}")
                self.timed("indexes", started)

                started = time.perf_counter()
                with transaction.atomic():
                    cursor.execute(self.event_stat_sql())
                    self.progress(f"  event stats: {cursor.rowcount:,} rows in {time.perf_counter() - started:.1f} s")
                    for sql in restore[stat]:
                        cursor.execute(sql)
                    self.reset_sequences(cursor)
                self.timed("event_stats", started)

                after = self.schema(cursor, tables)
                if after != before:
                    raise RuntimeError(f"schema not restored:\nbefore {before}\nafter {after}")

                started = time.perf_counter()
                from audiences.models import Source

                for table in (*tables, Source._meta.db_table):
                    cursor.execute(f"VACUUM (ANALYZE) {table}")
                self.timed("vacuum_analyze", started)
            finally:
                for setting in self.SETTINGS:
                    cursor.execute(f"RESET {setting.split(' = ')[0]}")
        return self.timings

    def copy_events(self, cursor, *, freeze: bool):
        meter = _Progress(self.progress, "events", self.plan.events)
        minutes, first_minute = self.plan.minute_text(), self.plan.first_minute
        names, source_id = EVENT_NAMES, self.source_id
        sql = f"COPY {self.tables['Event']} ({EVENT_COLUMNS}) FROM STDIN{' (FREEZE)' if freeze else ''}"
        with cursor.cursor.copy(sql) as copy:
            lines = []
            for rows in self.plan.event_slices():
                for id_, person_id, name, at, properties, message_id in rows:
                    ts = f"{minutes[at // 60 - first_minute]}{at % 60:02d}+00"
                    lines.append(f"{id_}\t{person_id}\t{source_id}\t{names[name]}\t{ts}\t{ts}\t{properties}\t{message_id}\n")
                if len(lines) >= 50000:
                    copy.write("".join(lines))
                    meter.add(len(lines))
                    lines = []
            copy.write("".join(lines))
            meter.add(len(lines))
        meter.finish()

    def copy_people(self, cursor):
        meter = _Progress(self.progress, "people", self.plan.people)
        updated = f"{_datetime_text(self.plan.end)}+00"
        with cursor.cursor.copy(f"COPY {self.tables['Person']} ({PERSON_COLUMNS}) FROM STDIN") as copy:
            for rows in self.plan.people_chunks():
                copy.write(
                    "".join(
                        f"{n}\t{customer_id}\t{email}\t{phone}\t{cio_id}\t{_copy_text(attributes)}\t"
                        f"{'t' if test else 'f'}\t{_datetime_text(created)}+00\t{updated}\t{e164}\n"
                        for n, customer_id, email, phone, cio_id, attributes, test, created, e164 in rows
                    )
                )
                meter.add(len(rows))
        meter.finish()

    @staticmethod
    def schema(cursor, tables) -> list:
        cursor.execute(
            "SELECT c.relname, i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE c.relname = ANY(%s) ORDER BY 1, 2",
            [list(tables)],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), condeferrable, condeferred "
            "FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) ORDER BY 1, 2",
            [list(tables)],
        )
        return indexes + cursor.fetchall()

    @staticmethod
    def detach(cursor, table: str) -> list[str]:
        """Drop the table's secondary indexes, unique constraints and foreign keys; return the
        statements that recreate them exactly (indexes, then unique constraints, then keys)."""
        cursor.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid) "
            "ORDER BY 1",
            [table],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('u', 'f') ORDER BY contype DESC, conname",
            [table],
        )
        constraints = cursor.fetchall()
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        return [definition for _, definition in indexes] + [
            f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, definition in constraints
        ]

    @staticmethod
    def truncate_for_freeze(cursor, table: str) -> bool:
        """COPY FREEZE needs the table truncated in the same transaction, which is only possible
        when no other table references it."""
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = %s::regclass)", [table])
        if cursor.fetchone()[0]:
            return False
        cursor.execute(f"TRUNCATE {table}")
        return True


def _copy_text(value: str) -> str:
    """COPY's text format: backslash, tab and newline must be escaped (JSON never has raw tabs
    or newlines, but has backslashes when a string needs escaping)."""
    return value.replace("\\", "\\\\") if "\\" in value else value


class _SQLiteWriter(_Writer):
    """executemany in large transactions; synchronous=OFF and foreign keys off for the load."""

    PRAGMAS = (("synchronous", "OFF"), ("cache_size", "-1000000"), ("temp_store", "MEMORY"))

    def run(self) -> dict:
        from django.db import transaction

        event, person, stat = self.tables["Event"], self.tables["Person"], self.tables["EventStat"]
        tables = (person, event, stat)
        with self.connection.cursor() as cursor:
            saved = {}
            for pragma, value in self.PRAGMAS:
                saved[pragma] = cursor.execute(f"PRAGMA {pragma}").fetchone()[0]
                cursor.execute(f"PRAGMA {pragma} = {value}")
            if not self.connection.disable_constraint_checking():
                raise RuntimeError("could not turn foreign keys off")
            try:
                before = self.schema(cursor, tables)
                started = time.perf_counter()
                with transaction.atomic():
                    for name, _, _ in before:
                        cursor.execute(f'DROP INDEX "{name}"')
                self.timed("detach", started)

                started = time.perf_counter()
                self.insert_events(cursor)
                self.timed("events", started)

                started = time.perf_counter()
                self.insert_people(cursor)
                self.timed("people", started)

                started = time.perf_counter()
                with transaction.atomic():
                    for _, table, sql in before:
                        if table != stat:
                            step = time.perf_counter()
                            cursor.execute(sql)
                            self.progress(f"  {time.perf_counter() - step:5.1f} s  {sql}")
                self.timed("indexes", started)

                started = time.perf_counter()
                with transaction.atomic():
                    cursor.execute(self.event_stat_sql())
                    self.progress(f"  event stats: {cursor.rowcount:,} rows in {time.perf_counter() - started:.1f} s")
                    for _, table, sql in before:
                        if table == stat:
                            cursor.execute(sql)
                    self.reset_sequences(cursor)
                self.timed("event_stats", started)

                after = self.schema(cursor, tables)
                if after != before:
                    raise RuntimeError(f"schema not restored:\nbefore {before}\nafter {after}")
                self.connection.check_constraints(table_names=list(tables))

                started = time.perf_counter()
                cursor.execute("ANALYZE")
                self.timed("analyze", started)
            finally:
                self.connection.enable_constraint_checking()
                for pragma, value in saved.items():
                    cursor.execute(f"PRAGMA {pragma} = {value}")
        return self.timings

    def insert_events(self, cursor):
        from django.db import transaction

        meter = _Progress(self.progress, "events", self.plan.events)
        minutes, first_minute = self.plan.minute_text(), self.plan.first_minute
        names, source_id = EVENT_NAMES, self.source_id
        insert = f"INSERT INTO {self.tables['Event']} ({EVENT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        batch = []
        for rows in self.plan.event_slices():
            for id_, person_id, name, at, properties, message_id in rows:
                ts = f"{minutes[at // 60 - first_minute]}{at % 60:02d}"
                batch.append((id_, person_id, source_id, names[name], ts, ts, properties, message_id))
            if len(batch) >= 200000:
                with transaction.atomic():
                    cursor.executemany(insert, batch)
                meter.add(len(batch))
                batch = []
        with transaction.atomic():
            cursor.executemany(insert, batch)
        meter.add(len(batch))
        meter.finish()

    def insert_people(self, cursor):
        from django.db import transaction

        meter = _Progress(self.progress, "people", self.plan.people)
        updated = _datetime_text(self.plan.end)
        insert = f"INSERT INTO {self.tables['Person']} ({PERSON_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        for rows in self.plan.people_chunks(size=100000):
            with transaction.atomic():
                cursor.executemany(
                    insert,
                    [
                        (n, customer_id, email, phone, cio_id, attributes, test, _datetime_text(created), updated, e164)
                        for n, customer_id, email, phone, cio_id, attributes, test, created, e164 in rows
                    ],
                )
            meter.add(len(rows))
        meter.finish()

    @staticmethod
    def schema(cursor, tables) -> list:
        """The indexes SQLite lets us drop (those with SQL; the autoindexes of UNIQUE stay)."""
        placeholders = ", ".join(["%s"] * len(tables))
        cursor.execute(
            f"SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({placeholders}) ORDER BY name",
            list(tables),
        )
        return cursor.fetchall()


# --- the CLI ----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--people", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--now", help="ISO date-time the data ends at (default: now, to the second)")
    args = parser.parse_args(argv)

    from benchmarks.common import django_env, machine_line, reset_database

    name = args.database_url.rstrip("/").rsplit("/", 1)[-1]
    if args.database_url.startswith("postgres") and name in ("test", "downstream", "test_downstream"):
        parser.error(f"refusing to drop the database {name!r}, which other runs use")
    now = datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)

    print(machine_line())
    print(
        f"inputs: {args.people:,} people, {args.events:,} events over {args.days} days up to "
        f"{now:%Y-%m-%d %H:%M:%S} UTC, seed {args.seed}, {args.database_url}"
    )
    env = django_env(args.database_url)
    started = time.perf_counter()
    reset_database(args.database_url, env)
    reset_seconds = time.perf_counter() - started
    print(f"reset and migrated in {reset_seconds:.1f} s")
    os.environ.update(env)  # DJANGO_SETTINGS_MODULE=config.settings, DATABASE_URL, keys

    import django

    django.setup()
    result = generate(people=args.people, events=args.events, seed=args.seed, now=now, days=args.days)
    print(
        f"generated {result['people']:,} people, {result['events']:,} events, {result['event_stats']:,} event stats "
        f"on {result['backend']} in {result['seconds']['total']:.1f} s "
        f"({result['events'] / max(result['seconds']['total'], 1e-9):,.0f} events/s overall)"
    )
    return result


if __name__ == "__main__":
    main()
