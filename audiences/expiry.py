"""Window expiry: when a realtime audience's answer for a person can next change with no new
event, so that the realtime tick evaluates only the people whose time has come.

A rule moves with the clock through its windows only: `within` holds until its event is that
old, `last_between` opens when the last event is old enough and closes when it is too old, and
`older_than` / `newer_than` turn when a date attribute crosses its age. Each of these leaves
reads one time per person that the engine keeps already (`compiler.event_anchor`,
`compiler.attribute_anchor`) and turns at that time plus its duration. A compound turns no
sooner than this: `all` that holds when its first child turns; `all` that fails when the last
of its failing children turns (one that never turns keeps it failing for good); `any` the other
way round; `not` with its child. The audiences an audience leaves out (its exclusions, the
higher ranks of its priority group) move with their own courses, which it follows: a cart that
ends moves its person from 0–2 h down to 2–24 h from the two rows, with no rule read. Nothing else
moves with the clock (attributes, counts, the members an `in_audience` rule reads): when one of
them changes, the person is evaluated again anyway (ingest queues them; a full evaluation that
changes an audience's members or courses marks those people due for the realtime audiences that
read it, `mark_due`; the tick evaluates a person in an audience's readers when it evaluated them
there).

Each leaf's answer at any later instant follows from the one time it reads (`_turning`), so an
evaluation writes not only when the answer can change but the answer's whole course with no new
event: the first instant it differs from today's (`due_at`), what it becomes then (`becomes`),
and the changes after that (`later`). The realtime tick applies that change as written, with
no rule to evaluate; anything that could make it wrong (an event, an attribute, another
audience's members, a new definition) evaluates the person again first, which rewrites it. A
row whose `becomes` is empty (`mark_due`) asks the tick to evaluate the person. People whose
answer never changes with the clock get no row.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models import BooleanField, Case, Exists, JSONField, Min, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import JSONObject

from . import rules as r
from .compiler import attribute_anchor, compile_node, event_anchor
from .models import Audience, Membership, Person, WindowExpiry

# Times are kept to the microsecond: a window that holds up to and including an instant has
# turned one microsecond later.
TICK = timedelta(microseconds=1)
WITHIN, BETWEEN, DATE = "within", "between", "date"
MEMBERS = "members"
# the rows' courses follow the windows and the courses of the audiences left out
COURSES = "windows, audiences left out"
BATCH = 1000
WRITE_BATCH = 10_000


def definition_digest(audience: Audience, *, exclusion_ids, higher_ids) -> str:
    """What an audience's members follow from besides the person store. A full evaluation of a
    realtime audience under the digest of its last one is a consistency check. `COURSES` names
    what the rows it wrote follow: rows written by a version that followed less are rewritten
    by a first evaluation, not trusted."""
    definition = [COURSES, audience.source_kind, audience.is_realtime, audience.rule, sorted(exclusion_ids), sorted(higher_ids)]
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def turns(node) -> bool:
    """Whether the clock alone can change the answer of this part of a rule."""
    if isinstance(node, (r.All, r.Any)):
        return any(turns(child) for child in node.children)
    if isinstance(node, r.Not):
        return turns(node.child)
    if isinstance(node, r.EventCondition):
        return node.within is not None or node.last_between is not None
    if isinstance(node, r.AttributeCondition):
        return node.operator in ("older_than", "newer_than")
    return False


class Plan:
    """An audience's condition at `now` as a tree of leaves (`fixed`: a column that holds or not;
    `turning`: a leaf that moves with the clock), the columns that read them for one person, and
    the people who can have a time at all."""

    def __init__(self, audience: Audience, now: datetime, others):
        """`others`: the audiences whose members it leaves out (exclusions, higher-ranked)."""
        self.now = now
        self.columns: dict[str, object] = {}
        self.people = []  # querysets of person ids
        self.followed = []  # the courses of `others` it follows, one part each
        node = r.parse_rule(audience.rule)
        rule = self.node(node) if turns(node) else None
        tree = rule
        if others:
            # the rule as it stands now, where it is read: no window of its, or one may hold outside them
            holds = compile_node(node, now) if rule is None or _may_hold(rule) else None
            tree = "all", (rule or self.fixed(holds), self.left_out(others))
            if holds is not None:
                # besides the windows' people, those whose course the others' can move: with a
                # row there, and the rule holding (outside the windows' people it stays as it is)
                rows = WindowExpiry.objects.filter(audience_id__in=list(others)).values("person_id")
                self.people.append(Person.objects.filter(holds, pk__in=rows).values("pk"))
        self.tree = tree

    def column(self, expression) -> str:
        name = f"expiry_{len(self.columns)}"
        self.columns[name] = expression
        return name

    def fixed(self, q: Q):
        return "fixed", self.column(Case(When(q, then=Value(True)), default=Value(False), output_field=BooleanField()))

    def left_out(self, others):
        """Not a member of any of `others`, now and as their courses go: each one's membership
        now and the row window expiry keeps for it (none for an audience that does not follow
        its windows, whose members stay as they are until it is evaluated again)."""
        for other in sorted(set(others)):
            member = Membership.objects.filter(audience_id=other, person_id=OuterRef("pk"), exited_at__isnull=True)
            # the row in one look-up, not one for each of its columns
            row = WindowExpiry.objects.filter(audience_id=other, person_id=OuterRef("pk")).values(
                course=JSONObject(due="due_at", becomes="becomes", later="later")
            )
            self.followed.append((self.column(Exists(member)), self.column(Subquery(row[:1], output_field=JSONField()))))
        return MEMBERS, tuple(self.followed)

    def node(self, node):
        if not turns(node):
            return self.fixed(compile_node(node, self.now))
        if isinstance(node, (r.All, r.Any)):
            return ("all" if isinstance(node, r.All) else "any"), tuple(self.node(child) for child in node.children)
        if isinstance(node, r.Not):
            return "not", self.node(node.child)
        if isinstance(node, r.EventCondition):
            anchor, people = event_anchor(node, self.now)
            self.people.append(people)
            if node.within:
                return "turning", (WITHIN, self.column(anchor), node.within.delta, None)
            newer, older = node.last_between
            return "turning", (BETWEEN, self.column(anchor), newer.delta, older.delta)
        anchor, people = attribute_anchor(node, self.now)
        self.people.append(people)
        holds = self.fixed(compile_node(node, self.now))[1]
        return "turning", (DATE, self.column(anchor), node.value.delta, (holds, node.operator == "older_than"))

    def course(self, row: dict) -> tuple[bool, list[tuple[datetime, bool]]]:
        """This person's answer at `now`, and the instants after it at which it changes with no
        new event and what it becomes at each: the candidates `settle` gives, one after the
        other, kept where the answer differs from the one before.

        A course of an audience it leaves out whose time has come already (the tick has yet to
        apply it) or that asks for an evaluation makes this one a row that asks for one too, at
        once: the tick evaluates the person here after it has changed them there."""
        waiting = False
        for part in self.followed:
            found = row[part[1]]
            if found is None:
                row[part] = ()
                continue
            at, becomes, later = _instant(found["due"]), found["becomes"], found["later"]
            becomes = None if becomes is None else bool(becomes)
            waiting = waiting or becomes is None or at <= self.now
            row[part] = ((at, becomes), *course_of(json.loads(later) if isinstance(later, str) else later))
        if waiting:
            for part in self.followed:
                row[part] = ()
            return settle(self.tree, row, self.now)[0], [(self.now, None)]
        holds, at = settle(self.tree, row, self.now)
        answer, found = holds, []
        while at is not None:  # every candidate is later than the one before; each leaf has two at most
            then, following = settle(self.tree, row, at)
            if then != holds:
                found.append((at, then))
                holds = then
            at = following
        return answer, found


def _may_hold(node, holds: bool = True) -> bool:
    """Whether this part of a plan can hold (`holds`; else fail) for a person outside the
    windows' people, for whom each event window stays shut: what else it reads may be anything."""
    kind, part = node
    if kind == "turning":
        return not holds if part[0] in (WITHIN, BETWEEN) else True
    if kind == "not":
        return _may_hold(part, not holds)
    if kind in ("all", "any"):
        every = (kind == "all") == holds  # all must hold / any must fail: every child has to
        return (all if every else any)(_may_hold(child, holds) for child in part)
    return True


def settle(node, row: dict, at: datetime) -> tuple[bool, datetime | None]:
    """(whether this part holds at `at`, the earliest instant after it when it can turn, or None
    for never), from the row the plan read at its `now` (no later than `at`)."""
    kind, part = node
    if kind == "fixed":
        return row[part], None
    if kind == "turning":
        return _turning(part, row, at)
    if kind == MEMBERS:
        return _left_out(part, row, at)
    if kind == "not":
        holds, turn = settle(part, row, at)
        return not holds, turn
    results = [settle(child, row, at) for child in part]
    if kind == "all":
        holds = all(h for h, _ in results)
        deciding = [turn for h, turn in results if not h]  # each of them keeps it failing
    else:
        holds = any(h for h, _ in results)
        deciding = [turn for h, turn in results if h]  # each of them keeps it holding
    if not deciding:  # every child agrees: the first to turn turns it
        return holds, min((turn for _, turn in results if turn is not None), default=None)
    return holds, None if None in deciding else max(deciding)


def _turning(leaf, row: dict, at: datetime) -> tuple[bool, datetime | None]:
    """A leaf's answer at `at` and its next turn after it, from the time it read at `now`: the
    same comparisons `compiler.compile_event` / `compile_attribute` make, at `at`."""
    kind, column, duration, extra = leaf
    anchor = row[column]
    if kind == WITHIN:  # the anchor is set while inside the window; it holds until it is too old
        if anchor is None:
            return False, None
        ends = anchor + duration + TICK
        return (True, ends) if at < ends else (False, None)
    if kind == BETWEEN:  # the last event: old enough from `opens`, too old from `closes`
        if anchor is None:
            return False, None
        opens, closes = anchor + duration, anchor + extra + TICK
        if at < opens:
            return False, opens
        return (True, closes) if at < closes else (False, None)
    holds, older = extra
    if anchor is None:  # the date is old already, or no date: nothing moves
        return row[holds], None
    turn = _date_turn(anchor, duration, older)
    if turn is None:
        return row[holds], None
    return _date_holds(anchor, duration, older, at), turn if at < turn else None


def _left_out(parts, row: dict, at: datetime) -> tuple[bool, datetime | None]:
    """In none of the audiences these parts read at `at` (each one's membership now, changed by
    each step of its course up to `at`), and the next step of any after it."""
    inside, turn = False, None
    for part in parts:
        member = row[part[0]]
        for then, becomes in row[part]:
            if then > at:
                turn = then if turn is None else min(turn, then)
                break
            member = becomes
        inside = inside or member
    return not inside, turn


def _date_holds(seconds: float, duration: timedelta, older: bool, at: datetime) -> bool:
    """older_than ⇔ the date is before `at` − duration; newer_than ⇔ it is not."""
    cutoff = (at - duration).timestamp()
    return seconds < cutoff if older else seconds >= cutoff


def _date_turn(seconds: float, duration: timedelta, older: bool) -> datetime | None:
    """The first microsecond at which a date no older than `duration` (older_than failing,
    newer_than holding) has crossed it, by the comparison `_date_holds` makes; None for a date no
    datetime can hold."""
    try:
        turn = datetime.fromtimestamp(seconds, UTC) + duration + TICK
    except (OverflowError, OSError, ValueError):
        return None
    before = not older  # the answer while the date is recent
    for _ in range(8):  # the float's rounding: a step or two either way
        if _date_holds(seconds, duration, older, turn) == before:
            turn += TICK
        elif _date_holds(seconds, duration, older, turn - TICK) != before:
            turn -= TICK
        else:
            return turn
    return turn


def refresh(audience: Audience, now: datetime, person_ids=None, *, others, courses=None) -> set[int]:
    """Write the course of each of these people's answer (everyone when None) in this realtime
    audience, which leaves out the members of `others`, in the evaluation's transaction, after
    its changes (`courses` when `answers` read them already); returns the people whose course
    changed (audiences that leave this one's members out follow it). A row
    that stays (the anchors did not move) is left as it is: rewriting every row at every
    evaluation would leave a dead row behind each, which the due-time index then wades through
    until the table is vacuumed."""
    if courses is None:
        plan = Plan(audience, now, others)
        courses = {} if plan.tree is None else {pk: c for pk, _, c in _read(plan, person_ids) if c}
    kept = WindowExpiry.objects.filter(audience=audience)
    if person_ids is not None:
        kept = kept.filter(person_id__in=person_ids)
    stale, changed = [], set()
    for row_id, person_id, *row in kept.values_list("pk", "person_id", "due_at", "becomes", "later").iterator(chunk_size=5000):
        if person_id in courses and row_of(courses[person_id]) == tuple(row):
            del courses[person_id]
        else:
            stale.append(row_id)
            changed.add(person_id)
    for start in range(0, len(stale), BATCH):
        WindowExpiry.objects.filter(pk__in=stale[start : start + BATCH]).delete()
    write_courses(audience.pk, courses)
    return changed | courses.keys()


def _instant(text: str) -> datetime:
    """A due time as a JSON object gives it: ISO with its offset (PostgreSQL), or in UTC
    without one (SQLite)."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def row_of(course: list[tuple[datetime, bool]]) -> tuple[datetime, bool, list | None]:
    """(due_at, becomes, later) of a course of changes."""
    (at, becomes), *rest = course
    return at, becomes, [[then.astimezone(UTC).isoformat(), holds] for then, holds in rest] or None


def course_of(later) -> list[tuple[datetime, bool]]:
    """The changes `later` holds, back as instants."""
    return [(datetime.fromisoformat(then), holds) for then, holds in later or ()]


def write_courses(audience_id: int, courses: dict[int, list[tuple[datetime, bool]]]) -> None:
    """One row per person: on PostgreSQL one statement of five arrays for up to `WRITE_BATCH`
    rows (a tick writes back thousands, and a model instance and five parameters for each cost
    more in Python, and in planning, than the insert itself); SQLite takes them row by row in
    one executemany."""
    if not courses:
        return
    table = connection.ops.quote_name(WindowExpiry._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    rows = []
    for person_id, course in courses.items():
        at, becomes, later = row_of(course)
        rows.append((audience_id, person_id, adapt(at), becomes, None if later is None else json.dumps(later)))
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.executemany(
                f"INSERT INTO {table} (audience_id, person_id, due_at, becomes, later) VALUES (%s, %s, %s, %s, %s)", rows
            )
            return
        for start in range(0, len(rows), WRITE_BATCH):
            part = rows[start : start + WRITE_BATCH]
            cursor.execute(
                f"INSERT INTO {table} (audience_id, person_id, due_at, becomes, later) SELECT %s, * FROM "
                "unnest(%s::bigint[], %s::timestamptz[], %s::boolean[], %s::text[]::jsonb[])",
                [audience_id, *([row[n] for row in part] for n in range(1, 5))],
            )


def answers(plan: Plan, person_ids) -> tuple[set[int], dict[int, list[tuple[datetime, bool]]]]:
    """For a batch of people, in one read of the plan's columns (a plan with a tree): who is in
    the audience now, and each one's course."""
    wanted, courses = set(), {}
    for pk, holds, course in _read(plan, person_ids):
        if holds:
            wanted.add(pk)
        if course:
            courses[pk] = course
    return wanted, courses


def _read(plan: Plan, person_ids):
    if person_ids is None:  # everyone: those a turning condition can concern, streamed
        first, *others = plan.people
        people = Person.objects.filter(pk__in=first.union(*others) if others else first)
    else:  # a batch as it is: a filter on who can be concerned would read the windows' people
        people = Person.objects.filter(pk__in=person_ids)
    names = list(plan.columns)
    values = people.annotate(**plan.columns).values_list("pk", *names)
    for pk, *row in values.iterator(chunk_size=5000) if person_ids is None else values:
        yield pk, *plan.course(dict(zip(names, row, strict=True)))


def mark_due(audience_ids, person_ids, now: datetime) -> None:
    """These people are to be evaluated in these audiences now (an audience they read changed
    outside a realtime pass): whatever course was written for them may be wrong."""
    rows = [WindowExpiry(audience_id=a, person_id=p, due_at=now) for a in audience_ids for p in person_ids]
    WindowExpiry.objects.bulk_create(
        rows,
        batch_size=BATCH,
        update_conflicts=True,
        unique_fields=["audience", "person"],
        update_fields=["due_at", "becomes", "later"],
    )


def next_due_at() -> datetime | None:
    """The earliest time to come (or gone by), read off the end of the due-time index."""
    return WindowExpiry.objects.aggregate(at=Min("due_at"))["at"]
