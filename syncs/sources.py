"""Customer.io segments as a member source: pull the members through the App API, map them to
people, keep them as the audience's snapshot; evaluation then diffs the snapshot exactly as it
diffs a rule, so entries and exits take the same path to the outbox."""

from __future__ import annotations

import json
import queue
import threading

from django.db import connection
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Lower
from django.utils import timezone

from audiences.models import Audience, Membership, Person
from audiences.sources import MemberSource, register_source

from .customerio import AppApiClient
from .http import TransportError
from .models import CustomerIoWorkspace, SegmentMember, SourcePull, Sync
from .payload import PERSON_COLUMNS

KIND = Audience.CUSTOMERIO_SEGMENT
CHUNK = 5000
ARRAY_CHUNK = 100_000
LOOKUP_CHUNK = 10_000


def validate_settings(settings) -> list[str]:
    if not isinstance(settings, dict):
        return ["must be a mapping with workspace and segment_id"]
    problems = []
    for name in sorted(set(settings) - {"workspace", "segment_id"}):
        problems.append(f"{name}: unknown setting; expected workspace and segment_id")
    workspace = settings.get("workspace")
    if not isinstance(workspace, str) or not CustomerIoWorkspace.objects.filter(key=workspace).exists():
        problems.append(f"workspace: there is no Customer.io workspace {workspace!r}")
    segment_id = settings.get("segment_id")
    if not isinstance(segment_id, int) or isinstance(segment_id, bool) or segment_id < 1:
        problems.append("segment_id: the segment's number, as shown under Usage on its page in Customer.io")
    return problems


def condition(audience: Audience, now):
    return Q(Exists(SegmentMember.objects.filter(audience=audience, person=OuterRef("pk"))))


def _pks_by(column: str, values) -> dict:
    """{value: person id} for the people whose `column` is one of `values`, LOOKUP_CHUNK values a
    query. A page is 30,000 ids: asked at once, PostgreSQL reads the whole person table (in
    parallel, taking both cores of a small machine from the pull); in tenths of that it walks
    the unique index, in 60 % of the time. On PostgreSQL the values go as one array parameter,
    not a placeholder each, which costs more to build, convert and plan than the look-up."""
    values = list(values)
    found: dict = {}
    if connection.vendor != "postgresql":
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            found.update(Person.objects.filter(**{f"{column}__in": chunk}).values_list(column, "pk"))
        return found
    table, name = connection.ops.quote_name(Person._meta.db_table), connection.ops.quote_name(column)
    with connection.cursor() as cursor:
        for start in range(0, len(values), LOOKUP_CHUNK):
            cursor.execute(f"SELECT {name}, id FROM {table} WHERE {name} = ANY(%s)", [values[start : start + LOOKUP_CHUNK]])
            found.update(cursor.fetchall())
    return found


def _snapshot_by_customer_id(audience: Audience) -> dict[str, int]:
    """{customer id: person id} of the last snapshot. A segment mostly keeps its members, so
    their pages are mapped from memory, and only newcomers are looked up in the database.
    Plain SQL: a million rows through the ORM's iterator take half as long again."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT p.customer_id, s.person_id FROM {quote(SegmentMember._meta.db_table)} s "
            f"JOIN {quote(Person._meta.db_table)} p ON p.id = s.person_id WHERE s.audience_id = %s",
            [audience.pk],
        )
        return dict(cursor)


def _people_for(page: list[dict], pull: SourcePull, known: dict[str, int] | None = None) -> list[int]:
    """Map one page of identifiers to person ids: by customer id (creating people we have not
    seen), else by email, else by cio_id. `known`: customer ids already mapped."""
    by_id = {str(i["id"]): i for i in page if i.get("id")}
    known = known or {}
    found = {c: known[c] for c in by_id if c in known}
    if len(found) < len(by_id):
        found.update(_pks_by("customer_id", [c for c in by_id if c not in found]))
    missing = [c for c in by_id if c not in found]
    if missing:
        now = timezone.now()
        Person.objects.bulk_create(
            [
                Person(
                    customer_id=c,
                    email=by_id[c].get("email") or "",
                    cio_id=by_id[c].get("cio_id") or "",
                    created_at=now,
                    updated_at=now,
                )
                for c in missing
            ],
            ignore_conflicts=True,
            batch_size=CHUNK,
        )
        created = _pks_by("customer_id", missing)
        pull.people_created += len(created)
        found.update(created)
    ids = list(found.values())
    rest = [i for i in page if not i.get("id")]
    emails = {i["email"].strip().lower() for i in rest if i.get("email")}
    if emails:
        matched = Person.objects.annotate(email_lower=Lower("email")).filter(email_lower__in=emails)
        by_email = dict(matched.values_list("email_lower", "pk"))
        ids += by_email.values()
        rest = [i for i in rest if (i.get("email") or "").strip().lower() not in by_email]
    cio_ids = {i["cio_id"] for i in rest if i.get("cio_id")}
    if cio_ids:
        by_cio = _pks_by("cio_id", cio_ids)
        ids += by_cio.values()
        rest = [i for i in rest if i.get("cio_id") not in by_cio]
    pull.unmapped += len(rest)
    return ids


def _for_person_ids(sql: dict[str, str], audience: Audience, person_ids: list[int]) -> None:
    """Run `sql[vendor]` with (audience id, ids) per ARRAY_CHUNK ids, the ids as one parameter:
    a PostgreSQL array, or a JSON array that SQLite reads with json_each. Not a placeholder per
    id (see _pks_by), and within SQLite's limit on parameters."""
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        for start in range(0, len(person_ids), ARRAY_CHUNK):
            chunk = person_ids[start : start + ARRAY_CHUNK]
            cursor.execute(sql["postgresql" if postgres else "sqlite"], [audience.pk, chunk if postgres else json.dumps(chunk)])


def _snapshot_insert(audience: Audience, person_ids: list[int]) -> None:
    table = connection.ops.quote_name(SegmentMember._meta.db_table)
    _for_person_ids(
        {
            "postgresql": f"INSERT INTO {table} (audience_id, person_id) SELECT %s, unnest(%s::bigint[])",
            "sqlite": f"INSERT INTO {table} (audience_id, person_id) SELECT %s, value FROM json_each(%s)",
        },
        audience,
        person_ids,
    )


class _Inserter:
    """Writes snapshot rows from a thread of its own (its own database connection), so that
    writing one page overlaps with looking up the next. Only on PostgreSQL and outside a
    transaction: SQLite has one writer at a time, and a second connection could neither see
    nor join a caller's transaction; there the rows are written inline."""

    def __init__(self, audience: Audience):
        self.audience = audience
        self.box: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.threaded = connection.vendor == "postgresql" and not connection.in_atomic_block
        self.thread = threading.Thread(target=self._run, daemon=True) if self.threaded else None

    def _run(self):
        from django.db import connections

        try:
            while (ids := self.box.get()) is not None:
                if ids and self.error is None:
                    _snapshot_insert(self.audience, ids)
        except BaseException as exc:  # raised in the pulling thread
            self.error = exc
            while self.box.get() is not None:
                pass
        finally:
            connections.close_all()

    def put(self, ids: list[int]) -> None:
        if not self.threaded:
            _snapshot_insert(self.audience, ids)
            return
        if self.error:
            raise self.error
        self.box.put(ids)

    def __enter__(self):
        if self.threaded:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if not self.threaded:
            return
        self.box.put(None)
        self.thread.join()
        if self.error and exc[0] is None:
            raise self.error


def _snapshot_remove(audience: Audience, person_ids: list[int]) -> None:
    table = connection.ops.quote_name(SegmentMember._meta.db_table)
    _for_person_ids(
        {
            "postgresql": f"DELETE FROM {table} WHERE audience_id = %s AND person_id = ANY(%s)",
            "sqlite": f"DELETE FROM {table} WHERE audience_id = %s AND person_id IN (SELECT value FROM json_each(%s))",
        },
        audience,
        person_ids,
    )


class _Prefetch:
    """Fetches the next pages over HTTP in a thread while the current one is mapped in the
    database. Started at once, so that the first pages download while the last snapshot is
    read; closing it (also on an error) stops the thread at its next page."""

    def __init__(self, pages, depth: int = 2):
        self.box: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(pages,), daemon=True)
        self.thread.start()

    _DONE = object()

    def _offer(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, pages):
        try:
            for page in pages:
                if not self._offer(page):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._offer(exc)
        self._offer(self._DONE)

    def __iter__(self):
        while (item := self.box.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        # at most one request (or a rate-limit wait) from its next look at `stopped`
        self.thread.join(timeout=5)


def pull_segment(audience: Audience, *, client: AppApiClient | None = None) -> SourcePull:
    settings = audience.source_settings
    pull = SourcePull.objects.create(audience=audience)
    try:
        workspace = CustomerIoWorkspace.objects.get(key=settings["workspace"])
        client = client or AppApiClient(workspace)
        with _Prefetch(client.membership_pages(settings["segment_id"])) as pages, _Inserter(audience) as inserter:
            known = _snapshot_by_customer_id(audience)
            have = set(known.values())
            seen: set[int] = set()
            for page in pages:
                ids = _people_for(page, pull, known)
                # newcomers go in (on another connection) while the next page is mapped and the
                # one after downloads; a pull that fails half-way leaves them there, and no
                # evaluation runs on it (the next pull settles the snapshot)
                inserter.put([pid for pid in dict.fromkeys(ids) if pid not in have and pid not in seen])
                seen.update(ids)
                pull.members += len(page)
        _snapshot_remove(audience, sorted(have - seen))
        pull.attributes_fetched = _fetch_mapped_attributes(audience, client)
    except (TransportError, CustomerIoWorkspace.DoesNotExist, KeyError) as exc:
        pull.error = str(exc) or exc.__class__.__name__
        raise
    finally:
        pull.finished_at = timezone.now()
        if client is not None:
            pull.requests, pull.throttled = client.requests, client.throttled
        pull.save()
    return pull


def _fetch_mapped_attributes(audience: Audience, client: AppApiClient) -> int:
    """Attributes only for fields a sync maps, and only for people about to enter (those in the
    snapshot but not yet members): 100 ids a call at the App API's pace."""
    # person columns (email, phone, ...) are sent from the person, never from its attributes
    wanted = sorted(
        {
            f
            for fields in Sync.objects.filter(audience=audience, enabled=True).values_list("fields", flat=True)
            for f in fields
            if f not in PERSON_COLUMNS
        }
    )
    if not wanted:
        return 0
    entering = Person.objects.filter(
        Exists(SegmentMember.objects.filter(audience=audience, person=OuterRef("pk"))),
        ~Exists(Membership.objects.current().filter(audience=audience, person=OuterRef("pk"))),
    )
    people = {p.customer_id: p for p in entering.only("pk", "customer_id", "attributes")}
    if not people:
        return 0
    attributes = client.customer_attributes(sorted(people))
    changed = []
    for customer_id, values in attributes.items():
        person = people.get(customer_id)
        picked = {k: values[k] for k in wanted if k in values}
        if person and picked and any(person.attributes.get(k) != v for k, v in picked.items()):
            person.attributes = {**person.attributes, **picked}
            changed.append(person)
    Person.objects.bulk_update(changed, ["attributes"], batch_size=1000)
    return len(attributes)


def register():
    register_source(MemberSource(kind=KIND, condition=condition, refresh=lambda a: pull_segment(a), validate=validate_settings))
