"""Evaluation: an audience's rule against the person store, diffed against its current members.

Entries and exits are computed and written by the database (INSERT ... SELECT and
UPDATE ... WHERE id IN (SELECT ...), both RETURNING the people concerned), so a full
evaluation of a million-member audience moves only the changes, not the members, into Python.
Entries, exits, the size sample and (through `membership_changed`) the sync side's outbox rows
are written in one transaction.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from croniter import croniter
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from . import rules as r
from .compiler import audience_condition
from .models import Audience, Membership, PendingEvaluation, Person, SizeSample
from .signals import membership_changed
from .sources import source_for

log = logging.getLogger(__name__)

SAMPLE_MERGE_WINDOW = timedelta(minutes=1)
SAMPLE_EXTEND_WINDOW = timedelta(hours=1)
REALTIME_FULL_EVERY = timedelta(minutes=1)
PENDING_BATCH = 2000
MAX_ERROR_TEXT = 2000


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

    def triggered(self, person_id: int) -> datetime:
        return self.triggered_at.get(person_id, self.at)


# --- dependency order -----------------------------------------------------------------------


def dependencies(audience: Audience, *, rule=None, exclusion_keys=None, group_higher_keys=None) -> set[str]:
    """Keys of the audiences whose membership this one reads."""
    deps = set()
    rule = audience.rule if rule is None else rule
    if audience.source_kind == Audience.RULES and rule:
        try:
            deps |= r.referenced_audiences(r.parse_rule(rule))
        except r.RuleError:
            pass
    if exclusion_keys is None:
        exclusion_keys = [a.key for a in audience.exclusions.all()] if audience.pk else []
    deps |= set(exclusion_keys)
    if group_higher_keys is None and audience.priority_group_id and audience.priority_rank is not None:
        group_higher_keys = Audience.objects.filter(
            priority_group_id=audience.priority_group_id, priority_rank__lt=audience.priority_rank
        ).values_list("key", flat=True)
    deps |= set(group_higher_keys or ())
    return deps


def dependency_graph(audiences=None) -> dict[str, set[str]]:
    audiences = list(audiences if audiences is not None else Audience.objects.prefetch_related("exclusions"))
    return {a.key: dependencies(a) for a in audiences}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A dependency cycle as a list of keys (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(key):
        state[key] = 1
        stack.append(key)
        for dep in sorted(graph.get(key, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[key] = 2
        return None

    for key in sorted(graph):
        if key not in state:
            found = visit(key)
            if found:
                return found
    return None


def _every_audience_in_order() -> list[str]:
    """Keys of all audiences, dependencies first, ties by key."""
    everyone = list(Audience.objects.prefetch_related("exclusions"))
    ranked = [a for a in everyone if a.priority_group_id and a.priority_rank is not None]
    graph = {
        a.key: dependencies(a, group_higher_keys=[
            b.key for b in ranked
            if a.priority_group_id and a.priority_rank is not None
            and b.priority_group_id == a.priority_group_id and b.priority_rank < a.priority_rank
        ])
        for a in everyone
    }
    ordered, done = [], set()

    def place(key, trail=()):
        if key in done:
            return
        if key in trail:
            raise ValueError("dependency cycle: " + " → ".join((*trail, key)))
        for dep in sorted(graph[key] & graph.keys()):
            place(dep, (*trail, key))
        done.add(key)
        ordered.append(key)

    for key in sorted(graph):
        place(key)
    return ordered


def dependency_order(audiences) -> list[Audience]:
    """Dependencies first, in one order for every subset: the place each audience has among all
    audiences (dependencies first, ties by key). Evaluation and erasure lock audience rows in
    this order, and because it is the same order whichever audiences a pass takes (the realtime
    ones, the due ones, the ones a person is in), no two of them wait on each other in a circle
    (a deadlock on PostgreSQL)."""
    audiences = list(audiences)
    place = {key: n for n, key in enumerate(_every_audience_in_order())}
    return sorted(audiences, key=lambda a: (place.get(a.key, len(place)), a.key))


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
            audience=audience, at=at, last_at=at, size=size, entered=entered, exited=exited, full=full,
            duration_ms=duration_ms,
        )


def evaluate_audience(audience: Audience, *, now: datetime | None = None, person_ids=None, triggered_at=None) -> Evaluation:
    """Evaluate one audience, in full or for `person_ids` only, and write the changes."""
    started = time.perf_counter()
    with transaction.atomic():
        # Serialises evaluations of one audience (a full tick and a realtime pass) on PostgreSQL;
        # SQLite's immediate transactions serialise all writers anyway.
        audience = Audience.objects.select_for_update().get(pk=audience.pk)
        now = now or timezone.now()
        full = person_ids is None
        people = Person.objects.filter(source_condition(audience, now))
        current = Membership.objects.filter(audience=audience, exited_at__isnull=True)
        if full and connection.vendor == "postgresql":
            entries, exits = _diff_in_one_statement(audience, people, now)
        else:
            if not full:
                ids = list(person_ids)
                people = people.filter(pk__in=ids)
                current = current.filter(person_id__in=ids)
            entries = _insert_entries(
                audience, people.filter(~Exists(current.filter(person_id=OuterRef("pk")))), now
            )
            exits = _close_exits(
                current.filter(~Exists(people.filter(pk=OuterRef("person_id")))).exclude(person_id__in=entries), now
            )
        figures = {}
        if full:
            size = Membership.objects.filter(audience=audience, exited_at__isnull=True).count()
            audience.last_evaluated_at = now
            # a full evaluation that succeeds is what clears a failing mark (a per-person pass
            # over a few people does not show that the audience evaluates)
            audience.evaluation_error, audience.evaluation_failed_at = "", None
            figures = {"evaluation_error": "", "evaluation_failed_at": None}
        else:
            size = audience.current_size + len(entries) - len(exits)
        audience.current_size = size
        # a queryset update: figures are not settings, and must not add to the setting history
        Audience.objects.filter(pk=audience.pk).update(
            current_size=size, last_evaluated_at=audience.last_evaluated_at, **figures
        )
        _refresh_statistics_after_bulk_change(len(entries) + len(exits), size)
        evaluation = Evaluation(
            audience_id=audience.pk, audience_key=audience.key, at=now, full=full, entries=entries, exits=exits,
            size=size, triggered_at=dict(triggered_at or {}),
        )
        evaluation.duration_ms = (time.perf_counter() - started) * 1000
        if full or entries or exits:
            record_size_sample(
                audience, at=now, size=size, entered=len(entries), exited=len(exits), full=full,
                duration_ms=evaluation.duration_ms,
            )
        if entries or exits:
            membership_changed.send(sender=Audience, evaluation=evaluation)
    return evaluation


def leave_all_audiences(person: Person, *, now: datetime | None = None) -> list[Evaluation]:
    """Erasure: the person exits every audience they are in, and the exits are announced. The
    audience rows are locked in dependency order, the order evaluation takes them in."""
    now = now or timezone.now()
    evaluations = []
    audience_ids = Membership.objects.filter(person=person, exited_at__isnull=True).values_list("audience_id", flat=True)
    for audience in dependency_order(Audience.objects.filter(pk__in=list(audience_ids)).prefetch_related("exclusions")):
        with transaction.atomic():
            audience = Audience.objects.select_for_update().get(pk=audience.pk)
            closed = Membership.objects.filter(audience=audience, person=person, exited_at__isnull=True).update(exited_at=now)
            if not closed:
                continue
            audience.current_size = max(0, audience.current_size - closed)
            Audience.objects.filter(pk=audience.pk).update(current_size=audience.current_size)
            evaluation = Evaluation(
                audience_id=audience.pk, audience_key=audience.key, at=now, full=False, exits=[person.pk],
                size=audience.current_size, erasure=True,
            )
            record_size_sample(audience, at=now, size=audience.current_size, entered=0, exited=1, full=False, duration_ms=0)
            membership_changed.send(sender=Audience, evaluation=evaluation)
            evaluations.append(evaluation)
    return evaluations


def source_condition(audience: Audience, now: datetime):
    if audience.source_kind == Audience.RULES:
        return audience_condition(audience, now)
    return audience_condition(audience, now, base=source_for(audience.source_kind).condition(audience, now))


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
    Audience.objects.filter(pk=audience.pk).update(evaluation_error=audience.evaluation_error, evaluation_failed_at=now)


def evaluate_or_mark_failing(
    audience: Audience, *, now: datetime | None = None, person_ids=None, triggered_at=None, refresh: bool = False
) -> Evaluation | None:
    """`evaluate_audience` for a pass over many audiences: when it raises (a rule stored before
    rules were bounded, a database error, a failing source), its own transaction, a savepoint
    inside the realtime pass's, is rolled back, the audience is marked failing and skipped
    (None), and the pass goes on. Audiences that read it through in_audience or exclusions go on
    with its last good membership."""
    try:
        if refresh:
            refresh_source(audience)
        return evaluate_audience(audience, now=now, person_ids=person_ids, triggered_at=triggered_at)
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


def evaluate_people(person_ids, *, triggered_at=None, now: datetime | None = None) -> list[Evaluation]:
    """Realtime audiences, for these people only, dependencies first; failing ones are skipped."""
    realtime = enabled_audiences().filter(cadence=Audience.REALTIME, source_kind=Audience.RULES)
    evaluations = [
        evaluate_or_mark_failing(a, now=now, person_ids=person_ids, triggered_at=triggered_at)
        for a in dependency_order(realtime)
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


def next_evaluation(audience: Audience, after: datetime) -> datetime:
    if audience.cadence == Audience.REALTIME:
        # a little under a minute, so that every once-a-minute tick finds it due
        return after + REALTIME_FULL_EVERY - timedelta(seconds=10)
    interval = interval_of(audience.cadence)
    if interval:
        return after + interval
    return croniter(audience.cadence, after).get_next(datetime)


def evaluate_due(*, now: datetime | None = None) -> list[Evaluation]:
    """The once-a-minute tick: every enabled audience whose time has come, dependencies first.
    Each audience is claimed with a conditional UPDATE, so overlapping ticks (several workers)
    never evaluate the same audience twice for the same slot."""
    done = []
    for audience in dependency_order(enabled_audiences()):
        moment = now or timezone.now()
        due_at = audience.next_evaluation_at
        if due_at is not None and due_at > moment:
            continue
        claimed = Audience.objects.filter(pk=audience.pk, next_evaluation_at=due_at) if due_at else Audience.objects.filter(
            pk=audience.pk, next_evaluation_at__isnull=True
        )
        if not claimed.update(next_evaluation_at=next_evaluation(audience, moment)):
            continue
        evaluation = evaluate_or_mark_failing(audience, now=now, refresh=True)
        if evaluation is not None:
            done.append(evaluation)
    return done
