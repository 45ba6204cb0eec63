"""The audience editor's two views of a rule: rows a person fills in, and the rule itself
(JSON in the database, YAML beside the form). Either side can be edited; this module turns
one into the other, and says when a rule is too intricate for rows."""

from __future__ import annotations

import json
import re

import yaml

from . import rules as r

ROW_TYPES = ("did", "did_not", "last_between", "attribute", "in_audience", "not_in_audience")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class RowError(ValueError):
    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(f"condition {index + 1}: {message}")


def coerce(text):
    """A value typed into a box: numbers are numbers, true/false are booleans, the rest text."""
    if not isinstance(text, str):
        return text
    value = text.strip()
    if NUMBER.match(value):
        return float(value) if "." in value else int(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def _event(row: dict) -> dict:
    condition = {"event": (row.get("event") or "").strip()}
    if row.get("within"):
        condition["within"] = row["within"].strip()
    if row.get("min_count") not in (None, "", 1, "1"):
        condition["min_count"] = coerce(str(row["min_count"]))
    if (row.get("where_key") or "").strip():
        condition["where"] = {row["where_key"].strip(): coerce(row.get("where_value", ""))}
    return condition


def _since(row: dict, condition: dict) -> dict:
    """"with no Order Completed since", when the row names one."""
    follower = (row.get("not_followed_by") or "").strip()
    return {**condition, "not_followed_by": follower} if follower else condition


def row_to_condition(row: dict, index: int) -> dict:
    kind = row.get("type")
    if kind == "did":
        return _since(row, _event(row))
    if kind == "did_not":
        return {"not": _event(row)}
    if kind == "last_between":
        return _since(row, {"event": (row.get("event") or "").strip(),
                            "last_between": [row.get("newer", "").strip(), row.get("older", "").strip()]})
    if kind == "attribute":
        op = row.get("op", "eq")
        raw = row.get("value", "")
        if op == "in":
            value = [coerce(part) for part in str(raw).split(",") if part.strip()]
        elif op == "exists":
            value = str(raw).strip().lower() not in ("false", "no", "0")
        elif op in ("older_than", "newer_than", "contains"):
            value = str(raw).strip()
        else:
            value = coerce(raw)
        return {"attribute": (row.get("attribute") or "").strip(), op: value}
    if kind == "in_audience":
        return {"in_audience": row.get("audience", "")}
    if kind == "not_in_audience":
        return {"not": {"in_audience": row.get("audience", "")}}
    raise RowError(index, f"unknown kind {kind!r}; choose one of the listed kinds")


def rows_to_rule(match: str, rows: list[dict]) -> dict:
    conditions = [row_to_condition(row, i) for i, row in enumerate(rows)]
    if not conditions:
        return {}
    if len(conditions) == 1 and match == "all":
        return conditions[0]
    return {"any" if match == "any" else "all": conditions}


def _event_row(kind: str, condition: dict) -> dict | None:
    shown = {"event", "within", "min_count", "where"} | ({"not_followed_by"} if kind == "did" else set())
    if set(condition) - shown:
        return None
    row = {"type": kind, "event": condition["event"], "within": condition.get("within", ""),
           "min_count": condition.get("min_count", 1), "where_key": "", "where_value": "",
           "not_followed_by": condition.get("not_followed_by", "")}
    where = condition.get("where") or {}
    if len(where) > 1:
        return None
    for key, value in where.items():
        row["where_key"], row["where_value"] = key, _text(value)
    return row


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


def condition_to_row(condition: dict) -> dict | None:
    if "not" in condition and len(condition) == 1:
        inner = condition["not"]
        if isinstance(inner, dict) and "event" in inner and "last_between" not in inner:
            return _event_row("did_not", inner)
        if isinstance(inner, dict) and set(inner) == {"in_audience"}:
            return {"type": "not_in_audience", "audience": inner["in_audience"]}
        return None
    if "event" in condition:
        if "last_between" in condition:
            if set(condition) - {"event", "last_between", "not_followed_by"}:
                return None
            newer, older = condition["last_between"]
            return {"type": "last_between", "event": condition["event"], "newer": newer, "older": older,
                    "not_followed_by": condition.get("not_followed_by", "")}
        return _event_row("did", condition)
    if "attribute" in condition:
        op = next(k for k in condition if k != "attribute")
        return {"type": "attribute", "attribute": condition["attribute"], "op": op, "value": _text(condition[op])}
    if "in_audience" in condition:
        return {"type": "in_audience", "audience": condition["in_audience"]}
    return None


def rule_to_rows(rule: dict) -> tuple[str, list[dict]] | None:
    """(match, rows), or None when the rule nests deeper than rows can show (edit it as YAML)."""
    if not rule:
        return "all", []
    if set(rule) in ({"all"}, {"any"}):
        match = "all" if "all" in rule else "any"
        rows = [condition_to_row(c) if isinstance(c, dict) else None for c in rule[match]]
        return None if any(row is None for row in rows) else (match, rows)
    row = condition_to_row(rule)
    return ("all", [row]) if row else None


def rule_to_yaml(rule: dict) -> str:
    return yaml.safe_dump(rule, sort_keys=False, allow_unicode=True, default_flow_style=False) if rule else ""


def yaml_to_rule(text: str) -> dict:
    """The YAML box → a rule; a clear message for syntax errors (JSON is YAML too)."""
    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ValueError(f"YAML, line {mark.line + 1}, column {mark.column + 1}: {exc.problem}")
    except yaml.YAMLError as exc:
        raise ValueError(f"YAML: {exc}")
    if not isinstance(data, dict):
        raise ValueError("the rule must be a mapping such as {event: Added to Cart, within: 2h}")
    try:
        json.dumps(data)  # only JSON values reach the database
    except (TypeError, ValueError):
        raise ValueError("the rule holds a value that is not text, a number or true/false (a date? put it in quotes)")
    return data


def problems(rule: dict) -> list[str]:
    if not rule:
        return ["add at least one condition"]
    try:
        r.parse_rule(rule)
    except r.RuleError as exc:
        return [f"{path}: {message}" if path else message for path, message in exc.problems]
    return []
