"""A plain-Python evaluator of the rule language, written from the documented semantics and
sharing nothing with the SQL compiler, so that one can check the other."""

from __future__ import annotations

from datetime import datetime, timedelta

MISSING = object()
UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> timedelta:
    return timedelta(**{UNIT[text[-1]]: int(text[:-1])})


def json_kind(value) -> str:
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def same_json(a, b) -> bool:
    return json_kind(a) == json_kind(b) and a == b


class Reference:
    def __init__(self, *, attributes: dict, events: dict, memberships: dict, now: datetime):
        """attributes: person → dict; events: person → [(name, time, properties)];
        memberships: audience key → set of people currently in it."""
        self.attributes = attributes
        self.events = events
        self.memberships = memberships
        self.now = now

    def members(self, rule) -> set:
        return {p for p in self.attributes if self.holds(rule, p)}

    def holds(self, rule, person) -> bool:
        if "all" in rule:
            return all(self.holds(r, person) for r in rule["all"])
        if "any" in rule:
            return any(self.holds(r, person) for r in rule["any"])
        if "not" in rule:
            return not self.holds(rule["not"], person)
        if "in_audience" in rule:
            return person in self.memberships.get(rule["in_audience"], set())
        if "event" in rule:
            return self.event(rule, person)
        return self.attribute(rule, person)

    def event(self, rule, person) -> bool:
        where = rule.get("where", {})
        matching = [
            t
            for name, t, props in self.events.get(person, [])
            if name == rule["event"] and all(same_json(props.get(k, MISSING), v) for k, v in where.items())
        ]
        minimum = rule.get("min_count", 1)
        if "last_between" in rule:
            newer, older = (duration(d) for d in rule["last_between"])
            if not (matching and self.now - older <= max(matching) <= self.now - newer):
                return False
        elif "within" in rule:
            cutoff = self.now - duration(rule["within"])
            matching = [t for t in matching if t >= cutoff]
        if "not_followed_by" in rule and matching:
            # the last matching event, and nothing of the other name at or after it; the same
            # second counts as after, whatever the fractions (times are UTC)
            since = max(matching).replace(microsecond=0)
            follows = [t for name, t, _ in self.events.get(person, []) if name == rule["not_followed_by"]]
            return not any(t >= since for t in follows)
        return len(matching) >= minimum

    def attribute(self, rule, person) -> bool:
        attributes = self.attributes[person]
        value = attributes.get(rule["attribute"], MISSING)
        kind = json_kind(value)
        op, expected = next((k, v) for k, v in rule.items() if k != "attribute")
        if op == "eq":
            return same_json(value, expected)
        if op == "ne":
            return not same_json(value, expected)
        if op == "in":
            return any(same_json(value, e) for e in expected)
        if op == "exists":
            return (kind not in ("missing", "null")) == expected
        if op == "contains":
            if kind == "string":
                return expected in value
            if kind == "array":
                return any(isinstance(item, str) and item == expected for item in value)
            return False
        if kind != "number":
            return False
        if op in ("older_than", "newer_than"):
            cutoff = (self.now - duration(expected)).timestamp()
            return value < cutoff if op == "older_than" else value >= cutoff
        return {"gt": value > expected, "gte": value >= expected, "lt": value < expected, "lte": value <= expected}[op]
