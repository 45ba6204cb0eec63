"""The rule language: JSON in the database, YAML in config files.

    all: [...] / any: [...] / not: {...}
    {event: "Added to Cart", within: "2h"}
    {event: "Order Completed", within: "30d", min_count: 3}
    {event: "Order Completed", last_between: ["60d", "90d"]}     # the most recent one is 60–90 days old
    {event: "Product Viewed", within: "7d", where: {category: "serum"}}
    {attribute: vip_tier, eq: gold}        # eq ne gt gte lt lte in exists contains
    {attribute: last_order_date, older_than: "60d"}   # unix seconds, as Customer.io stores dates
    {in_audience: other_key}

`parse_rule` turns the JSON into a tree of small dataclasses or raises `RuleError` listing
every problem with its path (`all[1].not.within: "2x" is not a duration such as 15m, 2h, 7d, 4w`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import timedelta

DURATION = re.compile(r"^([1-9]\d{0,5})([mhdw])\Z")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
UNIT_WORDS = {"m": "minute", "h": "hour", "d": "day", "w": "week"}
KEY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}\Z")
NAME_CHARACTERS = "letters, digits, _ and -"
AUDIENCE_KEY = re.compile(r"^[-a-zA-Z0-9_]{1,64}\Z")
# Bounds, so that every rule that saves compiles to a statement both databases run quickly:
# SQLite refuses expressions nested 1,000 deep and integers beyond 64 bits; PostgreSQL's
# planning time grows steeply with the number of EXISTS in one statement.
MAX_DEPTH = 12
MAX_CONDITIONS = 50  # every all/any/not and every leaf
MAX_LIST = 1000  # values in one `in`
MAX_VALUES = 2000  # values in all the rule's lists together
MAX_TEXT = 1000  # characters in one text value
MAX_WHERE = 20  # properties in one `where`
MAX_PROBLEMS = 20  # reported of one rule; the rest are counted
MIN_NUMBER, MAX_NUMBER = -(2**63), 2**63 - 1  # SQLite's INTEGER; floats are held to the same range

ATTRIBUTE_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "exists", "contains", "older_than", "newer_than")
EVENT_KEYS = ("event", "within", "last_between", "min_count", "where", "not_followed_by")
NODE_KEYS = ("all", "any", "not", "event", "attribute", "in_audience")


class RuleError(ValueError):
    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))


@dataclass(frozen=True)
class Duration:
    text: str

    @property
    def delta(self) -> timedelta:
        amount, unit = DURATION.match(self.text).groups()
        return timedelta(**{UNITS[unit]: int(amount)})

    def words(self) -> str:
        amount, unit = DURATION.match(self.text).groups()
        return f"{amount} {UNIT_WORDS[unit]}{'' if amount == '1' else 's'}"


@dataclass(frozen=True)
class All:
    children: tuple


@dataclass(frozen=True)
class Any:
    children: tuple


@dataclass(frozen=True)
class Not:
    child: object


@dataclass(frozen=True)
class EventCondition:
    name: str
    within: Duration | None = None
    last_between: tuple[Duration, Duration] | None = None
    min_count: int = 1
    where: tuple = field(default_factory=tuple)  # ((property, value), ...)
    # "and not Order Completed since": no such event at or after the last matching one
    not_followed_by: str | None = None


@dataclass(frozen=True)
class AttributeCondition:
    attribute: str
    operator: str
    value: object


@dataclass(frozen=True)
class InAudience:
    key: str


def is_duration(text) -> bool:
    return isinstance(text, str) and bool(DURATION.match(text))


def duration_message(value) -> str:
    return f"{_show(value)} is not a duration such as 15m, 2h, 7d, 4w"


def parse_duration(text: str) -> timedelta:
    if not is_duration(text):
        raise ValueError(duration_message(text))
    return Duration(text).delta


def _show(value) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _is_scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and value != value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def value_problem(value) -> str | None:
    """Why a text or number cannot go into a rule (too long, out of range, not finite), or None."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"is {len(value):,} characters long; a text value takes at most {MAX_TEXT:,}"
    if isinstance(value, str) and "\x00" in value:
        return "holds a NUL character (\\0), which PostgreSQL cannot keep in JSON; remove it"
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{_show(value)} is not a finite number"
        if not MIN_NUMBER <= value <= MAX_NUMBER:
            return f"{_show(value)} is out of range: numbers go from {MIN_NUMBER:,} to {MAX_NUMBER:,}"
    return None


def name_problem(name, noun: str, *, quoted: bool = False) -> str | None:
    """Why `name` cannot be an attribute or event property name in a rule, or None. Every name of
    the pattern compiles (audiences.compiler builds each key lookup from the name itself, so `in`,
    `exact` or `tier__x` are keys like any other); a name starting with a digit would be read as a
    position in a list by both databases' JSON paths, a quote breaks SQLite's, and the pattern is
    the one identifier policies and sync fields name attributes by."""
    if isinstance(name, str) and KEY_NAME.match(name):
        return None
    long = isinstance(name, str) and len(name) > 64
    subject = f"{_show(name)} " if quoted and not long else ""
    if not isinstance(name, str) or not name:
        return f"{subject}is not {noun} ({NAME_CHARACTERS})"
    if long:
        return f"is not {noun}: it is {len(name):,} characters long, and a name takes at most 64"
    if odd := next((c for c in name if not c.isascii()), None):
        return f"{subject}is not {noun} ({NAME_CHARACTERS}): {odd!r} is not an ASCII letter"
    if re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        return f"{subject}is not {noun} ({NAME_CHARACTERS}): it must start with a letter or _"
    return f"{subject}is not {noun} ({NAME_CHARACTERS})"


class _Parser:
    def __init__(self):
        self.problems: list[tuple[str, str]] = []
        self.conditions = 0
        self.values = 0

    def fail(self, path: str, message: str):
        self.problems.append((path, message))

    def bounded(self, value, path: str) -> bool:
        problem = value_problem(value)
        if problem:
            self.fail(path, problem)
        return problem is None

    def node(self, data, path: str, depth: int = 0):
        self.conditions += 1
        if depth > MAX_DEPTH:
            self.fail(path, f"is nested more than {MAX_DEPTH} levels deep")
            return None
        if not isinstance(data, dict):
            self.fail(path, f"a condition must be a mapping, not {_show(data)}")
            return None
        kinds = [k for k in NODE_KEYS if k in data]
        if len(kinds) != 1:
            found = f"found {', '.join(kinds)}" if kinds else f"found {', '.join(map(str, data)) or 'nothing'}"
            self.fail(path, f"a condition needs exactly one of {', '.join(NODE_KEYS)} ({found})")
            return None
        kind = kinds[0]
        if kind in ("all", "any"):
            return self.group(kind, data, path, depth)
        if kind == "not":
            self.no_extra_keys(data, ("not",), path)
            child = self.node(data["not"], _join(path, "not"), depth + 1)
            return Not(child) if child is not None else None
        if kind == "event":
            return self.event(data, path)
        if kind == "attribute":
            return self.attribute(data, path)
        self.no_extra_keys(data, ("in_audience",), path)
        key = data["in_audience"]
        if not isinstance(key, str) or not AUDIENCE_KEY.match(key):
            self.fail(_join(path, "in_audience"), f"{_show(key)} is not an audience key")
            return None
        return InAudience(key)

    def group(self, kind, data, path, depth):
        self.no_extra_keys(data, (kind,), path)
        items = data[kind]
        here = _join(path, kind)
        if not isinstance(items, list) or not items:
            self.fail(here, "must be a non-empty list of conditions")
            return None
        children = [self.node(item, f"{here}[{i}]", depth + 1) for i, item in enumerate(items)]
        if any(c is None for c in children):
            return None
        return (All if kind == "all" else Any)(tuple(children))

    def no_extra_keys(self, data, allowed, path):
        for key in data:
            if key not in allowed:
                self.fail(_join(path, str(key)), f"unknown key; expected {', '.join(allowed)}")

    def duration(self, value, path):
        if not is_duration(value):
            self.fail(path, duration_message(value))
            return None
        return Duration(value)

    def event(self, data, path):
        self.no_extra_keys(data, EVENT_KEYS, path)
        name = data["event"]
        ok = True
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            self.fail(_join(path, "event"), f"{_show(name)} is not an event name")
            ok = False
        within = last_between = None
        if "within" in data:
            within = self.duration(data["within"], _join(path, "within"))
            ok &= within is not None
        if "last_between" in data:
            here = _join(path, "last_between")
            pair = data["last_between"]
            if not (isinstance(pair, list) and len(pair) == 2):
                self.fail(here, 'must be two durations, newer first, such as ["60d", "90d"]')
                ok = False
            else:
                newer, older = self.duration(pair[0], f"{here}[0]"), self.duration(pair[1], f"{here}[1]")
                if newer and older and newer.delta >= older.delta:
                    self.fail(here, f"{pair[0]} must be shorter than {pair[1]} (newer age first)")
                    ok = False
                elif newer and older:
                    last_between = (newer, older)
                else:
                    ok = False
            if "within" in data:
                self.fail(here, "use either within or last_between, not both")
                ok = False
        min_count = data.get("min_count", 1)
        if not isinstance(min_count, int) or isinstance(min_count, bool) or not 1 <= min_count <= 1_000_000:
            self.fail(_join(path, "min_count"), f"{_show(min_count)} is not a whole number of at least 1")
            ok = False
        elif min_count > 1 and "last_between" in data:
            self.fail(_join(path, "min_count"), "cannot be combined with last_between; use within")
            ok = False
        where = ()
        if "where" in data:
            where = self.where(data["where"], _join(path, "where"))
            ok &= where is not None
        not_followed_by = None
        if "not_followed_by" in data:
            here, follower = _join(path, "not_followed_by"), data["not_followed_by"]
            if not isinstance(follower, str) or not follower.strip() or len(follower) > 255:
                self.fail(here, f"{_show(follower)} is not an event name")
                ok = False
            elif isinstance(name, str) and follower.strip() == name.strip():
                self.fail(here, f"must name another event than {name.strip()!r} (such as Order Completed)")
                ok = False
            elif isinstance(min_count, int) and min_count > 1:
                self.fail(here, "cannot be combined with min_count: it reads the last matching event only")
                ok = False
            else:
                not_followed_by = follower.strip()
        if not ok:
            return None
        return EventCondition(
            name=name.strip(),
            within=within,
            last_between=last_between,
            min_count=min_count,
            where=where,
            not_followed_by=not_followed_by,
        )

    def where(self, value, path):
        if not isinstance(value, dict) or not value:
            self.fail(path, "must be a mapping of event properties to values, such as {category: serum}")
            return None
        if len(value) > MAX_WHERE:
            self.fail(path, f"names {len(value):,} properties; a where takes at most {MAX_WHERE}")
            return None
        pairs = []
        for key, expected in value.items():
            if problem := name_problem(key, "a property name"):
                self.fail(f"{path}.{key}", problem)
                return None
            if not _is_scalar(expected):
                self.fail(f"{path}.{key}", f"{_show(expected)} must be a single text, number or true/false value")
                return None
            if not self.bounded(expected, f"{path}.{key}"):
                return None
            pairs.append((key, expected))
        return tuple(sorted(pairs, key=lambda p: p[0]))

    def attribute(self, data, path):
        name = data["attribute"]
        operators = [k for k in data if k != "attribute"]
        if problem := name_problem(name, "an attribute name", quoted=True):
            self.fail(_join(path, "attribute"), problem)
            return None
        if len(operators) != 1 or operators[0] not in ATTRIBUTE_OPERATORS:
            self.fail(path, f"an attribute condition needs exactly one of {', '.join(ATTRIBUTE_OPERATORS)}")
            return None
        operator = operators[0]
        value = data[operator]
        here = _join(path, operator)
        if operator in ("eq", "ne") and not _is_scalar(value):
            self.fail(here, f"{_show(value)} must be a single text, number or true/false value")
        elif operator in ("gt", "gte", "lt", "lte") and not _is_number(value):
            self.fail(here, f"{_show(value)} must be a number (use older_than/newer_than for dates)")
        elif operator == "in" and not (isinstance(value, list) and value and all(_is_scalar(v) for v in value)):
            self.fail(here, "must be a non-empty list of text, number or true/false values")
        elif operator == "exists" and not isinstance(value, bool):
            self.fail(here, "must be true or false")
        elif operator == "contains" and not (isinstance(value, str) and value):
            self.fail(here, "must be a non-empty text")
        elif operator == "in" and len(value) > MAX_LIST:
            self.fail(here, f"has {len(value):,} values; a list takes at most {MAX_LIST:,}")
        elif operator == "in":
            self.values += len(value)
            ok = [self.bounded(v, f"{here}[{i}]") for i, v in enumerate(value)]
            return AttributeCondition(name, operator, tuple(value)) if all(ok) else None
        elif operator in ("older_than", "newer_than"):
            duration = self.duration(value, here)
            return AttributeCondition(name, operator, duration) if duration else None
        elif self.bounded(value, here):
            return AttributeCondition(name, operator, value)
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_rule(data) -> object:
    parser = _Parser()
    node = parser.node(data, "")
    if parser.conditions > MAX_CONDITIONS:
        parser.fail(
            "",
            f"the rule has {parser.conditions:,} conditions (counting all, any and not); at most "
            f"{MAX_CONDITIONS} (put a part of it in an audience of its own and use in_audience)",
        )
    if parser.values > MAX_VALUES:
        parser.fail("", f"the rule lists {parser.values:,} values in all; at most {MAX_VALUES:,}")
    if len(parser.problems) > MAX_PROBLEMS:
        more = len(parser.problems) - MAX_PROBLEMS
        parser.problems[MAX_PROBLEMS:] = [("", f"and {more:,} more problem{'s' if more > 1 else ''}")]
    if parser.problems:
        raise RuleError(parser.problems)
    return node


def referenced_audiences(node) -> set[str]:
    if isinstance(node, (All, Any)):
        return set().union(*(referenced_audiences(c) for c in node.children))
    if isinstance(node, Not):
        return referenced_audiences(node.child)
    if isinstance(node, InAudience):
        return {node.key}
    return set()


def event_names(node) -> set[str]:
    if isinstance(node, (All, Any)):
        return set().union(*(event_names(c) for c in node.children))
    if isinstance(node, Not):
        return event_names(node.child)
    if isinstance(node, EventCondition):
        return {node.name} | ({node.not_followed_by} if node.not_followed_by else set())
    return set()


# --- plain words ----------------------------------------------------------------------------

OPERATOR_WORDS = {
    "eq": "is",
    "ne": "is not",
    "gt": "is more than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "in": "is one of",
    "contains": "contains",
}


def describe(node, audience_names: dict | None = None) -> str:
    """The rule in plain words, for the audience page and the weekly review."""
    names = audience_names or {}
    if isinstance(node, All):
        return " and ".join(_describe_part(c, names) for c in node.children)
    if isinstance(node, Any):
        return " or ".join(_describe_part(c, names) for c in node.children)
    if isinstance(node, Not):
        child = node.child
        if isinstance(child, EventCondition):
            return _describe_event(child, negated=True)
        if isinstance(child, InAudience):
            return f"is not in {names.get(child.key, child.key)}"
        return f"not ({describe(child, names)})"
    if isinstance(node, EventCondition):
        return _describe_event(node, negated=False)
    if isinstance(node, AttributeCondition):
        return _describe_attribute(node)
    if isinstance(node, InAudience):
        return f"is in {names.get(node.key, node.key)}"
    return ""


def _describe_part(node, names):
    text = describe(node, names)
    return f"({text})" if isinstance(node, (All, Any)) and len(node.children) > 1 else text


def _describe_event(node: EventCondition, negated: bool) -> str:
    verb = "did not do" if negated else "did"
    times = f" at least {node.min_count} times" if node.min_count > 1 else ""
    where = "".join(f" with {k} = {_show(v)}" for k, v in node.where)
    since = f" with no {node.not_followed_by} since" if node.not_followed_by else ""
    if node.within:
        when = f" in the last {node.within.words()}"
    elif node.last_between:
        newer, older = node.last_between
        return (
            f"{'last did' if not negated else 'did not last do'} {node.name}{where} between {newer.words()} "
            f"and {older.words()} ago{since}"
        )
    else:
        when = " ever"
    return f"{verb} {node.name}{where}{times}{when}{since}"


def _describe_attribute(node: AttributeCondition) -> str:
    if node.operator == "exists":
        return f"has {node.attribute}" if node.value else f"has no {node.attribute}"
    if node.operator == "older_than":
        return f"{node.attribute} is more than {node.value.words()} ago"
    if node.operator == "newer_than":
        return f"{node.attribute} is within the last {node.value.words()}"
    value = ", ".join(_show(v) for v in node.value) if node.operator == "in" else _show(node.value)
    return f"{node.attribute} {OPERATOR_WORDS[node.operator]} {value}"
