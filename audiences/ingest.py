"""Writing validated messages into the person store: people, events, per-person aggregates.

`ingest_messages` is the one write path for the ingest API, the Track API, bulk import and the
demo. It runs in one transaction, de-duplicates events by (source, message id) with the
database's own unique constraint, and counts into the aggregates only the events that were
really inserted, so a batch sent twice changes nothing the second time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from .evaluation import leave_all_audiences, queue_people
from .identifiers import phone_e164
from .messages import Message
from .models import TRACK, Erasure, Event, EventStat, PendingEvaluation, Person, Source, hash_write_key
from .signals import announce_people_changed
from .transactions import atomic_retrying_deadlocks

# SQLite allows 32,766 bound parameters per statement; 7 per event row.
EVENT_ROWS_PER_STATEMENT = 2000


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    people: int = 0
    person_ids: tuple = ()


def ingest_messages(*, source: Source, messages: list[Message], received_at: datetime | None = None) -> IngestResult:
    """Write a validated request whole, in one transaction. Concurrent requests and the
    realtime pass touch the same people; when PostgreSQL breaks a deadlock between them by
    aborting this one (seen under load: a queue entry's insert against a pass committing its
    memberships), it is rolled back whole and runs again, so the client never sees it."""
    received_at = received_at or timezone.now()
    if not messages:
        return IngestResult()
    return atomic_retrying_deadlocks(lambda: _ingest(source, messages, received_at))


def _ingest(source: Source, messages: list[Message], received_at: datetime) -> IngestResult:
    person_ids = _ensure_people(sorted({m.customer_id for m in messages}), received_at)
    identifies = [m for m in messages if m.kind == "identify"]
    if identifies:
        _merge_traits(identifies, person_ids, received_at)
    events = [m for m in messages if m.kind == "event"]
    inserted = _insert_events(source, events, person_ids, received_at) if events else []
    if inserted:
        _bump_event_stats(inserted, person_ids)
    touched = tuple(sorted(person_ids[c] for c in {m.customer_id for m in messages}))
    queue_people(touched, at=received_at)
    transaction.on_commit(lambda: announce_people_changed(touched))
    return IngestResult(
        accepted=len(identifies) + len(inserted),
        duplicates=len(events) - len(inserted),
        people=len(touched),
        person_ids=touched,
    )


def _ensure_people(customer_ids: list[str], now: datetime) -> dict[str, int]:
    found = dict(Person.objects.filter(customer_id__in=customer_ids).values_list("customer_id", "id"))
    missing = [c for c in customer_ids if c not in found]
    if missing:
        Person.objects.bulk_create(
            [Person(customer_id=c, created_at=now, updated_at=now) for c in missing],
            ignore_conflicts=True,
        )
        found.update(Person.objects.filter(customer_id__in=missing).values_list("customer_id", "id"))
    return found


PROFILE_FIELDS = ("email", "phone", "cio_id")


def _merge_traits(identifies: list[Message], person_ids: dict[str, int], now: datetime) -> None:
    """Traits are merged into attributes, not replacing them; a null trait removes the key."""
    ids = sorted({person_ids[m.customer_id] for m in identifies})
    # In id order, so concurrent requests lock people in one order; and NO KEY: no key changes
    # here, and a plain FOR UPDATE blocks the foreign-key checks (KEY SHARE) that a realtime
    # pass makes on these people when it commits, while that pass holds their queue entries
    # this request is about to insert: a deadlock.
    people = {
        p.id: p
        for p in Person.objects.select_for_update(no_key=True).filter(id__in=ids).order_by("id")
        .only("id", "attributes", "phone_e164", *PROFILE_FIELDS)
    }
    for message in identifies:
        person = people[person_ids[message.customer_id]]
        for key, value in message.traits.items():
            if value is None:
                person.attributes.pop(key, None)
            else:
                person.attributes[key] = value
            if key in PROFILE_FIELDS:
                setattr(person, key, "" if value is None else str(value).strip())
            if key == "phone":
                person.phone_e164 = phone_e164(person.phone)
        person.updated_at = now
    Person.objects.bulk_update(list(people.values()), ["attributes", *PROFILE_FIELDS, "phone_e164", "updated_at"])


def _insert_events(source: Source, events: list[Message], person_ids: dict[str, int], now: datetime) -> list[Message]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the database says which ones were new."""
    adapt = connection.ops.adapt_datetimefield_value
    json_param = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
    table = connection.ops.quote_name(Event._meta.db_table)
    by_message_id = {}
    for message in events:
        by_message_id.setdefault(message.message_id, message)
    unique = list(by_message_id.values())
    inserted: list[Message] = []
    with connection.cursor() as cursor:
        for start in range(0, len(unique), EVENT_ROWS_PER_STATEMENT):
            chunk = unique[start : start + EVENT_ROWS_PER_STATEMENT]
            row = f"(%s, %s, %s, %s, %s, {json_param}, %s)"
            params: list = []
            for m in chunk:
                params += [
                    person_ids[m.customer_id],
                    source.id,
                    m.name,
                    adapt(m.timestamp),
                    adapt(now),
                    json.dumps(m.properties),
                    m.message_id,
                ]
            cursor.execute(
                f"INSERT INTO {table} (person_id, source_id, name, occurred_at, received_at, properties, message_id) "
                f"VALUES {', '.join([row] * len(chunk))} "
                "ON CONFLICT (source_id, message_id) DO NOTHING RETURNING message_id",
                params,
            )
            inserted += [by_message_id[r[0]] for r in cursor.fetchall()]
    return inserted


def _bump_event_stats(inserted: list[Message], person_ids: dict[str, int]) -> None:
    adapt = connection.ops.adapt_datetimefield_value
    folded: dict[tuple[int, str], list] = defaultdict(lambda: [None, None, 0])
    for m in inserted:
        entry = folded[(person_ids[m.customer_id], m.name)]
        entry[0] = m.timestamp if entry[0] is None else min(entry[0], m.timestamp)
        entry[1] = m.timestamp if entry[1] is None else max(entry[1], m.timestamp)
        entry[2] += 1
    table = connection.ops.quote_name(EventStat._meta.db_table)
    keys = sorted(folded)  # a fixed order, so that concurrent upserts cannot deadlock
    params: list = []
    for key in keys:
        first, last, count = folded[key]
        params += [key[0], key[1], adapt(first), adapt(last), count]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} AS s (person_id, name, first_at, last_at, count) "
            f"VALUES {', '.join(['(%s, %s, %s, %s, %s)'] * len(keys))} "
            "ON CONFLICT (person_id, name) DO UPDATE SET "
            "first_at = CASE WHEN excluded.first_at < s.first_at THEN excluded.first_at ELSE s.first_at END, "
            "last_at = CASE WHEN excluded.last_at > s.last_at THEN excluded.last_at ELSE s.last_at END, "
            "count = s.count + excluded.count",
            params,
        )


# --- sources and erasure --------------------------------------------------------------------


def source_authenticate(*, write_key: str, name: str | None = None) -> Source | None:
    """The active source for a key (and, for the Track API, its site id), or None."""
    if not write_key:
        return None
    sources = Source.objects.active().filter(write_key_hash=hash_write_key(write_key))
    if name is not None:
        sources = sources.filter(name=name)
    return sources.first()


@transaction.atomic
def source_create(*, name: str, scopes=(TRACK,)) -> tuple[Source, str]:
    """A source and its new key; by default a `track` key, the kind that is safe in a browser."""
    key = Source.new_write_key()
    source = Source(name=name, scopes=list(scopes))
    source.set_write_key(key)
    source.full_clean()
    source.save()
    return source, key


@transaction.atomic
def source_set_scopes(*, source: Source, scopes) -> Source:
    source.scopes = list(scopes)
    source.full_clean()
    source.save(update_fields=["scopes"])
    return source


@transaction.atomic
def source_rotate_key(*, source: Source) -> str:
    key = Source.new_write_key()
    source.set_write_key(key)
    source.revoked_at = None
    source.save(update_fields=["write_key_hash", "key_hint", "revoked_at"])
    return key


@transaction.atomic
def source_revoke(*, source: Source) -> None:
    if source.revoked_at is None:
        source.revoked_at = timezone.now()
        source.save(update_fields=["revoked_at"])


@transaction.atomic
def person_mark_test(*, customer_ids: list[str], is_test: bool) -> int:
    """Internal test accounts receive the 'Send test cohort' syncs."""
    return Person.objects.filter(customer_id__in=customer_ids).update(is_test=is_test, updated_at=timezone.now())


def person_erase(*, customer_id: str, source: Source | None = None) -> bool:
    """Erase a person and their events. They first leave every audience, and the exits are
    announced (with `erasure` set, so the sync side keeps the identifiers it needs to send them).

    Locks are taken in the realtime pass's order: the person's queue entry (which the pass
    claims first), the audiences in dependency order, then the person (whom the pass's
    membership inserts lock as a foreign key). A deadlock no order covers is retried."""
    return atomic_retrying_deadlocks(lambda: _erase(customer_id, source))


def _erase(customer_id: str, source: Source | None) -> bool:
    person = Person.objects.filter(customer_id=customer_id).first()
    if person is None:
        return False
    # a pass that claimed this person holds the row: wait for it here, holding nothing else
    PendingEvaluation.objects.filter(person=person).delete()
    leave_all_audiences(person)
    person = Person.objects.select_for_update().filter(pk=person.pk).first()
    if person is None:  # erased by a concurrent request meanwhile
        return False
    events_deleted = Event.objects.filter(person=person).count()
    Erasure.objects.create(
        customer_id_hash=hash_write_key(customer_id), source=source, events_deleted=events_deleted
    )
    person.delete()
    return True
