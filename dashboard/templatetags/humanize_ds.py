"""Number formats for the pages. Every filter shows "—" for a missing value (None, or an
empty string from a lookup on a missing object) instead of failing the page."""

import json

from django import template

register = template.Library()


def _number(value):
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@register.filter
def intcomma_ds(value):
    number = _number(value)
    return "—" if number is None else f"{int(number):,}"


@register.filter
def percent(value, digits=0):
    number = _number(value)
    return "—" if number is None else f"{number * 100:.{int(digits)}f} %"


@register.filter
def percent_signed(value):
    number = _number(value)
    return "—" if number is None else f"{number * 100:+.0f} %"


@register.filter
def seconds(value):
    number = _number(value)
    if number is None:
        return "—"
    if number < 10:
        return f"{number:.2f} s"
    if number < 120:
        return f"{number:.0f} s"
    if number < 7200:
        return f"{number / 60:.0f} min"
    return f"{number / 3600:.1f} h"


@register.filter
def money(value):
    number = _number(value)
    return "—" if number is None else f"{number:,.2f}"


@register.filter
def is_structured(value):
    """A dict or a list with something in it: shown as formatted JSON rather than on one line
    (an empty one reads as "—")."""
    return isinstance(value, (dict, list)) and bool(value)


@register.filter
def as_json(value):
    """A stored value as formatted JSON (sorted keys, two-space indent), as a person reads a
    payload, instead of Python's repr of a dict; the template escapes it."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@register.filter
def resolution(alert):
    """How a resolved alert resolved (see syncs.alerts.alert_resolution)."""
    from syncs.alerts import alert_resolution

    return alert_resolution(alert)
