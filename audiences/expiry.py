"""Window expiry: when a realtime audience's answer for a person can next change with no new
event, so that the realtime tick evaluates only the people whose time has come.

A rule moves with the clock through its windows only: `within` holds until its event is that
old, `last_between` opens when the last event is old enough and closes when it is too old, and
`older_than` / `newer_than` turn when a date attribute crosses its age. Each of these leaves
reads one time per person that the engine keeps already (`compiler.event_anchor`,
`compiler.attribute_anchor`) and turns at that time plus its duration. A compound turns no
sooner than this: `all` that holds when its first child turns; `all` that fails when the last
of its failing children turns (one that never turns keeps it failing for good); `any` the other
way round; `not` with its child. Nothing else moves with the clock (attributes, counts, other
audiences' members, exclusions, priority): when one of them changes, the person is evaluated
again anyway (ingest queues them; a full evaluation that changes an audience marks the people
it changed due for the realtime audiences that read it, `mark_due`).

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

from django.db.models import BooleanField, Case, Min, Q, Value, When

from . import rules as r
from .compiler import attribute_anchor, compile_node, event_anchor, not_member_of
from .models import Audience, Person, WindowExpiry

# Times are kept to the microsecond: a window that holds up to and including an instant has
# turned one microsecond later.
TICK = timedelta(microseconds=1)
WITHIN, BETWEEN, DATE = "within", "between", "date"
BATCH = 1000


def definition_digest(audience: Audience, *, exclusion_ids, higher_ids) -> str:
    """What an audience's members follow from besides the person store. A full evaluation of a
    realtime audience under the digest of its last one is a consistency check."""
    definition = [audience.source_kind, audience.is_realtime, audience.rule, sorted(exclusion_ids), sorted(higher_ids)]
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
        node = r.parse_rule(audience.rule)
        self.tree = self.node(node) if turns(node) else None
        if self.tree and others:
            self.tree = ("all", (self.tree, self.fixed(not_member_of(others))))

    def column(self, expression) -> str:
        name = f"expiry_{len(self.columns)}"
        self.columns[name] = expression
        return name

    def fixed(self, q: Q):
        return "fixed", self.column(Case(When(q, then=Value(True)), default=Value(False), output_field=BooleanField()))

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
        other, kept where the answer differs from the one before."""
        holds, at = settle(self.tree, row, self.now)
        answer, found = holds, []
        while at is not None:  # every candidate is later than the one before; each leaf has two at most
            then, following = settle(self.tree, row, at)
            if then != holds:
                found.append((at, then))
                holds = then
            at = following
        return answer, found


def settle(node, row: dict, at: datetime) -> tuple[bool, datetime | None]:
    """(whether this part holds at `at`, the earliest instant after it when it can turn, or None
    for never), from the row the plan read at its `now` (no later than `at`)."""
    kind, part = node
    if kind == "fixed":
        return row[part], None
    if kind == "turning":
        return _turning(part, row, at)
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


def refresh(audience: Audience, now: datetime, person_ids=None, *, others, courses=None) -> int:
    """Write the course of each of these people's answer (everyone when None) in this realtime
    audience, which leaves out the members of `others`, in the evaluation's transaction, after
    its changes (`courses` when `answers` read them already); returns the rows written. A row
    that stays (the anchors did not move) is left as it is: rewriting every row at every
    evaluation would leave a dead row behind each, which the due-time index then wades through
    until the table is vacuumed."""
    if courses is None:
        plan = Plan(audience, now, others)
        courses = {} if plan.tree is None else {pk: c for pk, _, c in _read(plan, person_ids) if c}
    kept = WindowExpiry.objects.filter(audience=audience)
    if person_ids is not None:
        kept = kept.filter(person_id__in=person_ids)
    stale = []
    for row_id, person_id, *row in kept.values_list("pk", "person_id", "due_at", "becomes", "later").iterator(chunk_size=5000):
        if person_id in courses and row_of(courses[person_id]) == tuple(row):
            del courses[person_id]
        else:
            stale.append(row_id)
    for start in range(0, len(stale), BATCH):
        WindowExpiry.objects.filter(pk__in=stale[start : start + BATCH]).delete()
    write_courses(audience.pk, courses)
    return len(courses)


def row_of(course: list[tuple[datetime, bool]]) -> tuple[datetime, bool, list | None]:
    """(due_at, becomes, later) of a course of changes."""
    (at, becomes), *rest = course
    return at, becomes, [[then.astimezone(UTC).isoformat(), holds] for then, holds in rest] or None


def course_of(later) -> list[tuple[datetime, bool]]:
    """The changes `later` holds, back as instants."""
    return [(datetime.fromisoformat(then), holds) for then, holds in later or ()]


def write_courses(audience_id: int, courses: dict[int, list[tuple[datetime, bool]]]) -> None:
    rows = []
    for person_id, course in courses.items():
        at, becomes, later = row_of(course)
        rows.append(WindowExpiry(audience_id=audience_id, person_id=person_id, due_at=at, becomes=becomes, later=later))
    WindowExpiry.objects.bulk_create(rows, batch_size=BATCH)


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
