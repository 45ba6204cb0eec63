"""Evaluation: an audience's rule against the person store, diffed against its current members.

Entries and exits are computed and written by the database (INSERT ... SELECT and
UPDATE ... WHERE id IN (SELECT ...), both RETURNING the people concerned), so a full
evaluation of a million-member audience moves only the changes, not the members, into Python
(a pass over a batch of people reads whom the rule takes and who is in, and compares them).
Entries, exits, the size sample and (through `membership_changed`) the sync side's outbox rows
are written in one transaction.

Realtime audiences follow their windows by expiry (audiences/expiry.py): every evaluation of one
writes when its people's answer next changes with no new event and what it becomes, and the
realtime tick (`evaluate_expired`) applies the changes whose time has come. Their full evaluation, hourly, is a consistency check:
whom it has to correct is a bug, counted on the audience and logged.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from croniter import croniter
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from . import expiry
from . import rules as r
from .compiler import audience_condition, higher_ranked_ids
from .dependencies import dependencies, dependency_graph, dependency_order, rule_dependencies
from .models import Audience, Membership, PendingEvaluation, Person, SizeSample, WindowExpiry
from .signals import membership_changed
from .sources import source_for

log = logging.getLogger(__name__)

SAMPLE_MERGE_WINDOW = timedelta(minutes=1)
SAMPLE_EXTEND_WINDOW = timedelta(hours=1)
PENDING_BATCH = 2000
# Times the realtime tick claims at once (one transaction): its statements cost mostly per
# statement, up to a few thousand people.
EXPIRY_BATCH = 5000
# A full evaluation that changes more people than this in an audience that realtime audiences
# read has those evaluated in full at the next tick rather than person by person.
MARK_LIMIT = 10_000
MAX_ERROR_TEXT = 2000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Evaluation:
    audience_id: int
    audience_key: str
    at: datetime
    full: bool
    # person ids (arrays of int64: a first evaluation can bring a million of them)
    entries: Sequence[int] = field(default_factory=list)
    exits: Sequence[int] = field(default_factory=list)
    size: int = 0
    duration_ms: float = 0.0
    # per person: when the change that caused this evaluation reached us (ingest time)
    triggered_at: dict[int, datetime] = field(default_factory=dict)
    # the people are being erased: whatever the sync side needs of them, it must take now
    erasure: bool = False
    # a consistency check (a realtime audience's full evaluation under an unchanged definition):
    # the people it corrected that window expiry should have; None for any other evaluation
    differences: int | None = None

    def triggered(self, person_id: int) -> datetime:
        return self.triggered_at.get(person_id, self.at)


# --- one audience ---------------------------------------------------------------------------


def _insert_entries(audience: Audience, candidates, now: datetime) -> list[int]:
    sql, params = candidates.values(candidate_id=F("pk")).query.sql_with_params()
    table = connection.ops.quote_name(Membership._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (audience_id, person_id, entered_at) "
            f"SELECT %s, candidate.candidate_id, %s FROM ({sql}) candidate RETURNING person_id",
            [audience.pk, connection.ops.adapt_datetimefield_value(now), *params],
        )
        return _fetch_ids(cursor)


def _fetch_ids(cursor, column=0) -> array:
    """Person ids off a cursor into a compact array (8 bytes each, not a Python int each)."""
    ids = array("q")
    while rows := cursor.fetchmany(10000):
        ids.extend(row[column] for row in rows)
    return ids


def _diff_in_one_statement(audience: Audience, people, now: datetime) -> tuple[array, array]:
    """PostgreSQL: the rule is computed once (a materialised CTE) and both writes happen in the
    same statement, instead of running the rule once for entries and once for exits."""
    sql, params = people.values(candidate_id=F("pk")).query.sql_with_params()
    table = connection.ops.quote_name(Membership._meta.db_table)
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH desired AS MATERIALIZED ({sql}),
            current_members AS MATERIALIZED (
                SELECT id, person_id FROM {table} WHERE audience_id = %s AND exited_at IS NULL),
            entered AS (
                INSERT INTO {table} (audience_id, person_id, entered_at)
                SELECT %s, d.candidate_id, %s FROM desired d
                WHERE NOT EXISTS (SELECT 1 FROM current_members c WHERE c.person_id = d.candidate_id)
                RETURNING person_id),
            exited AS (
                UPDATE {table} m SET exited_at = %s FROM current_members c
                WHERE m.id = c.id AND NOT EXISTS (SELECT 1 FROM desired d WHERE d.candidate_id = c.person_id)
                RETURNING m.person_id)
            SELECT TRUE, person_id FROM entered UNION ALL SELECT FALSE, person_id FROM exited""",
            [*params, audience.pk, audience.pk, at, at],
        )
        entries, exits = array("q"), array("q")
        while rows := cursor.fetchmany(10000):
            for entered, person_id in rows:
                (entries if entered else exits).append(person_id)
    return entries, exits


def _diff_for_people(audience: Audience, wanted: set[int], current, now: datetime) -> tuple[array, array]:
    """A pass over a batch of people: whom the rule takes (`wanted`) and who is in, read by two
    plain look-ups and compared here, then written by key. One statement that anti-joins the two
    lets the planner loop over one for each row of the other, and the stale estimates after a
    batch that moved thousands of memberships make that seconds."""
    members = dict(current.values_list("person_id", "pk"))
    entries = array("q", sorted(wanted - members.keys()))
    exits = array("q", sorted(members.keys() - wanted))
    Membership.objects.bulk_create([Membership(audience_id=audience.pk, person_id=pid, entered_at=now) for pid in entries])
    if exits:
        Membership.objects.filter(pk__in=[members[pid] for pid in exits]).update(exited_at=now)
    return entries, exits


def _refresh_statistics_after_bulk_change(changed: int, size: int) -> None:
    """After a large load (a first evaluation), the planner's row estimates for memberships
    are stale until autovacuum gets round to it, and the next evaluations pick nested loops
    over a million rows. A sampled ANALYZE costs tens of milliseconds."""
    if connection.vendor == "postgresql" and changed >= 1000 and changed >= size // 5:
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(Membership._meta.db_table)}")


def _close_exits(leaving, now: datetime) -> list[int]:
    sql, params = leaving.values_list("pk").query.sql_with_params()
    table = connection.ops.quote_name(Membership._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET exited_at = %s WHERE id IN ({sql}) RETURNING person_id",
            [connection.ops.adapt_datetimefield_value(now), *params],
        )
        return _fetch_ids(cursor)


def record_size_sample(audience: Audience, *, at, size, entered, exited, full, duration_ms) -> None:
    last = SizeSample.objects.filter(audience=audience).order_by("-at").first()
    # a sample at zero stays a sample of its own, so that a drop to 0 and back within the merge
    # window still shows in the chart and in the review's days at zero
    touches_zero = last is not None and (size == 0) != (last.size == 0)
    if last and at - last.at < SAMPLE_MERGE_WINDOW and not touches_zero:
        last.size, last.last_at = size, at
        last.entered += entered
        last.exited += exited
        last.evaluations += 1
        last.full = last.full or full
        last.duration_ms = max(last.duration_ms, duration_ms)
        last.save()
    elif last and not entered and not exited and last.size == size and at - last.at < SAMPLE_EXTEND_WINDOW:
        last.last_at = at
        last.evaluations += 1
        last.save(update_fields=["last_at", "evaluations"])
    else:
        SizeSample.objects.create(
            audience=audience,
            at=at,
            last_at=at,
            size=size,
            entered=entered,
            exited=exited,
            full=full,
            duration_ms=duration_ms,
        )


def evaluate_audience(audience: Audience, *, now: datetime | None = None, person_ids=None, triggered_at=None) -> Evaluation:
    """Evaluate one audience, in full or for `person_ids` only, and write the changes (and, for
    a realtime audience, when these people can next change answer)."""
    started = time.perf_counter()
    with transaction.atomic():
        # Serialises evaluations of one audience (a full tick and a realtime pass) on PostgreSQL;
        # SQLite's immediate transactions serialise all writers anyway.
        audience = Audience.objects.select_for_update().get(pk=audience.pk)
        now = now or timezone.now()
        full = person_ids is None
        ids = None if full else list(person_ids)
        courses = None  # read with the members when a batch's are
        # read once, for the condition, the definition digest and the expiry times
        exclusion_ids, higher_ids = list(audience.exclusions.values_list("pk", flat=True)), higher_ranked_ids(audience)
        people = Person.objects.filter(source_condition(audience, now, exclusion_ids=exclusion_ids, higher_ids=higher_ids))
        current = audience.memberships.current()
        if full and connection.vendor == "postgresql":
            entries, exits = _diff_in_one_statement(audience, people, now)
        elif not full:
            # a realtime audience's rule that moves with the clock: who is in now and when that
            # changes come from one read of the plan's columns (the rule is not read twice)
            plan = expiry.Plan(audience, now, exclusion_ids + higher_ids) if follows_windows(audience) else None
            if plan is not None and plan.tree is not None:
                wanted, courses = expiry.answers(plan, ids)
            else:
                wanted = set(people.filter(pk__in=ids).values_list("pk", flat=True))
            entries, exits = _diff_for_people(audience, wanted, current.filter(person_id__in=ids), now)
        else:
            entries = _insert_entries(audience, people.filter(~Exists(current.filter(person_id=OuterRef("pk")))), now)
            exits = _close_exits(
                current.filter(~Exists(people.filter(pk=OuterRef("person_id")))).exclude(person_id__in=entries), now
            )
        figures = {}
        differences = None
        if full:
            size = audience.memberships.current().count()
            audience.last_evaluated_at = now
            # a full evaluation that succeeds is what clears a failing mark (a per-person pass
            # over a few people does not show that the audience evaluates)
            audience.evaluation_error, audience.evaluation_failed_at = "", None
            digest = expiry.definition_digest(audience, exclusion_ids=exclusion_ids, higher_ids=higher_ids)
            figures = {"evaluation_error": "", "evaluation_failed_at": None, "evaluated_definition": digest}
            if follows_windows(audience) and digest == audience.evaluated_definition:
                differences = _missed_by_expiry(audience, entries, exits, now)
                figures.update(consistency_differences=differences, consistency_checked_at=now)
        else:
            size = audience.current_size + len(entries) - len(exits)
        audience.current_size = size
        # a queryset update: figures are not settings, and must not add to the setting history
        Audience.objects.filter(pk=audience.pk).update(current_size=size, last_evaluated_at=audience.last_evaluated_at, **figures)
        if full:
            _refresh_statistics_after_bulk_change(len(entries) + len(exits), size)
        # the people whose course here changed: realtime audiences that leave this one's members
        # out follow it (a per-person pass evaluates them next, a full one marks them)
        recoursed = set()
        if follows_windows(audience):
            recoursed = expiry.refresh(audience, now, ids, others=exclusion_ids + higher_ids, courses=courses)
        elif full:  # it was realtime until now
            rows = WindowExpiry.objects.filter(audience=audience)
            recoursed = set(rows.values_list("person_id", flat=True))
            rows.delete()
        if full and (entries or exits or recoursed):
            _mark_readers_due(audience, set(entries) | set(exits) | recoursed, now)
        return _announce(
            audience,
            now=now,
            full=full,
            entries=entries,
            exits=exits,
            size=size,
            triggered_at=triggered_at,
            differences=differences,
            started=started,
        )


def _announce(audience: Audience, *, now, full, entries, exits, size, triggered_at, started, differences=None) -> Evaluation:
    """The end of an evaluation's transaction: its size sample and, when members changed, the
    signal the sync side writes its outbox rows from."""
    evaluation = Evaluation(
        audience_id=audience.pk,
        audience_key=audience.key,
        at=now,
        full=full,
        entries=entries,
        exits=exits,
        size=size,
        triggered_at=dict(triggered_at or {}),
        differences=differences,
    )
    evaluation.duration_ms = (time.perf_counter() - started) * 1000
    if full or entries or exits:
        record_size_sample(
            audience,
            at=now,
            size=size,
            entered=len(entries),
            exited=len(exits),
            full=full,
            duration_ms=evaluation.duration_ms,
        )
    if entries or exits:
        membership_changed.send(sender=Audience, evaluation=evaluation)
    return evaluation


def _ids_in(column: str, ids) -> tuple[str, list]:
    """`column` among `ids`: one array parameter on PostgreSQL (a list of thousands of
    parameters costs more to plan than to run), a list elsewhere."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s)", [list(ids)]
    return f"{column} IN ({', '.join(['%s'] * len(ids))})", list(ids)


def _enter(audience: Audience, person_ids, now: datetime) -> array:
    """These people enter, but for any who are in already (or gone); returns who entered."""
    if not person_ids:
        return array("q")
    table = connection.ops.quote_name(Membership._meta.db_table)
    people = connection.ops.quote_name(Person._meta.db_table)
    among, params = _ids_in("p.id", person_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (audience_id, person_id, entered_at) SELECT %s, p.id, %s FROM {people} p "
            f"WHERE {among} AND NOT EXISTS (SELECT 1 FROM {table} m "
            "WHERE m.audience_id = %s AND m.person_id = p.id AND m.exited_at IS NULL) RETURNING person_id",
            [audience.pk, connection.ops.adapt_datetimefield_value(now), *params, audience.pk],
        )
        return _fetch_ids(cursor)


def _leave(audience: Audience, person_ids, now: datetime) -> array:
    """These people leave, but for any who are out already; returns who left."""
    if not person_ids:
        return array("q")
    table = connection.ops.quote_name(Membership._meta.db_table)
    among, params = _ids_in("person_id", person_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET exited_at = %s WHERE audience_id = %s AND exited_at IS NULL AND {among} RETURNING person_id",
            [connection.ops.adapt_datetimefield_value(now), audience.pk, *params],
        )
        return _fetch_ids(cursor)


def apply_courses(audience: Audience, due: dict, *, now: datetime, triggered_at=None) -> Evaluation:
    """The realtime tick for people whose answer in this realtime audience changes now with no
    new event (`due`: person → (in or not from now on, the changes after that), as window expiry
    wrote them): they enter or leave as written, with no rule to evaluate, and the rest of each
    course is written back. Changes of a course whose time has come as well (a tick that comes
    late: the worker was down) are applied with it, in one: a person who would have entered and
    left meanwhile is not announced entering and leaving at once."""
    started = time.perf_counter()
    becoming, rest = {}, {}
    for person_id, (becomes, later) in due.items():
        course = expiry.course_of(later)
        while course and course[0][0] <= now:
            becomes = course.pop(0)[1]
        becoming[person_id] = becomes
        if course:
            rest[person_id] = course
    with transaction.atomic():
        audience = Audience.objects.select_for_update().get(pk=audience.pk)
        entries = _enter(audience, sorted(p for p, becomes in becoming.items() if becomes), now)
        exits = _leave(audience, sorted(p for p, becomes in becoming.items() if not becomes), now)
        expiry.write_courses(audience.pk, rest)
        size = audience.current_size + len(entries) - len(exits)
        Audience.objects.filter(pk=audience.pk).update(current_size=size)
        return _announce(
            audience, now=now, full=False, entries=entries, exits=exits, size=size, triggered_at=triggered_at, started=started
        )


def follows_windows(audience: Audience) -> bool:
    """Realtime rule audiences follow their windows by expiry; the others are evaluated in full
    on their cadence."""
    return audience.is_realtime and audience.source_kind == Audience.RULES


def current_definition(audience: Audience, everyone) -> str:
    """The audience's definition digest, from `everyone` (the enabled audiences, exclusions
    prefetched), as `evaluate_audience` reads it from the database."""
    higher = [
        a.pk
        for a in everyone
        if audience.priority_group_id
        and audience.priority_rank is not None
        and a.priority_group_id == audience.priority_group_id
        and a.priority_rank is not None
        and a.priority_rank < audience.priority_rank
    ]
    return expiry.definition_digest(audience, exclusion_ids=[a.pk for a in audience.exclusions.all()], higher_ids=higher)


def _missed_by_expiry(audience: Audience, entries, exits, now: datetime) -> int:
    """A consistency check's corrections that window expiry and the realtime pass should have
    made: the people it changed, but for those whom ingest has queued or whose time has come in
    this audience and who wait for the tick (a person whose time came in an audience this one
    follows has a row here at that time too). Logged as the bug they are; the sync side alerts on the count."""
    changed = sorted(set(entries) | set(exits))
    waiting = set()
    for start in range(0, len(changed), PENDING_BATCH):
        part = changed[start : start + PENDING_BATCH]
        waiting.update(PendingEvaluation.objects.filter(person_id__in=part).values_list("person_id", flat=True))
        due = WindowExpiry.objects.filter(audience=audience, person_id__in=part, due_at__lte=now)
        waiting.update(due.values_list("person_id", flat=True))
    missed = [pid for pid in changed if pid not in waiting]
    if missed:
        entered = set(entries)
        log.error(
            "audience %s: the consistency check at %s corrected %s window expiry had missed (%d entered, %d left; "
            "person ids %s): a bug in the evaluation engine",
            audience.key,
            now.isoformat(),
            f"{len(missed)} {'person' if len(missed) == 1 else 'people'}",
            sum(pid in entered for pid in missed),
            sum(pid not in entered for pid in missed),
            ", ".join(map(str, missed[:20])),
        )
    return len(missed)


def _mark_readers_due(audience: Audience, changed: set[int], now: datetime) -> None:
    """A full evaluation changed members outside a realtime pass: the realtime audiences that
    read this one meet those people again at once; after a large change, in full at the next tick
    (a first evaluation, not a check)."""
    readers = [
        a.pk for a in enabled_audiences().exclude(pk=audience.pk) if follows_windows(a) and audience.key in dependencies(a)
    ]
    if not readers:
        return
    if len(changed) > MARK_LIMIT:
        Audience.objects.filter(pk__in=readers).update(evaluated_definition="")
    else:
        expiry.mark_due(readers, changed, now)


def leave_all_audiences(person: Person, *, now: datetime | None = None) -> list[Evaluation]:
    """Erasure: the person exits every audience they are in, and the exits are announced. The
    audience rows are locked in dependency order, the order evaluation takes them in."""
    now = now or timezone.now()
    evaluations = []
    audience_ids = person.memberships.current().values_list("audience_id", flat=True)
    for audience in dependency_order(Audience.objects.filter(pk__in=list(audience_ids)).prefetch_related("exclusions")):
        with transaction.atomic():
            audience = Audience.objects.select_for_update().get(pk=audience.pk)
            closed = audience.memberships.current().filter(person=person).update(exited_at=now)
            if not closed:
                continue
            audience.current_size = max(0, audience.current_size - closed)
            Audience.objects.filter(pk=audience.pk).update(current_size=audience.current_size)
            evaluation = Evaluation(
                audience_id=audience.pk,
                audience_key=audience.key,
                at=now,
                full=False,
                exits=[person.pk],
                size=audience.current_size,
                erasure=True,
            )
            record_size_sample(audience, at=now, size=audience.current_size, entered=0, exited=1, full=False, duration_ms=0)
            membership_changed.send(sender=Audience, evaluation=evaluation)
            evaluations.append(evaluation)
    return evaluations


def source_condition(audience: Audience, now: datetime, **known):
    """The audience's condition; `known` may give its exclusion_ids and higher_ids."""
    if audience.source_kind == Audience.RULES:
        return audience_condition(audience, now, **known)
    return audience_condition(audience, now, base=source_for(audience.source_kind).condition(audience, now), **known)


def refresh_source(audience: Audience) -> None:
    """Before a full evaluation of a non-rule audience: fetch its members again. Outside the
    evaluation transaction, because a pull takes as long as the source's rate limit says."""
    if audience.source_kind != Audience.RULES:
        source_for(audience.source_kind).refresh(audience)


# --- many audiences -------------------------------------------------------------------------


def enabled_audiences():
    return Audience.objects.filter(enabled=True).prefetch_related("exclusions")


def evaluation_error_text(exc: Exception) -> str:
    text = f"rule: {exc}" if isinstance(exc, r.RuleError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_TEXT]


def audience_mark_failing(audience: Audience, *, error: str, now: datetime) -> None:
    """Recorded on the row (audiences does not know about alerts; the sync side's check reads it)."""
    audience.evaluation_error, audience.evaluation_failed_at = error[:MAX_ERROR_TEXT], now
    # its members may be stale now: its next full evaluation is a first one, not a check
    audience.evaluated_definition = ""
    Audience.objects.filter(pk=audience.pk).update(
        evaluation_error=audience.evaluation_error, evaluation_failed_at=now, evaluated_definition=""
    )


def evaluate_or_mark_failing(
    audience: Audience, *, now: datetime | None = None, person_ids=None, triggered_at=None, refresh: bool = False
) -> Evaluation | None:
    """`evaluate_audience` for a pass over many audiences: when it raises (a rule stored before
    rules were bounded, a database error, a failing source), its own transaction, a savepoint
    inside the realtime pass's, is rolled back, the audience is marked failing and skipped
    (None), and the pass goes on. Audiences that read it through in_audience or exclusions go on
    with its last good membership."""

    def work():
        if refresh:
            refresh_source(audience)
        return evaluate_audience(audience, now=now, person_ids=person_ids, triggered_at=triggered_at)

    return _isolated(audience, work, now=now)


def _isolated(audience: Audience, work, *, now: datetime | None) -> Evaluation | None:
    """`work()` (an evaluation of `audience` in a transaction of its own), or None when it raised
    and the audience was marked failing."""
    try:
        return work()
    except Exception as exc:  # one audience must not stop the others; the error is kept and alerted
        log.exception("audience %s: evaluation failed; skipped, the other audiences go on", audience.key)
        audience_mark_failing(audience, error=evaluation_error_text(exc), now=now or timezone.now())
        return None


def evaluate_all(keys=None, *, now: datetime | None = None) -> list[Evaluation]:
    """Full evaluation, dependencies first. With keys, only those (still in dependency order).
    An audience that fails is marked failing and left out of the result."""
    audiences = enabled_audiences() if not keys else Audience.objects.filter(key__in=keys).prefetch_related("exclusions")
    evaluations = [evaluate_or_mark_failing(a, now=now, refresh=True) for a in dependency_order(audiences)]
    return [e for e in evaluations if e is not None]


def realtime_in_order() -> list[Audience]:
    return dependency_order(enabled_audiences().filter(cadence=Audience.REALTIME, source_kind=Audience.RULES))


def evaluate_people(person_ids, *, triggered_at=None, now: datetime | None = None) -> list[Evaluation]:
    """Realtime audiences, for these people only, dependencies first; failing ones are skipped."""
    evaluations = [
        evaluate_or_mark_failing(a, now=now, person_ids=person_ids, triggered_at=triggered_at) for a in realtime_in_order()
    ]
    return [e for e in evaluations if e is not None]


def _claim_pending(limit: int) -> dict[int, datetime]:
    table = connection.ops.quote_name(PendingEvaluation._meta.db_table)
    lock = "FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE person_id IN "
            f"(SELECT person_id FROM {table} ORDER BY queued_at LIMIT %s {lock}) RETURNING person_id, queued_at",
            [limit],
        )
        rows = cursor.fetchall()
    convert = connection.ops.convert_datetimefield_value if connection.vendor == "sqlite" else None
    field = PendingEvaluation._meta.get_field("queued_at")
    return {pid: (convert(at, field, connection) if convert else at) for pid, at in rows}


def evaluate_pending(*, limit: int = PENDING_BATCH, now: datetime | None = None) -> int:
    """Claim people queued by ingest and evaluate realtime audiences for them, in one
    transaction: if the worker dies half-way, the claim rolls back with the changes. An
    audience that fails is rolled back on its own and marked; the others' changes and the
    claim commit (the failing audience meets these people again at its full evaluation).
    `now` is the moment the rules are read at (the clock when not given)."""
    done = 0
    while True:
        with transaction.atomic():
            claimed = _claim_pending(limit)
            if not claimed:
                return done
            evaluate_people(list(claimed), triggered_at=claimed, now=now)
        done += len(claimed)


def _claim_expired(now: datetime, limit: int, audience_ids) -> list[tuple[int, int, datetime, bool | None, list | None]]:
    """(person, audience, due time, becomes, later) of up to `limit` rows of these audiences whose
    time has come, taken off the table. PostgreSQL gives the due times in microseconds since the
    epoch: thousands of them, and a timestamp with its time zone costs several times more to load."""
    table = connection.ops.quote_name(WindowExpiry._meta.db_table)
    postgres = connection.vendor == "postgresql"
    due = "(extract(epoch FROM due_at) * 1000000)::bigint" if postgres else "due_at"
    among, params = _ids_in("audience_id", sorted(audience_ids))
    # PostgreSQL: the rows locked are deleted where they are found (by their physical place: a
    # join on `id` scanned the table and hashed it, twice the statement's time)
    taken = (
        f"ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE due_at <= %s AND {among} ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED))"
        if postgres
        else f"id IN (SELECT id FROM {table} WHERE due_at <= %s AND {among} ORDER BY due_at LIMIT %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE {taken} RETURNING person_id, audience_id, {due}, becomes, later",
            [connection.ops.adapt_datetimefield_value(now), *params, limit],
        )
        rows = cursor.fetchall()
    due_at, later = WindowExpiry._meta.get_field("due_at"), WindowExpiry._meta.get_field("later")
    return [
        (
            pid,
            aid,
            EPOCH + timedelta(microseconds=at)
            if postgres
            else connection.ops.convert_datetimefield_value(at, due_at, connection),
            None if becomes is None else bool(becomes),
            later.from_db_value(course, None, connection),
        )
        for pid, aid, at, becomes, course in rows
    ]


def _evaluate_claimed(realtime: list[Audience], claimed, now: datetime, gone: dict[int, str], reads) -> None:
    """Each realtime audience: the changes whose time came in it are applied as written, but for
    people to be evaluated, who are evaluated: a row asks for it, or the course written for them
    may be wrong. It is wrong for a person evaluated just now in an audience this one leaves out
    (their course there may have changed, and this one follows it), whose rows were taken away in
    one that does not follow its windows any more (`gone`: id → key), or whose membership
    changed just now in an audience this one's rule names (a rule reads members as they are).
    No other audience's answer can change."""
    evaluate_in: dict[int, set[int]] = {}
    courses_in: dict[int, dict[int, tuple]] = {}
    first: dict[int, datetime] = {}
    evaluated_in: dict[str, set[int]] = {}
    for person_id, audience_id, at, becomes, later in claimed:
        if audience_id in gone:
            evaluated_in.setdefault(gone[audience_id], set()).add(person_id)
        elif becomes is None:
            evaluate_in.setdefault(audience_id, set()).add(person_id)
        else:
            courses_in.setdefault(audience_id, {})[person_id] = (becomes, later)
        first[person_id] = min(at, first.get(person_id, at))
    changed_in: dict[str, set[int]] = {}
    for audience in realtime:
        evaluate = set(evaluate_in.get(audience.pk, ()))
        named = rule_dependencies(audience.rule)
        for key in reads[audience.key]:
            evaluate |= evaluated_in.get(key, set())
            if key in named:
                evaluate |= changed_in.get(key, set())
        due = {p: course for p, course in courses_in.get(audience.pk, {}).items() if p not in evaluate}
        done = []
        if due:
            done.append(_isolated(audience, partial(apply_courses, audience, due, now=now, triggered_at=first), now=now))
        if evaluate:
            done.append(evaluate_or_mark_failing(audience, now=now, person_ids=sorted(evaluate), triggered_at=first))
        changed_in[audience.key] = {p for e in done if e is not None for p in (*e.entries, *e.exits)}
        evaluated_in[audience.key] = evaluate


def _concerned(realtime: list[Audience], due_in: set[int], gone: dict[int, str], reads) -> list[Audience]:
    """The realtime audiences a tick takes: those with rows due and those that read them or an
    audience whose rows are only taken away (`gone`), however indirectly, in dependency order.
    Only their rows are locked: a store with thirty realtime audiences does not lock thirty rows
    a second for one cart's window. `reads`: which audience reads which."""
    keys = {a.key for a in realtime if a.pk in due_in} | set(gone.values())
    while more := {key for key, read in reads.items() if read & keys} - keys:
        keys |= more
    return [a for a in realtime if a.key in keys]


def evaluate_expired(*, limit: int = EXPIRY_BATCH, now: datetime | None = None) -> int:
    """The realtime tick: claim the rows whose time has come (a window of a realtime audience ends
    or opens for a person, an audience they read changed in full), apply the changes they hold
    and evaluate the people they ask for, and the people whose membership of an audience changed
    in the realtime audiences that read it; claim and changes in one transaction, as in
    `evaluate_pending`. Lag is measured from the time that came. `now` is the
    moment the rules are read at (the clock when not given). Returns the people whose rows it took."""
    done = 0
    while True:
        moment = now or timezone.now()
        first_due = expiry.next_due_at()  # the usual answer: nobody yet
        if first_due is None or first_due > moment:
            return done
        with transaction.atomic():
            realtime = realtime_in_order()
            due_in = set(WindowExpiry.objects.filter(due_at__lte=moment).values_list("audience_id", flat=True).distinct())
            # the rows of audiences that do not follow their windows any more are only taken away
            no_longer = list(Audience.objects.filter(pk__in=due_in - {a.pk for a in realtime}).prefetch_related("exclusions"))
            # among these audiences: no other audience's members change in a tick
            reads = dependency_graph(realtime + no_longer)
            gone = {a.pk: a.key for a in no_longer}
            concerned = _concerned(realtime, due_in, gone, reads)
            # the audience rows first, in the order every evaluation takes them, the claim after:
            # a realtime pass that holds one may be about to rewrite a claimed person's times, and
            # would wait for this claim while this tick waited for its audience (a deadlock)
            for audience in concerned:
                list(Audience.objects.select_for_update().filter(pk=audience.pk).values_list("pk"))
            claimed = _claim_expired(moment, limit, {a.pk for a in concerned} | gone.keys())
            if not claimed:
                return done
            _evaluate_claimed(concerned, claimed, moment, gone, reads)
        done += len({row[0] for row in claimed})


def queue_people(person_ids, *, at: datetime) -> None:
    """Called by ingest, inside its transaction."""
    if not person_ids:
        return
    table = connection.ops.quote_name(PendingEvaluation._meta.db_table)
    when = connection.ops.adapt_datetimefield_value(at)
    params = []
    for pid in sorted(person_ids):
        params += [pid, when]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (person_id, queued_at) VALUES {', '.join(['(%s, %s)'] * len(person_ids))} "
            "ON CONFLICT (person_id) DO NOTHING",
            params,
        )


# --- schedule -------------------------------------------------------------------------------


def interval_of(cadence: str) -> timedelta | None:
    return r.Duration(cadence).delta if r.is_duration(cadence) else None


def realtime_check_every() -> timedelta:
    return r.parse_duration(settings.REALTIME_CHECK_EVERY)


def next_evaluation(audience: Audience, after: datetime) -> datetime:
    if audience.cadence == Audience.REALTIME:
        # people leave by window expiry; the full evaluation checks that none was missed (a little
        # early, so that the once-a-minute tick at the hour finds it due)
        return after + realtime_check_every() - timedelta(seconds=10)
    interval = interval_of(audience.cadence)
    if interval:
        return after + interval
    return croniter(audience.cadence, after).get_next(datetime)


def evaluate_due(*, now: datetime | None = None) -> list[Evaluation]:
    """The once-a-minute tick: every enabled audience whose time has come, dependencies first,
    and a realtime audience whose definition is not the one of its last full evaluation (a
    failing one, one whose higher-ranked audience was disabled). Each audience is claimed with a
    conditional UPDATE, so overlapping ticks (several workers) never evaluate the same audience
    twice for the same slot."""
    done = []
    everyone = dependency_order(enabled_audiences())
    for audience in everyone:
        moment = now or timezone.now()
        due_at = audience.next_evaluation_at
        changed = follows_windows(audience) and current_definition(audience, everyone) != audience.evaluated_definition
        if due_at is not None and due_at > moment and not changed:
            continue
        claimed = (
            Audience.objects.filter(pk=audience.pk, next_evaluation_at=due_at)
            if due_at
            else Audience.objects.filter(pk=audience.pk, next_evaluation_at__isnull=True)
        )
        if not claimed.update(next_evaluation_at=next_evaluation(audience, moment)):
            continue
        evaluation = evaluate_or_mark_failing(audience, now=now, refresh=True)
        if evaluation is not None:
            done.append(evaluation)
    return done
