"""Writing validated messages into the person store: people, events, per-person aggregates.

`ingest_messages` is the one write path for the ingest API, the Track API, bulk import and the
demo. It runs in one transaction, de-duplicates events by (source, message id) with the
database's own unique constraint, and counts into the aggregates only the events that were
really inserted, so a batch sent twice changes nothing the second time.

On PostgreSQL a request is two statements and a commit, whatever its size: the people are
looked up by one array parameter, and the events, their aggregates and the realtime queue are
written by one statement that reads the whole request as one JSON parameter (a statement of
thousands of placeholders costs more to build and to parse than the rows cost to write). SQLite
keeps one statement per table. The realtime wake-up after commit is coalesced per process
(`WakeUps`), so a burst of requests wakes the worker a few times a second, not once a request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django_q.conf import Conf

from .evaluation import leave_all_audiences, queue_people
from .identifiers import phone_e164
from .messages import Message
from .models import TRACK, Erasure, Event, EventStat, PendingEvaluation, Person, Source, hash_write_key
from .signals import announce_people_changed
from .transactions import atomic_retrying_deadlocks

log = logging.getLogger(__name__)

# SQLite allows 32,766 bound parameters per statement; 7 per event row.
EVENT_ROWS_PER_STATEMENT = 2000


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    people: int = 0
    person_ids: tuple = ()


@dataclass
class _Request:
    source: Source
    messages: list[Message]
    received_at: datetime


def ingest_messages(*, source: Source, messages: list[Message], received_at: datetime | None = None) -> IngestResult:
    """Write a validated request whole, in one transaction. Concurrent requests and the
    realtime pass touch the same people; when PostgreSQL breaks a deadlock between them by
    aborting this one (seen under load: a queue entry's insert against a pass committing its
    memberships), it is rolled back whole and runs again, so the client never sees it.

    On PostgreSQL, outside a caller's transaction, concurrent requests of this process commit
    together (`GroupCommit`)."""
    request = _Request(source, messages, received_at or timezone.now())
    if not messages:
        return IngestResult()
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return group_commit.write(request)
    return _write_alone(request)


def _write_alone(request: _Request) -> IngestResult:
    return atomic_retrying_deadlocks(lambda: _write([request]))[0]


def _write(requests: list[_Request]) -> list[IngestResult]:
    """The writes of one or more requests in the caller's transaction, each as if it came after
    the one before: a message id already written by an earlier one is a duplicate, traits merge
    in order. Rows are locked in one order per table (people by customer id, then by id; events
    by source and message id; aggregates by person and name; queue entries by person), so
    concurrent transactions wait for each other instead of deadlocking."""
    first_seen: dict[str, datetime] = {}
    for request in requests:
        for m in request.messages:
            first_seen.setdefault(m.customer_id, request.received_at)
    person_ids = _ensure_people(first_seen)
    identifies = [(m, r.received_at) for r in requests for m in r.messages if m.kind == "identify"]
    if identifies:
        _merge_traits(identifies, person_ids)
    owners: dict[tuple[int, str], int] = {}  # (source, message id) → the request that writes it
    for index, request in enumerate(requests):
        for m in request.messages:
            if m.kind == "event":
                owners.setdefault((request.source.id, m.message_id), index)
    touched = [tuple(sorted({person_ids[m.customer_id] for m in r.messages})) for r in requests]
    if connection.vendor == "postgresql":
        inserted = _write_postgresql(requests, owners, person_ids, touched)
    else:
        inserted = _write_one_table_at_a_time(requests, owners, person_ids, touched)
    everyone = sorted({pid for people in touched for pid in people})
    transaction.on_commit(lambda: wake_ups.announce(everyone))
    results = []
    for index, request in enumerate(requests):
        events = sum(1 for m in request.messages if m.kind == "event")
        identified = sum(1 for m in request.messages if m.kind == "identify")
        results.append(
            IngestResult(
                accepted=identified + inserted[index],
                duplicates=events - inserted[index],
                people=len(touched[index]),
                person_ids=touched[index],
            )
        )
    return results


def _ensure_people(first_seen: dict[str, datetime]) -> dict[str, int]:
    """Person ids by customer id, creating the people never seen (created when first named)."""
    customer_ids = sorted(first_seen)
    found = _people_by_customer_id(customer_ids)
    missing = [c for c in customer_ids if c not in found]
    if missing:
        _create_people({c: first_seen[c] for c in missing})
        # a new statement: it also sees the people a concurrent request created meanwhile
        found.update(_people_by_customer_id(missing))
    return found


def _people_by_customer_id(customer_ids: list[str]) -> dict[str, int]:
    if connection.vendor != "postgresql":
        return dict(Person.objects.filter(customer_id__in=customer_ids).values_list("customer_id", "id"))
    with connection.cursor() as cursor:
        cursor.execute(
            # = ANY of an array: an index scan; IN (SELECT ...) of the same elements plans a scan of everyone
            f"SELECT customer_id, id FROM {_table(Person)} "
            "WHERE customer_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%s::jsonb)))",
            [json.dumps(customer_ids)],
        )
        return dict(cursor.fetchall())


def _create_people(first_seen: dict[str, datetime]) -> None:
    """On PostgreSQL one INSERT ... SELECT from a JSON parameter (every other field at the
    model's default); `bulk_create` binds every field of every person, which costs more than
    the rows. In customer id order: two requests creating the same people wait, not deadlock."""
    if connection.vendor != "postgresql":
        Person.objects.bulk_create(
            [Person(customer_id=c, created_at=at, updated_at=at) for c, at in sorted(first_seen.items())],
            ignore_conflicts=True,
        )
        return
    template = Person(customer_id="", created_at=timezone.now(), updated_at=timezone.now())
    columns, values, params = [], [], []
    for f in Person._meta.concrete_fields:
        if f.primary_key:
            continue
        columns.append(connection.ops.quote_name(f.column))
        if f.name == "customer_id":
            values.append("c")
        elif f.name in ("created_at", "updated_at"):
            values.append("t")
        else:
            values.append("%s")
            params.append(f.get_db_prep_save(getattr(template, f.attname), connection))
    rows = json.dumps([{"c": c, "t": at.isoformat()} for c, at in sorted(first_seen.items())])
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_table(Person)} ({', '.join(columns)}) SELECT {', '.join(values)} "
            "FROM jsonb_to_recordset(%s::jsonb) AS r(c text, t timestamptz) ORDER BY c "
            "ON CONFLICT (customer_id) DO NOTHING",
            [*params, rows],
        )


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


PROFILE_FIELDS = ("email", "phone", "cio_id")


def _merge_traits(identifies: list[tuple[Message, datetime]], person_ids: dict[str, int]) -> None:
    """Traits are merged into attributes, not replacing them; a null trait removes the key."""
    ids = sorted({person_ids[m.customer_id] for m, _ in identifies})
    # In id order, so concurrent requests lock people in one order; and NO KEY: no key changes
    # here, and a plain FOR UPDATE blocks the foreign-key checks (KEY SHARE) that a realtime
    # pass makes on these people when it commits, while that pass holds their queue entries
    # this request is about to insert: a deadlock.
    people = {
        p.id: p
        for p in Person.objects.select_for_update(no_key=True)
        .filter(id__in=ids)
        .order_by("id")
        .only("id", "attributes", "phone_e164", *PROFILE_FIELDS)
    }
    for message, received_at in identifies:
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
        person.updated_at = received_at
    Person.objects.bulk_update(list(people.values()), ["attributes", *PROFILE_FIELDS, "phone_e164", "updated_at"])


# Events, their aggregates and the realtime queue of any number of requests, in one statement
# that reads them as two JSON parameters. A person already queued is locked, not skipped (ON
# CONFLICT DO UPDATE ... WHERE false locks the row and writes nothing): a realtime pass claims
# entries FOR UPDATE SKIP LOCKED, so it cannot take this person's entry before these events
# commit, evaluate the person without them and leave nothing queued for them.
POSTGRESQL_WRITE = """
WITH inserted AS (
    INSERT INTO {event} (person_id, source_id, name, occurred_at, received_at, properties, message_id)
    SELECT p, s, n, t, r, d, m
    FROM jsonb_to_recordset(%(events)s::jsonb) AS e(p bigint, s bigint, n text, t timestamptz, r timestamptz, d jsonb, m text)
    ORDER BY s, m
    ON CONFLICT (source_id, message_id) DO NOTHING
    RETURNING person_id, source_id, name, occurred_at, message_id
), counted AS (
    INSERT INTO {stat} AS s (person_id, name, first_at, last_at, count)
    SELECT person_id, name, min(occurred_at), max(occurred_at), count(*) FROM inserted
    GROUP BY person_id, name ORDER BY person_id, name
    ON CONFLICT (person_id, name) DO UPDATE SET
        first_at = LEAST(s.first_at, excluded.first_at),
        last_at = GREATEST(s.last_at, excluded.last_at),
        count = s.count + excluded.count
), queued AS (
    INSERT INTO {pending} AS q (person_id, queued_at)
    SELECT p, t FROM jsonb_to_recordset(%(queue)s::jsonb) AS e(p bigint, t timestamptz) ORDER BY p
    ON CONFLICT (person_id) DO UPDATE SET queued_at = q.queued_at WHERE false
)
SELECT source_id, message_id FROM inserted
"""


def _owned_events(requests: list[_Request], owners: dict[tuple[int, str], int]):
    """(request index, request, message) for each event to write: its id's first occurrence."""
    taken = set()
    for index, request in enumerate(requests):
        for m in request.messages:
            key = (request.source.id, m.message_id)
            if m.kind == "event" and owners[key] == index and key not in taken:
                taken.add(key)
                yield index, request, m


def _write_postgresql(requests: list[_Request], owners, person_ids, touched) -> list[int]:
    iso: dict[datetime, str] = {}  # many events share a timestamp, every event its request's
    received = [iso.setdefault(r.received_at, r.received_at.isoformat()) for r in requests]
    events = [
        {
            "p": person_ids[m.customer_id],
            "s": request.source.id,
            "n": m.name,
            "t": iso.get(m.timestamp) or iso.setdefault(m.timestamp, m.timestamp.isoformat()),
            "r": received[index],
            "d": m.properties,
            "m": m.message_id,
        }
        for index, request, m in _owned_events(requests, owners)
    ]
    queued: dict[int, str] = {}
    for at, people in zip(received, touched, strict=True):
        for pid in people:
            queued.setdefault(pid, at)  # the earliest request that names them
    sql = POSTGRESQL_WRITE.format(event=_table(Event), stat=_table(EventStat), pending=_table(PendingEvaluation))
    inserted = [0] * len(requests)
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "events": json.dumps(events),
                "queue": json.dumps([{"p": pid, "t": at} for pid, at in queued.items()]),
            },
        )
        for key in cursor.fetchall():
            inserted[owners[key]] += 1
    return inserted


def _write_one_table_at_a_time(requests: list[_Request], owners, person_ids, touched) -> list[int]:
    events: list[list[Message]] = [[] for _ in requests]
    for index, _, m in _owned_events(requests, owners):
        events[index].append(m)
    inserted = []
    for request, mine, people in zip(requests, events, touched, strict=True):
        written = _insert_events(request.source, mine, person_ids, request.received_at) if mine else []
        if written:
            _bump_event_stats(written, person_ids)
        queue_people(people, at=request.received_at)
        inserted.append(len(written))
    return inserted


def _insert_events(source: Source, events: list[Message], person_ids: dict[str, int], now: datetime) -> list[Message]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the database says which ones were new."""
    adapt = connection.ops.adapt_datetimefield_value
    by_message_id = {m.message_id: m for m in events}
    inserted: list[Message] = []
    with connection.cursor() as cursor:
        for start in range(0, len(events), EVENT_ROWS_PER_STATEMENT):
            chunk = events[start : start + EVENT_ROWS_PER_STATEMENT]
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
                f"INSERT INTO {_table(Event)} (person_id, source_id, name, occurred_at, received_at, properties, message_id) "
                f"VALUES {', '.join(['(%s, %s, %s, %s, %s, %s, %s)'] * len(chunk))} "
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
    keys = sorted(folded)  # a fixed order, so that concurrent upserts cannot deadlock
    params: list = []
    for key in keys:
        first, last, count = folded[key]
        params += [key[0], key[1], adapt(first), adapt(last), count]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_table(EventStat)} AS s (person_id, name, first_at, last_at, count) "
            f"VALUES {', '.join(['(%s, %s, %s, %s, %s)'] * len(keys))} "
            "ON CONFLICT (person_id, name) DO UPDATE SET "
            "first_at = CASE WHEN excluded.first_at < s.first_at THEN excluded.first_at ELSE s.first_at END, "
            "last_at = CASE WHEN excluded.last_at > s.last_at THEN excluded.last_at ELSE s.last_at END, "
            "count = s.count + excluded.count",
            params,
        )


# --- group commit -------------------------------------------------------------------------------


class GroupCommit:
    """Concurrent requests of one process written in one transaction. A request that finds no
    transaction under way writes at once, taking along every request that is waiting; those
    that arrive meanwhile wait, and the first of them writes the next group when it commits.
    Nobody waits for company: alone, a request is a group of one. The statements and the commit
    are shared, their cost falls per request as a group grows (the database's work per
    transaction, and on this side a few statements for several requests).

    A group commits whole or not at all, so each request is still whole. When a group fails,
    each of its requests is written again on its own, and only the one that fails alone gets
    the error."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: list[_Turn] = []
        self._writing = False

    def write(self, request: _Request) -> IngestResult:
        turn = _Turn(request)
        with self._lock:
            self._waiting.append(turn)
            if self._writing:
                leads = False
            else:
                self._writing = leads = True
        if not leads:
            turn.ready.wait()
            if not turn.leads:
                return turn.outcome()
        with self._lock:
            group, self._waiting = self._waiting, []
        try:
            self._write_group(group)
        finally:
            for other in group:  # interrupted (a worker's timeout, say): nobody is left waiting
                if not other.ready.is_set() or other.leads:
                    other.settle(error=RuntimeError("the group this request was written in was interrupted"))
            with self._lock:
                if self._waiting:
                    self._waiting[0].leads = True  # the next group is theirs to write
                    self._waiting[0].ready.set()
                else:
                    self._writing = False
        return turn.outcome()

    @staticmethod
    def _write_group(group: list[_Turn]) -> None:
        try:
            results = atomic_retrying_deadlocks(lambda: _write([t.request for t in group]))
        except Exception as exc:
            if len(group) == 1:
                group[0].settle(error=exc)
                return
            log.warning("a group of %d requests failed (%s); writing each on its own", len(group), exc)
            for turn in group:
                try:
                    turn.settle(result=_write_alone(turn.request))
                except Exception as alone:
                    turn.settle(error=alone)
            return
        for turn, result in zip(group, results, strict=True):
            turn.settle(result=result)


class _Turn:
    """A request waiting in `GroupCommit`, then its outcome."""

    def __init__(self, request: _Request):
        self.request = request
        self.ready = threading.Event()
        self.leads = False
        self.result: IngestResult | None = None
        self.error: BaseException | None = None

    def settle(self, *, result: IngestResult | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.leads = result, error, False
        self.ready.set()

    def outcome(self) -> IngestResult:
        if self.error is not None:
            raise self.error
        return self.result


group_commit = GroupCommit()


# --- the realtime wake-up -----------------------------------------------------------------------

# After one announcement, the next one from this process waits at least this long, taking
# every person committed meanwhile: under load a process wakes the worker ten times a second
# instead of once a request (each wake-up is a task in the broker and a pass that claims the
# queue); an idle process announces at once.
WAKE_UP_GAP_S = 0.1


class WakeUps:
    """`people_changed`, announced after commit from one thread per process. Requests hand
    their people over and return; the thread announces them together. Under
    `Q_CLUSTER["sync"]` (tests) tasks run in-process and the announcement is made at once, in
    the committing thread. A process that dies holding people loses only the wake-up: the
    queue entries are committed, and the once-a-minute pass evaluates them."""

    def __init__(self, gap_s: float = WAKE_UP_GAP_S, *, send=announce_people_changed, inline: bool | None = None):
        self.gap_s = gap_s
        self.send = send
        self.inline = inline  # None: as Q_CLUSTER["sync"] says
        self._lock = threading.Condition()
        self._people: set[int] = set()
        self._thread: threading.Thread | None = None
        self._last = 0.0

    def announce(self, person_ids) -> None:
        if not person_ids:
            return
        if Conf.SYNC if self.inline is None else self.inline:
            self.send(person_ids)
            return
        with self._lock:
            self._people.update(person_ids)
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="ingest-wake-ups", daemon=True)
                self._thread.start()
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._people:
                    self._lock.wait()
            time.sleep(max(0.0, self._last + self.gap_s - time.monotonic()))
            with self._lock:
                people, self._people = self._people, set()
            self._last = time.monotonic()
            close_old_connections()
            try:
                self.send(sorted(people))
            except Exception:
                log.exception("the realtime wake-up for %d people failed; the minute's pass takes them", len(people))


wake_ups = WakeUps()


# --- sources and erasure --------------------------------------------------------------------


def source_authenticate(*, write_key: str, name: str | None = None) -> Source | None:
    """The active source for a key (and, for the Track API, its site id), or None. Every
    request asks, so a revoked key is refused at once; in raw SQL, a third of the ORM's cost,
    with only the fields a request reads (the others load if asked for)."""
    if not write_key:
        return None
    sql = f"SELECT id, name, scopes FROM {_table(Source)} WHERE write_key_hash = %s AND revoked_at IS NULL"
    params = [hash_write_key(write_key)]
    if name is not None:
        sql += " AND name = %s"
        params.append(name)
    return next(iter(Source.objects.raw(sql, params)), None)


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
    Erasure.objects.create(customer_id_hash=hash_write_key(customer_id), source=source, events_deleted=events_deleted)
    person.delete()
    return True
