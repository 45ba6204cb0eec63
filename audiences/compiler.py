"""Rules → one Django queryset over people (one SQL statement), the same on SQLite and PostgreSQL.

Every leaf compiles to a two-valued boolean (EXISTS, or CASE WHEN ... THEN TRUE ELSE FALSE),
so `not` never meets SQL's NULL and a missing attribute simply does not match. JSON values
are compared only after checking their JSON type, because SQLite and PostgreSQL order mixed
types differently. Event recency reads the per-person aggregates (`EventStat`); only counts in
a window and property filters read the event table, through its (person, name, time) index.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db.models import (
    BooleanField,
    Case,
    Count,
    DateTimeField,
    Exists,
    Expression,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KeyTransform, compile_json_path
from django.db.models.functions import Cast, Trunc

from . import rules as r
from .models import Audience, Event, EventStat, Membership, Person

SQLITE_TYPES = {"integer": "number", "real": "number", "text": "string", "true": "boolean", "false": "boolean"}


class _KeyExpression(Expression):
    """An expression over `column -> key` (a KeyTransform it resolves and compiles)."""

    def __init__(self, column: str, key: str, output_field):
        from django.db.models import F

        super().__init__(output_field=output_field)
        self.transform = KeyTransform(key, F(column))

    def resolve_expression(self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False):
        clone = self.copy()
        clone.transform = self.transform.resolve_expression(query, allow_joins, reuse, summarize, for_save)
        return clone

    def get_source_expressions(self):
        return [self.transform]

    def set_source_expressions(self, exprs):
        (self.transform,) = exprs


class KeyLookup(Expression):
    """`column -> key` compared by a JSON key lookup (exact, in, gt, ...), as the filter
    `column__key__lookup=value` compares it, but built from the key itself: spliced into a lookup
    path, a key is read as Django's own syntax (`attributes__in` is the `in` lookup on the whole
    column, `attributes__tier___gt` the key `tier`, then `_gt`), so attributes named `in`, `exact`,
    `contains` or `tier_` crashed the statement or compared the wrong thing."""

    conditional = True
    output_field = BooleanField()

    def __init__(self, column: str, key: str, lookup: str, value):
        super().__init__()
        self.column, self.key, self.lookup, self.value = column, key, lookup, value

    def resolve_expression(self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False):
        transform = KeyTransform(self.key, F(self.column)).resolve_expression(query, allow_joins, reuse, summarize, for_save)
        return transform.get_lookup(self.lookup)(transform, self.value)


def _key_q(column: str, key: str, lookup: str, value) -> Q:
    return Q(KeyLookup(column, key, lookup, value))


class JsonType(_KeyExpression):
    """The JSON type of `column -> key` as PostgreSQL names it: number, string, boolean, null,
    object, array; SQL NULL when the key is missing."""

    def __init__(self, column: str, key: str):
        from django.db.models import CharField

        super().__init__(column, key, CharField())

    def as_postgresql(self, compiler, connection):
        sql, params = compiler.compile(self.transform)
        return f"jsonb_typeof({sql})", params

    def as_sqlite(self, compiler, connection):
        lhs, params, keys = self.transform.preprocess_lhs(compiler, connection)
        cases = " ".join(f"WHEN '{raw}' THEN '{name}'" for raw, name in SQLITE_TYPES.items())
        raw = f"json_type({lhs}, %s)"
        return f"(CASE {raw} {cases} ELSE {raw} END)", (*params, compile_json_path(keys), *params, compile_json_path(keys))


class JsonTextContains(_KeyExpression):
    """`column -> key` is a string containing `needle`, or an array with `needle` as an element."""

    def __init__(self, column: str, key: str, needle: str):
        super().__init__(column, key, BooleanField())
        self.needle = needle

    def as_postgresql(self, compiler, connection):
        sql, params = compiler.compile(self.transform)
        return (
            f"(CASE jsonb_typeof({sql}) WHEN 'string' THEN strpos(({sql}) #>> '{{}}', %s) > 0 "
            f"WHEN 'array' THEN ({sql}) @> jsonb_build_array(%s::text) ELSE FALSE END)",
            (*params, *params, self.needle, *params, self.needle),
        )

    def as_sqlite(self, compiler, connection):
        lhs, params, keys = self.transform.preprocess_lhs(compiler, connection)
        path = compile_json_path(keys)
        return (
            f"(CASE json_type({lhs}, %s) WHEN 'text' THEN instr(json_extract({lhs}, %s), %s) > 0 "
            f"WHEN 'array' THEN EXISTS (SELECT 1 FROM json_each({lhs}, %s) AS j WHERE j.type = 'text' AND j.value = %s) "
            "ELSE 0 END)",
            (*params, path, *params, path, self.needle, *params, path, self.needle),
        )


def json_type_name(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def _two_valued(q: Q) -> Q:
    """CASE WHEN q THEN TRUE ELSE FALSE END: NULL (a missing key) becomes FALSE."""
    return Q(Case(When(q, then=Value(True)), default=Value(False), output_field=BooleanField()))


def _typed(column, key, kind):
    from django.db.models.lookups import Exact

    return Exact(JsonType(column, key), kind)


def _json_equal_q(column: str, key: str, value) -> Q:
    return Q(_typed(column, key, json_type_name(value))) & _key_q(column, key, "exact", value)


def compile_attribute(node: r.AttributeCondition, now: datetime) -> Q:
    column, key, value = "attributes", node.attribute, node.value
    op = node.operator
    if op == "exists":
        present = Q(_present(column, key))
        return present if value else ~present
    if op == "eq":
        return _two_valued(_json_equal_q(column, key, value))
    if op == "ne":
        return ~_two_valued(_json_equal_q(column, key, value))
    if op == "in":
        # one IN list per JSON type, not an OR per value: SQLite refuses an expression nested
        # 1,000 deep, and a list of 1,000 values would be one
        by_type: dict[str, list] = {}
        for item in value:
            by_type.setdefault(json_type_name(item), []).append(item)
        combined = Q()
        for kind, items in by_type.items():
            if kind == "boolean":  # SQLite reads JSON true as 1: compared the way eq compares it
                for item in dict.fromkeys(items):
                    combined |= _json_equal_q(column, key, item)
            else:
                combined |= Q(_typed(column, key, kind)) & _key_q(column, key, "in", items)
        return _two_valued(combined)
    if op in ("gt", "gte", "lt", "lte"):
        return _two_valued(Q(_typed(column, key, "number")) & _key_q(column, key, op, value))
    if op == "contains":
        return _two_valued(Q(JsonTextContains(column, key, value)))
    # dates are unix seconds: older_than 60d ⇔ value < now − 60d
    cutoff = (now - value.delta).timestamp()
    comparison = "lt" if op == "older_than" else "gte"
    return _two_valued(Q(_typed(column, key, "number")) & _key_q(column, key, comparison, cutoff))


def _present(column, key):
    from django.db.models.lookups import In

    return Case(
        When(Q(In(JsonType(column, key), ["number", "string", "boolean", "object", "array"])), then=Value(True)),
        default=Value(False),
        output_field=BooleanField(),
    )


def _event_properties(node: r.EventCondition) -> Q:
    q = Q()
    for key, value in node.where:
        q &= _json_equal_q("properties", key, value)
    return q


def _not_followed(node: r.EventCondition, time_column: str) -> Q:
    """No `not_followed_by` event at or after the start of the second of `time_column` of the
    matching row (the follower's last time, read from its aggregate). The same second counts as
    followed whatever the fractions: a purchase at :08.100 and a cart at :08.700 come from two
    clocks that are not that precise, and suppressing is the side to err on."""
    if not node.not_followed_by:
        return Q()
    matched_at = ExpressionWrapper(OuterRef(time_column), output_field=DateTimeField())
    second = Trunc(matched_at, "second", output_field=DateTimeField(), tzinfo=UTC)
    later = EventStat.objects.filter(person=OuterRef("person"), name=node.not_followed_by, last_at__gte=second)
    return ~Q(Exists(later))


def compile_event(node: r.EventCondition, now: datetime) -> Q:
    if not node.where and (node.min_count == 1 or node.within is None):
        stats = EventStat.objects.filter(person=OuterRef("pk"), name=node.name).filter(_not_followed(node, "last_at"))
        if node.within:
            stats = stats.filter(last_at__gte=now - node.within.delta)
        elif node.last_between:
            newer, older = node.last_between
            stats = stats.filter(last_at__gte=now - older.delta, last_at__lte=now - newer.delta)
        if node.min_count > 1:
            stats = stats.filter(count__gte=node.min_count)
        return Q(Exists(stats))

    events = Event.objects.filter(person=OuterRef("pk"), name=node.name).filter(_event_properties(node))
    if node.last_between:
        newer, older = node.last_between
        # one matching event in the window with no follower after it: then the last one (later
        # in the window, as none is newer) has none either
        in_window = events.filter(occurred_at__gte=now - older.delta, occurred_at__lte=now - newer.delta)
        in_window = in_window.filter(_not_followed(node, "occurred_at"))
        later = events.filter(occurred_at__gt=now - newer.delta)
        return Q(Exists(in_window)) & ~Q(Exists(later))
    if node.within:
        events = events.filter(occurred_at__gte=now - node.within.delta)
    events = events.filter(_not_followed(node, "occurred_at"))
    if node.min_count > 1:
        events = events.order_by().values("person").annotate(n=Count("pk")).filter(n__gte=node.min_count)
    return Q(Exists(events))


def event_anchor(node: r.EventCondition, now: datetime):
    """For a condition with a window, what window expiry reads (audiences/expiry.py): the time
    its answer hangs on, for one person (OuterRef "pk"), and the people it can be set for.

    The time is the last matching event not followed (`min_count` n: the n-th latest) that is
    no older than the window's far end, or NULL, read with the filters `compile_event` uses:
    `within` holds exactly while it is set, `last_between` while it is set and old enough.
    None for a condition without a window, whose answer only an event changes."""
    if node.within is None and node.last_between is None:
        return None
    oldest = now - (node.within.delta if node.within else node.last_between[1].delta)
    if not node.where and node.min_count == 1:
        stats = EventStat.objects.filter(person=OuterRef("pk"), name=node.name, last_at__gte=oldest)
        anchor = stats.filter(_not_followed(node, "last_at")).values("last_at")[:1]
        people = EventStat.objects.filter(name=node.name, last_at__gte=oldest).values("person_id")
    else:
        # last_between: the latest matching event if it has no follower (then neither has any
        # earlier one, so this is the in-window event compile_event looks for)
        events = Event.objects.filter(person=OuterRef("pk"), name=node.name, occurred_at__gte=oldest)
        events = events.filter(_event_properties(node)).filter(_not_followed(node, "occurred_at"))
        nth = node.min_count if node.within else 1
        anchor = events.order_by("-occurred_at").values("occurred_at")[nth - 1 : nth]
        people = Event.objects.filter(name=node.name, occurred_at__gte=oldest).values("person_id")
    return Subquery(anchor, output_field=DateTimeField()), people


def attribute_anchor(node: r.AttributeCondition, now: datetime):
    """For older_than / newer_than, what window expiry reads: the attribute's unix seconds while
    the date is no older than the duration (older_than does not hold yet, newer_than still
    does), else NULL; and the people it can be set for."""
    cutoff = (now - node.value.delta).timestamp()
    recent = Q(_typed("attributes", node.attribute, "number")) & _key_q("attributes", node.attribute, "gte", cutoff)
    seconds = Cast(KeyTransform(node.attribute, "attributes"), FloatField())
    anchor = Case(When(recent, then=seconds), default=Value(None), output_field=FloatField())
    return anchor, Person.objects.filter(recent).values("pk")


def compile_in_audience(node: r.InAudience) -> Q:
    return Q(Exists(Membership.objects.filter(person=OuterRef("pk"), audience__key=node.key, exited_at__isnull=True)))


def compile_node(node, now: datetime) -> Q:
    if isinstance(node, r.All):
        combined = Q()
        for child in node.children:
            combined &= compile_node(child, now)
        return combined
    if isinstance(node, r.Any):
        combined = Q()
        for child in node.children:
            combined |= compile_node(child, now)
        return combined
    if isinstance(node, r.Not):
        return ~compile_node(node.child, now)
    if isinstance(node, r.EventCondition):
        return compile_event(node, now)
    if isinstance(node, r.AttributeCondition):
        return compile_attribute(node, now)
    if isinstance(node, r.InAudience):
        return compile_in_audience(node)
    raise TypeError(f"not a rule node: {node!r}")


def compile_rule(rule, now: datetime) -> Q:
    """JSON rule (or parsed node) → a Q over Person."""
    node = r.parse_rule(rule) if isinstance(rule, dict) else rule
    return compile_node(node, now)


def not_member_of(audience_ids) -> Q:
    return ~Q(
        Exists(Membership.objects.filter(person=OuterRef("pk"), audience_id__in=list(audience_ids), exited_at__isnull=True))
    )


def higher_ranked_ids(audience: Audience) -> list[int]:
    if not audience.priority_group_id or audience.priority_rank is None:
        return []
    return list(
        Audience.objects.filter(
            priority_group_id=audience.priority_group_id, priority_rank__lt=audience.priority_rank, enabled=True
        ).values_list("pk", flat=True)
    )


def audience_condition(
    audience: Audience, now: datetime, *, base: Q | None = None, rule=None, exclusion_ids=None, higher_ids=None
) -> Q:
    """The audience's rule (or `base`, for member sources other than rules), minus its
    suppression audiences, minus higher-ranked audiences of its priority group. Exclusions and
    priority read current membership, which is why audiences are evaluated in dependency order."""
    q = base if base is not None else compile_rule(audience.rule if rule is None else rule, now)
    exclusions = list(audience.exclusions.values_list("pk", flat=True)) if exclusion_ids is None else exclusion_ids
    if exclusions:
        q &= not_member_of(exclusions)
    higher = higher_ranked_ids(audience) if higher_ids is None else higher_ids
    if higher:
        q &= not_member_of(higher)
    return q


def members_queryset(audience: Audience, now: datetime, **overrides):
    return Person.objects.filter(audience_condition(audience, now, **overrides))
