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

So the time written is never later than the change: at it the person is evaluated again and
the next time is written. People for whom nothing can turn get no row.
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
        return "turning", (DATE, self.column(anchor), node.value.delta, holds)

    def due(self, row: dict) -> datetime | None:
        return settle(self.tree, row, self.now)[1]


def settle(node, row: dict, now: datetime) -> tuple[bool, datetime | None]:
    """(whether this part holds at `now`, the earliest time it can turn or None for never)."""
    kind, part = node
    if kind == "fixed":
        return row[part], None
    if kind == "turning":
        return _turning(part, row, now)
    if kind == "not":
        holds, at = settle(part, row, now)
        return not holds, at
    results = [settle(child, row, now) for child in part]
    if kind == "all":
        holds = all(h for h, _ in results)
        deciding = [at for h, at in results if not h]  # each of them keeps it failing
    else:
        holds = any(h for h, _ in results)
        deciding = [at for h, at in results if h]  # each of them keeps it holding
    if not deciding:  # every child agrees: the first to turn turns it
        return holds, min((at for _, at in results if at is not None), default=None)
    return holds, None if None in deciding else max(deciding)


def _turning(leaf, row: dict, now: datetime) -> tuple[bool, datetime | None]:
    kind, column, duration, extra = leaf
    anchor = row[column]
    if kind == WITHIN:  # the anchor is set exactly while it is inside the window
        return anchor is not None, None if anchor is None else anchor + duration + TICK
    if kind == BETWEEN:
        if anchor is None:
            return False, None
        if anchor > now - duration:  # not old enough yet
            return False, anchor + duration
        return True, anchor + extra + TICK
    holds = row[extra]
    if anchor is None:
        return holds, None
    try:
        return holds, datetime.fromtimestamp(anchor, UTC) + duration + TICK
    except (OverflowError, OSError, ValueError):  # a date no datetime can hold never comes
        return holds, None


def refresh(audience: Audience, now: datetime, person_ids=None, *, others) -> int:
    """Write when each of these people (everyone when None) can next change answer in this
    realtime audience, which leaves out the members of `others`, in the evaluation's
    transaction, after its changes; returns the times written. A time that stays (the anchors did not move) is left as it is: rewriting every row
    at every evaluation would leave a dead row behind each, which the due-time index then wades
    through until the table is vacuumed."""
    due = _due_times(Plan(audience, now, others), person_ids)
    kept = WindowExpiry.objects.filter(audience=audience)
    if person_ids is not None:
        kept = kept.filter(person_id__in=person_ids)
    stale = []
    for row_id, person_id, at in kept.values_list("pk", "person_id", "due_at").iterator(chunk_size=5000):
        if due.get(person_id) == at:
            del due[person_id]
        else:
            stale.append(row_id)
    for start in range(0, len(stale), BATCH):
        WindowExpiry.objects.filter(pk__in=stale[start : start + BATCH]).delete()
    WindowExpiry.objects.bulk_create(
        [WindowExpiry(audience_id=audience.pk, person_id=pid, due_at=at) for pid, at in due.items()], batch_size=BATCH
    )
    return len(due)


def _due_times(plan: Plan, person_ids) -> dict[int, datetime]:
    if plan.tree is None:
        return {}
    if person_ids is None:  # everyone: those a turning condition can concern, streamed
        first, *others = plan.people
        people = Person.objects.filter(pk__in=first.union(*others) if others else first)
    else:  # a batch as it is: a filter on who can be concerned would read the windows' people
        people = Person.objects.filter(pk__in=person_ids)
    names = list(plan.columns)
    values = people.annotate(**plan.columns).values_list("pk", *names)
    due = {}
    for pk, *row in values.iterator(chunk_size=5000) if person_ids is None else values:
        at = plan.due(dict(zip(names, row, strict=True)))
        if at is not None:
            due[pk] = at
    return due


def mark_due(audience_ids, person_ids, now: datetime) -> None:
    """These people's time has come in these audiences (an audience they read changed outside a
    realtime pass)."""
    rows = [WindowExpiry(audience_id=a, person_id=p, due_at=now) for a in audience_ids for p in person_ids]
    WindowExpiry.objects.bulk_create(
        rows, batch_size=BATCH, update_conflicts=True, unique_fields=["audience", "person"], update_fields=["due_at"]
    )


def next_due_at() -> datetime | None:
    """The earliest time to come (or gone by), read off the end of the due-time index."""
    return WindowExpiry.objects.aggregate(at=Min("due_at"))["at"]
