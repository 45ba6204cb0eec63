"""The audience editor's two views of a rule: rows a person fills in, and the rule itself
(JSON in the database, YAML beside the form). Either side can be edited; this module turns
one into the other, and says when a rule is too intricate for rows."""

from __future__ import annotations

import json
import math
import re

import yaml

from audiences import rules as r

ROW_TYPES = ("did", "did_not", "last_between", "attribute", "in_audience", "not_in_audience")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
RANK = re.compile(r"^[0-9]{1,9}\Z")  # ASCII digits only: "²".isdigit() is true too
LARGEST = 2**63 - 1  # what a database compares as an integer
MAX_ROWS = 100
MAX_NESTING = 20


class RowError(ValueError):
    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(f"condition {index + 1}: {message}")


class RequestError(ValueError):
    """A request the editor's own page never sends; answered 400 with this message."""


def value_problem(value, path: str = "", depth: int = 0) -> str | None:
    """Why a (JSON) value cannot be stored and compared by the database, or None: text with a NUL
    or half a surrogate pair, an integer beyond 64 bits, a number that is not finite."""
    where = f"{path}: " if path else ""
    if depth > MAX_NESTING:
        return f"{where}nested more than {MAX_NESTING} levels deep"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where}text holds a NUL character (\\0); remove it"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}text holds a character that is not valid Unicode"
    elif isinstance(value, bool) or value is None:
        return None
    elif isinstance(value, int):
        if not -LARGEST - 1 <= value <= LARGEST:
            return f"{where}{value} is too large a number to compare (at most {LARGEST:,} either way)"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{where}{value} is not a number that can be compared; use an ordinary number such as 100 or 0.5"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if problem := value_problem(item, f"{path}[{i}]", depth + 1):
                return problem
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := value_problem(key, path, depth + 1) or value_problem(
                item, f"{path}.{key}" if path else str(key), depth + 1
            ):
                return problem
    return None


def rank_value(raw):
    """A rank typed into the form: a whole number, None when empty, else the text as it was
    (the service then says what a rank must be)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and RANK.match(raw.strip()):
        return int(raw)
    return raw


def _text_or_none(payload: dict, name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{name}: must be text, not {type(value).__name__}")
    return value


def preview_request(payload) -> dict:
    """The preview's JSON body, each field checked for the type the editor's page sends."""
    if not isinstance(payload, dict):
        raise RequestError('the preview takes a JSON object such as {"source": "yaml", "yaml": "event: Added to Cart"}')
    if problem := value_problem(payload):
        raise RequestError(problem)
    source = payload.get("source") or "form"
    if source not in ("form", "yaml"):
        raise RequestError(f'source: {source!r} is not "form" or "yaml"')
    match = payload.get("match") or "all"
    if match not in ("all", "any"):
        raise RequestError(f'match: {match!r} is not "all" or "any"')
    rows = payload.get("rows") or []
    if not isinstance(rows, list):
        raise RequestError("rows: must be a list of conditions")
    if len(rows) > MAX_ROWS:
        raise RequestError(f"rows: at most {MAX_ROWS} conditions; edit a longer rule as YAML")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(f"condition {i + 1}: must be an object of the row's boxes")
        for name, value in row.items():
            if value is not None and not isinstance(value, str):
                raise RequestError(f"condition {i + 1}: {name} must be text, not {type(value).__name__}")
    exclusions = payload.get("exclusions") or []
    if not isinstance(exclusions, list) or not all(isinstance(k, str) for k in exclusions):
        raise RequestError("exclusions: must be a list of audience keys")
    rank = payload.get("priority_rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (str, int))):
        raise RequestError("priority_rank: must be a whole number")
    rank = rank_value(rank)
    return {
        "source": source,
        "yaml": _text_or_none(payload, "yaml") or "",
        "match": match,
        "rows": [{k: v for k, v in row.items() if v is not None} for row in rows],
        "exclusions": exclusions,
        "priority_group": _text_or_none(payload, "priority_group") or None,
        "priority_rank": rank if isinstance(rank, int) else None,
        "identifier_policy": _text_or_none(payload, "identifier_policy") or None,
        "key": _text_or_none(payload, "key") or None,
    }


def form_state(text: str) -> dict | None:
    """The editor's state posted back with the form (to show a refused form as it was typed):
    None when it is not what the page sends."""
    try:
        state = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(state, dict) or value_problem(state):
        return None
    rows = state.get("rows", [])
    if state.get("match", "all") not in ("all", "any") or not isinstance(state.get("yaml", ""), str):
        return None
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        return None
    if not all(isinstance(row, dict) and all(isinstance(v, (str, int, float)) for v in row.values()) for row in rows):
        return None
    return {
        "match": state.get("match", "all"),
        "rows": rows,
        "yaml": state.get("yaml", ""),
        "rows_fit": state.get("rows_fit") is not False,
    }


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
    """ "with no Order Completed since", when the row names one."""
    follower = (row.get("not_followed_by") or "").strip()
    return {**condition, "not_followed_by": follower} if follower else condition


def row_to_condition(row: dict, index: int) -> dict:
    kind = row.get("type")
    if kind == "did":
        return _since(row, _event(row))
    if kind == "did_not":
        return {"not": _event(row)}
    if kind == "last_between":
        return _since(
            row,
            {
                "event": (row.get("event") or "").strip(),
                "last_between": [row.get("newer", "").strip(), row.get("older", "").strip()],
            },
        )
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
    if set(condition) - shown or not _texts(condition, "event", "within", "not_followed_by"):
        return None
    if not isinstance(condition.get("where") or {}, dict):
        return None
    row = {
        "type": kind,
        "event": condition["event"],
        "within": condition.get("within", ""),
        "min_count": condition.get("min_count", 1),
        "where_key": "",
        "where_value": "",
        "not_followed_by": condition.get("not_followed_by", ""),
    }
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


def _texts(condition: dict, *names) -> bool:
    return all(isinstance(condition.get(name, ""), str) for name in names)


def condition_to_row(condition: dict) -> dict | None:
    """The row showing one condition, or None when rows cannot show it (nor a rule that does
    not read yet: the YAML side then says what is wrong)."""
    if not isinstance(condition, dict):
        return None
    if "not" in condition and len(condition) == 1:
        inner = condition["not"]
        if isinstance(inner, dict) and "event" in inner and "last_between" not in inner:
            return _event_row("did_not", inner)
        if isinstance(inner, dict) and set(inner) == {"in_audience"} and _texts(inner, "in_audience"):
            return {"type": "not_in_audience", "audience": inner["in_audience"]}
        return None
    if "event" in condition:
        if "last_between" in condition:
            between = condition["last_between"]
            if set(condition) - {"event", "last_between", "not_followed_by"} or not _texts(condition, "event", "not_followed_by"):
                return None
            if not (isinstance(between, list) and len(between) == 2 and all(isinstance(b, str) for b in between)):
                return None
            newer, older = between
            return {
                "type": "last_between",
                "event": condition["event"],
                "newer": newer,
                "older": older,
                "not_followed_by": condition.get("not_followed_by", ""),
            }
        return _event_row("did", condition)
    if "attribute" in condition:
        ops = [k for k in condition if k != "attribute"]
        if len(ops) != 1 or not _texts(condition, "attribute"):
            return None
        return {"type": "attribute", "attribute": condition["attribute"], "op": ops[0], "value": _text(condition[ops[0]])}
    if "in_audience" in condition and len(condition) == 1 and _texts(condition, "in_audience"):
        return {"type": "in_audience", "audience": condition["in_audience"]}
    return None


def rule_to_rows(rule: dict) -> tuple[str, list[dict]] | None:
    """(match, rows), or None when the rule nests deeper than rows can show (edit it as YAML)."""
    if not rule:
        return "all", []
    if set(rule) in ({"all"}, {"any"}):
        match = "all" if "all" in rule else "any"
        if not isinstance(rule[match], list):
            return None
        rows = [condition_to_row(c) for c in rule[match]]
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
    except RecursionError:
        raise ValueError(f"YAML: nested more than {MAX_NESTING} levels deep")
    if not isinstance(data, dict):
        raise ValueError("the rule must be a mapping such as {event: Added to Cart, within: 2h}")
    try:
        json.dumps(data)  # only JSON values reach the database
    except (TypeError, ValueError, RecursionError):
        raise ValueError("the rule holds a value that is not text, a number or true/false (a date? put it in quotes)")
    if problem := value_problem(data):
        raise ValueError(problem)
    return data


def problems(rule: dict) -> list[str]:
    if not rule:
        return ["add at least one condition"]
    if problem := value_problem(rule):
        return [problem]
    try:
        r.parse_rule(rule)
    except r.RuleError as exc:
        return [f"{path}: {message}" if path else message for path, message in exc.problems]
    return []
